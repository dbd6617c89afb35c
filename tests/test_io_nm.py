"""NM multi-frame readers: GE TOMO projections, planar whole-body, RECON TOMO with negative slice spacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import need
from nmkit.errors import DicomReadError
from nmkit.io.nm import frame_table, read_nm_planar, read_nm_projections, read_nm_recon
from nmkit.io.reader import read_image

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


def _nm_file(path: Path, frames: np.ndarray, image_type: str, vectors: dict[str, list[int]], **attrs) -> Path:
    """A minimal but valid NM Image Storage file with the given frames and frame vectors."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NM_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = NM_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.SeriesDescription = "NM", "SYNTH", f"synthetic {image_type}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "EMISSION"]
    ds.AcquisitionDate, ds.AcquisitionTime = "20240301", "101500"
    ds.ActualFrameDuration = 20000
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = ["4.0", "3.0"]  # row spacing 4 mm, column spacing 3 mm
    ds.FrameIncrementPointer = [pydicom.datadict.tag_for_keyword(k) for k in vectors]
    for keyword, values in vectors.items():
        setattr(ds, keyword, values)
    ew = Dataset()
    rng = Dataset()
    rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = "126.45", "154.55"
    ew.EnergyWindowRangeSequence = Sequence([rng])
    ew.EnergyWindowName = "Tc99m"
    ds.EnergyWindowInformationSequence = Sequence([ew])
    ds.NumberOfEnergyWindows = 1
    rp = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-163A8", "SRT", "^99m^Technetium"
    rp.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _detector(view: str | None, ipp=None, iop=None) -> Dataset:
    item = Dataset()
    item.CollimatorGridName, item.CollimatorType = "LEHR", "PARA"
    if view:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = {"anterior": "G-A117", "posterior": "G-A118"}[view], "SRT"
        code.CodeMeaning = view
        item.ViewCodeSequence = Sequence([code])
    if ipp is not None:
        item.ImagePositionPatient = [f"{v:g}" for v in ipp]
        item.ImageOrientationPatient = [f"{v:g}" for v in iop]
    return item


# ----- GE Discovery 670 TOMO projections ----------------------------------------------------------------
def test_ge_tomo_projections_split_per_bed_window_view(external_data):
    folder = need(external_data, "nm_tomo_projections/NM")
    sets = read_nm_projections(folder)
    assert len(sets) == 2 * 6  # 2 beds x 6 energy windows, 1 detector, 1 rotation
    assert sorted({s.key for s in sets}) == [(bed, ew, 1, 1) for bed in (1, 2) for ew in range(1, 7)]
    for s in sets:
        assert s.image.array.shape == (60, 128, 128)
        assert s.image.units == "counts" and s.image.spacing == (4.4196, 4.4196)
        angles = np.sort(s.angles_deg)
        assert len(np.unique(np.round(angles, 3))) == 60
        np.testing.assert_allclose(np.diff(angles), 6.0, atol=1e-6)  # 60 x 6 deg = a full circle
        assert angles[-1] - angles[0] == pytest.approx(354.0)
        assert s.frame_duration_ms == 25000
    first = [s for s in sets if s.bed == 1]
    names = [s.energy_window["name"] for s in first]
    assert names == ["Lu177_EM", "Lu177_EM", "sc4_SC", "sc3_SC", "sc2_SC", "96.0_SC"]
    assert (first[0].energy_window["lower_keV"], first[0].energy_window["upper_keV"]) == (101.7, 124.3)
    assert (first[1].energy_window["lower_keV"], first[1].energy_window["upper_keV"]) == (187.2, 228.8)
    # CC rotation from 180.16 deg: the second view is 6 deg lower
    assert first[0].angles_deg[:2].tolist() == pytest.approx([180.16, 174.16])
    # photopeak windows hold more counts than the narrow scatter windows
    totals = {s.energy_window["index"]: float(s.image.array.sum()) for s in first}
    assert totals[2] > totals[3] and totals[1] > totals[6]
    assert first[0].meta["collimator"] == "MEGP"


def test_ge_tomo_via_read_image_keeps_frame_labels(external_data):
    image = read_image(need(external_data, "nm_tomo_projections/NM/bed2_projections.dcm"))
    assert image.array.shape == (360, 128, 128) and image.units == "counts"
    assert len(image.meta["frames"]) == 360
    assert image.meta["energy_windows"][5]["name"] == "96.0_SC"


# ----- planar whole body -------------------------------------------------------------------------------
def test_pydicom_whole_body_bone_scan_loads_as_planar_view(external_data):
    path = need(external_data, "dicom_corpus/pydicom_data/data_store/data/JPEG-LL.dcm")
    views = read_nm_planar(path)
    # this GE Millennium export holds one detector (one view) of the whole-body sweep
    assert list(views) == ["detector1"]
    wb = views["detector1"]
    assert wb.array.shape == (1024, 256) and wb.spacing == (2.26, 2.26)
    assert wb.units == "counts" and wb.modality == "NM"
    assert wb.array.shape[0] * wb.spacing[1] == pytest.approx(2314.24)  # the 2.3 m whole-body field
    profile = wb.array.sum(axis=1)
    assert profile[:40].sum() < 0.01 * profile.sum()  # empty above the head
    assert read_image(path).array.shape == (1024, 256)


