"""Radiograph input (nmkit.io.radiograph) on real radiographs: PNG chest X-rays and DICOM CR/DX objects.

The DICOM files are the CR/DX objects of the robustness corpus (pydicom test files, pydicom-data, highdicom), all
MONOCHROME1 with a window; the PNGs are the real chest radiographs of cxr_lungs/cxr_unlabelled (8-bit).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from conftest import need
from nmkit.errors import InputError
from nmkit.io.radiograph import is_radiograph_dataset, pixel_spacing, read_radiograph
from nmkit.io.reader import read_image

CR_SMALL = "dicom_corpus/pydicom_wheel/pydicom/data/test_files/dicomdirtests/77654033/CR1/6154"
CR_CHEST = "dicom_corpus/pydicom_data/data_store/data/RG1_J2KI.dcm"
CR_LEG = "dicom_corpus/pydicom_data/data_store/data/RG3_J2KR.dcm"
DX = "dicom_corpus/highdicom/data/test_files/dx_image.dcm"


def test_png_chest_radiographs_read_as_2d_grey(external_data):
    """Every cxr_lungs image reads at its manifest size (width x height), 8-bit range, spacing flagged as assumed."""
    import pandas as pd

    folder = need(external_data, "cxr_lungs")
    table = pd.read_csv(folder / "manifest.csv")
    for row in table.head(6).itertuples():
        image = read_radiograph(folder / "images" / f"{row.id}.png")
        assert image.array.shape == (row.height, row.width)
        assert image.array.dtype == np.float32
        assert 0 <= image.array.min() < 30 and 200 < image.array.max() <= 255  # a real radiograph spans the 8-bit range
        assert image.spacing == (1.0, 1.0) and image.meta["spacing_assumed"] and image.meta["spacing_source"] == "none"
        assert image.meta["bit_depth"] == 8
        with PILImage.open(folder / "images" / f"{row.id}.png") as im:  # the values are the stored ones
            np.testing.assert_array_equal(image.array, np.asarray(im.convert("L"), np.float32))


def test_read_image_and_training_loader_use_the_radiograph_reader(external_data):
    from nmkit.generate.data import load_folder, read_2d

    path = need(external_data, "cxr_unlabelled/images/cxr_0000.png")
    a, b = read_image(path), read_2d(path)
    assert a.meta["spacing_source"] == b.meta["spacing_source"] == "none"
    np.testing.assert_array_equal(a.array, b.array)
    assert max(a.array.shape) == 384  # longest side 384 px (README)
    images = load_folder(path.parent, limit=3)
    assert [t.name for t in images] == ["cxr_0000.png", "cxr_0001.png", "cxr_0002.png"]


def test_16bit_png_jpeg_tiff_and_colour(tmp_path, external_data):
    """A 16-bit PNG keeps its 16-bit values; JPEG/TIFF of a real radiograph read close to the PNG; RGB becomes luma."""
    src = need(external_data, "cxr_unlabelled/images/cxr_0005.png")
    grey = np.asarray(PILImage.open(src).convert("L"), np.uint16)
    wide = (grey * 257).astype(np.uint16)  # 0..65535
    PILImage.fromarray(wide).save(tmp_path / "x16.png")
    im16 = read_radiograph(tmp_path / "x16.png")
    np.testing.assert_array_equal(im16.array, wide.astype(np.float32))
    assert im16.meta["bit_depth"] == 16 and im16.array.max() > 255
    PILImage.fromarray(grey.astype(np.uint8)).save(tmp_path / "x.tif")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "x.tif").array, grey)
    PILImage.fromarray(grey.astype(np.uint8)).save(tmp_path / "x.jpg", quality=95)
    jpeg = read_image(tmp_path / "x.jpg").array
    assert np.abs(jpeg - grey).mean() < 2.0  # lossy, but the same image
    PILImage.fromarray(np.stack([grey.astype(np.uint8)] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_radiograph(tmp_path / "rgb.png").array, grey, atol=0.51)


def test_bad_bitmap_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken.png"):
        read_radiograph(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_radiograph(tmp_path / "missing.png")


def test_monochrome1_chest_cr_reads_with_bright_bone(external_data):
    """RG1 (CR chest PA, MONOCHROME1, 15-bit, window 15000/30000): after inversion the spine is brighter than the lungs."""
    path = need(external_data, CR_CHEST)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and is_radiograph_dataset(ds)
    image = read_image(path)  # through the common entry point
    assert image.meta["inverted_to_monochrome2"] and image.meta["voi"] == "window"
    assert image.array.shape == (ds.Rows, ds.Columns) == (1955, 1841)
    a = image.array
    rows = slice(int(0.3 * a.shape[0]), int(0.6 * a.shape[0]))
    w = a.shape[1]
    spine = a[rows, int(0.46 * w):int(0.54 * w)].mean()
    lungs = np.r_[a[rows, int(0.2 * w):int(0.32 * w)].ravel(), a[rows, int(0.68 * w):int(0.8 * w)].ravel()].mean()
    assert spine > lungs + 0.1 * (a.max() - a.min())
    raw = read_radiograph(path, invert_monochrome1=False).array  # stored polarity: the opposite
    assert raw[rows, int(0.46 * w):int(0.54 * w)].mean() < raw[rows, int(0.2 * w):int(0.32 * w)].mean()
    # independent check of the window + inversion: pydicom's VOI output reflected over 0..2^15-1
    expected = (2**15 - 1) - pydicom.pixels.apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    np.testing.assert_allclose(a[::50, ::50], expected[::50, ::50], rtol=1e-5, atol=1e-2)
    # RG1 has PixelSpacing 0\0 and no ImagerPixelSpacing: no usable spacing, said so
    assert image.spacing == (1.0, 1.0) and image.meta["spacing_assumed"] and image.meta["spacing_source"] == "none"


def test_cr_imager_pixel_spacing_window_and_rescale(external_data):
    """CR1/6154: ImagerPixelSpacing 0.1 mm, rescale slope 0.684, window 1600/2800, MONOCHROME1."""
    path = need(external_data, CR_SMALL)
    ds = pydicom.dcmread(path)
    image = read_radiograph(path)
    assert image.spacing == (0.1, 0.1) and image.meta["spacing_source"] == "ImagerPixelSpacing"
    assert not image.meta["spacing_assumed"]
    lo, hi = image.meta["value_range"]
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert (lo, hi) == pytest.approx((intercept, (2**ds.BitsStored - 1) * slope + intercept))
    stored = ds.pixel_array * slope + intercept
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    windowed = np.clip(((stored - (c - 0.5)) / (w - 1) + 0.5) * (hi - lo) + lo, lo, hi)  # PS3.3 C.11.2.1.2.1 LINEAR
    np.testing.assert_allclose(image.array, lo + hi - windowed, rtol=1e-5)
    assert image.modality == "CR" and image.array.shape == (16, 16)


def test_dx_pixel_spacing_takes_precedence_and_leg_cr_inverts(external_data):
    dx = read_image(need(external_data, DX))
    assert dx.modality == "DX" and dx.array.shape == (169, 211)
    assert dx.meta["spacing_source"] == "PixelSpacing"
    assert dx.spacing == pytest.approx((1.2012, 1.2))  # PixelSpacing = row (y) 1.2 \\ column (x) 1.2012
    assert 0 <= dx.array.min() and dx.array.max() <= 255 and dx.meta["inverted_to_monochrome2"]
    leg = read_radiograph(need(external_data, CR_LEG))  # a leg (10-bit CR): the leg brighter than the air beside it
    mid = leg.array[600:1200]
    assert mid[:, 800:880].mean() > mid[:, 500:620].mean() + 300


def test_voi_can_be_switched_off(external_data):
    path = need(external_data, CR_SMALL)
    ds = pydicom.dcmread(path)
    image = read_radiograph(path, voi=False, invert_monochrome1=False)
    np.testing.assert_allclose(image.array, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), rtol=1e-6)
    assert image.meta["voi"].startswith("not applied")


def test_pixel_spacing_order_and_fallthrough():
    ds = pydicom.Dataset()
    ds.PixelSpacing = [0.0, 0.0]
    ds.ImagerPixelSpacing = [0.15, 0.14]
    assert pixel_spacing(ds) == ((0.14, 0.15), "ImagerPixelSpacing")
    ds.PixelSpacing = [0.2, 0.3]
    assert pixel_spacing(ds) == ((0.3, 0.2), "PixelSpacing")
    assert pixel_spacing(pydicom.Dataset()) == ((1.0, 1.0), "none")


def test_predict_on_radiograph_files_names_outputs_by_stem(tmp_path, external_data):
    """`nmkit predict BUNDLE x.png` writes x.nii.gz (not x.png.nii.gz) on the radiograph's own grid."""
    from nmkit.cli import main
    from nmkit.io.volume_files import read_label_map
    from nmkit.segment.bundle import shipped_bundle

    src = external_data / "cxr_lungs" / "images" / "gb_001.png"
    assert main(["predict", str(shipped_bundle("thyroid-unet2d")), str(src), "--out", str(tmp_path / "pred")]) == 0
    out = tmp_path / "pred" / "gb_001.nii.gz"
    assert out.exists() and not list((tmp_path / "pred").glob("*.png.*"))
    assert read_label_map(out).array.squeeze().shape == read_radiograph(src).array.shape
