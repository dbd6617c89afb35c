"""RTSTRUCT -> mask on real public data (IBSI CT phantom, STS PET, Lu-177 xSPECT) and mask -> RTSTRUCT -> mask.

``synthetic_ct_series`` (a small, physically plausible CT series written with pydicom) is also used by
the SEG and roi2mask tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from conftest import need
from nmkit.errors import DicomReadError, InputError
from nmkit.io.dicom_series import stack_slices
from nmkit.io.image import Mask
from nmkit.io.rtstruct import list_rois, read_rtstruct, referenced_series_uids, write_rtstruct
from nmkit.io.volume_files import read_label_map, read_volume

IBSI_CT = "ibsi/ibsi_1_ct_radiomics_phantom"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def synthetic_ct_series(folder: Path, shape=(12, 40, 48), spacing=(0.9, 0.9, 2.5), origin=(-20.0, -30.0, 100.0),
                        oblique: bool = False) -> tuple[list[Path], np.ndarray]:
    """Write a small CT series (water cylinder with a denser sphere, in HU) and return its files and the sphere mask.

    Slices are written in shuffled order with a rescale intercept of -1024, as scanners do.
    """
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = shape
    if oblique:
        th = np.deg2rad(20)
        row, col = np.array([np.cos(th), np.sin(th), 0.0]), np.array([-np.sin(th), np.cos(th), 0.0])
    else:
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    normal = np.cross(row, col)
    k, j, i = np.mgrid[:nz, :ny, :nx]
    x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
    cx, cy, cz = (nx - 1) * spacing[0] / 2, (ny - 1) * spacing[1] / 2, (nz - 1) * spacing[2] / 2
    body = (x - cx) ** 2 + (y - cy) ** 2 <= (0.45 * nx * spacing[0]) ** 2
    sphere = (x - cx - 3) ** 2 + (y - cy + 2) ** 2 + (z - cz) ** 2 <= 9.0**2
    hu = np.where(body, 0, -1000) + np.where(sphere, 60, 0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    order = np.random.default_rng(3).permutation(nz)
    for n, kk in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = "CT", "PHANTOM01", "Phantom^Water", "O", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240102", "101500", "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 2, int(kk) + 1, "nmkit-test"
        ds.SeriesDescription = "synthetic water phantom"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        pos = np.asarray(origin) + normal * kk * spacing[2]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (hu[kk] + 1024).astype(np.uint16).tobytes()
        path = folder / f"CT_{n:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files, sphere


# ----- real data ---------------------------------------------------------------------------------------
def test_ibsi_ct_phantom_rtstruct_matches_shipped_nifti_mask(external_data):
    root = need(external_data, IBSI_CT)
    image, _ = stack_slices(sorted((root / "dicom" / "image").glob("*.dcm")))
    rtstruct = root / "dicom" / "mask" / "DCM_RS_00060.dcm"
    assert list_rois(rtstruct) == {1: "GTV-1"}
    assert referenced_series_uids(rtstruct)  # the structure set names the CT series it was drawn on
    mask = read_rtstruct(rtstruct, image)
    reference = read_label_map(root / "nifti" / "mask" / "mask.nii.gz")
    nifti_image = read_volume(root / "nifti" / "image" / "phantom.nii.gz")
    assert mask.overlapping and mask.labels == {1: "GTV-1"}
    assert mask.meta["roi_colors"]["GTV-1"] == [0, 230, 0]
    assert mask.same_grid(nifti_image) and mask.same_grid(reference)
    ours, theirs = mask.binary("GTV-1"), reference.binary()
    assert dice(ours, theirs) >= 0.99
    assert abs(int(ours.sum()) - int(theirs.sum())) <= 0.01 * theirs.sum()


@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
def test_sts_pet_rtstruct_gtv_matches_nifti_gtv(external_data, patient):
    root = need(external_data, f"pet_sts/sts_images/{patient}/PET/dicom")
    expected = read_label_map(need(external_data, f"pet_sts/sts_images_flat/nifti/{patient}_PET_mask.nii.gz"))
    image, _ = stack_slices(sorted((root / "image").glob("*.dcm")))
    rtstruct = sorted((root / "mask").iterdir())[0]
    mask = read_rtstruct(rtstruct, image, roi_names=["gtv_mass_pet"])  # selection is case-insensitive
    assert mask.same_grid(expected)
    assert dice(mask.binary(), expected.binary()) >= 0.99
    assert abs(mask.voxel_count() - expected.voxel_count()) <= 0.01 * expected.voxel_count()


@pytest.mark.parametrize("scan", ["SCAN_001", "SCAN_002"])
def test_lu177_xspect_rtstruct_liver_lesions(external_data, scan):
    root = need(external_data, f"spect_lu177/{scan}")
    image, _ = stack_slices(sorted((root / "image").glob("*.dcm")))
    mask = read_rtstruct(sorted((root / "mask").iterdir())[0], image)
    assert mask.labels == {1: "lesion1 liver R lobe", 2: "lesion2 liver L lateral"}  # label value = ROI Number
    only = read_rtstruct(sorted((root / "mask").iterdir())[0], image, roi_numbers=[2])
    assert only.labels == {2: "lesion2 liver L lateral"}
    np.testing.assert_array_equal(only.binary(2), mask.binary(2))
    volumes = {name: mask.volume_ml(name) for name in mask.labels.values()}
    # a large right-lobe lesion (~100 ml) and a small left-lateral one (~3 ml): plausible tumour volumes
    assert 50 < volumes["lesion1 liver R lobe"] < 200
    assert 1 < volumes["lesion2 liver L lateral"] < 10
    a, b = mask.binary(1), mask.binary(2)
    assert not (a & b).any()  # two separate lesions
    for layer in (a, b):  # inside the image and away from its borders, where the activity is
        ks, js, is_ = np.nonzero(layer)
        assert ks.min() > 0 and ks.max() < layer.shape[0] - 1 and js.min() > 0 and is_.max() < layer.shape[2] - 1
        assert float(image.array[layer].mean()) > float(np.median(image.array))  # lesions are hotter than the median voxel


def test_frame_of_reference_mismatch_names_both_uids(external_data):
    root = need(external_data, "pet_sts/sts_images")
    image, _ = stack_slices(sorted((root / "STS_001" / "PET" / "dicom" / "image").glob("*.dcm")))
    other_rtstruct = sorted((root / "STS_002" / "PET" / "dicom" / "mask").iterdir())[0]
    with pytest.raises(DicomReadError) as err:
        read_rtstruct(other_rtstruct, image)
    assert image.meta["FrameOfReferenceUID"] in str(err.value) and "frame of reference" in str(err.value)


# ----- synthetic ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("oblique", [False, True])
def test_write_then_read_rtstruct_round_trip(tmp_path, oblique):
    files, sphere = synthetic_ct_series(tmp_path / "ct", oblique=oblique)
    image, _ = stack_slices(files)
    ring = np.zeros(image.spatial_shape, bool)
    ring[3:8, 10:30, 12:36] = True
    ring[3:8, 15:25, 18:30] = False  # a hole: written as a second contour, read back by XOR
    mask = Mask.like(image, np.stack([sphere, ring]), labels={1: "sphere", 2: "ring"}, overlapping=True)
    out = write_rtstruct(mask, image, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and ds.FrameOfReferenceUID == image.meta["FrameOfReferenceUID"]
    referenced = {c.ReferencedSOPInstanceUID for c in
                  ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence}
    assert referenced == set(image.meta["SOPInstanceUIDs"])
    assert referenced_series_uids(out) == [image.meta["SeriesInstanceUID"]]
    back = read_rtstruct(out, image)
    assert back.labels == {1: "sphere", 2: "ring"}
    for name in ("sphere", "ring"):
        assert dice(back.binary(name), mask.binary(name)) >= 0.98
    np.testing.assert_array_equal(back.array, mask.array)  # marching squares + centre rule is exact on the grid


def test_point_contours_are_ignored_with_warning_and_missing_roi_is_named(tmp_path, caplog):
    files, sphere = synthetic_ct_series(tmp_path / "ct", shape=(6, 24, 24), spacing=(1.0, 1.0, 2.0))
    image, _ = stack_slices(files)
    out = write_rtstruct(Mask.like(image, sphere.astype(np.uint8), labels={1: "lesion"}), image, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    point = Dataset()
    point.ContourGeometricType = "POINT"
    point.NumberOfContourPoints = 1
    point.ContourData = [str(v) for v in image.index_to_physical([5.0, 5.0, 2.0])]
    ds.ROIContourSequence[0].ContourSequence.append(point)
    with caplog.at_level(logging.WARNING):
        back = read_rtstruct(ds, image)
    assert "POINT" in caplog.text
    np.testing.assert_array_equal(back.binary("lesion"), sphere)
    with pytest.raises(InputError, match="liver"):
        read_rtstruct(ds, image, roi_names=["liver"])


def test_reading_a_ct_slice_as_rtstruct_fails_clearly(tmp_path):
    files, _ = synthetic_ct_series(tmp_path / "ct", shape=(3, 8, 8))
    image, _ = stack_slices(files)
    with pytest.raises(DicomReadError, match="not an RT Structure Set"):
        read_rtstruct(files[0], image)
