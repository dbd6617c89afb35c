"""read_image on DICOM series: xSPECT stored as PT, CT and MR slices, enhanced multi-frame, series choice, NIfTI."""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import need
from nmkit.errors import DicomReadError, InputError
from nmkit.io.image import Image
from nmkit.io.reader import list_series, read_image, read_images

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _sitk_series(folder: Path) -> Image:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return Image.from_sitk(reader.Execute())


def _sitk_series_headers(folder: Path) -> Image:
    """Series geometry as SimpleITK/GDCM gives it, from headers only (fast): GDCM's slice order, the first
    file's origin/direction, the in-plane spacing and the distance between the first two slice origins."""
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    infos = []
    for name in (files[0], files[1], files[-1]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        infos.append(reader)
    first, second, last = infos
    origin, direction = np.array(first.GetOrigin()), np.array(first.GetDirection()).reshape(3, 3)
    dz = float(np.linalg.norm(np.array(second.GetOrigin()) - origin))
    assert np.allclose(np.array(last.GetOrigin()), origin + direction[:, 2] * dz * (len(files) - 1), atol=1e-2), "not a regular stack"
    cols, rows = first.GetSize()[:2]
    return Image(array=np.broadcast_to(np.float32(0), (len(files), rows, cols)),  # geometry only, no pixels
                 spacing=(first.GetSpacing()[0], first.GetSpacing()[1], dz), origin=tuple(origin),
                 direction=tuple(direction.ravel()), meta={"files": list(files)})


def _assert_same_geometry(ours: Image, ref: Image) -> None:
    assert ours.size == ref.size
    np.testing.assert_allclose(ours.spacing, ref.spacing, atol=1e-4)
    np.testing.assert_allclose(ours.origin, ref.origin, atol=1e-3)
    np.testing.assert_allclose(ours.direction, ref.direction, atol=1e-5)


# ----- Lu-177 xSPECT stored as PT (Bq/ml) --------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _xspect(folder: Path) -> Image:
    return read_image(folder)


@pytest.mark.parametrize("scan", ["SCAN_001", "SCAN_002"])
def test_lu177_xspect_time_points_load_in_bqml(external_data, scan):
    folder = need(external_data, f"spect_lu177/{scan}")
    image = _xspect(folder)  # the scan folder holds the image series and an RTSTRUCT: the image is chosen
    assert image.modality == "PT" and image.units == "Bq/ml"
    ref = _sitk_series_headers(folder / "image")
    _assert_same_geometry(image, ref)
    assert image.size == (256, 256, 199)
    # values: SimpleITK applies the same rescale slope (100 Bq/ml per stored unit); check a few slices
    import SimpleITK as sitk

    for k in (0, 97, 198):
        expected = sitk.GetArrayFromImage(sitk.ReadImage(ref.meta["files"][k]))[0]
        np.testing.assert_allclose(image.array[k], expected.astype(np.float32), rtol=1e-6)
    assert float(image.array.min()) >= 0.0
    assert 1e5 < float(image.array.max()) < 1e8  # Bq/ml in lesions ~ 0.1-100 MBq/ml after a 7.2 GBq therapy
    total_mbq = float(image.array.sum()) * image.voxel_volume / 1000.0 / 1e6  # Bq/ml * ml
    assert 50 < total_mbq < 7210  # activity in the field of view: below the injected 7.2 GBq
    assert image.meta["Radionuclide"] == "177 Lutetium"
    assert image.meta["RadionuclideHalfLife"] == pytest.approx(574300.0)  # 6.65 days
    assert image.meta["DecayCorrection"] == "ADMIN"


def test_lu177_second_time_point_has_less_activity_than_first(external_data):
    """Decay-corrected to administration: the day-2 total must still be below day 1 (biological clearance)."""
    first = _xspect(need(external_data, "spect_lu177/SCAN_001"))
    second = _xspect(need(external_data, "spect_lu177/SCAN_002"))
    assert second.meta["AcquisitionDate"] > first.meta["AcquisitionDate"]
    assert float(second.array.sum()) < float(first.array.sum())


# ----- CT / MR single-frame series -----------------------------------------------------------------
def test_ct_series_matches_simpleitk(external_data):
    folder = need(external_data, "ct_totalsegmentator/tests/reference_files/example_ct_dicom")
    image = read_image(folder)  # these JPEG 2000 files have an empty SeriesInstanceUID: grouped by folder
    ref = _sitk_series(folder)
    _assert_same_geometry(image, ref)
    assert image.units == "HU"
    np.testing.assert_allclose(image.array, ref.array, atol=1e-3)
    assert -1100 < float(image.array.min()) < -900 and float(image.array.max()) > 500


def test_oblique_mr_slices_stacked_like_simpleitk(external_data, tmp_path):
    src = pydicom.dcmread(need(external_data, "dicom_corpus/pydicom_wheel/pydicom/data/test_files/MR_small.dcm"))
    angle = np.deg2rad(25.0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([-np.sin(angle) * np.cos(0.3), np.cos(angle) * np.cos(0.3), np.sin(0.3)])
    normal = np.cross(row, col)
    series = generate_uid()
    rng = np.random.default_rng(1)
    for k in rng.permutation(5):  # files written in shuffled order
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([-80.0, -90.0, 10.0]) + 3.0 * k * normal]
        ds.InstanceNumber = int(k) + 1
        pixels = src.pixel_array.copy()
        pixels[0, 0] = 1000 + k  # slice marker
        ds.PixelData = pixels.tobytes()
        ds.save_as(tmp_path / f"slice_{rng.integers(1e6)}.dcm")
    image = read_image(tmp_path)
    ref = _sitk_series(tmp_path)
    _assert_same_geometry(image, ref)
    assert image.spacing == pytest.approx((0.3125, 0.3125, 3.0), abs=1e-3)
    assert [int(image.array[k, 0, 0]) for k in range(5)] == [1000, 1001, 1002, 1003, 1004]
    assert image.modality == "MR"


# ----- enhanced multi-frame ----------------------------------------------------------------------------
def test_legacy_converted_enhanced_ct_equals_its_single_frame_series(external_data):
    base = need(external_data, "dicom_corpus/dcmqi/data/segmentations/23x38x3")
    multi = read_image(base / "multiframe" / "mf.dcm")
    single = read_image(base / "image")
    assert multi.same_grid(single)
    np.testing.assert_array_equal(multi.array, single.array)
    assert multi.units == "HU"


def test_enhanced_ct_per_frame_geometry(external_data):
    image = read_image(need(external_data, "dicom_corpus/pydicom_data/data_store/data/eCT_Supplemental.dcm"))
    ds = pydicom.dcmread(need(external_data, "dicom_corpus/pydicom_data/data_store/data/eCT_Supplemental.dcm"), stop_before_pixels=True)
    positions = [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in ds.PerFrameFunctionalGroupsSequence]
    assert image.array.shape == (2, 512, 512)
    # row direction is -x (IOP -1,0,0 / 0,1,0): the slice normal is -z, so slices run from z=-149 to z=-159
    assert image.direction_matrix[:, 2] == pytest.approx([0, 0, -1])
    corners = image.index_to_physical(np.array([[0, 0, 0], [0, 0, 1]]))
    assert sorted(map(tuple, corners.round(3))) == sorted(map(tuple, np.round(positions, 3)))
    assert image.spacing == pytest.approx((0.388672, 0.388672, 10.0))


# ----- choosing series ---------------------------------------------------------------------------------
def test_folder_with_two_image_series_lists_them(external_data):
    folder = need(external_data, "nm_tomo_projections/NM")
    infos = list_series(folder)
    assert len(infos) == 2 and all(i.modality == "NM" and i.is_image for i in infos)
    with pytest.raises(DicomReadError) as info:
        read_image(folder)
    for s in infos:
        assert s.series_uid in str(info.value)
    chosen = read_image(folder, series_uid=infos[1].series_uid)
    assert chosen.meta["SeriesInstanceUID"] == infos[1].series_uid
    with pytest.raises(DicomReadError, match="not found"):
        read_image(folder, series_uid="1.2.3")


def test_read_images_skips_rtstruct(external_data, caplog):
    folder = need(external_data, "pet_sts/sts_images/STS_002/PET/dicom")
    infos = list_series(folder)
    assert sorted(i.modality for i in infos) == ["PT", "RTSTRUCT"]
    assert [i.is_image for i in infos] == [True, False]
    images = read_images(folder, suv="bw")
    assert list(images) == [infos[0].series_uid]
    assert images[infos[0].series_uid].units == "g/ml"
    with pytest.raises(DicomReadError, match="RTSTRUCT"):
        read_image(folder, series_uid=infos[1].series_uid)


def test_read_images_logs_and_skips_a_broken_series(external_data, tmp_path, caplog):
    good = need(external_data, "pet_sts/sts_images/STS_003/PET/dicom/image")
    shutil.copytree(good, tmp_path / "good")
    bad_src = sorted(need(external_data, "dicom_corpus/dcmqi/data/segmentations/24x38x3/image").glob("*.dcm"))
    (tmp_path / "bad").mkdir()
    for i, path in enumerate(bad_src):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0, 0, 0]  # every slice at the same place: not a volume
        ds.save_as(tmp_path / "bad" / f"{i}.dcm")
    with caplog.at_level(logging.WARNING):
        images = read_images(tmp_path)
    assert len(images) == 1 and next(iter(images.values())).modality == "PT"
    assert "same position" in caplog.text


