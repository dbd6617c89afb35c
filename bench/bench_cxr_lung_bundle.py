"""Issue 18 item 6: the full-data lung model on cxr_lungs (30 pairs, 25 patients) as a bundle OUTSIDE the repository,
with a model card and a patient-level k-fold cross-validation of the same recipe.

Recipe (``nmkit.generate.fewlabel.train_one``): ``diffusion-unet`` (channels 16-32-64-64, from scratch unless
``--pretrained`` names a diffusion checkpoint), 64x64 (``--size``) anti-aliased input, percentile normalisation, Dice+CE, AdamW
lr 1e-3 cosine-decayed, small random rotation/zoom/shift (no flips: label 1 = right lung, 2 = left lung).
Metrics: Dice per lung at the original image resolution, HD95 in model-grid pixels (no pixel spacing in the PNGs).

    nice -n 19 .venv/bin/python bench/bench_cxr_lung_bundle.py --out /work/runs/h7/lung64 --size 64 --iterations 200 --batch-size 6

Resumable: a finished fold (``cv/fold<k>.csv``) is not re-run. The images are CC BY-NC-SA (most): the weights
inherit non-commercial terms; never copy the bundle into the repository.
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
    p.add_argument("--out", default="/work/runs/h7/lung_bundle")
    p.add_argument("--size", type=int, default=64, help="model size (64: what the shared 2-core CPU allowed; 128 works too)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pretrained", default=None, help="diffusion checkpoint whose encoder initialises the net")
    p.add_argument("--skip-full", action="store_true", help="only the cross-validation")
    p.add_argument("--card-only", action="store_true", help="rewrite the CV table and the model card of an existing run (no training)")
    return p.parse_args()


def summarise(cases: pd.DataFrame, size: int) -> tuple[pd.DataFrame, str]:
    """Per-fold means and the overall mean with bootstrap 95 % CI over images, as a DataFrame and a markdown table."""
    from nmkit.generate.fewlabel import mean_ci

    cols = ["dice_right_lung", "dice_left_lung", "dice_mean", f"hd95_px{size}_right_lung", f"hd95_px{size}_left_lung"]
    if "dice_pp_mean" in cases and cases.dice_pp_mean.notna().all():  # folds evaluated with the post-processed Dice too
        cols.append("dice_pp_mean")
    per_fold = cases.groupby("fold")[cols].mean().reset_index()
    pp = " | Dice mean, largest component + holes filled" if "dice_pp_mean" in cols else ""
    lines = [f"| fold | test images (patients) | Dice right lung | Dice left lung | Dice mean | HD95 right (px{size}) | HD95 left (px{size}){pp} |",
             "|---|---|---|---|---|---|---|" + ("---|" if pp else "")]
    for _, r in per_fold.iterrows():
        sub = cases[cases.fold == r.fold]
        lines.append(f"| {int(r.fold)} | {len(sub)} ({sub.patient.nunique()}) | " + " | ".join(f"{r[c]:.3f}" if "dice" in c else f"{r[c]:.1f}" for c in cols) + " |")
    cells = []
    for c in cols:
        m, lo, hi = mean_ci(cases[c].to_numpy())
        cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if "dice" in c else f"{m:.1f} [{lo:.1f}, {hi:.1f}]")
    lines.append(f"| all (mean [95 % CI], bootstrap over images) | {len(cases)} ({cases.patient.nunique()}) | " + " | ".join(cells) + " |")
    return per_fold, "\n".join(lines)


def model_card(out: Path, args: argparse.Namespace, table: str, summary: dict, n_images: int, n_patients: int, seconds: float) -> str:
    pretraining = ""
    if args.pretrained:
        source = json.loads((Path(args.pretrained) / "diffusion.json").read_text()).get("training_source") or {}
        pretraining = (f"- Encoder pre-training (unlabelled, no patient of cxr_lungs): the DDPM {args.pretrained} trained on "
                       f"{source.get('path', 'cxr_unlabelled')} - chest radiographs of the COVID-19 image data collection "
                       "(Cohen et al.), each image under its own licence (Apache 2.0, CC BY 4.0, mostly CC BY-NC-SA 4.0).\n")
    return f"""# Lung segmentation model (chest radiographs, right/left lung) - nmkit issue 18

