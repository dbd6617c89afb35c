"""Every `nmkit delineate` method against the expert GTV of the 3 pet_sts patients (FDG-PET, TCIA, CC BY 3.0).

Run: .venv/bin/python bench/bench_delineation.py [DATA_ROOT]  (default ../shared/data). Prints a Markdown table
(Dice, HD95 in mm, volume ratio = delineated / GTV volume); the same table is checked by
tests/test_petwb_delineate.py (nmkit.petwb.bench.delineation_table).

Setup, per patient: the PET read from DICOM in SUVbw; the search VOI is the whole crop; per-lesion methods (rel41,
rel50, adaptive, grow) are seeded by the GTV's bounding box dilated by 10 mm; global methods (suv2.5, suv4.0,
percist) delineate the whole crop and every lesion they find is compared (union) with the GTV; "matched" columns
keep only the lesions that overlap the GTV. The crops hold no
liver, so the percist threshold uses an ASSUMED typical FDG liver SUV of 2.0 +- 0.3 (threshold 3.6), stated here
and in the table. Minimum lesion volume 0.5 ml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nmkit.petwb.bench import delineation_table  # noqa: E402


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    table = delineation_table(data)
    print("| patient | method | Dice | HD95 (mm) | volume ratio | lesions | Dice matched | HD95 matched (mm) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        print(f"| {r.patient} | {r.method} | {r.dice:.3f} | {r.hd95_mm:.1f} | {r.volume_ratio:.2f} | {r.lesions} | "
              f"{r.dice_matched:.3f} | {r.hd95_matched_mm:.1f} |")
    cols = ["dice", "hd95_mm", "volume_ratio", "dice_matched", "hd95_matched_mm"]
    mean = table.groupby("method", sort=False)[cols].mean()
    print("\nmean over the 3 patients:\n")
    print("| method | Dice | HD95 (mm) | volume ratio | Dice matched | HD95 matched (mm) |")
    print("|---|---|---|---|---|---|")
    for m, r in mean.iterrows():
        print(f"| {m} | {r.dice:.3f} | {r.hd95_mm:.1f} | {r.volume_ratio:.2f} | {r.dice_matched:.3f} | {r.hd95_matched_mm:.1f} |")
    assert np.isfinite(table[["dice", "hd95_mm", "volume_ratio"]].to_numpy()).all()


if __name__ == "__main__":
    main()
