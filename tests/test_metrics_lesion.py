"""Lesion-wise metrics: detection precision/recall/F1 and autoPET false-positive / false-negative volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nmkit.metrics.lesion import label_components, lesion_metrics

SPACING = (2.0, 2.0, 3.0)  # typical PET voxel: 12 ul
VOXEL_ML = 2.0 * 2.0 * 3.0 / 1000


def sphere(shape, centre, radius):
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def scene():
    """Four true lesions; prediction finds two well, one barely (tiny overlap), misses one, adds two false ones."""
    shape = (40, 48, 48)
    t = [sphere(shape, (10, 10, 10), 4), sphere(shape, (10, 35, 35), 3), sphere(shape, (30, 12, 36), 3), sphere(shape, (30, 36, 10), 2)]
    p = [sphere(shape, (11, 10, 10), 4), sphere(shape, (10, 35, 36), 3),
         sphere(shape, (30, 12, 41), 3),  # grazes true lesion 3 (small overlap)
         sphere(shape, (20, 24, 24), 3), sphere(shape, (36, 40, 40), 1)]  # false positives
    return np.logical_or.reduce(p), np.logical_or.reduce(t), t, p


def autopet_fp_fn_voxels(truth, pred, connectivity_rank):
    """The autoPET challenge loop (per component, 'shares no voxel' rule), written plainly as a reference."""
    structure = ndimage.generate_binary_structure(3, connectivity_rank)
    lab_p, n_p = ndimage.label(pred, structure)
    lab_t, n_t = ndimage.label(truth, structure)
    fp = sum(int((lab_p == i).sum()) for i in range(1, n_p + 1) if not (truth[lab_p == i]).any())
    fn = sum(int((lab_t == j).sum()) for j in range(1, n_t + 1) if not (pred[lab_t == j]).any())
    return fp, fn


def test_detection_counts_and_volumes():
    pred, truth, t, p = scene()
    r = lesion_metrics(pred, truth, SPACING)
    s = r.summary
    assert s["n_truth_lesions"] == 4 and s["n_pred_lesions"] == 5
    assert s["tp_lesions"] == 3 and s["fn_lesions"] == 1 and s["fp_lesions"] == 2
    assert s["lesion_recall"] == pytest.approx(3 / 4)
    assert s["lesion_precision"] == pytest.approx(3 / 5)
    assert s["lesion_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert s["missed_share"] == pytest.approx(0.25)
    assert s["fn_volume_ml"] == pytest.approx(t[3].sum() * VOXEL_ML)
    assert s["fp_volume_ml"] == pytest.approx((p[3].sum() + p[4].sum()) * VOXEL_ML)
    assert len(r.truth_lesions) == 4 and len(r.pred_lesions) == 5
    assert sum(row["detected"] for row in r.truth_lesions) == 3
    missed = [row for row in r.truth_lesions if not row["detected"]]
    assert missed[0]["volume_ml"] == pytest.approx(t[3].sum() * VOXEL_ML) and missed[0]["best_dice"] == 0.0


def test_dice_threshold_turns_grazing_hit_into_miss():
    pred, truth, t, p = scene()
    loose = lesion_metrics(pred, truth, SPACING, match="overlap").summary
    strict = lesion_metrics(pred, truth, SPACING, match="dice", threshold=0.5).summary
    assert strict["tp_lesions"] == loose["tp_lesions"] - 1
    assert strict["lesion_precision"] == pytest.approx(2 / 5)
    # FP/FN volumes follow the autoPET "no shared voxel" rule whatever the matching rule
    assert strict["fp_volume_ml"] == loose["fp_volume_ml"] and strict["fn_volume_ml"] == loose["fn_volume_ml"]


@pytest.mark.parametrize("connectivity,rank", [(6, 1), (18, 2), (26, 3)])
def test_fp_fn_volume_equals_autopet_loop_on_noisy_masks(connectivity, rank):
    rng = np.random.default_rng(connectivity)
    truth = ndimage.gaussian_filter(rng.random((24, 32, 32)), 1.2) > 0.56
    pred = ndimage.gaussian_filter(rng.random((24, 32, 32)), 1.2) > 0.56
    fp, fn = autopet_fp_fn_voxels(truth, pred, rank)
    s = lesion_metrics(pred, truth, SPACING, connectivity=connectivity).summary
    assert fp > 0 and fn > 0  # the scene really has false components
    assert s["fp_volume_ml"] == pytest.approx(fp * VOXEL_ML)
    assert s["fn_volume_ml"] == pytest.approx(fn * VOXEL_ML)


def test_connectivity_changes_what_is_one_lesion():
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner neighbours
    assert label_components(m, 26)[1] == 1
    assert label_components(m, 18)[1] == 2
    assert label_components(m, 6)[1] == 2
    with pytest.raises(ValueError):
        label_components(m, 8)
    m2 = np.zeros((4, 4), bool)
    m2[0, 0] = m2[1, 1] = True
    assert label_components(m2)[1] == 1 and label_components(m2, 4)[1] == 2


def test_empty_cases():
    empty = np.zeros((6, 6, 6), bool)
    one = empty.copy()
    one[2:4, 2:4, 2:4] = True
    both = lesion_metrics(empty, empty, SPACING).summary
    assert both["lesion_f1"] == 1.0 and both["fp_volume_ml"] == 0.0 and both["fn_volume_ml"] == 0.0
    miss = lesion_metrics(empty, one, SPACING).summary
    assert miss["lesion_recall"] == 0.0 and miss["lesion_f1"] == 0.0 and miss["fn_volume_ml"] == pytest.approx(8 * VOXEL_ML)
    fp = lesion_metrics(one, empty, SPACING).summary
    assert fp["lesion_precision"] == 0.0 and np.isnan(fp["lesion_recall"]) and fp["fp_volume_ml"] == pytest.approx(8 * VOXEL_ML)
