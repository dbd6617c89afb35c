"""IBSI processing steps on small synthetic images where the right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from nmkit.errors import InputError
from nmkit.io.image import Image, Mask
from nmkit.radiomics.config import Discretisation, RadiomicsConfig
from nmkit.radiomics.preprocess import _axis_grid, discretise, process, resegment


def test_interpolation_grid_is_centre_aligned():
    # 60 slices of 3 mm -> ceil(180 / 2) = 90 slices of 2 mm; grid centres coincide
    g = _axis_grid(60, 3.0, 2.0)
    assert len(g) == 90
    assert g.mean() == pytest.approx((60 - 1) / 2)
    assert np.diff(g) == pytest.approx(np.full(89, 2 / 3))
    # 204 x 0.977 mm -> ceil(99.65) = 100 voxels (IBSI CT phantom)
    assert len(_axis_grid(204, 0.977, 2.0)) == 100
    assert np.array_equal(_axis_grid(5, 2.0, None), np.arange(5))


def _ramp_image(shape=(12, 14, 16), spacing=(1.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0)):
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    arr = 3.0 * x + 2.0 * y + 1.0 * z  # linear: trilinear interpolation is exact
    img = Image(arr, spacing=spacing, origin=origin)
    m = np.zeros(shape, np.uint8)
    m[3:9, 4:10, 5:12] = 1
    return img, Mask.like(img, m)


def test_trilinear_resampling_is_exact_on_linear_image_and_keeps_geometry():
    img, mask = _ramp_image()
    cfg = RadiomicsConfig(new_spacing=(1.5, 1.5, 1.5), image_interpolation="linear")
    roi = process(img, mask, cfg)
    assert roi.spacing == (1.5, 1.5, 1.5)
    # every resampled voxel value equals the linear function at its physical position
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in roi.image.shape], indexing="ij")
    phys = np.stack([ii, jj, kk], -1) * 1.5 + np.asarray(roi.origin)
    old_idx = img.physical_to_index(phys)
    expected = 3 * old_idx[..., 0] + 2 * old_idx[..., 1] + old_idx[..., 2]
    inside = (old_idx >= 0).all(-1) & (old_idx <= np.array(img.size) - 1).all(-1)
    np.testing.assert_allclose(roi.image[inside], expected[inside], atol=1e-9)
    # the ROI keeps its physical volume approximately (252 mm^3 -> whole 1.5 mm voxels)
    assert roi.morph_mask.sum() * 1.5 ** 3 == pytest.approx(252, rel=0.3)


def test_in_plane_resampling_keeps_slices():
    img, mask = _ramp_image(spacing=(0.8, 0.8, 3.0))
    roi = process(img, mask, RadiomicsConfig(new_spacing=(2.0, 2.0, None)))
    assert roi.spacing == (2.0, 2.0, 3.0)
    assert roi.morph_mask.any(axis=(1, 2)).sum() == 6  # the six ROI slices survive unchanged


def test_resegmentation_changes_only_intensity_mask():
    img = np.array([[[-1200.0, -50.0, 10.0, 20.0, 30.0, 500.0]]])
    morph = np.ones_like(img, bool)
    im = resegment(img, morph, (-1000, 400), None)
    assert im.tolist() == [[[False, True, True, True, True, False]]]
    assert morph.all()
    vals = np.r_[np.full(50, 10.0), 1000.0]  # one outlier far beyond 3 SD
    im = resegment(vals.reshape(1, 1, -1), np.ones((1, 1, 51), bool), None, 3.0)
    assert im.sum() == 50 and not im[0, 0, -1]


def test_discretisation_fbs_and_fbn():
    x = np.array([-1000.0, -976.0, -975.0, 0.0, 399.0])
    lv, ng = discretise(x, Discretisation(method="FBS", bin_width=25), reseg_range=(-1000, 400))
    assert lv.tolist() == [1, 1, 2, 41, 56] and ng == 56
    lv, ng = discretise(np.array([0.0, 0.5, 1.0, 2.0]), Discretisation(method="FBN", n_bins=4))
    assert lv.tolist() == [1, 2, 3, 4] and ng == 4  # maximum maps to the top bin


def test_bad_inputs_are_clear_errors(tmp_path):
    img, mask = _ramp_image()
    with pytest.raises(InputError, match="empty"):
        process(img, Mask.like(img, np.zeros(img.array.shape, np.uint8)), RadiomicsConfig())
    with pytest.raises(InputError, match="re-segmentation"):
        process(img, mask, RadiomicsConfig(reseg_range=(1e6, None)))
    with pytest.raises(InputError, match="unknown radiomics config keys"):
        RadiomicsConfig.from_dict({"bin_count": 3})
    with pytest.raises(InputError, match="FBS"):
        Discretisation(method="FBS")


def test_presets_and_user_yaml(tmp_path):
    from nmkit.radiomics.presets import available_presets, load_config

    assert {"ibsi-a", "ibsi-b", "ibsi-c", "ibsi-d", "ibsi-e", "ibsi-digital-phantom", "lifex-pet"} <= set(available_presets())
    c = load_config("IBSI_C")
    assert c.new_spacing == (2.0, 2.0, 2.0) and c.reseg_range == (-1000.0, 400.0)
    assert c.discretisation.method == "FBS" and c.ivh.bin_width == 2.5
    e = load_config("ibsi-e")
    assert e.image_interpolation == "cubic" and e.outlier_sigma == 3 and e.ivh.n_bins == 1000
    user = tmp_path / "pet.yaml"
    user.write_text("base: lifex-pet\nname: my-pet\ndiscretisation: {method: FBN, n_bins: 64}\n")
    u = load_config(user)
    assert u.name == "my-pet" and u.discretisation.n_bins == 64 and u.new_spacing == (2.0, 2.0, 2.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(bad)


def test_lifex_pet_preset_on_sarcoma(external_data):
    from conftest import need
    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics.engine import extract

    folder = need(external_data, "pet_sts/sts_images_flat/nifti")
    img = read_volume(folder / "STS_002_PET_image.nii.gz")
    img = img.with_array(img.array.astype(np.float64))
    f = extract(img, read_label_map(folder / "STS_002_PET_mask.nii.gz"), "lifex-pet")
    assert 0 < f["stat_mean"] < f["loc_peak_glob"] <= f["stat_max"]
    assert f["ih_max"] <= np.ceil(f["stat_max"] / 0.3125)  # FBS 20/64 SUV bins from 0
    assert 0 < f["ivh_v10"] <= 1 and f["ivh_i10"] >= f["ivh_i90"]
    assert "cm_contrast_3D_avg" in f


# ----- fast paths vs their definitions -----------------------------------------------------------------------

def test_separable_trilinear_equals_map_coordinates_including_outside_points():
    from scipy import ndimage

    from nmkit.radiomics.preprocess import _trilinear

    rng = np.random.default_rng(3)
    a = rng.normal(size=(7, 9, 11)) * 100
    # coordinates before, inside and beyond each axis ('nearest' edge extension), non-uniform
    coords = [np.sort(rng.uniform(-1.5, n + 0.5, size=k)) for n, k in zip(a.shape, (6, 13, 8))]
    mesh = np.meshgrid(*coords, indexing="ij")
    expected = ndimage.map_coordinates(a, mesh, order=1, mode="nearest")
    got = _trilinear(a, coords)
    assert got.shape == (6, 13, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # integer coordinates are plain indexing (no weights at all)
    ints = [np.array([0, 2, 5]), np.arange(9), np.array([10, 3])]
    assert np.array_equal(_trilinear(a, ints), a[np.ix_(*ints)])


def test_separable_tricubic_equals_map_coordinates_with_prefilter():
    from scipy import ndimage

    from nmkit.radiomics.preprocess import _tricubic

    rng = np.random.default_rng(4)
    a = rng.normal(size=(8, 10, 9)) * 50 + np.arange(9) * 7.0
    # the IBSI grid reaches up to half a new voxel beyond the old edge voxels: test a little past both ends
    coords = [np.sort(rng.uniform(-0.9, n - 0.1, size=k)) for n, k in zip(a.shape, (5, 11, 7))]
    expected = ndimage.map_coordinates(a, np.meshgrid(*coords, indexing="ij"), order=3, mode="nearest",
                                       prefilter=True)
    np.testing.assert_allclose(_tricubic(a, coords), expected, rtol=0, atol=1e-10)


def _brute_pair_sum(a, b, spacing_zyx):
    """sum_ij a_i b_j / |r_i - r_j| over all voxel pairs i != j (O(N^2))."""
    pos = np.argwhere(np.ones(a.shape, bool)) * np.asarray(spacing_zyx)
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(a.ravel() @ (1.0 / d) @ b.ravel())


def test_kernel_pair_sums_equal_the_double_sum_over_voxel_pairs():
    from nmkit.radiomics._fft import even_fast_len, kernel_pair_sums
    from nmkit.radiomics.morphology import _inverse_distance_octant

    rng = np.random.default_rng(5)
    shape, sp = (5, 7, 6), np.array([3.0, 0.8, 1.1])  # anisotropic, odd and even sizes
    a, b = rng.normal(size=shape), rng.uniform(size=shape)
    k, size = _inverse_distance_octant(shape, sp)
    # the smallest even grid with every voxel offset (|d| <= n - 1) within half of it: here exactly 2 (n - 1)
    assert size == tuple(even_fast_len(2 * n - 2) for n in shape) == (8, 12, 10)
    got = kernel_pair_sums([a, b], [(0, 0), (0, 1), (1, 1)], k, size, block_bytes=1)  # one frequency per block
    for (i, j), g in zip([(0, 0), (0, 1), (1, 1)], got):
        assert g == pytest.approx(_brute_pair_sum([a, b][i], [a, b][j], sp), rel=1e-11)


def test_moran_and_geary_equal_their_definitions_on_an_irregular_roi():
    from nmkit.radiomics.morphology import moran_geary

    rng = np.random.default_rng(11)
    shape, sp_xyz = (6, 8, 7), (1.2, 0.9, 2.5)
    mask = rng.uniform(size=shape) < 0.6
    img = rng.normal(50, 20, size=shape) + 3.0 * np.arange(shape[2])  # a gradient: positive autocorrelation
    moran, geary = moran_geary(img, mask, sp_xyz)
    pos = np.argwhere(mask) * np.array(sp_xyz[::-1])
    x = img[mask]
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    w = 1.0 / d
    dev = x - x.mean()
    n = len(x)
    moran_ref = n / w.sum() * (dev @ w @ dev) / (dev @ dev)
    geary_ref = (n - 1) * (w * (x[:, None] - x[None]) ** 2).sum() / (2 * w.sum() * (dev @ dev))
    assert moran == pytest.approx(moran_ref, rel=1e-10)
    assert geary == pytest.approx(geary_ref, rel=1e-10)
    assert moran > 0 and geary < 1  # the gradient is positively autocorrelated


def test_sphere_means_at_mask_equal_full_local_mean_inside_and_at_the_border():
    from nmkit.radiomics.local_intensity import local_mean, sphere_kernel, sphere_means_at

    rng = np.random.default_rng(2)
    img = rng.normal(100, 30, size=(14, 16, 15))
    sp = (2.0, 2.0, 2.0)
    full = local_mean(img, sp)
    inner = np.zeros(img.shape, bool)
    inner[6:9, 7:10, 6:9] = True  # spheres fully inside the image: divisor = kernel size
    border = inner.copy()
    border[0, 0, :3] = True  # spheres cut by the image border: divisor counted
    for where in (inner, border):
        np.testing.assert_allclose(sphere_means_at(img, where, sp), full[where], rtol=1e-12)
    # definition at one border voxel: mean over image voxels within 6.2 mm
    k = sphere_kernel(sp)
    h = [s // 2 for s in k.shape]
    vals = [img[z, y, x] for z, y, x in np.argwhere(k) - h + [0, 0, 1]
            if 0 <= z < 14 and 0 <= y < 16 and 0 <= x < 15]
    assert full[0, 0, 1] == pytest.approx(np.mean(vals), rel=1e-12)


def test_index_covariance_and_mesh_crop_match_direct_computation():
    from nmkit.radiomics.morphology import _index_covariance, mesh, mesh_volume_area

    z, y, x = np.meshgrid(np.arange(20), np.arange(22), np.arange(24), indexing="ij")
    ball = ((z - 9.3) / 6) ** 2 + ((y - 11) / 8) ** 2 + ((x - 12.4) / 5) ** 2 <= 1  # an ellipsoid off-centre
    np.testing.assert_allclose(_index_covariance(ball), np.cov(np.argwhere(ball).T), rtol=1e-12, atol=1e-12)
    sp = (0.7, 1.0, 2.0)  # x, y, z
    verts, faces = mesh(ball, sp)
    # vertices are in the coordinates of the full array (crop undone): the extent brackets the voxel extent
    idx = np.argwhere(ball) * np.array(sp[::-1])
    assert np.all(verts.min(0) < idx.min(0)) and np.all(verts.max(0) > idx.max(0))
    assert np.all(verts.min(0) >= idx.min(0) - np.array(sp[::-1]))
    volume, area = mesh_volume_area(verts, faces)
    assert volume == pytest.approx(4 / 3 * np.pi * (6 * 2.0) * (8 * 1.0) * (5 * 0.7), rel=0.08)
    assert volume == pytest.approx(ball.sum() * np.prod(sp), rel=0.08)


def test_mesh_free_volume_area_and_hull_equal_those_of_the_marching_cubes_mesh():
    from scipy import ndimage
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    from nmkit.radiomics.morphology import _hull_points, mask_volume_area, mesh, mesh_volume_area

    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(np.arange(20), np.arange(22), np.arange(24), indexing="ij")
    ellipsoid = ((z - 9.3) / 6) ** 2 + ((y - 11) / 8) ** 2 + ((x - 12.4) / 5) ** 2 <= 1
    # an irregular ROI with holes, thin bridges and single-voxel parts: every kind of 2x2x2 corner pattern,
    # including the ambiguous ones, and a ROI touching the array border
    blobs = ndimage.gaussian_filter(rng.normal(size=(14, 16, 15)), 1.0) > 0.1
    for roi, sp in ((ellipsoid, (0.7, 1.0, 2.0)), (blobs, (1.3, 0.9, 2.5)), (blobs[:1], (2.0, 2.0, 2.0))):
        verts, faces = mesh(roi, sp)
        volume, area = mesh_volume_area(verts, faces)
        assert mask_volume_area(roi, sp) == pytest.approx((volume, area), rel=1e-12)
        sp_zyx = np.array(sp[::-1])
        points = _hull_points(roi, sp_zyx)
        assert len(points) < len(verts)
        full, fast = ConvexHull(verts), ConvexHull(points)
        assert (fast.volume, fast.area) == pytest.approx((full.volume, full.area), rel=1e-12)
        assert pdist(points[fast.vertices]).max() == pytest.approx(pdist(verts[full.vertices]).max(), rel=1e-12)


def test_statistics_from_sorted_values_equal_numpy_percentiles():
    from nmkit.radiomics.intensity import _sorted_percentiles, histogram_features, statistics_features

    rng = np.random.default_rng(11)
    for x in (rng.normal(size=1001) * 40.0, np.round(rng.gamma(2.0, 30.0, size=64)), np.array([3.0])):
        qs = (10, 25, 50, 75, 90)
        np.testing.assert_allclose(_sorted_percentiles(np.sort(x), qs), np.percentile(x, qs), rtol=1e-15, atol=0)
        f = statistics_features(x)
        p10, p90 = np.percentile(x, [10, 90])
        robust = x[(x >= p10) & (x <= p90)]
        assert f["stat_rmad"] == pytest.approx(np.abs(robust - robust.mean()).mean(), rel=1e-12, abs=1e-12)
        assert f["stat_iqr"] == pytest.approx(np.subtract(*np.percentile(x, [75, 25])), abs=1e-12)
        assert statistics_features(x, np.sort(x)) == f
    lv = rng.integers(1, 9, size=500)
    assert histogram_features(lv, 8, np.sort(lv)) == histogram_features(lv, 8)


def test_kernel_caches_stay_within_their_budget_and_are_read_only():
    from nmkit.radiomics._fft import ArrayCache, scratch

    cache = ArrayCache(max_bytes=3 * 800)
    made = []
    for key in range(5):  # 800 bytes each: at most three kept, the oldest dropped first
        value = cache.get(key, lambda: (made.append(key) or np.zeros(100),))
        assert not value[0].flags.writeable
    assert sorted(cache._items) == [2, 3, 4] and cache._bytes() <= cache.max_bytes
    cache.get(4, lambda: pytest.fail("a kept entry is computed again"))
    assert cache.get("big", lambda: (np.zeros(1000),))[0].size == 1000 and "big" not in cache._items
    a = scratch("test", (3, 4), np.complex128)
    b = scratch("test", (2, 2), np.complex128)  # reused: same memory, no new allocation
    assert a.shape == (3, 4) and b.shape == (2, 2) and np.shares_memory(a, b)
