"""DICOM output of simulated SPECT/CT studies: CT slices, NM RECON TOMO multi-frame and PT-style Bq/ml slices.

What a workstation would receive from a SPECT/CT camera:

* the CT series as single-frame CT Image Storage slices in HU (int16, RescaleIntercept 0);
* each reconstruction twice - as one NM Image Storage multi-frame instance (ImageType ``RECON TOMO``, frames along
  the SliceVector, Detector Information Sequence carrying position/orientation, Units ``BQML`` with a rescale slope)
  and as PET Image Storage single-frame slices in Bq/ml (how Siemens stores quantitative xSPECT: ``PT``, Units
  ``BQML``, a per-slice RescaleSlope);
* all series share StudyInstanceUID and FrameOfReferenceUID; the truth (activity, masks, mu map) goes to NIfTI and a
  ``provenance.json`` records configuration and library versions.

UIDs are derived from the patient id, seed and series name (``pydicom.uid.generate_uid(entropy_srcs=...)``), so the
same seed writes byte-identical headers apart from nothing time-dependent (dates are fixed study dates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..io.image import Image, Mask

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
TC99M_HALF_LIFE_S = 21624.12
STUDY_DATE = "20260101"
STUDY_TIME = "093000"


def _uid(*parts: Any) -> str:
    return generate_uid(entropy_srcs=["nmkit-phantom", *[str(p) for p in parts]])


def _base(sop_class: str, sop_uid: str, modality: str, common: Mapping[str, Any]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid("implementation")
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    for key, value in common.items():
        setattr(ds, key, value)
    ds.Manufacturer = "nmkit (simulated)"
    ds.ManufacturerModelName = "nmkit SPECT/CT simulator"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = common.get("BodyPartExamined", "PHANTOM")
    return ds


def _pixels(ds: Dataset, arr: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.Rows, ds.Columns = int(arr.shape[-2]), int(arr.shape[-1])
    ds.PixelData = np.ascontiguousarray(arr.astype("<i2" if signed else "<u2")).tobytes()


def _geometry_check(image: Image, name: str) -> None:
    if image.ndim_spatial != 3 or image.array.ndim != 3:
        raise ValueError(f"{name}: need a 3D image, got {image!r}")


def _slice_position(image: Image, k: int) -> list[float]:
    return [float(v) for v in image.index_to_physical(np.array([0.0, 0.0, float(k)]))]


def _orientation(image: Image) -> list[float]:
    d = image.direction_matrix
    return [float(v) for v in (*d[:, 0], *d[:, 1])]


def write_ct_series(ct: Image, folder: str | Path, common: Mapping[str, Any], series_uid: str, series_number: int = 1) -> list[Path]:
    """CT Image Storage slices (HU, int16)."""
    _geometry_check(ct, "CT")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.clip(np.round(ct.array), -1024, 3071).astype(np.int16)
    paths = []
    for k in range(hu.shape[0]):
        ds = _base(CT_IMAGE_STORAGE, _uid(series_uid, k), "CT", common)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = "CT attenuation/localisation (simulated)"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _slice_position(ct, k)
        ds.ImageOrientationPatient = _orientation(ct)
        ds.PixelSpacing = [float(ct.spacing[1]), float(ct.spacing[0])]
        ds.SliceThickness = float(ct.spacing[2])
        ds.KVP = 120
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        _pixels(ds, hu[k], signed=True)
        path = folder / f"CT_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _radiopharmaceutical(activity_mbq: float) -> Sequence:
    item = Dataset()
    item.Radiopharmaceutical = "Tc-99m"
    item.RadionuclideHalfLife = TC99M_HALF_LIFE_S
    item.RadionuclideTotalDose = float(activity_mbq) * 1e6
    item.RadiopharmaceuticalStartTime = STUDY_TIME
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-163A8", "SRT", "^99m^Technetium"
    item.RadionuclideCodeSequence = Sequence([code])
    return Sequence([item])


def write_pt_series(image: Image, folder: str | Path, common: Mapping[str, Any], series_uid: str, description: str,
                    series_number: int, total_activity_mbq: float) -> list[Path]:
    """Quantitative reconstruction as PET Image Storage slices in Bq/ml (int16 with per-slice RescaleSlope)."""
    _geometry_check(image, description)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.asarray(image.array, dtype=np.float64), 0, None)
    paths = []
    for k in range(arr.shape[0]):
        mx = float(arr[k].max())
        slope = mx / 32767.0 if mx > 0 else 1.0
        ds = _base(PET_IMAGE_STORAGE, _uid(series_uid, k), "PT", common)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = k + 1
        ds.ImageIndex = k + 1
        ds.NumberOfSlices = int(arr.shape[0])
        ds.ImagePositionPatient = _slice_position(image, k)
        ds.ImageOrientationPatient = _orientation(image)
        ds.PixelSpacing = [float(image.spacing[1]), float(image.spacing[0])]
        ds.SliceThickness = float(image.spacing[2])
        ds.Units = "BQML"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.CorrectedImage = ["ATTN", "DECY"]
        ds.DecayCorrection = "START"
        ds.CountsSource = "EMISSION"
        ds.RescaleSlope = f"{slope:.10g}"[:16]
        ds.RescaleIntercept = 0
        ds.RadiopharmaceuticalInformationSequence = _radiopharmaceutical(total_activity_mbq)
        ds.ReconstructionMethod = str(image.meta.get("reconstruction", ""))[:64]
        _pixels(ds, np.round(arr[k] / float(ds.RescaleSlope)), signed=True)
        path = folder / f"PT_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nm_recon(image: Image, path: str | Path, common: Mapping[str, Any], series_uid: str, description: str,
                   series_number: int, total_activity_mbq: float) -> Path:
    """One NM Image Storage multi-frame RECON TOMO instance (uint16 + RescaleSlope to Bq/ml, Units BQML)."""
    _geometry_check(image, description)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.asarray(image.array, dtype=np.float64), 0, None)
    mx = float(arr.max())
    slope = float(f"{(mx / 65535.0 if mx > 0 else 1.0):.10g}"[:16])
    ds = _base(NM_IMAGE_STORAGE, _uid(series_uid, "nm"), "NM", common)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.InstanceNumber = 1
    nz = int(arr.shape[0])
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = pydicom.tag.Tag("SliceVector")
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.PixelSpacing = [float(image.spacing[1]), float(image.spacing[0])]
    ds.SliceThickness = float(image.spacing[2])
    ds.SpacingBetweenSlices = float(image.spacing[2])
    ds.ImagePositionPatient = _slice_position(image, 0)
    ds.ImageOrientationPatient = _orientation(image)
    det = Dataset()
    det.ImagePositionPatient = ds.ImagePositionPatient
    det.ImageOrientationPatient = ds.ImageOrientationPatient
    ds.DetectorInformationSequence = Sequence([det])
    ds.NumberOfDetectors = 1
    win = Dataset()
    win.EnergyWindowName = "Tc99m 140 keV"
    rng = Dataset()
    rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = 126.0, 154.0
    win.EnergyWindowRangeSequence = Sequence([rng])
    ds.EnergyWindowInformationSequence = Sequence([win])
    ds.NumberOfEnergyWindows = 1
    ds.RadiopharmaceuticalInformationSequence = _radiopharmaceutical(total_activity_mbq)
    ds.Units = "BQML"
    ds.CorrectedImage = ["ATTN"]
    ds.RescaleSlope = slope
    ds.RescaleIntercept = 0
    ds.ReconstructionMethod = str(image.meta.get("reconstruction", ""))[:64]
    _pixels(ds, np.round(arr / slope), signed=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_spect_ct_study(out_dir: str | Path, ct: Image, recons: Mapping[str, Image], truth: Mapping[str, Image],
                         patient_id: str, patient_name: str, study_description: str, config: Mapping[str, Any],
                         extra: Mapping[str, Any] | None = None, seed: int = 0, body_part: str = "PHANTOM",
                         formats: tuple[str, ...] = ("NM", "PT")) -> dict[str, Any]:
    """Write one SPECT/CT study: ``CT/``, ``<RECON>_NM/``, ``<RECON>_PT/``, ``truth/*.nii.gz``, ``provenance.json``."""
    from ..io.volume_files import write_volume
    from ..provenance import library_versions, provenance

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = _uid(patient_id, seed, "study")
    common = {
        "PatientID": patient_id, "PatientName": patient_name, "PatientSex": "O", "PatientBirthDate": "",
        "StudyInstanceUID": study_uid, "StudyID": "1", "AccessionNumber": "", "ReferringPhysicianName": "",
        "StudyDate": STUDY_DATE, "StudyTime": STUDY_TIME, "SeriesDate": STUDY_DATE, "SeriesTime": STUDY_TIME,
        "AcquisitionDate": STUDY_DATE, "AcquisitionTime": STUDY_TIME, "ContentDate": STUDY_DATE, "ContentTime": STUDY_TIME,
        "StudyDescription": study_description[:64], "FrameOfReferenceUID": _uid(patient_id, seed, "for"),
        "PositionReferenceIndicator": "", "BodyPartExamined": body_part,
    }
    total_mbq = float(np.sum(truth["activity_bqml"].array, dtype=np.float64) * truth["activity_bqml"].voxel_volume / 1e9)
    written: dict[str, Any] = {"folder": out, "study_uid": study_uid, "frame_of_reference_uid": common["FrameOfReferenceUID"]}
    written["CT"] = write_ct_series(ct, out / "CT", common, _uid(patient_id, seed, "ct"), series_number=1)
    for i, (name, img) in enumerate(recons.items()):
        desc = f"{name} {img.meta.get('reconstruction', '')}".strip()[:64]
        if "NM" in formats:
            written[f"{name}_NM"] = write_nm_recon(img, out / f"{name}_NM" / f"{name}_NM.dcm", common, _uid(patient_id, seed, name, "nm"),
                                                   desc, series_number=10 + 2 * i, total_activity_mbq=total_mbq)
        if "PT" in formats:
            written[f"{name}_PT"] = write_pt_series(img, out / f"{name}_PT", common, _uid(patient_id, seed, name, "pt"),
                                                    desc, series_number=11 + 2 * i, total_activity_mbq=total_mbq)
    for name, img in truth.items():
        if isinstance(img, Mask):
            arr = img.array.astype(np.uint8)
            img = Mask(arr, spacing=img.spacing, origin=img.origin, direction=img.direction, labels=img.labels, modality="SEG")
        written[f"truth_{name}"] = write_volume(img, out / "truth" / f"{name}.nii.gz")
        if isinstance(img, Mask):  # label names next to the label map (io.roi.label_sidecar), for `nmkit quality`/`compare`
            sidecar = out / "truth" / f"{name}.labels.json"
            sidecar.write_text(json.dumps({str(k): v for k, v in img.labels.items()}, indent=1))
            written[f"truth_{name}_labels"] = sidecar
    labels = {name: {str(k): v for k, v in img.labels.items()} for name, img in truth.items() if isinstance(img, Mask)}
    record = provenance(dict(config), inputs=[], libraries=library_versions(), labels=labels, **dict(extra or {}))
    (out / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
    written["provenance"] = out / "provenance.json"
    return written
