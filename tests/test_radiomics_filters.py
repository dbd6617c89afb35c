"""IBSI-2 filters in the engine: config handling, crop equivalence and rotation invariance (radiomics.filters)."""

from __future__ import annotations

import numpy as np
import pytest

from nmkit.errors import InputError


def test_filter_section_round_trips_and_rejects_bad_keys(tmp_path):
    from nmkit.radiomics.config import RadiomicsConfig
    from nmkit.radiomics.filters import FilterSpec
    from nmkit.radiomics.presets import load_config

    cfg = RadiomicsConfig.from_dict({"filter": {"kind": "riesz_log", "sigma_mm": 3, "riesz_order": [1, 0, 0],
                                                "boundary": "zero"}})
    assert isinstance(cfg.filter, FilterSpec) and cfg.filter.boundary == "constant"
    again = RadiomicsConfig.from_dict(cfg.to_dict())
    assert again.filter == cfg.filter
    assert RadiomicsConfig.from_dict({"filter": {"kind": "none"}}).filter is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: ibsi2-3d\nfilter: {kind: log, sigmaa: 1.5}\n")
    with pytest.raises(InputError, match="bad.yaml: unknown filter keys"):
        load_config(bad)
    for section, message in [({"kind": "log"}, "sigma_mm"), ({"kind": "laws", "kernel": "L5X5E5"}, "Laws kernel"),
                             ({"kind": "wavelet", "decomposition": "LH"}, "3 letters"),
                             ({"kind": "mean", "support": 4}, "odd"), ({"kind": "mean", "boundary": "edge"}, "boundary"),
                             ({"kind": "gabor", "sigma_mm": 5, "lambda_mm": 2, "theta": "pi/3"}, "radians"),
                             ({"kind": "riesz_log", "sigma_mm": 1, "riesz_order": [0, 0, 0]}, "positive sum")]:
        with pytest.raises(InputError, match=message):
            FilterSpec.from_dict(section)


@pytest.mark.parametrize("spec", [
    dict(kind="laws", kernel="E5L5S5", rotation="max", energy=True, boundary="mirror"),
    dict(kind="wavelet", wavelet="db2", decomposition="LHL", rotation="average", boundary="nearest"),
    dict(kind="wavelet", wavelet="haar", decomposition="HHH", level=2, rotation="average", boundary="periodic"),
])
def test_rotation_pooled_response_commutes_with_right_angle_rotations(spec):
    """A rotation-invariant filter of a rotated image is the rotated response (any right-angle rotation)."""
    from nmkit.radiomics.filters import apply_filter

    rng = np.random.default_rng(7)
    img = rng.normal(100.0, 20.0, (18, 18, 18))
    ref = apply_filter(img, (1.0, 1.0, 1.0), spec)
    for axes in ((0, 1), (1, 2), (0, 2)):
        rotated = apply_filter(np.rot90(img, 1, axes), (1.0, 1.0, 1.0), spec)
        np.testing.assert_allclose(rotated, np.rot90(ref, 1, axes), atol=1e-9)
    oriented = apply_filter(img, (1.0, 1.0, 1.0), dict(spec, rotation="none"))
    assert not np.allclose(apply_filter(np.rot90(img, 1, (1, 2)), (1.0, 1.0, 1.0), dict(spec, rotation="none")),
                           np.rot90(oriented, 1, (1, 2)))  # the single-orientation filter is not invariant


@pytest.mark.parametrize("preset,spec", [
    ("ibsi2-2d", dict(kind="laws", kernel="L5E5", rotation="max", energy=True, boundary="mirror", dims="2D")),
    ("ibsi2-2d", dict(kind="wavelet", wavelet="db3", decomposition="HH", level=2, rotation="average", dims="2D")),
    ("ibsi2-3d", dict(kind="log", sigma_mm=1.5, boundary="nearest")),
])
def test_cropped_filtering_equals_whole_image(preset, spec, external_data, monkeypatch):
    """The engine filters a crop widened by the filter's reach; ROI values equal filtering the whole image."""
    import dataclasses

    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics import filters
    from nmkit.radiomics.engine import filtered_roi
    from nmkit.radiomics.presets import load_config

    root = external_data / "ibsi/ibsi_1_ct_radiomics_phantom/nifti"
    if not (root / "image/phantom.nii.gz").is_file():
        pytest.skip("IBSI CT phantom not available")
    image, mask = read_volume(root / "image/phantom.nii.gz"), read_label_map(root / "mask/mask.nii.gz")
    cfg = dataclasses.replace(load_config(preset), filter=spec)
    crop, _ = filtered_roi(image, mask, cfg)
    monkeypatch.setattr(filters, "margin_voxels", lambda s, sp: filters.WHOLE_IMAGE)
    whole, _ = filtered_roi(image, mask, cfg)
    assert crop.image.size < whole.image.size  # the crop really is smaller
    np.testing.assert_array_equal(crop.int_mask.sum(), whole.int_mask.sum())
    np.testing.assert_allclose(np.sort(crop.values), np.sort(whole.values), rtol=0, atol=1e-9 * np.abs(whole.values).max())


