"""The pet_sts delineation comparison shared by bench/bench_delineation.py and its test (one code path, so the
table in bench/RESULTS.md is the one the test checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .delineate import METHODS, delineate, seed_regions

PATIENTS = ("STS_001", "STS_002", "STS_003")
#: no liver in the pet_sts crops: an assumed typical FDG liver SUV mean and SD for the percist threshold
ASSUMED_LIVER = (2.0, 0.3)


def compare_one(pet, gtv: np.ndarray, method: str, margin_mm: float = 10.0) -> dict:
    """Dice, HD95 (mm), volume ratio of one method's lesions (union) against the GTV, and Dice/HD95 of the lesions
    that overlap the GTV only."""
    from ..metrics.overlap import dice
    from ..metrics.surface import surface_distances

    seeds = seed_regions(pet, np.ones(gtv.shape, bool), seed_mask=gtv, margin_mm=margin_mm)
    result = delineate(pet, method, seeds=seeds, liver_reference=ASSUMED_LIVER, min_volume_ml=0.5)
    pred = result.labels.array > 0
    sd = surface_distances(pred, gtv, pet.spacing)
    # lesion-matched: only the delineated lesions that overlap the GTV (global methods also find other hot spots)
    hit = [v for v in np.unique(result.labels.array[gtv]) if v]
    matched = np.isin(result.labels.array, hit)
    sd_m = surface_distances(matched, gtv, pet.spacing)
    voxel_ml = pet.voxel_volume / 1000.0
    return {"method": method, "dice": float(dice(pred, gtv)), "hd95_mm": float(sd.hd_percentile(95.0)),
            "volume_ratio": float(pred.sum() / gtv.sum()), "dice_matched": float(dice(matched, gtv)),
            "hd95_matched_mm": float(sd_m.hd_percentile(95.0)), "volume_ml": float(pred.sum() * voxel_ml),
            "gtv_volume_ml": float(gtv.sum() * voxel_ml), "lesions": len(result.lesions)}


def delineation_table(data_root: str | Path, methods=METHODS):
    """One row per patient x method (pandas DataFrame)."""
    import pandas as pd

    from ..io.reader import read_image
    from ..io.volume_files import read_label_map

    root = Path(data_root) / "pet_sts"
    if not root.is_dir():
        raise InputError(root, "pet_sts data folder not found")
    rows = []
    for patient in PATIENTS:
        pet = read_image(root / "sts_images" / patient / "PET" / "dicom" / "image", suv="bw")
        gtv = read_label_map(root / "sts_images_flat" / "nifti" / f"{patient}_PET_mask.nii.gz").array > 0
        for method in methods:
            rows.append({"patient": patient, **compare_one(pet, gtv, method)})
    return pd.DataFrame(rows)
