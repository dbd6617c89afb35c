"""Issue 18 item 2: DDPM pre-training on cxr_unlabelled (254 radiographs, 137 patients) at 128x128, resumable, with
samples as PNG, Fréchet distances against held-out patients' images and a memorisation audit of the samples.

Split: ~15 % of the PATIENTS (all their images) are held out (seeded); the DDPM never sees them. Training uses
``nmkit.generate.model.train_diffusion`` (the engine of ``nmkit synth train``) with a checkpoint every
``--checkpoint-every`` iterations; re-running the same command resumes an interrupted run (``--resume`` is implied when
the output holds a training state). The GPU is used when torch sees one (``DiffusionConfig.device`` None).
The equivalent CLI for the training part alone::

    nmkit synth train --folder ../shared/data/cxr_unlabelled/images --size 128 --channels 16 32 64 64 \\
        --normalisation percentile --batch-size 8 --iterations 1000 --checkpoint-every 50 --out RUN [--resume]

(the CLI trains on the whole folder; this script holds patients out for the distances).

Fréchet distances (FID formula on Gaussian fits; features standardised by the held-out set's mean/std), all against
the held-out images, with equal set sizes:
* ``radiomics-like``: the 20 hand-made image features of ``nmkit.generate.audit.image_features`` (intensity quantiles,
  gradient/Laplacian energy, power-spectrum bands, centre/spread) - ships with nmkit, no training, no ImageNet;
* ``ddpm-encoder``: the pooled encoder activations of THIS diffusion model at t=0 (``audit.DiffusionFeatures``) -
  learnt on the training images only (it is the model under test: read it as a self-consistency score).
Floor: the same distance for random subsets of the TRAINING images (real vs real, different patients).
Each sampler in ``--samplers`` (``ddim-50``, ``ddpm-1000``...) gets its own samples, distances and audit: on this
CPU-trained model DDIM leaves high-frequency noise that full ancestral DDPM sampling removes (bench/RESULTS.md);
DDPM runs all training timesteps (``ddpm-1000``; strided DDPM is refused: MONAI's DDPM step goes t -> t-1).

    nice -n 19 .venv/bin/python bench/bench_cxr_pretrain.py --out /work/runs/h7/ddpm128 --iterations 600
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr_unlabelled"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", default="/work/runs/h7/ddpm128")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 64])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--holdout", type=float, default=0.15, help="fraction of patients held out")
    p.add_argument("--samples", type=int, default=0, help="number of samples (default: as many as held-out images)")
    p.add_argument("--samplers", nargs="+", default=["ddim-50"],
                   help="samplers to score, METHOD-STEPS each: ddim-50 (deterministic, fast) and/or ddpm-1000 (ancestral, all "
                        "training timesteps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-train", action="store_true", help="only sample and score the existing checkpoint")
    return p.parse_args()


def patient_split(folder: Path, holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """Image file names (``cxr_NNNN.png``) of training and held-out patients."""
    with (folder / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    patients = sorted({r["patientid"] for r in rows})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(patients, max(1, round(holdout * len(patients))), replace=False))
    train = [f"{r['id']}.png" for r in rows if r["patientid"] not in held]
    test = [f"{r['id']}.png" for r in rows if r["patientid"] in held]
    return train, test


def frechet_table(reference: np.ndarray, sets: dict[str, np.ndarray], extract) -> dict[str, float]:
    """Fréchet distance of each set to ``reference`` in ``extract``'s features standardised by the reference."""
    from nmkit.generate.audit import frechet_distance

    f_ref = extract(reference)
    mu, sd = f_ref.mean(0), f_ref.std(0) + 1e-8
    z_ref = (f_ref - mu) / sd
    return {name: frechet_distance(z_ref, (extract(x) - mu) / sd) for name, x in sets.items()}


def feature_gaps(real: np.ndarray, synthetic: np.ndarray, top: int = 5) -> dict[str, float]:
    """The hand-made features whose sample mean sits furthest from the held-out mean, in held-out SDs (what drives the
    distance: e.g. residual high-frequency noise shows as Laplacian variance and top-band power)."""
    from nmkit.generate.audit import FEATURE_NAMES

    z = (synthetic.mean(0) - real.mean(0)) / (real.std(0) + 1e-8)
    order = np.argsort(-np.abs(z))[:top]
    return {FEATURE_NAMES[i]: round(float(z[i]), 2) for i in order}