def test_log_filters_the_same_physical_scale_on_anisotropic_grids():
    """A Gaussian blob sampled at 1 x 1 x 1 mm and at 1 x 1 x 2 mm: the LoG (sigma 3 mm) responses agree where the
    grids share points (each axis gets sigma_mm / spacing), and match the analytic LoG of the blob."""
    from nmkit.radiomics.filters import apply_filter

    def blob(dz):
        z = (np.arange(int(40 / dz)) - int(40 / dz) // 2) * dz
        y = x = np.arange(41) - 20.0
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        return 1000.0 * np.exp(-(xx ** 2 + yy ** 2 + zz ** 2) / (2 * 4.0 ** 2)), z

    spec = dict(kind="log", sigma_mm=3.0, boundary="nearest")
    iso, z_iso = blob(1.0)
    ani, z_ani = blob(2.0)
    r_iso = apply_filter(iso, (1.0, 1.0, 1.0), spec)
    r_ani = apply_filter(ani, (1.0, 1.0, 2.0), spec)
    common = [int(np.argmin(abs(z_iso - z))) for z in z_ani]
    assert np.allclose(z_iso[common], z_ani)
    centre = float(r_iso[20, 20, 20])
    # analytic: LoG(sigma) * G(s) = Laplacian of G(sqrt(s^2 + sigma^2)) scaled: at the centre -3 A s^3 / S^5
    s2 = 4.0 ** 2 + 3.0 ** 2
    assert centre == pytest.approx(-3 * 1000.0 * 4.0 ** 3 / s2 ** 2.5, rel=0.03)
    np.testing.assert_allclose(r_ani, r_iso[common], atol=0.03 * abs(centre))


def test_filter_dims_default_to_the_config_dims():
    from nmkit.radiomics.config import RadiomicsConfig

    assert RadiomicsConfig.from_dict({"dims": "2D", "filter": {"kind": "mean", "support": 3}}).filter.dims == "2D"
    assert RadiomicsConfig.from_dict({"dims": "3D", "filter": {"kind": "mean", "support": 3}}).filter.dims == "3D"
    assert RadiomicsConfig.from_dict({"dims": "2D", "filter": {"kind": "mean", "dims": "3D"}}).filter.dims == "3D"


@pytest.mark.parametrize("wave", [(3, 5, 2), (2, -3, 1)])
def test_steered_riesz_follows_the_local_orientation(wave):
    """A plane wave in an oblique direction: the second-order Riesz transform steered to the structure tensor's
    dominant axis is -1 x the LoG response (the wave's own direction), whatever the direction; the unsteered
    x-axis transform is not. The steered filter also commutes with right-angle rotations."""
    from nmkit.radiomics.filters import apply_filter

    n = 32
    z, y, x = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    img = 100.0 * np.cos(2 * np.pi * (wave[0] * z + wave[1] * y + wave[2] * x) / n)
    base = dict(kind="riesz_log", sigma_mm=1.5, riesz_order=(2, 0, 0), boundary="periodic")
    log = apply_filter(img, (1.0, 1.0, 1.0), dict(kind="log", sigma_mm=1.5, boundary="periodic"))
    steered = apply_filter(img, (1.0, 1.0, 1.0), dict(base, steer=True))
    plain = apply_filter(img, (1.0, 1.0, 1.0), base)
    scale = np.abs(log).max()
    assert np.abs(steered + log).max() < 0.02 * scale
    assert np.abs(plain + log).max() > 0.5 * scale
    # a random smooth texture has a full local frame (a plane wave leaves y', z' undetermined)
    from scipy import ndimage

    tex = ndimage.gaussian_filter(np.random.default_rng(1).normal(0.0, 100.0, (24, 24, 24)), 1.5, mode="wrap")
    spec = dict(base, riesz_order=(0, 2, 0), steer=True)
    reference = apply_filter(tex, (1.0, 1.0, 1.0), spec)
    for axes in ((0, 1), (1, 2)):
        rotated = apply_filter(np.rot90(tex, 1, axes), (1.0, 1.0, 1.0), spec)
        np.testing.assert_allclose(rotated, np.rot90(reference, 1, axes), atol=1e-8 * np.abs(reference).max())


@pytest.mark.parametrize("spec", [
    dict(kind="wavelet", wavelet="db3", decomposition="LLH", boundary="mirror"),
    dict(kind="wavelet", wavelet="db3", decomposition="HHH", level=2, boundary="nearest"),
    dict(kind="wavelet", wavelet="coif1", decomposition="HHL", boundary="periodic"),
])
def test_factorised_average_pooling_equals_24_rotations(spec, monkeypatch):
    """The few-pass average over rotations of a separable wavelet equals rotating the image 24 times."""
    from nmkit.radiomics import filters

    img = np.random.default_rng(3).normal(0.0, 100.0, (14, 15, 16))
    spec = dict(spec, rotation="average")
    fast = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    monkeypatch.setattr(filters, "_average_pooled_separable", lambda a, s: None)
    slow = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    np.testing.assert_allclose(fast, slow, atol=1e-12 * np.abs(slow).max())


def test_units_of_a_log_response_are_image_units_per_voxel_squared(tmp_path):
    """The units file follows the filter: a LoG response is a second derivative (image unit per voxel^2)."""
    import json

    import numpy as np
    import SimpleITK as sitk

    from nmkit.cli import main

    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray((rng.normal(100, 50, (20, 24, 24))).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    mask_arr = np.zeros((20, 24, 24), np.uint8)
    mask_arr[6:14, 8:16, 8:16] = 1
    mask = sitk.GetImageFromArray(mask_arr)
    mask.CopyInformation(image)
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    (tmp_path / "log.yaml").write_text("base: ibsi2-3d\nfilter: {kind: log, sigma_mm: 3.0, boundary: mirror}\n")
    assert main(["radiomics", "--image", str(tmp_path / "img.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
                 "--config", str(tmp_path / "log.yaml"), "--out", str(tmp_path / "f.csv")]) == 0
    units = json.loads((tmp_path / "f.csv.units.json").read_text())
    assert units["response_units"].endswith("per voxel^2") and units["columns"]["stat_mean"].endswith("per voxel^2")