**Not a medical device. Research use only, non-commercial (see licence).**

## Model
- Network: nmkit `diffusion-unet` (MONAI DiffusionModelUNet layout called at timestep 0), channels {list((16, 32, 64, 64))},
  {'encoder initialised from diffusion checkpoint ' + str(args.pretrained) if args.pretrained else 'trained from scratch'}.
- Input: one grey radiograph (PNG/JPEG/DICOM CR/DX through nmkit.io.radiograph), resized to {args.size}x{args.size},
  percentile normalisation (0.5-99.5 %). Output: 0 background, 1 right lung, 2 left lung (patient's anatomical sides).
- Training: {args.iterations} iterations, batch {args.batch_size}, AdamW lr {args.lr} cosine-decayed, Dice+CE loss, random
  rotation +-10 deg / zoom +-10 % / shift +-4 %, no flips; seed {args.seed}; {seconds / 60:.1f} min on a shared 2-core CPU.

## Training data
- `cxr_lungs`: {n_images} PA chest radiographs of {n_patients} patients with radiologist-drawn lung masks, from the
  COVID-19 Chest X-ray Segmentations Dataset (General Blockchain, masks CC BY 4.0) on images of the COVID-19 Image Data
  Collection (Cohen et al., arXiv:2003.11597). Findings: COVID-19, ARDS, pneumonias and others (see the manifest).
{pretraining}
## Licence
Most training images are **CC BY-NC-SA** (39 of 42 of the source subset; see the `licence` column of the dataset's
manifest.csv). These weights are an adaptation trained on them and **inherit the NonCommercial-ShareAlike terms**:
non-commercial use only; share adaptations under the same licence; attribute the sources above. Do not redistribute
with the nmkit source code.

## Intended use
Research and teaching: lung-field masks on adult PA chest radiographs (e.g. to crop/normalise radiographs, or as a
baseline for few-label studies). Not for diagnosis; not validated on AP supine, paediatric or lateral views, or on
images with large devices, effusions or collapsed lungs beyond what the 30 training images contain.

## Measured performance (patient-level {args.folds}-fold cross-validation of this same recipe)
Dice at the original image resolution; HD95 in {args.size}-grid pixels (1 px = 1/{args.size} of the image side; the PNGs have
no pixel spacing). Mean over both lungs: **{summary['dice_mean']:.3f}** (95 % CI {summary['dice_mean_ci'][0]:.3f}-{summary['dice_mean_ci'][1]:.3f}).

{table}

Use: `nmkit predict BUNDLE radiograph.png --out DIR` (the bundle recommends no test-time flips: a mirrored chest would
swap the lung labels).

Reproduce: `nice -n 19 .venv/bin/python bench/bench_cxr_lung_bundle.py --out {out} --size {args.size} --iterations {args.iterations} --batch-size {args.batch_size}` (nmkit repository).
"""


def main() -> int:
    args = parse()
    import torch

    from nmkit.generate.fewlabel import LUNG_LABELS, evaluate, load_pairs, mean_ci, patient_folds, train_one

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "cv").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    items = load_pairs(args.data, args.size)
    folds = patient_folds([i.patient for i in items], args.folds, args.seed)
    print(f"{len(items)} images, {len({i.patient for i in items})} patients, loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    n_classes = 1 + max(LUNG_LABELS)
    for k in range(args.folds):
        path = out / "cv" / f"fold{k}.csv"
        if path.exists():
            print(f"fold {k}: done before ({path})", flush=True)
            continue
        train = [i for i, f in zip(items, folds) if f != k]
        test = [i for i, f in zip(items, folds) if f == k]
        model, seconds = train_one(train, args.size, n_classes, args.iterations, args.seed, checkpoint=args.pretrained,
                                   batch_size=args.batch_size, learning_rate=args.lr)
        from safetensors.torch import save_file

        save_file({n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}, str(out / "cv" / f"fold{k}.safetensors"))
        rows = pd.DataFrame(evaluate(model, test, args.size))
        rows.insert(0, "fold", k)
        rows["train_seconds"] = seconds
        rows.to_csv(path, index=False)
        print(f"fold {k}: train {len(train)} / test {len(test)} images, {seconds:.0f} s, Dice right {rows.dice_right_lung.mean():.3f} "
              f"left {rows.dice_left_lung.mean():.3f}", flush=True)
    cases = pd.concat([pd.read_csv(out / "cv" / f"fold{k}.csv", dtype={"patient": str}) for k in range(args.folds)])
    cases.to_csv(out / "cv_cases.csv", index=False)
    per_fold, table = summarise(cases, args.size)
    m, lo, hi = mean_ci(cases.dice_mean.to_numpy())
    summary = {"dice_mean": m, "dice_mean_ci": [lo, hi], "dice_right_lung": float(cases.dice_right_lung.mean()),
               "dice_left_lung": float(cases.dice_left_lung.mean()), "folds": args.folds, "iterations": args.iterations,
               "batch_size": args.batch_size, "size": args.size, "cv_train_seconds": float(cases.groupby("fold").train_seconds.first().sum()),
               "acceptance_dice_ge_0.93": bool(m >= 0.93)}
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "cv_table.md").write_text(table + "\n")
    print(table, flush=True)
    print(json.dumps(summary), flush=True)
    if args.skip_full:
        return 0
    if args.card_only:
        card = out / "bundle" / "MODEL_CARD.md"
        seconds = json.loads((out / "bundle" / "bundle.json").read_text())["training_data"].get("train_seconds", float("nan"))
        card.write_text(model_card(out, args, table, summary, len(items), len({i.patient for i in items}), seconds))
        print(f"rewrote {card}")
        return 0
    from nmkit.segment.bundle import load_bundle, write_bundle
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig

    model, seconds = train_one(items, args.size, n_classes, args.iterations, args.seed, checkpoint=args.pretrained,
                               batch_size=args.batch_size, learning_rate=args.lr)
    config = TrainConfig(network="diffusion-unet", network_options={"channels": [16, 32, 64, 64]}, batch_size=args.batch_size,
                         learning_rate=args.lr, seed=args.seed, count_reduction=None, flip_axes=(), labels=dict(LUNG_LABELS),
                         pretrained_diffusion=args.pretrained)
    prep = Preprocessing(normalisation="percentile", target_size=(args.size, args.size))
    bundle = out / "bundle"
    write_bundle(bundle, model, config, prep, validation={"cv": summary, "cv_table_markdown": table},
                 data_summary={"dataset": "cxr_lungs", "n_images": len(items), "n_patients": len({i.patient for i in items}),
                               "licence": "mostly CC BY-NC-SA: weights inherit non-commercial terms", "iterations": args.iterations,
                               "train_seconds": seconds},
                 name="cxr-lungs-diffusion-unet")
    description = json.loads((bundle / "bundle.json").read_text())  # no test-time flips: labels 1/2 are the patient's sides
    description["postprocessing"] = {"flips": [], "keep_largest": False, "fill_holes": False}
    (bundle / "bundle.json").write_text(json.dumps(description, indent=2))
    (bundle / "MODEL_CARD.md").write_text(model_card(out, args, table, summary, len(items), len({i.patient for i in items}), seconds))
    loaded = load_bundle(bundle, device="cpu")  # the bundle rebuilds the same network: same logits on one image
    x = torch.rand(1, 1, args.size, args.size)
    same = torch.allclose(loaded.model(x), model.cpu()(x), atol=1e-5)
    print(f"bundle written to {bundle} (full-data training {seconds:.0f} s; reloaded network gives identical output: {same})", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
