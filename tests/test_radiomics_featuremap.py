"""Voxel-wise feature maps (radiomics.featuremap, `nmkit featuremap`) against a brute-force window-by-window
computation with the IBSI-1 statistics of nmkit.radiomics.intensity, on the IBSI-1 digital phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest

FEATURES = ("mean", "var", "sd", "skew", "kurt", "energy", "rms", "count", "min", "max", "range", "median", "p10",
            "p90", "iqr")


@pytest.fixture(scope="module")
def phantom(external_data):
    from nmkit.io.volume_files import read_label_map, read_volume

    root = external_data / "ibsi/ibsi_1_digital_phantom/nifti"
    if not (root / "image/phantom.nii.gz").is_file():
        pytest.skip("IBSI-1 digital phantom not available")
    return root, read_volume(root / "image/phantom.nii.gz"), read_label_map(root / "mask/mask.nii.gz")


def _brute(img, roi, r, within):
    from nmkit.radiomics.intensity import statistics_features

    out = {f: np.full(img.shape, np.nan) for f in FEATURES}
    for z, y, x in zip(*np.nonzero(roi)):
        sl = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip((z, y, x), r))
        vals = img[sl][roi[sl]] if within else img[sl].ravel()
        s = statistics_features(vals)
        q25, q75 = np.percentile(vals, [25, 75])
        ref = {"mean": s["stat_mean"], "var": s["stat_var"], "sd": np.sqrt(s["stat_var"]), "skew": s["stat_skew"],
               "kurt": s["stat_kurt"], "energy": s["stat_energy"], "rms": s["stat_rms"], "count": vals.size,
               "min": s["stat_min"], "max": s["stat_max"], "range": s["stat_range"], "median": s["stat_median"],
               "p10": s["stat_p10"], "p90": s["stat_p90"], "iqr": q75 - q25}
        for f in FEATURES:
            out[f][z, y, x] = ref[f]
    return out


@pytest.mark.parametrize("radius_mm,within", [(2.0, False), (2.0, True), (4.5, False)])
def test_maps_equal_window_by_window_statistics(phantom, radius_mm, within):
    from nmkit.radiomics.featuremap import half_widths, local_feature_maps

    _, image, mask = phantom
    img, roi = np.asarray(image.array, float), mask.binary(None)
    maps = local_feature_maps(img, image.spacing, radius_mm, roi, FEATURES, within_roi=within)
    ref = _brute(img, roi, half_widths(radius_mm, image.spacing), within)
    for f in FEATURES:
        np.testing.assert_allclose(maps[f][roi], ref[f][roi], rtol=2e-5, atol=2e-5, err_msg=f)
        assert np.isnan(maps[f][~roi]).all()
    assert maps["var"][roi].max() > 0 and not np.allclose(maps["mean"][roi], maps["mean"][roi][0])


def test_constant_image_has_flat_maps():
    from nmkit.radiomics.featuremap import local_feature_maps

    img = np.full((6, 7, 8), 42.0)
    maps = local_feature_maps(img, (1.0, 1.0, 1.0), 1.0, None, ("mean", "sd", "skew", "median", "range"))
    assert np.allclose(maps["mean"], 42) and np.allclose(maps["sd"], 0, atol=1e-6) and np.allclose(maps["median"], 42)
    assert np.all(maps["skew"] == 0) and np.all(maps["range"] == 0)


def test_featuremap_cli_writes_images_on_the_image_grid(phantom, tmp_path, capsys):
    from nmkit.cli import main
    from nmkit.io.volume_files import read_volume

    root, image, mask = phantom
    out = tmp_path / "maps"
    rc = main(["featuremap", "--image", str(root / "image/phantom.nii.gz"), "--mask", str(root / "mask/mask.nii.gz"),
               "--radius-mm", "2", "--features", "mean,kurt,p90", "--out", str(out)])
    assert rc == 0
    import nibabel as nib

    m = read_volume(out / "featuremap_mean.nii.gz")
    assert m.same_grid(image) and m.array.dtype == np.float32
    roi = mask.binary(None)
    raw = np.asarray(nib.load(str(out / "featuremap_mean.nii.gz")).dataobj).transpose(2, 1, 0)  # NaN kept on disk
    assert np.isfinite(raw[roi]).all() and np.isnan(raw[~roi]).all()
    units = json.loads((out / "featuremap.units.json").read_text())
    assert units["columns"]["kurt"] == "1" and set(units["columns"]) == {"mean", "kurt", "p90"}
    rc = main(["featuremap", "--image", str(root / "image/phantom.nii.gz"), "--features", "mean,entropy",
               "--out", str(tmp_path / "bad")])
    assert rc != 0 and "entropy" in capsys.readouterr().err


def test_local_glcm_over_the_whole_roi_equals_the_ibsi_glcm(phantom):
    """A window holding the whole ROI gives every ROI voxel the ROI's IBSI-1 GLCM features (3D, merged)."""
    from nmkit.radiomics.config import Discretisation
    from nmkit.radiomics.engine import extract
    from nmkit.radiomics.featuremap import GLCM_FEATURES, local_feature_maps

    root, image, mask = phantom
    ref = extract(image, mask, "ibsi-digital-phantom")
    roi = mask.binary(None)
    maps = local_feature_maps(image.array, image.spacing, 50.0, roi, GLCM_FEATURES, within_roi=True,
                              discretisation=Discretisation(method="none", n_bins=None))
    for f in GLCM_FEATURES:
        np.testing.assert_allclose(maps[f][roi], ref[f"{f}_3D_comb"], rtol=1e-6, err_msg=f)


