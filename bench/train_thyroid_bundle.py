"""Train the shipped thyroid segmentation bundle on a simulated cohort and check it against the readers.

Reproduces `src/nmkit/data/bundles/thyroid-unet2d` (issue 4 acceptance: a 2D U-Net trained on CPU reaches Dice >= 0.95
against held-out reader masks and sits inside the inter-reader spread). Prints a table: model (or each head) vs each
reader, reader vs reader, the verdict, and the training time.

One network can mimic every reader at once: ``--heads R1 R2 R3 consensus`` gives it one output head per reader (and one
for their majority consensus), each trained on that reader's own masks; the table then shows each head against every
reader, and each head's verdict against the readers' spread.

    .venv/bin/python bench/train_thyroid_bundle.py --cases 2000 --epochs 50 --channels 24 48 96 192 --heads R1 R2 R3 consensus \
        --normalisation peak --threads 2 --seed 101 --out bench/out/thyroid-heads --ship
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--seed", type=int, default=101, help="cohort seed; the demo and tests use other seeds, so their cases are unseen")
    parser.add_argument("--out", default="bench/out/thyroid-bundle")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--init", default=None, help="safetensors weights to continue from (e.g. the shipped bundle's)")
    parser.add_argument("--target", default="consensus", help="training mask: consensus, or one reader (R1, R2, R3) to mimic")
    parser.add_argument("--heads", nargs="+", default=None, help="one output head per reader/consensus (e.g. R1 R2 R3 consensus)")
    parser.add_argument("--count-reduction", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="Poisson thinning range as augmentation (default: none, the readers drew on the full-count image)")
    parser.add_argument("--cohort", default=None, help="reuse this cohort folder when it already holds the cases")
    parser.add_argument("--name", default="thyroid-unet2d")
    parser.add_argument("--normalisation", default="counts", help="counts (Anscombe) or peak (relative to the smoothed maximum)")
    parser.add_argument("--global-context", action="store_true", help="U-Net bottleneck sees image-wide mean/max features")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--version", default="3.0.0", help="bundle version (the server registry upgrades by it)")
    parser.add_argument("--ship", action="store_true", help="copy the bundle into src/nmkit/data/bundles/thyroid-unet2d")
    args = parser.parse_args()

    from nmkit.demo import _evaluate, prepare_thyroid_dataset
    from nmkit.phantoms.cohort import generate_cohort
    from nmkit.segment.bundle import load_bundle
    from nmkit.segment.data import load_split
    from nmkit.segment.infer import predict_image
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = Path(args.cohort) if args.cohort else out / "cohort"
    if not (cohort / "cases.csv").exists() or len(pd.read_csv(cohort / "cases.csv")) != args.cases:
        generate_cohort(cohort, n=args.cases, seed=args.seed, workers=2, progress=True)
    cases, data, manifest = prepare_thyroid_dataset(cohort, out, 3, args.seed, target=args.target)
    prep = Preprocessing(normalisation=args.normalisation, spatial_dims=2, target_size=(args.size, args.size))
    heads = tuple(args.heads) if args.heads else None
    config = TrainConfig(network="unet", network_options={"channels": tuple(args.channels), **({"global_context": True} if args.global_context else {})}, loss="dice-ce", epochs=args.epochs,
                         batch_size=8, learning_rate=args.lr, patience=10, seed=args.seed, labels={1: "thyroid"}, init_weights=args.init,
                         count_reduction=tuple(args.count_reduction) if args.count_reduction else None,
                         num_threads=args.threads, heads=heads)
    train_cases, val_cases = (load_split(manifest, s, heads=heads) for s in ("train", "val"))
    test_cases = load_split(manifest, "test")
    t1 = time.perf_counter()
    if heads:
        target_text = "one head per simulated reader: " + ", ".join(
            "majority consensus of 3 simulated readers" if h == "consensus" else f"simulated reader {h}" for h in heads)
    else:
        target_text = "majority consensus of 3 simulated readers" if args.target == "consensus" else f"simulated reader {args.target}"
    bundle_dir = train(train_cases, val_cases, prep, config, out / args.name, progress=True,
                       data_summary={"cohort": f"nmkit phantom thyroid --n {args.cases} --seed {args.seed}",
                                     "target": target_text, "split": "patient-level 70/15/15"})
    train_seconds = time.perf_counter() - t1
    desc = json.loads((bundle_dir / "bundle.json").read_text())
    # readers outline the gland and fill it (a cold nodule is still gland); averaging a left-right flip steadies the edge
    desc.update(name=args.name, version=args.version, postprocessing={"fill_holes": True, "flips": [-1]})
    (bundle_dir / "bundle.json").write_text(json.dumps(desc, indent=2))
    bundle = load_bundle(bundle_dir, device="cpu")
    readers = ["R1", "R2", "R3"]
    results = {"command": " ".join(sys.argv), "training_seconds": train_seconds, "n_train": len(train_cases),
               "n_test": len(test_cases), "heads": {}}
    print()
    print("| model | " + " | ".join(f"Dice vs {r}" for r in readers + ["consensus"]) + " | HD95 mm vs own | Williams index (95% CI) | inside spread |")
    print("|---" * 8 + "|")
    for head in (bundle.heads or [None]):
        predictions = {c.case_id: predict_image(bundle, c.image, head=head) for c in test_cases}
        (out / "eval" / (head or "model")).mkdir(parents=True, exist_ok=True)
        result = _evaluate(test_cases, predictions, data, readers, out / "eval" / (head or "model"))
        metrics, study = result["metrics"], result["reader_study"]
        means = metrics.groupby("reference")[["dice", "hd95_mm"]].mean()
        own = head if head in readers + ["consensus"] else (args.target if not bundle.heads else "consensus")
        overall = study.overall
        ci = tuple(round(v, 3) for v in overall["williams_index_ci95"])
        print(f"| {head or 'model'} | " + " | ".join(f"{means.loc[r, 'dice']:.4f}" for r in readers + ["consensus"])
              + f" | {means.loc[own, 'hd95_mm']:.2f} | {overall['williams_index_dice']:.3f} {ci} | {study.model_inside} |")
        per_pathology = metrics.assign(pathology=metrics["case"].map(dict(zip(manifest.case_id, manifest.pathology))))
        results["heads"][head or "model"] = {
            "own_reference": own, "dice": {r: float(means.loc[r, "dice"]) for r in means.index},
            "hd95_mm": {r: float(means.loc[r, "hd95_mm"]) for r in means.index},
            "dice_vs_own_by_pathology": per_pathology[per_pathology.reference == own].groupby("pathology").dice.mean().round(4).to_dict(),
            "williams_index": overall["williams_index_dice"], "williams_ci95": list(overall["williams_index_ci95"]),
            "inside_spread": bool(study.model_inside), "model_dice_mean": overall["model_dice_mean"]}
    print(f"\nreader-vs-reader Dice mean {overall['reader_dice_mean']:.4f} (p5 {overall['reader_dice_p5']:.4f})")
    if bundle.heads:
        own = [results["heads"][h]["dice"][h] for h in bundle.heads if h in readers]
        print(f"mean Dice of each reader's head against that reader: {np.mean(own):.4f} ({', '.join(f'{v:.4f}' for v in own)})")
    results["reader_dice_mean"] = overall["reader_dice_mean"]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"training: {len(train_cases)} images, {train_seconds:.0f} s on {desc['validation'].get('device')}; total {time.perf_counter() - t0:.0f} s")
    if args.ship:
        target = Path(__file__).resolve().parents[1] / "src" / "nmkit" / "data" / "bundles" / args.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("bundle.json", "model.safetensors", "training_log.csv", "training_log.png"):
            shutil.copy2(bundle_dir / name, target / name)
        print(f"shipped to {target}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