def save_png(samples: np.ndarray, folder: Path) -> list[Path]:
    """Model-space samples ([-1, 1]) as 8-bit PNG files (synthetic; named so)."""
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        path = folder / f"synthetic_{i:04d}.png"
        PILImage.fromarray(np.clip((s + 1) * 127.5, 0, 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> int:
    args = parse()
    import torch

    from nmkit.generate.audit import DiffusionFeatures, audit, image_features, normalise_stack, write_audit_report
    from nmkit.generate.data import load_source
    from nmkit.generate.model import TRAINING_STATE, DiffusionConfig, load_diffusion, read_description, sample, train_diffusion

    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_names, test_names = patient_split(data, args.holdout, args.seed)
    source = {"kind": "folder", "path": str(data / "images"), "names": train_names}
    train_images = load_source(source)
    test_images = load_source({"kind": "folder", "path": str(data / "images"), "names": test_names})
    (out / "split.json").write_text(json.dumps({"train": train_names, "heldout": test_names, "seed": args.seed}, indent=1))
    print(f"{len(train_images)} training / {len(test_images)} held-out images (patient-level, seed {args.seed})", flush=True)
    ckpt = out / "checkpoint"
    if not args.skip_train:
        config = DiffusionConfig(image_size=args.size, channels=tuple(args.channels), normalisation="percentile", iterations=args.iterations,
                                 batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, num_threads=args.threads)
        resume = (ckpt / TRAINING_STATE).exists()
        t0 = time.perf_counter()
        train_diffusion(train_images, config, ckpt, progress=True, source=source, checkpoint_every=args.checkpoint_every, resume=resume)
        print(f"training session {time.perf_counter() - t0:.0f} s", flush=True)
    model, config = load_diffusion(ckpt)
    history = read_description(ckpt)["history"]
    n = args.samples or len(test_images)
    size = config.image_size
    real_test = normalise_stack([i.image.array for i in test_images], size, "percentile")
    real_train = normalise_stack([i.image.array for i in train_images], size, "percentile")
    rng = np.random.default_rng(args.seed)
    subsets = {f"train_subset_{k}": real_train[rng.choice(len(real_train), len(real_test), replace=False)] for k in range(5)}
    extractors = (("radiomics-like", image_features), ("ddpm-encoder", DiffusionFeatures(model, config)))
    floors = {}
    for name, extract in extractors:
        fd = frechet_table(real_test, subsets, extract)
        floors[name] = {"train_vs_heldout_floor_mean": float(np.mean(list(fd.values()))),
                        "train_vs_heldout_floor_range": [float(min(fd.values())), float(max(fd.values()))]}
    state = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True) if (ckpt / TRAINING_STATE).exists() else None
    done = int(state["iteration"]) if state is not None else (history[-1]["iteration"] if history else 0)
    summary = {"iterations": done, "train_seconds": float(state["seconds"]) if state is not None else (history[-1]["seconds"] if history else 0),
               "final_loss": history[-1]["loss"] if history else None, "n_train": len(train_images), "n_heldout": len(test_images),
               "n_samples": n, "floors": floors, "samplers": {}, "device": str(next(model.parameters()).device)}
    for spec in args.samplers:
        method, _, steps = spec.partition("-")
        t0 = time.perf_counter()
        samples = sample(model, config, n, seed=args.seed, method=method, steps=int(steps) if steps else None)
        seconds = time.perf_counter() - t0
        paths = save_png(samples, out / f"samples_{spec}")
        synthetic = np.clip(samples[: len(real_test)], -1, 1)
        frechet = {name: {"samples_vs_heldout": frechet_table(real_test, {"s": synthetic}, extract)["s"], **floors[name]}
                   for name, extract in extractors}
        frechet["radiomics-like"]["largest_gaps"] = feature_gaps(image_features(real_test), image_features(synthetic))
        result = audit([s for s in samples], [i.image.array for i in train_images], size=64, normalisation="percentile",
                       training_names=[i.name for i in train_images])
        write_audit_report(result, [(s + 1) * 127.5 for s in samples], [i.image.array for i in train_images],
                           out / f"audit_{spec}" / "audit.html", training_names=[i.name for i in train_images],
                           config={"checkpoint": str(ckpt), "sampler": spec})
        summary["samplers"][spec] = {
            "sample_seconds": seconds, "frechet": frechet, "samples_png": str(paths[0].parent),
            "audit": {"n_flagged": int(result.summary["n_memorised"]), "threshold": result.threshold,
                      "min_nn_distance": float(result.table.pixel_distance.min()), "train_nn_median": result.summary["train_nn_median"]}}
        print(f"{spec}: {n} samples in {seconds:.0f} s; Frechet radiomics-like {frechet['radiomics-like']['samples_vs_heldout']:.1f} "
              f"(floor {floors['radiomics-like']['train_vs_heldout_floor_mean']:.1f}), encoder {frechet['ddpm-encoder']['samples_vs_heldout']:.1f} "
              f"(floor {floors['ddpm-encoder']['train_vs_heldout_floor_mean']:.1f})", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
