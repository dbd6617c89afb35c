"""Acceptance on real PET: SUV-threshold masks vs the expert GTV of the 3 soft-tissue-sarcoma patients (TCIA, CC BY 3.0).

The threshold mask is the connected component (26-connectivity) containing the SUV maximum, among voxels with
SUV >= threshold inside the GTV bounding box grown by 2 voxels; thresholds: absolute SUV 2.5 and 41% of SUVmax
(both common in PET oncology). Dice and HD95 must equal DeepMind's surface-distance values on the file's real,
anisotropic spacing, and be clinically plausible.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import need
from nmkit.io.image import Mask
from nmkit.io.volume_files import read_label_map, read_volume
from nmkit.metrics.evaluate import evaluate_pair

sd = pytest.importorskip("surface_distance")

NIFTI = "pet_sts/sts_images_flat/nifti"


def threshold_mask(suv: np.ndarray, gtv: np.ndarray, threshold: float | None, relative: float = 0.41) -> np.ndarray:
    """SUV-threshold segmentation restricted to the component holding the SUV peak near the GTV."""
    box = np.zeros_like(gtv)
    found = ndimage.find_objects(gtv.astype(np.int32))[0]
    box[tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in found)] = True
    suv_box = np.where(box, suv, -np.inf)
    peak = np.unravel_index(np.argmax(suv_box), suv.shape)
    level = threshold if threshold is not None else relative * suv_box[peak]
    labels, _ = ndimage.label(suv_box >= level, ndimage.generate_binary_structure(3, 3))
    return labels == labels[peak]


@pytest.mark.external
@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
@pytest.mark.parametrize("threshold", [2.5, None], ids=["suv2.5", "41pct"])
def test_suv_threshold_vs_gtv_matches_surface_distance(external_data, patient, threshold):
    image = read_volume(need(external_data, f"{NIFTI}/{patient}_PET_image.nii.gz"), modality="PT", units="SUV")
    gtv = read_label_map(need(external_data, f"{NIFTI}/{patient}_PET_mask.nii.gz"))
    assert gtv.same_grid(image)
    truth = gtv.binary(1)
    seg = threshold_mask(image.array.astype(float), truth, threshold)
    pred = Mask.like(image, seg, labels={1: "label_1"})

    row = evaluate_pair(pred, gtv, labels=[1], tolerance_mm=5.0)[0]

    ref = sd.compute_surface_distances(truth, seg, list(image.spacing[::-1]))
    assert row["dice"] == pytest.approx(sd.compute_dice_coefficient(truth, seg), rel=1e-12)
    assert row["hd95_mm"] == pytest.approx(sd.compute_robust_hausdorff(ref, 95), rel=1e-9)
    assert row["hd_mm"] == pytest.approx(sd.compute_robust_hausdorff(ref, 100), rel=1e-9)
    assert row["nsd"] == pytest.approx(sd.compute_surface_dice_at_tolerance(ref, 5.0), rel=1e-9)
    msd_tp, msd_pt = sd.compute_average_surface_distance(ref)
    assert row["msd_truth_to_pred_mm"] == pytest.approx(msd_tp, rel=1e-9)
    assert row["msd_pred_to_truth_mm"] == pytest.approx(msd_pt, rel=1e-9)
    # plausible agreement between a threshold and an expert contour of a sarcoma on 3-5 mm PET voxels
    assert 0.3 < row["dice"] < 0.95
    assert 3.0 < row["hd95_mm"] < 40.0
    assert row["volume_truth_ml"] == pytest.approx(truth.sum() * np.prod(image.spacing) / 1000)