def test_local_glcm_in_small_windows_equals_the_glcm_of_each_window(phantom):
    """Radius 2 mm (3 x 3 x 3 voxels): each ROI voxel's value equals the GLCM features of its window alone."""
    from nmkit.radiomics.featuremap import GLCM_FEATURES, local_glcm_maps

    _, image, mask = phantom
    roi = mask.binary(None)
    levels = np.where(roi, np.round(image.array), 0).astype(int)
    maps = local_glcm_maps(levels, (1, 1, 1), roi, GLCM_FEATURES)
    for z, y, x in list(zip(*np.nonzero(roi)))[::7]:
        window = np.zeros_like(levels)
        sl = tuple(slice(max(0, c - 1), c + 2) for c in (z, y, x))
        window[sl] = levels[sl]
        alone = local_glcm_maps(window, (9, 9, 9), roi, GLCM_FEATURES)
        for f in GLCM_FEATURES:
            assert maps[f][z, y, x] == pytest.approx(alone[f][z, y, x], rel=1e-9, abs=1e-12), f


def test_featuremap_cli_filters_first_with_a_config(phantom, tmp_path):
    """--config applies the YAML's filter: a local mean of a 3-voxel mean-filtered image, checked with numpy."""
    from scipy import ndimage

    import nibabel as nib

    from nmkit.cli import main

    root, image, mask = phantom
    cfg = tmp_path / "mean.yaml"
    cfg.write_text("filter: {kind: mean, support: 3, boundary: nearest}\n")
    out = tmp_path / "maps"
    assert main(["featuremap", "--image", str(root / "image/phantom.nii.gz"), "--radius-mm", "0.9",
                 "--features", "mean", "--config", str(cfg), "--out", str(out)]) == 0
    got = np.asarray(nib.load(str(out / "featuremap_mean.nii.gz")).dataobj).transpose(2, 1, 0)
    expected = ndimage.uniform_filter(np.asarray(image.array, float), 3, mode="nearest")  # radius 0.9 mm < half a voxel: the window is the voxel
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    no_filter = tmp_path / "none.yaml"
    no_filter.write_text("base: ibsi-b\n")
    assert main(["featuremap", "--image", str(root / "image/phantom.nii.gz"), "--config", str(no_filter),
                 "--out", str(tmp_path / "x")]) != 0
