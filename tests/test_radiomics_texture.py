"""IBSI texture features: matrices and feature values against the IBSI 1 reference (digital phantom, CT config A),
plus independent brute-force checks of the matrices and physical invariances on synthetic volumes."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nmkit.errors import InputError
from nmkit.radiomics import texture as tx
from nmkit.radiomics.texture import compute_texture

from conftest import need

TEXTURE_FAMILIES = {"glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm"}


# ----- helpers ---------------------------------------------------------------------------------------------

def _round3(x: float) -> float:
    """Round to 3 significant digits, as the IBSI comparison prescribes."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, -int(math.floor(math.log10(abs(x)))) + 2)


def _reference(root: Path, dataset: str) -> list[dict[str, str]]:
    path = need(root, "ibsi/ibsi1_reference.csv")
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["dataset"] == dataset and r["family"] in TEXTURE_FAMILIES]


def _mismatches(rows: list[dict[str, str]], feats: dict[str, float]) -> list[str]:
    bad = []
    for r in rows:
        tag = r["mirp_tag"]
        ref = float(r["value"])
        tol = float(r["tolerance"] or 0.0)
        got = feats.get(tag)
        if got is None or not abs(_round3(got) - ref) <= tol + 1e-9 * abs(ref):
            bad.append(f"{tag}: got {got} (rounded {None if got is None else _round3(got)}), ref {ref} +- {tol}")
    return bad


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    # IBSI: NIfTI input is converted to float and rounded to the nearest integer
    return np.round(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64))


@pytest.fixture(scope="module")
def phantom(external_data: Path) -> tuple[np.ndarray, np.ndarray]:
    base = "ibsi/ibsi_1_digital_phantom/nifti"
    image = _read(need(external_data, f"{base}/image/phantom.nii.gz"))
    mask = _read(need(external_data, f"{base}/mask/mask.nii.gz")) > 0
    return np.where(mask, image, 0).astype(np.int32), mask


def _spec_tables(root: Path, section: str) -> list[dict[tuple[int, int], float]]:
    """The (i, j) -> n tables of one section of the IBSI digital phantom texture matrix chapter."""
    text = need(root, "ibsi/spec/06_Digital_phantom_texture_matrices.rst").read_text()
    lines = text.splitlines()
    start = next(k for k, ln in enumerate(lines)
                 if ln.strip() == section and k + 1 < len(lines) and lines[k + 1].startswith("---"))
    end = next((k for k in range(start + 2, len(lines)) if lines[k].startswith("---")), len(lines)) - 1
    tables: list[dict[tuple[int, int], float]] = []
    row = re.compile(r"^\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*$")
    for ln in lines[start:end]:
        if ".. table::" in ln:
            tables.append({})
            continue
        m = row.match(ln)
        if m and tables:
            tables[-1][(int(float(m.group(1))), int(float(m.group(2))))] = float(m.group(3))
    return tables


def _as_table(m: np.ndarray, cols: np.ndarray | None = None) -> dict[tuple[int, int], float]:
    """Non-zero entries of a (Ng, Nj) matrix with 1-based grey level and column value (default: index + 1)."""
    cols = np.arange(1, m.shape[1] + 1) if cols is None else cols
    return {(int(i) + 1, int(cols[j])): float(m[i, j]) for i, j in zip(*np.nonzero(m))}


# ----- IBSI digital phantom --------------------------------------------------------------------------------

