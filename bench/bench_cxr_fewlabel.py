"""Issue 18 item 3: few-label lung segmentation on cxr_lungs, diffusion-encoder fine-tuning vs the same net from scratch.

Design: patient-level k-fold CV (default 3 folds of cxr_lungs' 25 patients / 30 images); in each fold the labelled
images are the first n of a seeded permutation of the training pool (nested: the 5 include the 2), n in 2/5/10/20;
seeds 1-3 change the subset, the initialisation of the new layers and the batches; both arms of a (fold, seed, n) see
the same images, iterations and batches (``nmkit.generate.fewlabel.train_one``: diffusion-unet, percentile
normalisation, Dice+CE, cosine lr, rotation/zoom/shift, no flips). ``diffusion`` = encoder copied from the DDPM of
``bench_cxr_pretrain.py`` (``pretrain.init_from_diffusion``), ``scratch`` = random init. A fixed iteration budget
per run (not per image) keeps the cost equal for every n. Dice per lung at the original image resolution, HD95 in
model-grid pixels. Every finished run is appended to ``runs.csv``; re-running skips them (resumable).

Statistics: unit = one (fold, seed) run averaged over its test images; mean with bootstrap 95 % CI over units; paired
difference diffusion - scratch per n and pooled over n <= 10 (bootstrap CI, sign-flip permutation p).

    nice -n 19 .venv/bin/python bench/bench_cxr_fewlabel.py --checkpoint /work/runs/h7/ddpm128/checkpoint --out /work/runs/h7/fewlabel
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr_lungs"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--checkpoint", required=True, help="diffusion checkpoint (its channels set the network)")
    p.add_argument("--out", default="/work/runs/h7/fewlabel")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10, 20])
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true")
    return p.parse_args()


def summarise(runs: pd.DataFrame, out: Path) -> str:
    """Learning-curve table with CIs, paired comparisons, and the figure; returns the markdown."""
    from nmkit.generate.fewlabel import mean_ci, paired_difference

    hd = [c for c in runs.columns if c.startswith("hd95_") and c.endswith("_mean")][0]
    lines = [f"| n labelled | init | runs | Dice mean [95 % CI] | Dice right | Dice left | HD95 {hd[5:-5]} [95 % CI] |", "|---|---|---|---|---|---|---|"]
    curve = []
    for (n, init), g in runs.groupby(["n_labelled", "init"]):
        m, lo, hi = mean_ci(g.dice_mean)
        hm, hlo, hhi = mean_ci(g[hd])
        curve.append({"n": n, "init": init, "mean": m, "lo": lo, "hi": hi})
        lines.append(f"| {n} | {init} | {len(g)} | {m:.3f} [{lo:.3f}, {hi:.3f}] | {g.dice_right_lung.mean():.3f} | {g.dice_left_lung.mean():.3f} | "
                     f"{hm:.1f} [{hlo:.1f}, {hhi:.1f}] |")
    wide = runs.pivot_table(index=["n_labelled", "fold", "seed"], columns="init", values=["dice_mean", hd]).dropna()
    lines += ["", "| n labelled | pairs | Dice diffusion - scratch [95 % CI] | p (sign-flip) | pairs with diffusion better | HD95 diffusion - scratch [95 % CI] |",
              "|---|---|---|---|---|---|"]
    comparisons = {}
    groups = [(str(n), wide.loc[[n]]) for n in sorted(set(wide.index.get_level_values(0)))]
    small = wide[wide.index.get_level_values(0) <= 10]
    if len(small):
        groups.append(("<= 10 (pooled)", small))
    for name, g in groups:
        if "diffusion" not in g["dice_mean"] or "scratch" not in g["dice_mean"]:
            continue
        d = paired_difference(g["dice_mean"]["diffusion"], g["dice_mean"]["scratch"])
        h = paired_difference(g[hd]["diffusion"], g[hd]["scratch"])
        comparisons[name] = {"dice": d, "hd95": h}
        lines.append(f"| {name} | {d['n_pairs']} | {d['mean_difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['p_value']:.3f} | "
                     f"{d['n_positive']}/{d['n_pairs']} | {h['mean_difference']:+.1f} [{h['ci_low']:+.1f}, {h['ci_high']:+.1f}] |")
    (out / "comparison.json").write_text(json.dumps(comparisons, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    c = pd.DataFrame(curve)
    for init, g in c.groupby("init"):
        ax.errorbar(g.n, g["mean"], yerr=[g["mean"] - g.lo, g.hi - g["mean"]], marker="o", capsize=3, label=init)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sorted(c.n.unique()))
    ax.set_xticklabels([str(v) for v in sorted(c.n.unique())])
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test Dice, mean of both lungs")
    ax.set_title(f"cxr_lungs few-label, {int(runs.groupby(['n_labelled', 'init']).size().max())} runs/point (95 % CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    table = "\n".join(lines)
    (out / "learning_curve.md").write_text(table + "\n")
    return table


def main() -> int:
    args = parse()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    if not args.summary_only:
        import torch

        from nmkit.generate.fewlabel import LUNG_LABELS, append_run, evaluate, fold_unit, load_pairs, patient_folds, train_one
        from nmkit.generate.pretrain import segnet_options

        torch.set_num_threads(args.threads)
        channels = segnet_options(args.checkpoint)["channels"]
        items = load_pairs(args.data, args.size)
        folds = patient_folds([i.patient for i in items], args.folds, 0)
        done = set()
        if path.exists():
            prev = pd.read_csv(path)
            done = {(int(r.n_labelled), int(r.fold), int(r.seed), r.init) for r in prev.itertuples()}
        # seed outermost: an interrupted run still holds every n for the (seed, fold) units it finished
        for seed in args.seeds:
            for k in range(args.folds):
                pool, test = fold_unit(items, folds, k, seed)
                for n in args.sizes:
                    if n > len(pool):
                        print(f"skip n={n}: fold {k} has {len(pool)} training images", flush=True)
                        continue
                    labelled = pool[:n]
                    for init in ("scratch", "diffusion"):
                        if (n, k, seed, init) in done:
                            continue
                        model, seconds = train_one(labelled, args.size, 1 + max(LUNG_LABELS), args.iterations, seed, channels,
                                                   args.checkpoint if init == "diffusion" else None, args.batch_size, args.lr)
                        rows = pd.DataFrame(evaluate(model, test, args.size))
                        rec = {"n_labelled": n, "fold": k, "seed": seed, "init": init, "n_test": len(test), "train_seconds": seconds,
                               **rows.drop(columns=["case", "patient"]).mean().to_dict()}
                        append_run(path, rec)
                        print(f"seed={seed} fold={k} n={n} {init:9s} Dice {rec['dice_mean']:.3f} ({seconds:.0f} s)", flush=True)
    runs = pd.read_csv(path)
    table = summarise(runs, out)
    print(table)
    print(f"figure: {out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
