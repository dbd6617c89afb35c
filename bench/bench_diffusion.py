"""Benchmark: diffusion pre-training for few-label thyroid segmentation, and the synthetic-image audit.

Runs (on simulated anterior thyroid scintigraphy, Tc-99m pinhole, Poisson counts):

1. trains an unconditional DDPM (MONAI DiffusionModelUNet) on N unlabelled phantoms;
2. learning curve: gland segmentation (DiffusionSegNet) fine-tuned on 5/10/20/50 labelled images, initialised
   from the diffusion encoder vs from scratch, test Dice on held-out phantoms (mean over seeds);
3. samples synthetic images with DDIM (and times DDPM vs DDIM sampling);
4. audit table: nearest-neighbour distances, memorised-copy flags and Fréchet distance (radiomics-like and
   diffusion-encoder features) for the synthetic set, for held-out real phantoms (reference: what "new but real"
   looks like) and for a planted set of copies of training images (must be flagged);
5. writes CSV tables, the HTML audit report and the checkpoint under --out.

Example (modest, CPU, ~20-30 min on 2 busy cores):
    .venv/bin/python bench/bench_diffusion.py --out /tmp/bench_diffusion --unlabelled 64 --iterations 600 \\
        --ft-iterations 100 --sizes 5 10 20 50 --seeds 1
Longer (GPU): --unlabelled 500 --iterations 20000 --channels 32 64 64 --ft-iterations 500 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench_diffusion")
    p.add_argument("--unlabelled", type=int, default=64, help="unlabelled phantoms for diffusion training")
    p.add_argument("--matrix", type=int, default=64)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--ft-iterations", type=int, default=100)
    p.add_argument("--ft-batch-size", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--test", type=int, default=30, help="held-out labelled phantoms for test Dice")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-curve", action="store_true")
    return p.parse_args()


def main() -> None:
    from nmkit.generate.audit import DiffusionFeatures, audit, write_audit_report
    from nmkit.generate.data import thyroid_phantoms
    from nmkit.generate.model import DiffusionConfig, load_diffusion, sample, to_physical, train_diffusion
    from nmkit.generate.pretrain import learning_curve
    from nmkit.phantoms.thyroid import PATHOLOGIES

    args = parse()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: list[dict] = []

    t0 = time.perf_counter()
    source = {"kind": "thyroid_phantoms", "n": args.unlabelled, "seed": 100, "matrix": args.matrix, "pathologies": list(PATHOLOGIES)}
    unlabelled = thyroid_phantoms(args.unlabelled, seed=100, matrix=args.matrix, pathologies=PATHOLOGIES)
    labelled = thyroid_phantoms(max(args.sizes), seed=200, matrix=args.matrix, pathologies=PATHOLOGIES)
    test = thyroid_phantoms(args.test, seed=300, matrix=args.matrix, pathologies=PATHOLOGIES)
    held_out = thyroid_phantoms(args.samples, seed=400, matrix=args.matrix, pathologies=PATHOLOGIES)
    timings.append({"step": "simulate phantoms", "seconds": time.perf_counter() - t0})

    config = DiffusionConfig(image_size=args.matrix, channels=tuple(args.channels), num_train_timesteps=args.timesteps,
                             iterations=args.iterations, batch_size=args.batch_size, learning_rate=args.lr, seed=1)
    t0 = time.perf_counter()
    train_diffusion(unlabelled, config, out / "checkpoint", progress=True, source=source)
    seconds = time.perf_counter() - t0
    timings.append({"step": f"train DDPM ({args.iterations} it, batch {args.batch_size})", "seconds": seconds,
                    "per_item": seconds / args.iterations})
    model, config = load_diffusion(out / "checkpoint")

    if not args.skip_curve:
        t0 = time.perf_counter()
        curve = learning_curve(out / "checkpoint", [i.image.array for i in labelled], [(i.label > 0).astype(np.int64) for i in labelled],
                               [i.image.array for i in test], [(i.label > 0).astype(np.int64) for i in test], sizes=args.sizes,
                               iterations=args.ft_iterations, seeds=args.seeds, batch_size=args.ft_batch_size)
        timings.append({"step": "learning curve", "seconds": time.perf_counter() - t0})
        curve.to_csv(out / "learning_curve.csv", index=False)
        summary = curve.pivot_table(index="n_labelled", columns="init", values="test_dice", aggfunc=["mean", "std"])
        print("\nLearning curve: gland test Dice (mean over seeds), diffusion-initialised encoder vs scratch")
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))

    t0 = time.perf_counter()
    synth = to_physical(sample(model, config, args.samples, seed=1, method="ddim", steps=args.ddim_steps), config)
    seconds = time.perf_counter() - t0
    timings.append({"step": f"DDIM sampling ({args.ddim_steps} steps)", "seconds": seconds, "per_item": seconds / args.samples})
    t0 = time.perf_counter()
    sample(model, config, 2, seed=2, method="ddpm")
    seconds = time.perf_counter() - t0
    timings.append({"step": f"DDPM sampling ({config.num_train_timesteps} steps)", "seconds": seconds, "per_item": seconds / 2})

    training = [i.image.array for i in unlabelled]
    names = [i.name for i in unlabelled]
    rng = np.random.default_rng(0)
    copies = [training[i] for i in rng.choice(len(training), size=min(8, len(training)), replace=False)]
    sets = {"synthetic (DDIM)": list(synth), "held-out real phantoms": [i.image.array for i in held_out], "planted copies": copies}
    rows, results = [], {}
    for label, images in sets.items():
        for kind, features in (("radiomics-like", None), ("diffusion-encoder", DiffusionFeatures(model, config))):
            result = audit(images, training, size=config.image_size, features=features, feature_kind=kind, training_names=names)
            results[(label, kind)] = result
            rows.append({"set": label, "features": kind, "n": len(images), "flagged_copies": int(result.flagged.sum()),
                         "nn_distance_median": float(result.table["pixel_distance"].median()),
                         "nn_distance_vs_train_median": float(result.table["pixel_distance_vs_train_median"].median()),
                         "frechet": result.frechet})
    table = pd.DataFrame(rows)
    table.to_csv(out / "audit_table.csv", index=False)
    print("\nAudit (threshold = 0.5 x 5th percentile of training leave-one-out NN distances)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    write_audit_report(results[("synthetic (DDIM)", "diffusion-encoder")], list(synth), training, out / "audit.html", training_names=names,
                       config=vars(args))
    print("\nTimings (CPU threads: %d; device: %s)" % (args.threads, "cuda" if torch.cuda.is_available() else "cpu"))
    print(pd.DataFrame(timings).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    (out / "bench.json").write_text(json.dumps({"args": vars(args), "timings": timings}, indent=2))


if __name__ == "__main__":
    main()
