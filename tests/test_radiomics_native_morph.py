"""The compiled non-texture kernels (nmkit.radiomics._cmorph) against the NumPy path they replace.

Both paths run on the same inputs: random ROIs of several shapes (anisotropic spacing, 1- and 2-voxel ROIs, ROIs
touching the array edge, an intensity mask smaller than the morphological one) and the IBSI CT phantom under
configurations A-E. Integer results (mesh pattern counts, moments, interpolated masks) must be identical, floating
sums equal to round-off (1e-12 relative; Moran/Geary 1e-10, their tolerance against the brute-force sum).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from nmkit.radiomics._native import native
from nmkit.radiomics.preprocess import ProcessedROI


@pytest.fixture
def cm():
    mod = native("_cmorph")
    if mod is None:
        pytest.skip("nmkit.radiomics._cmorph is not built (or NMKIT_NO_NATIVE is set)")
    return mod


def numpy_path(monkeypatch, fn, *args, **kw):
    """``fn(*args, **kw)`` with the compiled modules disabled (the NumPy fallback)."""
    with monkeypatch.context() as m:
        m.setenv("NMKIT_NO_NATIVE", "1")
        assert native("_cmorph") is None
        return fn(*args, **kw)


def assert_same_features(a: dict, b: dict, rel: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for k in a:
        tol = 1e-10 if k in ("morph_moran_i", "morph_geary_c") else rel
        if isinstance(b[k], float) and math.isnan(b[k]):
            assert math.isnan(a[k]), k
        else:
            assert a[k] == pytest.approx(b[k], rel=tol, abs=1e-13), k


def test_cmorph_is_built_when_a_c_compiler_exists(monkeypatch):
    monkeypatch.delenv("NMKIT_NO_NATIVE", raising=False)
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the NumPy path is used")
    assert native("_cmorph") is not None, "a C compiler exists but nmkit.radiomics._cmorph was not built"


def _rois():
    """(image, morph mask, intensity mask, spacing xyz) cases: every edge case named in the module docstring."""
    rng = np.random.default_rng(7)
    cases = []
    for shape, sp in (((9, 11, 10), (0.8, 1.1, 2.5)), ((14, 6, 17), (2.0, 2.0, 2.0)), ((5, 20, 3), (1.0, 0.5, 3.0))):
        img = np.round(rng.normal(40, 25, size=shape)) + 0.25 * np.arange(shape[2])
        morph = rng.uniform(size=shape) < 0.55
        morph[:, 0, :] |= rng.uniform(size=(shape[0], shape[2])) < 0.5  # touches the array edge
        cases.append((img, morph, morph & (img > 25), sp))
    one = np.zeros((7, 8, 9), bool)
    one[3, 4, 4] = True
    two = np.zeros((7, 8, 9), bool)
    two[0, 0, 0] = two[0, 0, 1] = True  # in the corner of the array
    img = rng.normal(size=(7, 8, 9))
    cases += [(img, one, one, (1.0, 1.0, 1.0)), (img, two, two, (0.7, 0.9, 1.3))]
    return cases


@pytest.mark.parametrize("case", range(5))
def test_morphology_and_local_intensity_equal_the_numpy_path(cm, monkeypatch, case):
    from nmkit.radiomics.local_intensity import local_intensity_features
    from nmkit.radiomics.morphology import morphology_features

    img, morph, int_mask, sp = _rois()[case]
    roi = ProcessedROI(image=img, morph_mask=morph, int_mask=int_mask, spacing=sp, origin=(0.0, 0.0, 0.0),
                       direction=tuple(np.eye(3).ravel()))
    assert_same_features(morphology_features(roi), numpy_path(monkeypatch, morphology_features, roi))
    assert_same_features(local_intensity_features(roi), numpy_path(monkeypatch, local_intensity_features, roi))


def test_mesh_counts_moments_and_hull_are_those_of_the_numpy_path(cm, monkeypatch):
    from nmkit.radiomics.morphology import (_index_moments, _qhull_measures, _scan_native, _hull_points,
                                            mask_volume_area)

    for img, morph, int_mask, sp in _rois():
        roi = ProcessedROI(image=img, morph_mask=morph, int_mask=int_mask, spacing=sp, origin=(0.0, 0.0, 0.0),
                           direction=tuple(np.eye(3).ravel()))
        sp_zyx = np.array(sp[::-1], dtype=float)
        volume, area, (n, first, second), com_int, ext, hull = _scan_native(cm, roi, sp_zyx)
        # the same pattern counts and index sums -> the very same floating-point volume and area
        assert (volume, area) == mask_volume_area(morph, sp)
        n_ref, first_ref, second_ref = _index_moments(morph)
        assert n == n_ref and np.array_equal(first, first_ref) and np.array_equal(second, second_ref)
        # convex hull: the compiled candidates are a subset of the NumPy ones with the same hull
        points = _hull_points(morph, sp_zyx)
        assert hull == pytest.approx(_qhull_measures(points), rel=1e-12)
        out = np.empty((len(points) + 8, 3))
        k = cm.hull_points(morph, morph.shape, tuple(sp_zyx), out)
        assert 4 <= k <= len(points)
        assert {tuple(p) for p in out[:k]} <= {tuple(p) for p in points}
        # intensity-weighted centre of mass
        w = np.where(int_mask, img, 0.0)
        idx = np.indices(img.shape).reshape(3, -1)
        np.testing.assert_allclose(com_int, idx @ w.ravel() / w.sum() * sp_zyx, rtol=1e-12)


def test_hull_of_a_larger_rounded_roi_equals_qhull(cm):
    from nmkit.radiomics.morphology import _hull_points, _qhull_measures

    z, y, x = np.meshgrid(np.arange(30), np.arange(34), np.arange(31), indexing="ij")
    ball = ((z - 14.3) / 13) ** 2 + ((y - 16) / 15) ** 2 + ((x - 15.2) / 12) ** 2 <= 1  # many coplanar points
    for sp_zyx in ((1.0, 1.0, 1.0), (3.0, 0.7, 0.9)):
        got = cm.hull_measures(ball, ball.shape, sp_zyx, 100000)
        ref = _qhull_measures(_hull_points(ball, np.array(sp_zyx)))
        assert got[:3] == pytest.approx(ref, rel=1e-12)


def test_moran_geary_equal_the_numpy_path_and_kernel_pair_sums(cm, monkeypatch):
    from nmkit.radiomics._fft import even_fast_len, kernel_pair_sums
    from nmkit.radiomics.morphology import _inverse_distance_octant, moran_geary

    rng = np.random.default_rng(3)
    for shape, sp in (((6, 9, 7), (1.2, 0.9, 2.5)), ((3, 3, 12), (1.0, 1.0, 1.0)), ((1, 1, 2), (1.0, 2.0, 3.0))):
        img = rng.normal(10, 5, size=shape)
        mask = rng.uniform(size=shape) < 0.7
        mask.flat[:2] = True
        a = moran_geary(img, mask, sp)
        b = numpy_path(monkeypatch, moran_geary, img, mask, sp)
        assert a == pytest.approx(b, rel=1e-10, abs=1e-13)
        k, size = _inverse_distance_octant(shape, np.array(sp[::-1]))
        arrays = [mask.astype(float), img * mask]
        got = kernel_pair_sums(arrays, [(0, 0), (0, 1), (1, 1)], k, size)
        ref = numpy_path(monkeypatch, kernel_pair_sums, arrays, [(0, 0), (0, 1), (1, 1)], k, size, block_bytes=1)
        assert got == pytest.approx(ref, rel=1e-12)
        assert size == tuple(even_fast_len(max(2 * n - 2, 2)) for n in shape)


def test_sphere_means_equal_the_fft_path_inside_and_at_the_border(cm, monkeypatch):
    from nmkit.radiomics.local_intensity import sphere_means_at

    rng = np.random.default_rng(2)
    for shape, sp in (((14, 16, 15), (2.0, 2.0, 2.0)), ((12, 9, 20), (0.8, 1.1, 2.5))):
        img = rng.normal(100, 30, size=shape)
        where = rng.uniform(size=shape) < 0.3
        where[0, 0, :3] = True  # spheres cut by the image border: the divisor counts the voxels inside
        got = sphere_means_at(img, where, sp)
        ref = numpy_path(monkeypatch, sphere_means_at, img, where, sp)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(img).max())
        assert got.shape == (int(where.sum()),)


def test_trilinear_and_processing_are_identical(cm, monkeypatch):
    from nmkit.radiomics.preprocess import _trilinear

    rng = np.random.default_rng(5)
    a = rng.normal(size=(9, 40, 41)) * 100
    coords = [np.linspace(-1, 9.5, 13), np.linspace(0.3, 39.2, 50), np.linspace(-0.5, 40.7, 30)]
    assert np.array_equal(_trilinear(a, coords), numpy_path(monkeypatch, _trilinear, a, coords))


def test_ibsi_ct_phantom_configs_a_to_e_equal_the_numpy_path(cm, monkeypatch, external_data):
    from conftest import need

    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics import engine
    from nmkit.radiomics.preprocess import process

    root = need(external_data, "ibsi/ibsi_1_ct_radiomics_phantom/nifti")
    image = read_volume(root / "image" / "phantom.nii.gz")
    mask = read_label_map(root / "mask" / "mask.nii.gz")
    for name in ("ibsi-a", "ibsi-b", "ibsi-c", "ibsi-d", "ibsi-e"):
        cfg = engine.as_config(name)
        cfg = type(cfg).from_dict({**cfg.to_dict(), "families": [f for f in cfg.families if f != "texture"]})
        margin = engine._margin_mm(cfg)
        r1 = process(image, mask, cfg, margin_mm=margin)
        r2 = numpy_path(monkeypatch, process, image, mask, cfg, margin_mm=margin)
        assert np.array_equal(r1.image, r2.image), name
        assert np.array_equal(r1.morph_mask, r2.morph_mask) and np.array_equal(r1.int_mask, r2.int_mask), name
        ref = numpy_path(monkeypatch, engine.extract, image, mask, cfg)
        assert_same_features(engine.extract(image, mask, cfg), ref)


def test_kernels_reject_bad_buffers(cm):
    img = np.zeros((4, 5, 6))
    mask = np.zeros((4, 5, 6), bool)
    out = np.empty(0)
    k = np.ones((3, 3, 3), np.uint8)
    with pytest.raises(TypeError):
        cm.sphere_means(img.astype(np.float32), mask, img.shape, k, k.shape, out, 1 << 20)
    with pytest.raises(ValueError):
        cm.sphere_means(img, mask[:3], img.shape, k, k.shape, out, 1 << 20)
    with pytest.raises(ValueError):
        cm.sphere_means(img, mask, img.shape, k[:2], (2, 3, 3), out, 1 << 20)  # even kernel
    with pytest.raises(ValueError):
        cm.moran_rows(img, mask, img.shape, (0, 0, 0, 5, 5, 6), np.empty(10), 6)  # box beyond the shape
    with pytest.raises(ValueError):
        cm.linear_along(img, (4, 5, 6), np.array([0, 5]), np.array([1, 1]), np.array([0.5, 0.5]), np.empty(48))
    with pytest.raises(TypeError):
        cm.fill_slab(np.zeros(8), np.zeros(8, complex), 0, (1, 1, 2, 4), (2, 4))  # real, not complex


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_intensity_statistics_are_identical_to_the_numpy_path(cm, monkeypatch):  # NumPy warns on the 2-value case
    from nmkit.radiomics.intensity import histogram_features, statistics_features

    rng = np.random.default_rng(4)
    for x in (rng.normal(-200, 300, size=45981), np.round(rng.gamma(2.0, 30.0, size=129)), np.array([3.0, 5.0])):
        xs = np.sort(x)
        # NumPy's own pairwise summation of the same terms: not just close, the same numbers
        got, ref = statistics_features(x, xs), numpy_path(monkeypatch, statistics_features, x, xs)
        assert got.keys() == ref.keys()
        assert all(got[k] == ref[k] or (math.isnan(got[k]) and math.isnan(ref[k])) for k in got)
        lv = np.floor((x - x.min()) / 25.0).astype(np.int64) + 1
        got = histogram_features(lv, int(lv.max()), np.sort(lv))
        ref = numpy_path(monkeypatch, histogram_features, lv, int(lv.max()), np.sort(lv))
        assert all(got[k] == ref[k] or (math.isnan(got[k]) and math.isnan(ref[k])) for k in ref)
    assert cm.term_sums(np.arange(10.0), 2, 5, 0.0, "x2") == (9.0, 29.0)
    with pytest.raises(ValueError):
        cm.term_sums(np.arange(10.0), 5, 11, 0.0, "x")


def test_stored_cube_table_equals_scikit_image_marching_cubes():
    from nmkit.radiomics.morphology import _cube_tables, _cube_tables_from_skimage

    for sp in ((2.0, 2.0, 2.0), (3.0, 0.977, 0.977), (0.7, 1.3, 2.9)):
        for new, ref in zip(_cube_tables(sp), _cube_tables_from_skimage(sp)):
            np.testing.assert_allclose(new, ref, rtol=1e-14, atol=1e-14 * np.abs(ref).max())

