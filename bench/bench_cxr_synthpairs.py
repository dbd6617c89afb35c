"""Issue 18 item 4: mask-conditioned synthesis of chest radiographs from lung masks, and synthetic pairs added to
few-label lung segmentation, measured against the same runs without them.

Design (one unit = one (seed, patient fold) of ``bench_cxr_fewlabel.py``: same 3 patient folds, same seeded choice of
the ``--n`` labelled images of the fold's training pool, so no test patient is ever seen):
1. generator: a mask-conditioned DDPM (right/left lung label maps as two extra input channels) trained on the unit's
   ``--n`` labelled pairs only, warm-started from the unconditional DDPM pre-trained on ``cxr_unlabelled``
   (``--pretrained``; ``nmkit synth train --conditioned --init``): the mask channels start at zero, the rest of the
   network knows radiographs;
2. ``--synthetic`` new masks: the labelled masks under random rotation (+-8 deg), zoom (0.9-1.1) and shift (+-6 % of
   the side), nearest-neighbour; one DDIM sample per mask = the synthetic pairs;
3. two segmentation runs with identical settings, seed and iterations (``fewlabel.train_one``: diffusion-unet from
   scratch, percentile normalisation, Dice+CE, no flips): ``real`` (the n labelled pairs) and ``real+synthetic``
   (the same + the synthetic pairs); Dice per lung at the original resolution on the fold's test images, HD95 in
   model-grid pixels;
4. mask fidelity: the ``real`` model segments the unit's synthetic images; Dice against the mask each image was
   generated from (does the image follow its mask?), next to the same model's Dice on the real test images.
Statistics: paired difference (real+synthetic - real) over units with a bootstrap CI and sign-flip p.

    nice -n 19 .venv/bin/python bench/bench_cxr_synthpairs.py --pretrained /work/runs/h7/ddpm64/checkpoint \\
        --out /work/runs/s17/synthpairs --n 10 --seeds 1 2 3

Resumable (``runs.csv``, generator checkpoints per unit). Outputs stay outside the repository: the images are
CC BY-NC-SA (most) and so are weights and samples made from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr_lungs"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--pretrained", required=True, help="unconditional DDPM checkpoint (bench_cxr_pretrain.py) to start from")
    p.add_argument("--out", default="/work/runs/s17/synthpairs")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=10, help="labelled images per unit")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--gen-iterations", type=int, default=400)
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--gen-lr", type=float, default=1e-4)
    p.add_argument("--synthetic", type=int, default=30, help="synthetic pairs per unit")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--iterations", type=int, default=200, help="segmentation training iterations (both arms)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--summary-only", action="store_true")
    return p.parse_args()


def new_masks(masks: list[np.ndarray], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` label maps from ``masks`` under random rotation / zoom / shift (nearest neighbour: labels stay 0/1/2,
    right stays right: no flips)."""
    from scipy import ndimage

    out = []
    for i in range(count):
        m = masks[i % len(masks)]
        size = m.shape[0]
        angle = np.deg2rad(rng.uniform(-8, 8))
        zoom = rng.uniform(0.9, 1.1)
        shift = rng.uniform(-0.06, 0.06, 2) * size
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, -s], [s, c]]) / zoom
        centre = (np.array(m.shape) - 1) / 2
        offset = centre - matrix @ (centre + shift)
        out.append(ndimage.affine_transform(m, matrix, offset, order=0, mode="constant", cval=0).astype(np.int64))
    return out


