"""Finding DICOM series in folders and stacking single-frame slices (CT, MR, PT, NM/PT SPECT slices).

Slices are ordered along the slice normal (cross product of ImageOrientationPatient rows), spacing
along the normal is measured from ImagePositionPatient (never trusted from SliceThickness), and
per-slice RescaleSlope/Intercept are applied. Problems raise ``DicomReadError`` naming the file.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import DicomReadError
from .image import Image

log = logging.getLogger(__name__)

#: attributes copied into ``Image.meta`` when present (keyword -> meta key is the keyword itself)
META_KEYWORDS = (
    "PatientID", "PatientName", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "StudyDate", "StudyDescription",
    "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "SeriesDescription", "SeriesNumber",
    "Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "ProtocolName",
    "ImageType", "Units", "CorrectedImage", "DecayCorrection", "ConvolutionKernel", "ReconstructionMethod",
    "SliceThickness", "SOPClassUID",
)

NO_SERIES_UID_PREFIX = "no-series-uid:"

SKIP_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",  # SR
    "1.2.840.10008.5.1.4.1.1.88.34",
}


@dataclass
class SeriesFiles:
    """The files of one series, found by a folder scan (headers only)."""

    series_uid: str
    modality: str
    files: list[Path] = field(default_factory=list)
    description: str = ""
    sop_class_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    number_of_frames: int = 1


def _dcmread(path: str | Path, force: bool = False, **kwargs) -> Dataset:
    """``pydicom.dcmread``; a file without the 128-byte preamble/meta header (old archives, raw datasets) is
    accepted only when a forced read finds a SOPClassUID and a Modality or Rows in it, so other files are not misread."""
    try:
        return pydicom.dcmread(str(path), force=force, **kwargs)
    except InvalidDicomError:
        if force:
            raise
        ds = pydicom.dcmread(str(path), force=True, **kwargs)
        if not (getattr(ds, "SOPClassUID", None) and (getattr(ds, "Modality", None) or getattr(ds, "Rows", None))):
            raise
        return ds


def unreadable_reason(exc: BaseException) -> str:
    """Why pydicom could not read a file, for a user: ``not a readable DICOM file (Type: message)`` without pydicom's
    programmer advice ("Use force=True ...", which a command-line user cannot act on)."""
    message = str(exc).split(" Use force=True")[0].strip()
    return f"not a readable DICOM file ({type(exc).__name__}: {message})"


def read_header(path: str | Path, force: bool = False) -> Dataset:
    """Read a DICOM header (no pixel data); raise ``DicomReadError`` naming the file on failure."""
    try:
        return _dcmread(path, force=force, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DicomReadError(path, unreadable_reason(exc)) from exc


def read_dataset(path: str | Path, force: bool = False) -> Dataset:
    """Read a full DICOM dataset; raise ``DicomReadError`` naming the file on failure."""
    try:
        return _dcmread(path, force=force)
    except Exception as exc:
        raise DicomReadError(path, unreadable_reason(exc)) from exc


def iter_dicom_files(root: str | Path) -> Iterable[Path]:
    """Every regular file under ``root`` (or ``root`` itself) that is not obviously something else."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    skip_suffixes = {".txt", ".md", ".csv", ".json", ".nii", ".gz", ".nrrd", ".png", ".jpg", ".py", ".yaml", ".yml", ".html"}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() not in skip_suffixes and not path.name.startswith("."):
            yield path


def scan_series(root: str | Path) -> dict[str, SeriesFiles]:
    """Group the DICOM files under ``root`` by SeriesInstanceUID (non-DICOM files are skipped and logged)."""
    series: dict[str, SeriesFiles] = {}
    for path in iter_dicom_files(root):
        try:
            ds = _dcmread(path, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "Modality", "SeriesDescription", "SOPClassUID", "StudyInstanceUID", "PatientID", "NumberOfFrames"])
            try:
                n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            except (TypeError, ValueError):
                n_frames = 1  # malformed value: the reader reports it when the file is read
        except Exception as exc:
            log.debug("skipping %s: %s", path, exc)
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            if not (getattr(ds, "SOPClassUID", None) or getattr(ds, "Modality", None)):
                log.debug("skipping %s: no SeriesInstanceUID, SOPClassUID or Modality", path)
                continue
            # emptied by some anonymisers: files of one folder and modality are taken as one series
            uid = f"{NO_SERIES_UID_PREFIX}{path.parent}:{getattr(ds, 'Modality', '') or ''}"
            log.warning("%s: empty SeriesInstanceUID; grouping it with the %s files of its folder", path, getattr(ds, "Modality", "") or "other")
        entry = series.get(uid)
        if entry is None:
            entry = series[uid] = SeriesFiles(
                series_uid=uid, modality=str(getattr(ds, "Modality", "") or ""), description=str(getattr(ds, "SeriesDescription", "") or ""),
                sop_class_uid=str(getattr(ds, "SOPClassUID", "") or ""), study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
                patient_id=str(getattr(ds, "PatientID", "") or ""), number_of_frames=n_frames)
        entry.files.append(path)
    return series


def dataset_meta(ds: Dataset) -> dict:
    """Key DICOM attributes as plain Python values (for ``Image.meta``)."""
    meta: dict = {}
    for kw in META_KEYWORDS:
        value = getattr(ds, kw, None)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            value = [str(v) for v in value]
        elif isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.IS)):
            value = float(value)
        elif not isinstance(value, (int, float)):
            value = str(value)
        meta[kw] = value
    return meta