def test_digital_phantom_all_texture_reference_values(external_data, phantom):
    levels, mask = phantom
    feats = compute_texture(levels, mask, 6, (2.0, 2.0, 2.0))
    rows = _reference(external_data, "digital_phantom")
    assert len(rows) == 408  # 150 GLCM + 96 GLRLM + 48 GLSZM + 48 GLDZM + 15 NGTDM + 51 NGLDM
    assert _mismatches(rows, feats) == []
    # every family and aggregation is present with its IBSI feature count
    for prefix, n_feat, suffixes in (("cm", 25, ("2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb", "3D_avg", "3D_comb")),
                                     ("rlm", 16, ("2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb", "3D_avg", "3D_comb")),
                                     ("szm", 16, ("2D", "2_5D", "3D")), ("dzm", 16, ("2D", "2_5D", "3D")),
                                     ("ngt", 5, ("2D", "2_5D", "3D")), ("ngl", 17, ("2D", "2_5D", "3D"))):
        for suffix in suffixes:
            keys = [k for k in feats if k.startswith(prefix + "_") and k.endswith("_" + suffix)]
            assert len(keys) == n_feat, (prefix, suffix, keys)


def test_digital_phantom_matrices_match_ibsi_tables(external_data, phantom):
    levels, mask = phantom
    nb = tx._neighbourhood(levels, mask, 6, three_d=True)
    m2, m3 = tx._glcm_matrices(nb, 6, three_d=True)
    assert _as_table(m3.sum(0)) == _spec_tables(external_data, "Grey level co-occurrence matrix (3D, merged)")[0]
    r2, r3 = tx._glrlm_matrices(nb, 6, three_d=True)
    assert _as_table(r3.sum(0)) == _spec_tables(external_data, "Grey level run length matrix (3D, merged)")[0]

    (szm3, s3), (dzm3, d3) = tx._zone_matrices(nb, 6, three_d=True, want_dzm=True)
    assert _as_table(szm3[0], s3) == _spec_tables(external_data, "Grey level size zone matrix (3D)")[0]
    assert _as_table(dzm3[0], d3) == _spec_tables(external_data, "Grey level distance zone matrix (3D)")[0]
    (szm2, s2), (dzm2, d2) = tx._zone_matrices(nb, 6, three_d=False, want_dzm=True)
    assert [_as_table(m, s2) for m in szm2] == _spec_tables(external_data, "Grey level size zone matrix (2D)")
    assert [_as_table(m, d2) for m in dzm2] == _spec_tables(external_data, "Grey level distance zone matrix (2D)")

    assert [_as_table(m) for m in tx._ngldm_matrices(nb, 6, three_d=False)] == _spec_tables(
        external_data, "Neighbouring grey level dependence matrix (2D)")
    assert _as_table(tx._ngldm_matrices(nb, 6, three_d=True)[0]) == _spec_tables(
        external_data, "Neighbouring grey level dependence matrix (3D)")[0]

    for dim, three_d in (("2D", False), ("3D", True)):
        s, n = tx._ngtdm_matrices(nb, 6, three_d=three_d)
        tables = _spec_tables(external_data, f"Neighbourhood grey tone difference matrix ({dim})")
        assert len(tables) == s.shape[0]
        for k, table in enumerate(tables):
            # table rows are (i, s_i, n_i): s is rounded in the document
            for (i, _), n_i in table.items():
                assert n[k, i - 1] == n_i
            assert set(table_i for table_i, _ in table) == set(np.flatnonzero(n[k]) + 1)


# ----- IBSI CT phantom, configuration A --------------------------------------------------------------------

def test_ct_phantom_config_a_texture_reference_values(external_data):
    base = "ibsi/ibsi_1_ct_radiomics_phantom/nifti"
    image = _read(need(external_data, f"{base}/image/phantom.nii.gz"))
    mask = _read(need(external_data, f"{base}/mask/mask.nii.gz")) > 0
    # local minimal IBSI config A: no resampling, re-segmentation [-500, 400] HU, fixed bin size 25 HU from -500
    roi = mask & (image >= -500) & (image <= 400)
    levels = np.where(roi, np.floor((image + 500) / 25) + 1, 0).astype(np.int32)
    feats = compute_texture(levels, mask, int(levels.max()), (0.977, 0.977, 3.0), dims=("2D", "2.5D"))
    rows = _reference(external_data, "config_A")
    assert len(rows) == 272
    assert _mismatches(rows, feats) == []
    assert not any(k.endswith(("_3D", "_3D_avg", "_3D_comb")) for k in feats)