def train_generator(labelled, args, folder: Path):
    """The unit's mask-conditioned DDPM (reloaded when already trained)."""
    from nmkit.generate.data import TrainingImage
    from nmkit.generate.model import DiffusionConfig, load_diffusion, read_description, train_diffusion
    from nmkit.io.image import Image

    if (folder / "diffusion.json").exists() and read_description(folder)["config"]["iterations"] == args.gen_iterations:
        return (*load_diffusion(folder, device="cpu"), 0.0)
    base = read_description(args.pretrained)["config"]
    config = DiffusionConfig(image_size=args.size, channels=tuple(base["channels"]), num_res_blocks=base["num_res_blocks"],
                             norm_num_groups=base["norm_num_groups"], num_train_timesteps=base["num_train_timesteps"],
                             normalisation="percentile", iterations=args.gen_iterations, batch_size=args.gen_batch_size,
                             learning_rate=args.gen_lr, condition_labels={1: "right_lung", 2: "left_lung"},
                             num_threads=args.threads, device="cpu", seed=1)
    images = [TrainingImage(p.name, Image(array=p.image, spacing=(1.0, 1.0)), p.label) for p in labelled]
    t0 = time.perf_counter()
    model, config, _ = train_diffusion(images, config, folder, init_from=args.pretrained)
    return model.eval(), config, time.perf_counter() - t0


def mask_fidelity(model, images: np.ndarray, masks: list[np.ndarray], size: int) -> float:
    """Mean Dice (both lungs) of ``model``'s segmentation of synthetic images against their conditioning masks."""
    from nmkit.generate.fewlabel import LUNG_LABELS, LabelledImage, evaluate

    items = [LabelledImage(f"synthetic_{i}", "synthetic", img.astype(np.float32), m, m.astype(np.uint8))
             for i, (img, m) in enumerate(zip(images, masks))]
    rows = pd.DataFrame(evaluate(model, items, size, LUNG_LABELS))
    return float(rows.dice_mean.mean())


