"""The compiled texture kernels (``nmkit.radiomics._ctexture``) against the NumPy path they replace.

Integer matrices (GLCM, GLRLM, GLSZM, GLDZM, NGTDM n, NGLDM) must be identical, NGTDM s bit for bit (same terms
added in the same order), and every feature within 1e-12 relative (the compiled formulas sum in index order with
compensation instead of NumPy's pairwise order) on random grids and on the IBSI CT phantom, configurations A-E.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nmkit.radiomics import texture as tx
from nmkit.radiomics._native import native

from conftest import need


@pytest.fixture
def ctexture(monkeypatch):
    monkeypatch.delenv("NMKIT_NO_NATIVE", raising=False)
    mod = native("_ctexture")
    if mod is None:
        pytest.skip("nmkit.radiomics._ctexture is not built (no C compiler at install)")
    return mod


def test_module_is_built_when_a_compiler_exists(monkeypatch):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the NumPy path is used")
    monkeypatch.delenv("NMKIT_NO_NATIVE", raising=False)
    mod = native("_ctexture")
    assert mod is not None, "a C compiler exists but nmkit.radiomics._ctexture was not built"
    for name in ("bbox", "pairs", "zones", "zone_columns", "zone_counts", "neighbours", "glcm_features",
                 "runlike_features", "ngtdm_features"):
        assert callable(getattr(mod, name))
    monkeypatch.setenv("NMKIT_NO_NATIVE", "1")
    assert native("_ctexture") is None


# ----- random grids ----------------------------------------------------------------------------------------

def _grid(seed: int, shape: tuple[int, int, int], ng: int, smooth: bool, holes: bool, wider_morph: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    levels = rng.integers(1, ng + 1, size=shape)
    if smooth:  # long runs and large zones
        levels[:, :, 1:] = levels[:, :, :1]
    roi = np.ones(shape, dtype=bool)
    if holes:
        roi &= rng.random(shape) > 0.3
        roi.flat[0] = True
    morph = roi | (rng.random(shape) > 0.6) if wider_morph else roi
    return np.where(roi, levels, 0).astype(np.int32), morph


CASES = [  # (shape, ng, smooth, holes, wider morphological mask)
    ((1, 1, 1), 3, False, False, False),  # one voxel: no co-occurring pair at all
    ((1, 6, 7), 4, False, True, False),  # one slice
    ((5, 7, 8), 4, True, True, True),
    ((6, 5, 9), 1, False, True, True),  # a single grey level
    ((4, 9, 6), 300, False, True, False),  # more than 255 levels (uint16 grid)
    ((7, 8, 8), 40, True, False, True),
    ((3, 12, 4), 6, False, True, True),
]


def _assert_same_matrices(a: tx._Matrices, b: tx._Matrices) -> None:
    for name in ("glcm2", "glcm3", "rlm2", "rlm3", "nv_slice"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape and x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.zone.keys() == b.zone.keys()
    labels = ("szm", "dzm", "ngtdm s", "ngtdm n", "ngldm")
    for three_d in a.zone:
        for label, x, y in zip(labels, a.zone[three_d], b.zone[three_d]):
            for u, v in zip(x, y) if isinstance(x, tuple) else ((x, y),):
                assert u.shape == v.shape, (three_d, label)
                # (NumPy's weighted bincount of nothing is int64: compare NGTDM s by value)
                assert u.dtype == v.dtype or label == "ngtdm s", (three_d, label)
                np.testing.assert_array_equal(u, v, err_msg=f"{label} (3D: {three_d})")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-ng{c[1]}")
def test_matrices_identical_to_numpy(ctexture, case, seed):
    shape, ng, smooth, holes, wider = case
    levels, morph = _grid(seed, shape, ng, smooth, holes, wider)
    for three_d, slices in ((True, False), (False, True), (True, True)):
        ref = tx._numpy_matrices(levels, morph, ng, three_d, slices)
        got = tx._native_matrices(ctexture, levels, morph, ng, three_d, slices)
        _assert_same_matrices(ref, got)


def _assert_close_features(ref: dict[str, float], got: dict[str, float]) -> None:
    assert list(ref) == list(got)
    bad = []
    for key, a in ref.items():
        b = got[key]
        if key.startswith("cm_info_corr2_"):
            # sqrt(1 - exp(-2 (2 HX - HXY))) has an infinite slope at 0: compare what is under the root
            a, b = a * a, b * b
        if np.isnan(a) and np.isnan(b):
            continue
        if not abs(a - b) <= 1e-12 * max(abs(a), abs(b)) + 1e-15:
            bad.append(f"{key}: NumPy {a!r}, compiled {b!r}")
    assert not bad, "; ".join(bad[:10])


def _both_paths(monkeypatch, *args, **kwargs) -> tuple[dict[str, float], dict[str, float]]:
    monkeypatch.setenv("NMKIT_NO_NATIVE", "1")
    ref = tx.compute_texture(*args, **kwargs)
    monkeypatch.delenv("NMKIT_NO_NATIVE")
    return ref, tx.compute_texture(*args, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-ng{c[1]}")
def test_features_match_numpy(ctexture, monkeypatch, case):
    shape, ng, smooth, holes, wider = case
    levels, morph = _grid(11, shape, ng, smooth, holes, wider)
    ref, got = _both_paths(monkeypatch, levels, morph, ng, (1.0, 1.0, 2.0))
    assert len(ref) == 6 * (25 + 16) + 3 * (2 * 16 + 5 + 17)  # every family, every aggregation
    _assert_close_features(ref, got)


@pytest.mark.parametrize("dims", [("2D",), ("2.5D",), ("3D",), ("2D", "3D")])
def test_features_match_numpy_for_each_aggregation(ctexture, monkeypatch, dims):
    levels, morph = _grid(5, (6, 9, 7), 8, False, True, True)
    ref, got = _both_paths(monkeypatch, levels, morph, 8, (1.0, 1.0, 1.0), dims=dims)
    assert ref and all(k.endswith(tuple(f"_{d.replace('.', '_')}" for d in dims) + tuple(
        f"_{d.replace('.', '_')}_{a}" for d in dims for a in ("avg", "comb"))) for k in ref)
    _assert_close_features(ref, got)


def test_inputs_of_any_integer_type_and_layout(ctexture, monkeypatch):
    levels, morph = _grid(9, (5, 8, 6), 5, True, True, True)
    ref = tx.compute_texture(levels, morph, 5, (1.0, 1.0, 1.0))
    # uint8 levels, a transposed (non-contiguous) view and an integer morphological mask give the same values
    same = tx.compute_texture(levels.astype(np.uint8), morph.astype(np.uint8), 5, (1.0, 1.0, 1.0))
    assert same == ref
    t = tx.compute_texture(np.ascontiguousarray(levels.transpose(0, 2, 1)).transpose(0, 2, 1),
                           np.asfortranarray(morph), 5, (1.0, 1.0, 1.0))
    assert t == ref


def test_more_than_65535_levels_use_the_numpy_path(ctexture, monkeypatch):
    # (the grid is uint16; matrices that large are not computed here, only the choice of path is checked)
    monkeypatch.setattr(tx, "_numpy_matrices", lambda *a: "numpy")
    monkeypatch.setattr(tx, "_native_matrices", lambda mod, *a: "compiled")
    levels, morph = _grid(2, (2, 3, 3), 3, False, False, False)
    assert tx._matrices(levels, morph, 65536, True, False) == "numpy"
    assert tx._matrices(levels, morph, 65535, True, False) == "compiled"
    monkeypatch.setenv("NMKIT_NO_NATIVE", "1")
    assert tx._matrices(levels, morph, 3, True, False) == "numpy"


def test_one_voxel_roi_gives_nan_glcm_and_finite_runs(ctexture, monkeypatch):
    levels = np.zeros((3, 3, 3), dtype=np.int32)
    levels[1, 1, 1] = 2
    for env in ("1", None):
        if env:
            monkeypatch.setenv("NMKIT_NO_NATIVE", env)
        else:
            monkeypatch.delenv("NMKIT_NO_NATIVE")
        f = tx.compute_texture(levels, levels > 0, 4, (1.0, 1.0, 1.0))
        assert np.isnan(f["cm_joint_max_3D_avg"]) and np.isnan(f["cm_contrast_2D_comb"])
        assert f["rlm_sre_3D_avg"] == 1.0 and f["szm_z_perc_3D"] == 1.0 and f["dzm_sde_3D"] == 1.0
        assert f["ngl_dc_perc_2D"] == 1.0


def test_kernels_reject_bad_buffers(ctexture):
    grid = np.zeros((3, 4, 5), dtype=np.uint16)
    grid[1, 1:3, 1:4] = 2
    flat = grid.ravel()
    lv, ext = 3, 3
    cm = np.empty(13 * 2 * 2, dtype=np.int64)
    rl = np.empty(13 * 2 * ext, dtype=np.int64)
    nvs = np.empty(1, dtype=np.int64)
    assert ctexture.pairs(flat, 3, 4, 5, 13, False, lv, cm, rl, nvs) == 3
    assert nvs[0] == 6 and rl.reshape(13, 2, ext)[0, 1].tolist() == [0, 0, 2]  # two x-runs of length 3
    with pytest.raises(TypeError, match="grid"):
        ctexture.pairs(flat.astype(np.int32), 3, 4, 5, 13, False, lv, cm, rl, nvs)
    with pytest.raises(ValueError, match="items"):
        ctexture.pairs(flat[:-1], 3, 4, 5, 13, False, lv, cm, rl, nvs)
    with pytest.raises(ValueError, match="items"):
        ctexture.pairs(flat, 3, 4, 5, 13, False, lv, cm[:-1], rl, nvs)
    with pytest.raises(TypeError, match="cm"):
        ctexture.pairs(flat, 3, 4, 5, 13, False, lv, cm.astype(np.int32), rl, nvs)
    with pytest.raises(ValueError, match="level"):
        ctexture.pairs(flat, 3, 4, 5, 13, False, 2, cm[:13], rl[: 13 * ext], nvs)
    framed = grid.copy()
    framed[0, 0, 0] = 1
    with pytest.raises(ValueError, match="frame"):
        ctexture.pairs(framed.ravel(), 3, 4, 5, 13, False, lv, cm, rl, nvs)
    with pytest.raises(ValueError, match="shape"):
        ctexture.pairs(flat, 1, 12, 5, 13, False, lv, cm, rl, nvs)
    long_row = np.zeros((3, 3, 65537), dtype=np.uint16)  # run positions are uint16
    with pytest.raises(ValueError, match="65534"):
        ctexture.pairs(long_row.ravel(), 3, 3, 65537, 4, False, lv, cm, rl, nvs)
    with pytest.raises(TypeError, match="morph"):
        ctexture.zones(flat, flat, 3, 4, 5, True, *np.empty((4, 6), dtype=np.int64))
    with pytest.raises(ValueError, match="zone outputs"):
        ctexture.zones(flat, (flat > 0).astype(np.uint8), 3, 4, 5, True, *np.empty((4, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        ctexture.neighbours(flat, 3, 4, 5, True, lv, np.zeros((1, lv), np.float32), np.zeros((1, lv), np.int64),
                            np.zeros((1, lv, 28), np.int64))
    with pytest.raises(ValueError, match="items"):
        ctexture.glcm_features(cm[:-1], 13, 2, np.empty((25, 13)))
    with pytest.raises(ValueError, match="items"):
        ctexture.runlike_features(rl, 13, 2, ext, np.ones(12), np.arange(1.0, ext + 1), np.empty((17, 13)))
    with pytest.raises(ValueError, match="items"):
        ctexture.ngtdm_features(np.zeros(5), np.zeros(6, np.int64), 2, 3, np.empty((5, 2)))
    cols = np.empty(4, dtype=np.int64)
    values = np.array([7, 2, 7, 3])
    assert ctexture.zone_columns(values, cols) == 3 and cols[:3].tolist() == [2, 3, 7]
    with pytest.raises(ValueError, match="out of range"):
        ctexture.zone_counts(np.array([0, 1, 0, 5]), values, cols[:3].copy(), 2, np.zeros((2, 3), np.int64))
    levels = grid.astype(np.int32)
    assert ctexture.bbox(levels, np.zeros(grid.shape, np.uint8), *grid.shape) == (1, 2, 1, 3, 1, 4)
    assert ctexture.bbox(np.zeros_like(levels), np.zeros(grid.shape, np.uint8), *grid.shape) is None
    with pytest.raises(TypeError, match="levels"):
        ctexture.bbox(grid, np.zeros(grid.shape, np.uint8), *grid.shape)


# ----- IBSI CT phantom, configurations A-E -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ct_phantom(external_data):
    from nmkit.io.volume_files import read_label_map, read_volume

    ct = need(external_data, "ibsi/ibsi_1_ct_radiomics_phantom/nifti")
    return read_volume(ct / "image/phantom.nii.gz"), read_label_map(ct / "mask/mask.nii.gz")


@pytest.mark.parametrize("config", "abcde")
def test_ibsi_ct_phantom_both_paths_agree(ctexture, monkeypatch, ct_phantom, config):
    from nmkit.radiomics import engine
    from nmkit.radiomics.preprocess import discretise, process

    image, mask = ct_phantom
    cfg = engine.as_config(f"ibsi-{config}")
    roi = process(image, mask, cfg, margin_mm=engine._margin_mm(cfg))
    lv, ng = discretise(roi.values, cfg.discretisation, cfg.reseg_range)
    levels = np.zeros(roi.image.shape, dtype=np.int32)
    levels[roi.int_mask] = lv
    three_d = cfg.dims != "2D"
    ref_m = tx._numpy_matrices(levels, roi.morph_mask, ng, three_d, not three_d)
    _assert_same_matrices(ref_m, tx._native_matrices(ctexture, levels, roi.morph_mask, ng, three_d, not three_d))
    dims = cfg.texture_dims or (("2D", "2.5D") if cfg.dims == "2D" else ("3D",))
    ref, got = _both_paths(monkeypatch, levels, roi.morph_mask, ng, roi.spacing, dims=dims)
    assert len(ref) > 100
    _assert_close_features(ref, got)
