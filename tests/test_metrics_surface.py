"""Surface metrics agree with DeepMind's surface-distance (surfel definition) and MONAI/medpy (voxel definition)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nmkit.errors import GeometryError
from nmkit.io.image import Mask
from nmkit.metrics.surface import _contour_length_table, surface_distances, surface_metrics, weighted_percentile

REL = 1e-9


def deepmind():
    """DeepMind's surface-distance package (test extra); tests comparing with it skip without it."""
    return pytest.importorskip("surface_distance")


def ellipsoid(shape, centre_mm, radii_mm, spacing_xyz):
    """Boolean ellipsoid on a (z, y, x) grid with physical spacing (x, y, z)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    sp = spacing_xyz[::-1]
    acc = 0
    for g, c, r, s in zip(grids, centre_mm[::-1], radii_mm[::-1], sp):
        acc = acc + ((g * s - c) / r) ** 2
    return acc <= 1.0


def blob(shape, seed, fill=0.3, sigma=2.5):
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return field > np.quantile(field, 1 - fill)


def reference(pred, truth, spacing_xyz, tol):
    """All metrics from surface_distance (spacing in array order)."""
    sd = deepmind()
    d = sd.compute_surface_distances(truth, pred, list(spacing_xyz[::-1]))
    a_t, a_p = d["surfel_areas_gt"], d["surfel_areas_pred"]
    assd = (np.sum(d["distances_gt_to_pred"] * a_t) + np.sum(d["distances_pred_to_gt"] * a_p)) / (a_t.sum() + a_p.sum())
    msd_tp, msd_pt = sd.compute_average_surface_distance(d)
    return {
        "hd": sd.compute_robust_hausdorff(d, 100), "hd95": sd.compute_robust_hausdorff(d, 95), "assd": assd,
        "msd_pred_to_truth": msd_pt, "msd_truth_to_pred": msd_tp, "nsd": sd.compute_surface_dice_at_tolerance(d, tol),
    }


CASES_3D = [
    ("spheres", lambda: (ellipsoid((24, 30, 30), (15, 15, 30), (9, 9, 9), (1.0, 1.0, 2.5)),
                         ellipsoid((24, 30, 30), (17, 14, 27), (8, 10, 11), (1.0, 1.0, 2.5))), (1.0, 1.0, 2.5)),
    ("cubes", lambda: (np.pad(np.ones((6, 10, 12), bool), ((4, 6), (5, 5), (3, 7))),
                       np.pad(np.ones((7, 9, 12), bool), ((5, 4), (4, 7), (5, 5)))), (0.7, 1.3, 3.0)),
    ("blobs", lambda: (blob((20, 26, 24), 1), blob((20, 26, 24), 2)), (0.98, 0.98, 2.5)),
    ("touching_border", lambda: (np.pad(np.ones((8, 8, 8), bool), ((0, 6), (3, 3), (0, 4))),
                                 np.pad(np.ones((9, 7, 8), bool), ((0, 5), (2, 5), (2, 2)))), (1.2, 0.8, 2.0)),
]


@pytest.mark.parametrize("name,make,spacing", CASES_3D, ids=[c[0] for c in CASES_3D])
def test_surfel_definition_matches_surface_distance_3d(name, make, spacing):
    pred, truth = make()
    ours = surface_metrics(pred, truth, spacing, tolerance_mm=2.0)
    ref = reference(pred, truth, spacing, 2.0)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=REL, abs=1e-12), key
    assert ours["hd95"] <= ours["hd"]
    assert 0.0 < ours["nsd"] < 1.0


@pytest.mark.parametrize("seed", [3, 4])
def test_surfel_definition_matches_surface_distance_2d(seed):
    spacing = (0.6, 1.7)  # x, y
    pred, truth = blob((48, 40), seed, sigma=2.0), blob((48, 40), seed + 10, sigma=2.0)
    ours = surface_metrics(pred, truth, spacing, tolerance_mm=1.5)
    ref = reference(pred, truth, spacing, 1.5)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, rel=REL, abs=1e-12), key


def test_contour_length_table_equals_surface_distance_table():
    lookup_tables = deepmind().lookup_tables

    for sp in [(1.0, 1.0), (0.5, 2.0), (3.0, 0.7)]:
        np.testing.assert_allclose(_contour_length_table(sp), lookup_tables.create_table_neighbour_code_to_contour_length(sp), rtol=1e-15)


def test_concentric_spheres_give_the_physical_gap():
    # radius 10 mm vs 13 mm, 0.5 mm isotropic voxels: every surface distance is about 3 mm
    inner = ellipsoid((64, 64, 64), (16, 16, 16), (10, 10, 10), (0.5, 0.5, 0.5))
    outer = ellipsoid((64, 64, 64), (16, 16, 16), (13, 13, 13), (0.5, 0.5, 0.5))
    m = surface_metrics(inner, outer, (0.5, 0.5, 0.5), tolerance_mm=1.0)
    assert m["assd"] == pytest.approx(3.0, abs=0.3)
    assert m["hd"] == pytest.approx(3.0, abs=0.5)
    assert m["nsd"] == 0.0
    same = surface_metrics(inner, inner, (0.5, 0.5, 0.5))
    assert same["hd"] == 0.0 and same["assd"] == 0.0 and same["nsd"] == 1.0


def test_spacing_is_physical_xyz_order():
    # a shift of 2 voxels along z (axis 0) with z spacing 3 mm is 6 mm, not 2 mm
    a = np.zeros((20, 12, 12), bool)
    a[5:10, 3:9, 3:9] = True
    b = np.roll(a, 2, axis=0)
    m = surface_metrics(a, b, (1.0, 1.0, 3.0))
    assert m["hd"] == pytest.approx(6.0)


def test_empty_mask_conventions():
    a = np.zeros((10, 10, 10), bool)
    b = a.copy()
    b[3:6, 3:6, 3:6] = True
    both = surface_metrics(a, a, (1, 1, 1))
    assert both["hd"] == 0.0 and both["hd95"] == 0.0 and both["assd"] == 0.0 and both["nsd"] == 1.0
    for pred, truth in [(a, b), (b, a)]:
        one = surface_metrics(pred, truth, (1, 1, 1))
        assert np.isinf(one["hd"]) and np.isinf(one["hd95"]) and np.isinf(one["assd"])
        assert one["nsd"] == 0.0


def test_weighted_percentile_uses_weights():
    d = np.array([1.0, 2.0, 3.0, 10.0])
    assert weighted_percentile(d, np.array([1.0, 1.0, 1.0, 1.0]), 95) == 10.0
    # the far point carries only 1% of the area: the 95th percentile falls on the near points
    assert weighted_percentile(d, np.array([33.0, 33.0, 33.0, 1.0]), 95) == 3.0


@pytest.mark.parametrize("name,make,spacing", CASES_3D, ids=[c[0] for c in CASES_3D])
def test_voxel_definition_matches_medpy(name, make, spacing):
    binary = pytest.importorskip("medpy.metric.binary")

    pred, truth = make()
    sdist = surface_distances(pred, truth, spacing, method="voxel")
    axes = spacing[::-1]
    assert sdist.hd() == pytest.approx(binary.hd(pred, truth, voxelspacing=axes), rel=REL)
    assert sdist.hd95_pooled() == pytest.approx(binary.hd95(pred, truth, voxelspacing=axes), rel=REL)
    assert sdist.assd() == pytest.approx(binary.assd(pred, truth, voxelspacing=axes), rel=REL)


def test_voxel_definition_matches_monai():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    compute_average_surface_distance = monai_metrics.compute_average_surface_distance
    compute_hausdorff_distance = monai_metrics.compute_hausdorff_distance

    spacing = (0.98, 0.98, 2.5)
    pred, truth = blob((20, 26, 24), 5), blob((20, 26, 24), 6)
    ours = surface_metrics(pred, truth, spacing, method="voxel")
    t = lambda x: torch.from_numpy(x.astype(np.uint8))[None, None]  # noqa: E731
    axes = list(spacing[::-1])
    hd95 = compute_hausdorff_distance(t(pred), t(truth), percentile=95, spacing=axes).item()
    assd = compute_average_surface_distance(t(pred), t(truth), symmetric=True, spacing=axes).item()
    assert ours["hd95"] == pytest.approx(hd95, rel=1e-6)  # MONAI returns float32
    assert ours["assd"] == pytest.approx(assd, rel=1e-6)


def test_masks_carry_spacing_and_grids_must_match():
    arr_a = blob((16, 20, 20), 7)
    arr_b = blob((16, 20, 20), 8)
    ma = Mask(array=arr_a, spacing=(0.8, 0.8, 2.0))
    mb = Mask(array=arr_b, spacing=(0.8, 0.8, 2.0))
    assert surface_metrics(ma, mb) == surface_metrics(arr_a, arr_b, (0.8, 0.8, 2.0))
    moved = Mask(array=arr_b, spacing=(0.8, 0.8, 2.0), origin=(5.0, 0.0, 0.0))
    with pytest.raises(GeometryError):
        surface_metrics(ma, moved)
    with pytest.raises(GeometryError):
        surface_metrics(arr_a, arr_b)  # no spacing
    with pytest.raises(GeometryError):
        surface_metrics(arr_a, arr_b, (1.0, 1.0))  # wrong length


@pytest.mark.parametrize("density", [0.3, 0.02])
@pytest.mark.parametrize("spacing_axes", [(2.5, 0.98, 0.7), (5.0, 0.5, 0.5), (1.0, 1.0, 1.0)])
def test_nearest_distances_equal_brute_force(density, spacing_axes):
    """The local grid search + KD-tree give exactly the brute-force nearest distances (near and far targets)."""
    from nmkit.metrics.surface import _nearest_distances

    rng = np.random.default_rng(int(density * 100))
    spacing_axes = np.array(spacing_axes)
    grid = rng.random((12, 20, 20)) < density
    targets = np.argwhere(grid)
    queries = np.argwhere(rng.random((12, 20, 20)) < 0.05)
    delta = (queries[:, None, :] - targets[None, :, :]) * spacing_axes
    brute = np.sqrt((delta**2).sum(axis=2)).min(axis=1)
    on = grid[tuple(queries.T)]
    ours = _nearest_distances(queries, targets, spacing_axes, on)
    np.testing.assert_allclose(ours, brute, rtol=1e-12, atol=0)


def test_same_values_without_pykdtree(monkeypatch):
    import sys

    pred, truth = blob((20, 26, 24), 11), np.roll(blob((20, 26, 24), 11), 4, axis=2)
    with_default = surface_metrics(pred, truth, (0.98, 0.98, 2.5), tolerance_mm=2.0)
    monkeypatch.setitem(sys.modules, "pykdtree.kdtree", None)  # import now fails: SciPy's cKDTree is used
    fallback = surface_metrics(pred, truth, (0.98, 0.98, 2.5), tolerance_mm=2.0)
    assert fallback == with_default
