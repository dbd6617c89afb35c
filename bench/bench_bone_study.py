"""The expert-mimicking study in 3D (issue 23 item 4): own engine vs nnU-Net on nmkit's bone SPECT/CT cohort, CPU scale.

Steps, each an ``nmkit`` command (printed, so they can be rerun by hand):
1. ``nmkit phantom bone-spect``: simulated Tc-99m bone SPECT/CT patients with 1-4 lesions each (truth masks);
2. a case table of the OSEM reconstructions (Bq/ml DICOM) with each patient's lesions as one binary label map
   ``lesion`` (the truth's lesion labels 10+ merged), split by patient into train/val/test;
3. ``nmkit train`` (own engine, 3D U-Net) and ``nmkit train --engine nnunet`` on the same table;
4. ``nmkit predict`` of both on the test split; ``nmkit evaluate --lesions`` of both against the truth;
5. ``nmkit study compare --evaluations own=... nnunet=...`` (= ``nmkit study evaluations``): mean Dice, HD95 (mm) and lesion-wise F1 with 95 % bootstrap CIs
   over test patients (the percentile bootstrap of ``study compare``), and the paired difference own - nnU-Net with
   its CI (``--out``/compare/evaluations.csv and .png).

CPU scale (minutes, not a result to quote for accuracy): a handful of patients, a few epochs. Run:
    nice -n 19 .venv/bin/python bench/bench_bone_study.py --out /tmp/bone_study [--patients 10] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def nmkit(*args: str) -> float:
    """Run one ``nmkit`` command (printed); returns its wall time in s; stops on failure."""
    command = [sys.executable, "-m", "nmkit", *args]
    print("$ nmkit " + " ".join(args), flush=True)
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-3000:]}")
    return time.time() - start


def lesion_table(cohort: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Case table of the OSEM SPECT images with one binary lesion label map each; test truths in ``out/truth_test``."""
    import pandas as pd

    from nmkit.dataset import MaskRef, new_table, write_dataset
    from nmkit.io.volume_files import read_volume, write_volume

    cases = pd.read_csv(cohort / "cases.csv")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cases))
    n_test = max(2, len(cases) // 4)
    n_val = max(1, len(cases) // 5)
    split = {int(i): ("test" if r < n_test else "val" if r < n_test + n_val else "train") for r, i in enumerate(order)}
    lesions_dir, truth_test = out / "lesions", out / "truth_test"
    lesions_dir.mkdir(parents=True, exist_ok=True)
    truth_test.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, case in enumerate(cases.itertuples()):
        masks = read_volume(cohort / case.truth_masks)
        lesion = masks.with_array((masks.array >= 10).astype(np.uint8))
        path = write_volume(lesion, lesions_dir / f"{case.case_id}.nii.gz")
        if split[i] == "test":
            write_volume(lesion, truth_test / f"{case.case_id}.nii.gz")
        rows.append({"case_id": case.case_id, "patient_id": case.case_id, "modality": "PT", "series_description": "OSEM",
                     "image": str(cohort / case.osem_pt_dir), "masks": [MaskRef(str(path), "labelmap", label=1, structure="lesion")],
                     "split": split[i]})
    write_dataset(new_table(rows), out / "lesions.csv", {"producer": "bench_bone_study"})
    return out / "lesions.csv", truth_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="work folder")
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--matrix", type=int, default=64, help="SPECT matrix (voxel size scaled to keep the field of view)")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per epoch (both engines)")
    parser.add_argument("--size", type=int, nargs=3, default=(32, 32, 32), help="own engine patch (z y x)")
    parser.add_argument("--width", type=int, default=8, help="own engine network width")
    parser.add_argument("--engines", nargs="+", default=["own", "nnunet"], choices=("own", "nnunet"))
    parser.add_argument("--nnunet-epochs", type=int, default=None, help="nnU-Net epochs (default: --epochs; an nnU-Net "
                                                                         "iteration costs several own-engine ones on a CPU)")
    parser.add_argument("--reuse", action="store_true", help="reuse an engine's evaluation already in --out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cohort = out / "cohort"
    if not (cohort / "cases.csv").exists():
        voxel = 4.42 * 128 / args.matrix
        timings["phantom_s"] = nmkit("phantom", "bone-spect", "--out", str(cohort), "--n", str(args.patients), "--matrix", str(args.matrix),
                                     "--slices", str(args.slices), "--voxel-mm", f"{voxel:.3f}", "--views", "60", "--device", "cpu")
    table, truth_test = lesion_table(cohort, out)
    common = ["--labels", "1=lesion", "--epochs", str(args.epochs), "--iterations", str(args.iterations), "--device", "cpu"]
    per_case = {}
    import pandas as pd

    for engine in args.engines:
        bundle = out / f"bundle_{engine}"
        evaluation = out / f"eval_{engine}.csv"
        if args.reuse and evaluation.exists():
            print(f"reusing {evaluation}")
            per_case[engine] = pd.read_csv(evaluation)
            continue
        if engine == "own":
            timings["train_own_s"] = nmkit("train", str(table), "--out", str(bundle), "--dims", "3", "--size", *map(str, args.size),
                                           "--network", "unet", "--width", str(args.width), "--normalisation", "zscore",
                                           "--loss", "dice-ce", "--batch-size", "2", *common)
        else:
            epochs = str(args.nnunet_epochs or args.epochs)
            timings["train_nnunet_s"] = nmkit("train", "--engine", "nnunet", str(table), "--out", str(bundle), "--val-iterations", "1",
                                              "--threads", "2", *common[:2], "--epochs", epochs, *common[4:])
        pred = out / f"pred_{engine}"
        timings[f"predict_{engine}_s"] = nmkit("predict", str(bundle), str(table), "--split", "test", "--out", str(pred), "--no-tta",
                                               "--device", "cpu")
        nmkit("evaluate", "--pred", str(pred), "--truth", str(truth_test), "--lesions", "--connectivity", "18", "--out", str(evaluation))
        per_case[engine] = pd.read_csv(evaluation)
    # the comparison itself: `nmkit study evaluations` (means, bootstrap CIs, paired own - nnunet)
    tables = [f"{engine}={out / f'eval_{engine}.csv'}" for engine in per_case]
    reference = ["--reference", "nnunet"] if "nnunet" in per_case else []
    nmkit("study", "compare", "--evaluations", *tables, *reference, "--metrics", "dice", "hd95_mm", "lesion_f1", "--out", str(out / "compare"))
    summary = pd.read_csv(out / "compare" / "evaluations.csv")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))


if __name__ == "__main__":
    main()