def test_nifti_and_bad_arguments(external_data, tmp_path):
    nifti = need(external_data, "pet_sts/sts_images_flat/nifti/STS_001_PET_image.nii.gz")
    image = read_image(nifti)
    assert image.size == (41, 43, 59)
    with pytest.raises(InputError, match="SUV"):
        read_image(nifti, suv="bw")
    with pytest.raises(InputError, match="suv must be"):
        read_image(nifti, suv="sul")
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing")
    with pytest.raises(InputError, match="PT"):
        read_image(need(external_data, "dicom_corpus/dcmqi/data/segmentations/23x38x3/image"), suv="bw")
    (tmp_path / "notes.dcm").write_text("not dicom")
    with pytest.raises(DicomReadError, match="notes.dcm"):
        read_image(tmp_path / "notes.dcm")


# ----- nmkit info ----------------------------------------------------------------------------------
def _info(argv: list[str]) -> int:
    import argparse

    from nmkit.commands import info

    parser = argparse.ArgumentParser()
    info.register(parser.add_subparsers())
    args = parser.parse_args(["info", *argv])
    return args.func(args)


def test_info_command_lists_series(external_data, capsys):
    folder = need(external_data, "pet_sts/sts_images/STS_001/PET/dicom")
    assert _info([str(folder), "--suv", "bw"]) == 0
    out = capsys.readouterr().out
    assert "PT" in out and "size 41x43x59" in out and "spacing 4.6875x4.6875x3.27 mm" in out and "units g/ml" in out
    assert "RTSTRUCT" in out and "not an image" in out
    assert _info([str(need(external_data, "nm_tomo_projections/NM")), "--json"]) == 0
    import json

    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 and all(r["frames"] == 360 and r["units"] == "counts" for r in records)