def _orientation(ds: Dataset, path: Path) -> np.ndarray:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        raise DicomReadError(path, "missing or malformed ImageOrientationPatient (0020,0037)")
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    if not (np.isclose(np.linalg.norm(row), 1, atol=1e-3) and np.isclose(np.linalg.norm(col), 1, atol=1e-3)):
        row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)])


def _position(ds: Dataset, path: Path) -> np.ndarray:
    ipp = getattr(ds, "ImagePositionPatient", None)
    if ipp is None or len(ipp) != 3:
        raise DicomReadError(path, "missing or malformed ImagePositionPatient (0020,0032)")
    return np.array(ipp, float)


def pixel_array(ds: Dataset, path: Path) -> np.ndarray:
    """Decoded pixels; a clear error when the transfer syntax cannot be decoded."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError(path, "no pixel data")
    try:
        return ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise DicomReadError(path, f"pixel data cannot be decoded (transfer syntax {name}): {exc}") from exc


def rescale(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Apply RescaleSlope/Intercept (float32 when needed, original integers otherwise)."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return arr
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


def stack_slices(files: Iterable[str | Path], modality_override: str | None = None) -> tuple[Image, list[Dataset]]:
    """Stack single-frame slices of one series into a 3D image (geometry from IPP/IOP).

    Returns the image (units raw after rescale) and the datasets sorted by position, for callers that
    need per-slice attributes (e.g. PET decay/acquisition times).
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise DicomReadError(None, "no files given for the series")
    datasets: list[tuple[Path, Dataset]] = [(p, read_dataset(p)) for p in paths]
    ref_path, ref = datasets[0]
    axes = _orientation(ref, ref_path)
    normal = axes[2]
    positions = []
    for p, ds in datasets:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DicomReadError(p, "multi-frame instance inside a single-frame series; read it with read_multiframe")
        if not np.allclose(_orientation(ds, p), axes, atol=1e-3):
            raise DicomReadError(p, "ImageOrientationPatient differs from the other slices of the series")
        positions.append(float(_position(ds, p) @ normal))
    order = np.argsort(positions, kind="stable")
    datasets = [datasets[i] for i in order]
    positions = [positions[i] for i in order]
    dup = np.isclose(np.diff(positions), 0, atol=1e-4) if len(positions) > 1 else np.array([], bool)
    if dup.any():
        bad = datasets[int(np.argmax(dup)) + 1][0]
        raise DicomReadError(bad, "two slices share the same position (several series or time points mixed?)")
    slices = []
    shape0 = None
    for p, ds in datasets:
        arr = rescale(ds, pixel_array(ds, p))
        if arr.ndim != 2:
            raise DicomReadError(p, f"expected a 2D slice, got pixel array of shape {arr.shape}")
        if shape0 is None:
            shape0 = arr.shape
        elif arr.shape != shape0:
            raise DicomReadError(p, f"slice shape {arr.shape} differs from {shape0}")
        slices.append(arr)
    dtype = np.result_type(*[s.dtype for s in slices])
    volume = np.stack([s.astype(dtype, copy=False) for s in slices])
    ps = getattr(ref, "PixelSpacing", None)
    if ps is None or len(ps) != 2:
        raise DicomReadError(ref_path, "missing PixelSpacing (0028,0030)")
    row_spacing, col_spacing = float(ps[0]), float(ps[1])
    if len(positions) > 1:
        gaps = np.diff(positions)
        z_spacing = float(np.median(gaps))
        if np.max(np.abs(gaps - z_spacing)) > max(0.01 * abs(z_spacing), 1e-3):
            log.warning("%s: non-uniform slice spacing (%.4f..%.4f mm); using the median %.4f mm",
                        ref_path.parent, gaps.min(), gaps.max(), z_spacing)
    else:
        z_spacing = float(getattr(ref, "SpacingBetweenSlices", 0) or getattr(ref, "SliceThickness", 1) or 1)
    direction = axes.T  # columns: x (row direction), y (column direction), z (normal)
    first_path, first = datasets[0]
    image = Image(
        array=volume,
        spacing=(col_spacing, row_spacing, abs(z_spacing)),
        origin=tuple(_position(first, first_path)),
        direction=tuple(direction.ravel()),
        modality=modality_override or str(getattr(ref, "Modality", "")),
        meta=dataset_meta(ref),
    )
    image.meta["SOPInstanceUIDs"] = [str(ds.SOPInstanceUID) for _, ds in datasets if "SOPInstanceUID" in ds]
    image.meta["source_files"] = [str(p) for p, _ in datasets]
    return image, [ds for _, ds in datasets]


def radiopharmaceutical_meta(ds: Dataset) -> dict:
    """Tracer and radionuclide facts (PT and NM) from the Radiopharmaceutical Information Sequence."""
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    if not seq:
        return {}
    rp = seq[0]
    out: dict = {}
    for kw in ("Radiopharmaceutical", "RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
               "RadiopharmaceuticalStartDateTime", "RadionuclidePositronFraction"):
        value = getattr(rp, kw, None)
        if value not in (None, ""):
            out[kw] = float(value) if isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.IS, float, int)) else str(value)
    for kw, key in (("RadionuclideCodeSequence", "Radionuclide"), ("RadiopharmaceuticalCodeSequence", "RadiopharmaceuticalCode")):
        codes = getattr(rp, kw, None)
        if codes:
            meaning = getattr(codes[0], "CodeMeaning", "")
            if meaning:
                out[key] = str(meaning)
    return out