def test_synthetic_whole_body_anterior_posterior_split(tmp_path):
    rng = np.random.default_rng(0)
    ant = rng.poisson(5.0, (64, 16)).astype(np.uint16)
    post = rng.poisson(9.0, (64, 16)).astype(np.uint16)
    path = _nm_file(tmp_path / "wb.dcm", np.stack([post, ant]), "WHOLE BODY",
                    {"EnergyWindowVector": [1, 1], "DetectorVector": [2, 1]},
                    DetectorInformationSequence=Sequence([_detector("anterior"), _detector("posterior")]), NumberOfDetectors=2)
    views = read_nm_planar(path)
    assert sorted(views) == ["ANT", "POST"]
    np.testing.assert_array_equal(views["ANT"].array, ant)
    np.testing.assert_array_equal(views["POST"].array, post)
    assert views["ANT"].spacing == (3.0, 4.0)  # (column, row) spacing
    assert views["POST"].meta["collimator"] == "LEHR" and views["POST"].meta["Radionuclide"] == "^99m^Technetium"
    assert views["ANT"].meta["ActualFrameDuration"] == 20000
    both = read_image(path)
    assert both.array.shape == (2, 64, 16) and both.meta["frames"] == ["ANT", "POST"]


def test_frame_vector_missing_is_a_clear_error(tmp_path):
    path = _nm_file(tmp_path / "bad.dcm", np.zeros((2, 4, 4)), "STATIC", {"DetectorVector": [1, 2]})
    ds = pydicom.dcmread(path)
    ds.FrameIncrementPointer = [pydicom.datadict.tag_for_keyword("DetectorVector"), pydicom.datadict.tag_for_keyword("EnergyWindowVector")]
    with pytest.raises(DicomReadError, match="EnergyWindowVector"):
        frame_table(ds, path)
    ds.DetectorVector = [1, 2, 1]
    ds.FrameIncrementPointer = pydicom.datadict.tag_for_keyword("DetectorVector")
    with pytest.raises(DicomReadError, match="3 values for 2 frames"):
        frame_table(ds, path)


# ----- RECON TOMO ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing_between_slices", [-4.5, 4.5])
def test_recon_tomo_slice_positions(tmp_path, spacing_between_slices):
    n = 6
    frames = np.zeros((n, 8, 10), np.uint16)
    for k in range(n):
        frames[k, 2, 3] = 100 + k  # a marker: frame k has value 100 + k at row 2, column 3
    ipp, iop = (-20.0, -30.0, 200.0), (1, 0, 0, 0, 1, 0)
    path = _nm_file(tmp_path / "recon.dcm", frames, "RECON TOMO", {"SliceVector": list(range(1, n + 1))},
                    DetectorInformationSequence=Sequence([_detector(None, ipp, iop)]), SpacingBetweenSlices=f"{spacing_between_slices:g}",
                    SliceThickness="4.5")
    image = read_nm_recon(path)
    assert image.array.shape == (n, 8, 10) and image.spacing == (3.0, 4.0, 4.5)
    assert image.units == "counts"
    for k in range(n):
        # DICOM: frame k lies at IPP + k * SpacingBetweenSlices * (row x col)
        expected = np.array(ipp) + np.array([3 * 3.0, 2 * 4.0, k * spacing_between_slices])
        index = np.argwhere(image.array == 100 + k)
        assert len(index) == 1
        kk, jj, ii = index[0]
        np.testing.assert_allclose(image.index_to_physical(np.array([ii, jj, kk])), expected, atol=1e-6)
    assert image.meta["slices_reversed"] == (spacing_between_slices < 0)
    assert np.linalg.det(image.direction_matrix) == pytest.approx(1.0)
    # the same through the generic entry point and through SimpleITK (physical positions survive)
    again = read_image(path)
    assert again.same_grid(image)
    sitk_img = image.to_sitk()
    assert sitk_img.TransformIndexToPhysicalPoint((3, 2, 0))[2] == pytest.approx(min(200.0, 200.0 + (n - 1) * spacing_between_slices))


def test_recon_tomo_without_geometry_is_refused(tmp_path):
    path = _nm_file(tmp_path / "nogeo.dcm", np.zeros((3, 4, 4)), "RECON TOMO", {"SliceVector": [1, 2, 3]}, SpacingBetweenSlices="2")
    with pytest.raises(DicomReadError, match="ImagePositionPatient") as info:
        read_nm_recon(path)
    assert "nogeo.dcm" in str(info.value)