def montage(path: Path, masks: list[np.ndarray], images: np.ndarray, real: list) -> None:
    """Rows: conditioning mask outline over its synthetic image; bottom row: real labelled images for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(6, len(masks))
    fig, axes = plt.subplots(2, k, figsize=(1.8 * k, 3.8))
    for j in range(k):
        axes[0, j].imshow(images[j], cmap="gray")
        axes[0, j].contour(masks[j], levels=[0.5, 1.5], colors=["tab:orange", "tab:cyan"], linewidths=0.6)
        axes[1, j].imshow(real[j % len(real)].image, cmap="gray")
        for a in axes[:, j]:
            a.axis("off")
    axes[0, 0].set_title("synthetic from mask", fontsize=8, loc="left")
    axes[1, 0].set_title("real labelled", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(runs: pd.DataFrame, out: Path) -> str:
    from nmkit.generate.fewlabel import mean_ci, paired_difference

    hd = [c for c in runs.columns if c.startswith("hd95_") and c.endswith("_mean")][0]
    lines = [f"| arm | runs | Dice mean [95 % CI] | Dice right | Dice left | HD95 {hd[5:-5]} [95 % CI] |", "|---|---|---|---|---|---|"]
    for arm, g in runs.groupby("arm", sort=False):
        m, lo, hi = mean_ci(g.dice_mean)
        hm, hlo, hhi = mean_ci(g[hd])
        lines.append(f"| {arm} | {len(g)} | {m:.3f} [{lo:.3f}, {hi:.3f}] | {g.dice_right_lung.mean():.3f} | {g.dice_left_lung.mean():.3f} | "
                     f"{hm:.1f} [{hlo:.1f}, {hhi:.1f}] |")
    wide = runs.pivot_table(index=["fold", "seed"], columns="arm", values=["dice_mean", hd, "mask_fidelity_dice"]).dropna()
    result = {}
    if {"real", "real+synthetic"} <= set(wide["dice_mean"].columns):
        d = paired_difference(wide["dice_mean"]["real+synthetic"], wide["dice_mean"]["real"])
        h = paired_difference(wide[hd]["real+synthetic"], wide[hd]["real"])
        result = {"dice": d, "hd95": h}
        lines += ["", "| comparison | pairs | Dice difference [95 % CI] | p (sign-flip) | pairs with synthetic better | HD95 difference [95 % CI] |",
                  "|---|---|---|---|---|---|",
                  f"| real+synthetic - real | {d['n_pairs']} | {d['mean_difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
                  f"{d['p_value']:.3f} | {d['n_positive']}/{d['n_pairs']} | {h['mean_difference']:+.1f} [{h['ci_low']:+.1f}, {h['ci_high']:+.1f}] |"]
    real = runs[runs.arm == "real"]
    if len(real) and real.mask_fidelity_dice.notna().any():
        fm, flo, fhi = mean_ci(real.mask_fidelity_dice.dropna())
        tm, tlo, thi = mean_ci(real.dice_mean)
        lines += ["", f"Mask fidelity: the `real` model segments the synthetic images with Dice {fm:.3f} [{flo:.3f}, {fhi:.3f}] "
                      f"against their conditioning masks (the same models on real test images: {tm:.3f} [{tlo:.3f}, {thi:.3f}])."]
        result["mask_fidelity"] = {"synthetic": [fm, flo, fhi], "real_test": [tm, tlo, thi]}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    table = "\n".join(lines)
    (out / "synthpairs.md").write_text(table + "\n")
    return table


def main() -> int:
    args = parse()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    if not args.summary_only:
        import torch

        from nmkit.generate.fewlabel import LUNG_LABELS, append_run, evaluate, fold_unit, load_pairs, patient_folds, train_one
        from nmkit.generate.model import sample, to_physical
        from nmkit.generate.pretrain import segnet_options

        torch.set_num_threads(args.threads)
        channels = segnet_options(args.pretrained)["channels"]
        items = load_pairs(args.data, args.size)
        folds = patient_folds([i.patient for i in items], args.folds, 0)
        done = set()
        if path.exists():
            done = {(int(r.fold), int(r.seed), r.arm) for r in pd.read_csv(path).itertuples()}
        for seed in args.seeds:
            for k in range(args.folds):
                if {(k, seed, "real"), (k, seed, "real+synthetic")} <= done:
                    continue
                pool, test = fold_unit(items, folds, k, seed)  # the units of bench_cxr_fewlabel.py
                labelled = pool[:args.n]
                unit = out / f"seed{seed}_fold{k}"
                gen, config, gen_seconds = train_generator(labelled, args, unit / "generator")
                masks = new_masks([p.label for p in labelled], args.synthetic, np.random.default_rng((seed, k, 7)))
                t0 = time.perf_counter()
                with torch.no_grad():
                    synthetic = to_physical(sample(gen, config, len(masks), seed=seed, method="ddim", steps=args.ddim_steps,
                                                   conditions=masks), config)
                sample_seconds = time.perf_counter() - t0
                np.savez_compressed(unit / "synthetic.npz", images=synthetic.astype(np.float32), masks=np.stack(masks).astype(np.uint8))
                montage(unit / "montage.png", masks, synthetic, labelled)
                extra = list(zip(synthetic, masks))
                for arm in ("real", "real+synthetic"):
                    if (k, seed, arm) in done:
                        continue
                    model, seconds = train_one(labelled, args.size, 1 + max(LUNG_LABELS), args.iterations, seed, channels, None,
                                               args.batch_size, args.lr, extra=extra if arm == "real+synthetic" else ())
                    rows = pd.DataFrame(evaluate(model, test, args.size))
                    rec = {"fold": k, "seed": seed, "arm": arm, "n_labelled": args.n, "n_synthetic": len(extra) if arm != "real" else 0,
                           "n_test": len(test), "train_seconds": seconds, "generator_seconds": gen_seconds,
                           "sample_seconds": sample_seconds,
                           "mask_fidelity_dice": mask_fidelity(model, synthetic, masks, args.size) if arm == "real" else float("nan"),
                           **rows.drop(columns=["case", "patient"]).mean().to_dict()}
                    append_run(path, rec)
                    print(f"seed={seed} fold={k} {arm:15s} Dice {rec['dice_mean']:.3f} (train {seconds:.0f} s, generator {gen_seconds:.0f} s)",
                          flush=True)
    runs = pd.read_csv(path)
    print(summarise(runs, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
