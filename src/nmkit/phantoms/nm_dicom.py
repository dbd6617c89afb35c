"""DICOM NM Image Storage writer for planar (static) scintigraphy, as a gamma camera would export it.

Why: downstream nmkit tools (readers, catalogues, ROI import, the DICOM node) must be exercised on files that
look like real camera output, so simulated scans are written with the same modules and attributes:

* SOP Class NM Image Storage ``1.2.840.10008.5.1.4.1.1.20``, Explicit VR Little Endian, uint16 counts.
* NM Multi-frame module with ``NumberOfFrames = 1`` and ``FrameIncrementPointer`` -> EnergyWindowVector,
  DetectorVector (what cameras write for a STATIC image); ``ImageType = ORIGINAL\\PRIMARY\\STATIC\\EMISSION``.
* Energy window centred on the photopeak (+-10 %): Tc-99m 140.5 keV (126.5-154.6), I-123 159 keV
  (143.1-174.9), I-131 364.5 keV (328.0-400.9).
* Radiopharmaceutical information with CID 25 agents (sodium pertechnetate Tc-99m SCT 19495007, sodium iodide
  I-123 SCT 67690002 / I-131 SCT 111160004) and CID 18 radionuclides (SCT 72454006 / 21572004 / 1368003),
  half-lives (Tc-99m 21624 s, I-123 47600 s, I-131 692928 s), dose and injection time.
* Detector information: collimator (``PINH`` / ``PARA`` with its name), anterior view (CID 26, SCT 399321004
  "Anterior projection"), ``ImageOrientationPatient`` = [1,0,0, 0,0,-1] (columns run to the patient's left,
  rows to the feet, as seen from the front) and ``ImagePositionPatient`` of the first pixel centre.
* Acquisition: preset counts (``AcquisitionTerminationCondition = CNTS``), ``CountsAccumulated``,
  ``ActualFrameDuration`` (ms), acquisition date/time, and "nmkit phantom" as manufacturer.

Everything (UIDs, dates) is passed in or derived from the caller's seed, so the same inputs give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..errors import DicomReadError, InputError

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
_UID_NAMESPACE = __import__("uuid").uuid5(__import__("uuid").NAMESPACE_URL, "https://nmkit/phantoms/uids")

#: isotope -> (photopeak keV, half-life s, CID 18 code, CID 18 meaning, agent code (CID 25), agent meaning, agent name)
ISOTOPE_INFO: dict[str, tuple[float, float, str, str, str, str, str]] = {
    "Tc99m": (140.5, 21624.0, "72454006", "^99m^Technetium", "19495007", "Sodium pertechnetate Tc^99m^", "Sodium pertechnetate"),
    "I123": (159.0, 47600.0, "21572004", "^123^Iodine", "67690002", "Sodium iodide I^123^", "Sodium iodide"),
    "I131": (364.5, 692928.0, "1368003", "^131^Iodine", "111160004", "Sodium iodide I^131^", "Sodium iodide"),
}
COLLIMATOR_INFO = {  # (CollimatorType defined term, CollimatorGridName by isotope energy class)
    "pinhole": ("PINH", {"Tc99m": "PINHOLE 3MM", "I123": "PINHOLE 3MM", "I131": "PINHOLE 4MM W"}),
    "parallel": ("PARA", {"Tc99m": "LEHR", "I123": "LEHR", "I131": "HEGP"}),
}


def deterministic_uid(*parts: Any) -> str:
    """A DICOM UID (2.25 form) derived from ``parts`` (e.g. seed, case, 'series'): same parts, same UID.

    The UUID is a name-based (version 5) UUID of the parts in an nmkit namespace, so it is reproducible
    across runs and machines, unlike pydicom's ``generate_uid(prefix=None)`` which is random.
    """
    import uuid

    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _da(d: _dt.datetime) -> str:
    return d.strftime("%Y%m%d")


def _tm(d: _dt.datetime) -> str:
    return d.strftime("%H%M%S")


def write_nm_planar(counts: np.ndarray, path: str | Path, params: Mapping[str, Any], info: Mapping[str, Any]) -> Path:
    """Write one static planar NM image (anterior view) and return its path.

    ``counts``: 2D uint16-compatible array (rows, cols). ``params``: the simulation parameters (``isotope``,
    ``collimator``, ``pixel_spacing_mm``; optional ``total_counts_recorded``, ``pathology``). ``info``: identity
    and acquisition facts - ``patient_name``, ``patient_id``, ``study_uid``, ``series_uid``, ``sop_uid``,
    ``frame_of_reference_uid``, ``acquisition_datetime`` (datetime), ``injection_datetime``, ``activity_mbq``,
    ``frame_duration_ms``; optional ``birth_date`` (YYYYMMDD), ``sex``, ``study_id``, ``accession``,
    ``series_number``, ``study_description``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    path = Path(path)
    arr = np.asarray(counts)
    if arr.ndim != 2:
        raise InputError(path, f"a planar NM image needs a 2D counts array, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535 or not np.all(np.equal(np.mod(arr, 1), 0))):
        raise InputError(path, "counts must be non-negative integers below 65536 to be stored as uint16")
    arr = arr.astype("<u2")
    isotope = params["isotope"]
    collimator = params["collimator"]
    if isotope not in ISOTOPE_INFO:
        raise InputError(path, f"unknown isotope {isotope!r}; known: {sorted(ISOTOPE_INFO)}")
    if collimator not in COLLIMATOR_INFO:
        raise InputError(path, f"unknown collimator {collimator!r}; known: {sorted(COLLIMATOR_INFO)}")
    for key in ("patient_name", "patient_id", "study_uid", "series_uid", "sop_uid", "acquisition_datetime"):
        if key not in info:
            raise InputError(path, f"missing '{key}' for the DICOM header")
    keV, half_life, nuc_code, nuc_meaning, agent_code, agent_meaning, agent_name = ISOTOPE_INFO[isotope]
    coll_type, grid_names = COLLIMATOR_INFO[collimator]
    spacing = float(params["pixel_spacing_mm"])
    rows, cols = arr.shape
    acq: _dt.datetime = info["acquisition_datetime"]
    inj: _dt.datetime = info.get("injection_datetime", acq - _dt.timedelta(minutes=20))
    total = int(arr.sum(dtype=np.int64))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = info["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"NMKIT_{__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = info["sop_uid"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(acq)
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(acq)
    ds.AccessionNumber = str(info.get("accession", ""))
    ds.Modality = "NM"
    ds.Manufacturer = "nmkit phantom"
    ds.ManufacturerModelName = "thyroid scintigraphy simulator"
    ds.SoftwareVersions = __version__
    ds.DeviceSerialNumber = "0"
    ds.StationName = "NMKIT-SIM"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = str(info.get("study_description", "Thyroid scintigraphy"))
    ds.SeriesDescription = f"Thyroid {isotope} {collimator} ANT"
    ds.BodyPartExamined = "THYROID"
    ds.PatientName = info["patient_name"]
    ds.PatientID = info["patient_id"]
    ds.PatientBirthDate = str(info.get("birth_date", ""))
    ds.PatientSex = str(info.get("sex", ""))
    ds.StudyInstanceUID = info["study_uid"]
    ds.SeriesInstanceUID = info["series_uid"]
    ds.StudyID = str(info.get("study_id", "1"))
    ds.SeriesNumber = int(info.get("series_number", 1))
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = info.get("frame_of_reference_uid") or deterministic_uid(info["series_uid"], "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.PatientOrientation = ["L", "F"]

    # image pixel + NM image modules
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.ImageID = "ANT"
    ds.CountsAccumulated = total
    ds.AcquisitionTerminationCondition = "CNTS"
    ds.ActualFrameDuration = int(info.get("frame_duration_ms", 300000))
    ds.PatientPosition = "HFS"

    # NM multi-frame module
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # EnergyWindowVector, DetectorVector
    ds.EnergyWindowVector = [1]
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = [1]
    ds.NumberOfDetectors = 1

    window = Dataset()
    rng_item = Dataset()
    rng_item.EnergyWindowLowerLimit = f"{keV * 0.9:.1f}"
    rng_item.EnergyWindowUpperLimit = f"{keV * 1.1:.1f}"
    window.EnergyWindowRangeSequence = Sequence([rng_item])
    window.EnergyWindowName = f"{isotope} {keV:g}keV"
    ds.EnergyWindowInformationSequence = Sequence([window])

    radio = Dataset()
    radio.Radiopharmaceutical = agent_name
    radio.RadiopharmaceuticalRoute = "Intravenous" if isotope == "Tc99m" else "Oral"
    radio.RadiopharmaceuticalStartDateTime = inj.strftime("%Y%m%d%H%M%S")
    radio.RadiopharmaceuticalStartTime = _tm(inj)
    radio.RadionuclideTotalDose = f"{float(info.get('activity_mbq', 80.0)):.1f}"
    radio.RadionuclideHalfLife = f"{half_life:g}"
    radio.RadionuclideCodeSequence = Sequence([_code(nuc_code, "SCT", nuc_meaning)])
    radio.RadiopharmaceuticalCodeSequence = Sequence([_code(agent_code, "SCT", agent_meaning)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([radio])

    det = Dataset()
    det.CollimatorGridName = grid_names[isotope]
    det.CollimatorType = coll_type
    if coll_type == "PINH":
        det.FocalDistance = [230]
    det.ZoomFactor = [1.0, 1.0] if coll_type == "PINH" else [2.8, 2.8]
    det.ImagePositionPatient = [f"{-(cols - 1) / 2 * spacing:.4f}", "-100.0", f"{(rows - 1) / 2 * spacing:.4f}"]
    det.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    det.ViewCodeSequence = Sequence([_code("399321004", "SCT", "Anterior projection")])
    ds.DetectorInformationSequence = Sequence([det])

    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def planar_image_geometry(path: str | Path) -> dict[str, Any]:
    """2D geometry of a planar NM file for masks on its pixel grid: spacing (col, row) mm, origin (0, 0), identity.

    The 2D plane is the detector plane in pixel order; its 3D placement is recorded in the DICOM
    DetectorInformationSequence (``ImagePositionPatient``/``ImageOrientationPatient``).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for broken files
        raise DicomReadError(path, f"cannot read DICOM header: {exc}") from exc
    if "PixelSpacing" not in ds:
        raise DicomReadError(path, "no PixelSpacing: the planar image has no physical pixel size")
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    return {"spacing": (col_mm, row_mm), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0),
            "shape": (int(ds.Rows), int(ds.Columns))}