# ----- independent brute-force checks on synthetic volumes --------------------------------------------------

def _random_volume(seed: int, shape=(5, 7, 8), ng=4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    levels = rng.integers(1, ng + 1, size=shape)
    # smooth a little so that runs and zones longer than one voxel occur
    levels[:, :, 2:5] = levels[:, :, 2:3]
    mask = rng.random(shape) > 0.15
    return np.where(mask, levels, 0).astype(np.int32), mask


def _brute_runs(levels: np.ndarray, ng: int) -> np.ndarray:
    """Merged 3D GLRLM by walking every line, direction by direction."""
    nz, ny, nx = levels.shape
    out = np.zeros((ng, max(levels.shape) + 1), dtype=int)
    for d in tx._DIRECTIONS:
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    g = levels[z, y, x]
                    if g == 0:
                        continue
                    pz, py, px = z - d[0], y - d[1], x - d[2]
                    if 0 <= pz < nz and 0 <= py < ny and 0 <= px < nx and levels[pz, py, px] == g:
                        continue  # not a run start
                    n = 0
                    cz, cy, cx = z, y, x
                    while 0 <= cz < nz and 0 <= cy < ny and 0 <= cx < nx and levels[cz, cy, cx] == g:
                        n += 1
                        cz, cy, cx = cz + d[0], cy + d[1], cx + d[2]
                    out[g - 1, n - 1] += 1
    return out


def test_run_lengths_match_brute_force_walk():
    levels, mask = _random_volume(3)
    nb = tx._neighbourhood(levels, mask, 4, three_d=True)
    _, r3 = tx._glrlm_matrices(nb, 4, three_d=True)
    merged = r3.sum(0)
    brute = _brute_runs(levels, 4)
    assert merged.sum() == brute.sum() > 0
    np.testing.assert_array_equal(merged, brute[:, : merged.shape[1]])
    assert brute[:, merged.shape[1]:].sum() == 0


def test_zones_match_scipy_label_per_grey_level():
    levels, mask = _random_volume(7)
    nb = tx._neighbourhood(levels, mask, 4, three_d=True)
    (szm3, sizes), _ = tx._zone_matrices(nb, 4, three_d=True, want_dzm=False)
    expected: dict[tuple[int, int], float] = {}
    for g in range(1, 5):
        lab, n = ndimage.label(levels == g, structure=np.ones((3, 3, 3)))
        for size in np.bincount(lab.ravel())[1:]:
            expected[(g, int(size))] = expected.get((g, int(size)), 0) + 1
    assert _as_table(szm3[0], sizes) == expected
    # the scipy-only fallback (no scikit-image) finds the same zones, in 3D and per slice
    for three_d in (True, False):
        lab_a, n_a = tx._zones(nb, three_d)
        lab_b, n_b = tx._zones_graph(nb, three_d)
        assert n_a == n_b
        # same partition: a one-to-one correspondence between the two labellings
        pairs = np.unique(np.stack([lab_a, lab_b]), axis=1)
        assert pairs.shape[1] == n_a


def test_glcm_counts_every_neighbour_pair_once_per_direction():
    levels, mask = _random_volume(11)
    nb = tx._neighbourhood(levels, mask, 4, three_d=True)
    _, m3 = tx._glcm_matrices(nb, 4, three_d=True)
    nz, ny, nx = levels.shape
    for k, (dz, dy, dx) in enumerate(tx._DIRECTIONS):
        brute = np.zeros((4, 4), int)
        for z, y, x in zip(*np.nonzero(levels)):
            z2, y2, x2 = z + dz, y + dy, x + dx
            if 0 <= z2 < nz and 0 <= y2 < ny and 0 <= x2 < nx and levels[z2, y2, x2]:
                brute[levels[z, y, x] - 1, levels[z2, y2, x2] - 1] += 1
        np.testing.assert_array_equal(m3[k], brute + brute.T)


# ----- physical behaviour ----------------------------------------------------------------------------------

def test_homogeneous_region_gives_textbook_extremes():
    levels = np.full((4, 6, 6), 3, dtype=np.int32)
    f = compute_texture(levels, levels > 0, 5, (1.0, 1.0, 1.0))
    assert f["cm_joint_max_3D_comb"] == 1.0
    assert f["cm_contrast_3D_comb"] == 0.0
    assert f["cm_joint_avg_2D_avg"] == 3.0
    assert f["szm_z_perc_3D"] == pytest.approx(1 / levels.size)
    assert f["szm_lze_3D"] == pytest.approx(levels.size**2)
    assert f["ngt_coarseness_3D"] == 1e6  # IBSI cap when every neighbourhood difference is 0
    assert f["ngt_busyness_3D"] == 0.0
    assert f["ngl_hde_3D"] > f["ngl_hde_2D"]  # 26-neighbourhood dependences exceed 8-neighbourhood ones
    assert f["dzm_sde_3D"] == 1.0  # a single zone: its distance is that of its edge voxels, 1


def test_merged_features_invariant_to_in_plane_rotation_and_flip():
    levels, mask = _random_volume(5, shape=(4, 9, 9), ng=6)
    base = compute_texture(levels, mask, 6, (1.0, 1.0, 1.0))
    for arr, msk in ((np.rot90(levels, axes=(1, 2)), np.rot90(mask, axes=(1, 2))), (levels[:, ::-1], mask[:, ::-1]),
                     (levels[::-1], mask[::-1])):
        other = compute_texture(np.ascontiguousarray(arr), np.ascontiguousarray(msk), 6, (1.0, 1.0, 1.0))
        assert other.keys() == base.keys()
        for k, v in base.items():
            assert other[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_finer_texture_has_higher_glcm_contrast_and_shorter_runs():
    z, y, x = np.mgrid[0:4, 0:16, 0:16]
    coarse = ((x // 4 + y // 4) % 2 + 1).astype(np.int32)
    fine = ((x + y) % 2 + 1).astype(np.int32)
    fc = compute_texture(coarse, coarse > 0, 2, (1.0, 1.0, 1.0), dims=("2D",))
    ff = compute_texture(fine, fine > 0, 2, (1.0, 1.0, 1.0), dims=("2D",))
    assert ff["cm_contrast_2D_comb"] > fc["cm_contrast_2D_comb"]
    assert ff["rlm_sre_2D_comb"] > fc["rlm_sre_2D_comb"]
    # 8-connectivity links the diagonal squares of a checkerboard: two zones per slice, whatever the square size
    assert ff["szm_z_perc_2D"] == fc["szm_z_perc_2D"] == pytest.approx(2 / 256)
    stripes = (x % 2 + 1).astype(np.int32)
    fs = compute_texture(stripes, stripes > 0, 2, (1.0, 1.0, 1.0), dims=("2D",))
    assert fs["szm_z_perc_2D"] == pytest.approx(16 / 256)
    assert set(ff) == {k for k in ff if k.endswith(("_2D", "_2D_avg", "_2D_comb"))}


def test_bad_input_is_reported_clearly():
    good = np.ones((2, 3, 3), dtype=np.int32)
    with pytest.raises(InputError, match="0..4"):
        compute_texture(good * 5, good > 0, 4, (1, 1, 1))
    with pytest.raises(InputError, match="integers"):
        compute_texture(good.astype(float), good > 0, 4, (1, 1, 1))
    with pytest.raises(InputError, match="shape"):
        compute_texture(good, np.ones((2, 3, 4), bool), 4, (1, 1, 1))
    with pytest.raises(InputError, match="dims"):
        compute_texture(good, good > 0, 4, (1, 1, 1), dims=("4D",))
    with pytest.raises(InputError, match="at least one voxel"):
        compute_texture(good * 0, good > 0, 4, (1, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        compute_texture(good, good > 0, 4, (1, 0, 1))
