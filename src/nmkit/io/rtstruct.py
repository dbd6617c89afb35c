"""DICOM RT Structure Sets: contours -> masks on the referenced image grid, and masks -> contours.

Reading: every CLOSED_PLANAR contour is converted from patient coordinates (mm, LPS) to continuous
image indices with ``reference.physical_to_index``; it is assigned to the slice whose index ``k`` it lies
on (within ``slice_tolerance`` slices) and filled with the pixel-centre rule of
:func:`nmkit.io.polygons.fill_polygons`. Several contours of one ROI on one slice combine by even-odd
(exclusive or), which is how RTSTRUCT encodes holes. POINT/OPEN contours carry no area: they are ignored
with a warning. The structure set's frame of reference must match the image's.

Writing: each mask slice is traced with marching squares (:func:`nmkit.io.polygons.mask_to_polygons`)
and stored as CLOSED_PLANAR contours that reference the image's SOP instances, so that reading the file
back on the same grid gives the same voxels.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..errors import DicomReadError, GeometryError, InputError
from .dicom_series import read_dataset
from .image import Image, Mask
from .polygons import fill_polygons, mask_to_polygons

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: a contour may sit this many slices away from a slice centre and still belong to it
SLICE_TOLERANCE = 0.3
#: colours given to ROIs written without one (RGB)
DEFAULT_COLORS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 0, 255), (0, 200, 200), (160, 80, 0), (128, 128, 255)]


def _load(path: str | Path | Dataset) -> tuple[Dataset, str]:
    if isinstance(path, Dataset):
        return path, str(getattr(path, "filename", "") or "<dataset>")
    ds = read_dataset(path)
    if str(getattr(ds, "SOPClassUID", "")) != RTSTRUCT_SOP_CLASS and str(getattr(ds, "Modality", "")) != "RTSTRUCT":
        raise DicomReadError(path, f"not an RT Structure Set (SOPClassUID {getattr(ds, 'SOPClassUID', 'missing')}, "
                                   f"Modality {getattr(ds, 'Modality', 'missing')})")
    return ds, str(path)


def list_rois(path: str | Path | Dataset) -> dict[int, str]:
    """ROI number -> ROI name, from the StructureSetROISequence."""
    ds, where = _load(path)
    seq = getattr(ds, "StructureSetROISequence", None)
    if not seq:
        raise DicomReadError(where, "RTSTRUCT has no StructureSetROISequence (3006,0020)")
    return {int(item.ROINumber): str(getattr(item, "ROIName", "") or f"roi_{int(item.ROINumber)}") for item in seq}


def frame_of_reference_uids(ds: Dataset) -> set[str]:
    """Frames of reference the structure set's ROIs are defined in."""
    uids = {str(item.ReferencedFrameOfReferenceUID) for item in getattr(ds, "StructureSetROISequence", [])
            if getattr(item, "ReferencedFrameOfReferenceUID", None)}
    if not uids:
        uids = {str(item.FrameOfReferenceUID) for item in getattr(ds, "ReferencedFrameOfReferenceSequence", [])
                if getattr(item, "FrameOfReferenceUID", None)}
    return uids


def referenced_series_uids(path: str | Path | Dataset) -> list[str]:
    """SeriesInstanceUIDs of the image series the structure set was drawn on."""
    ds, _ = _load(path)
    out: list[str] = []
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        for study in getattr(frame, "RTReferencedStudySequence", []):
            for series in getattr(study, "RTReferencedSeriesSequence", []):
                uid = str(getattr(series, "SeriesInstanceUID", "") or "")
                if uid and uid not in out:
                    out.append(uid)
    return out


def _select(names: dict[int, str], wanted: Sequence[str] | None, where: str,
            numbers: Sequence[int] | None = None) -> dict[int, str]:
    """The ROIs chosen by name (case-insensitive; a repeated name selects every ROI carrying it) and/or number."""
    if wanted is None and numbers is None:
        return dict(sorted(names.items()))
    chosen: dict[int, str] = {}
    if wanted is not None:
        lower = {w.lower() for w in wanted}
        chosen.update({num: name for num, name in names.items() if name.lower() in lower})
        missing = lower - {n.lower() for n in chosen.values()}
        if missing:
            raise InputError(where, f"ROI(s) {sorted(missing)} not found; the structure set has {sorted(names.values())}")
    if numbers is not None:
        absent = sorted(int(n) for n in numbers if int(n) not in names)
        if absent:
            raise InputError(where, f"ROI number(s) {absent} not found; the structure set has {dict(sorted(names.items()))}")
        chosen.update({int(n): names[int(n)] for n in numbers})
    return dict(sorted(chosen.items()))


def roi_interpreters(path: str | Path | Dataset) -> dict[int, str]:
    """ROI number -> who drew it: the ROI's ROIInterpreter (RT ROI Observations), else the file's OperatorsName."""
    ds, _ = _load(path)
    default = str(getattr(ds, "OperatorsName", "") or "").strip()
    out: dict[int, str] = {}
    for item in getattr(ds, "RTROIObservationsSequence", []) or []:
        number = getattr(item, "ReferencedROINumber", None)
        who = str(getattr(item, "ROIInterpreter", "") or "").strip()
        if number is not None and who:
            out[int(number)] = who
    if default:
        for number in list_rois(ds):
            out.setdefault(number, default)
    return out


def read_rtstruct(path: str | Path | Dataset, reference: Image, roi_names: Sequence[str] | None = None,
                  slice_tolerance: float = SLICE_TOLERANCE, check_frame_of_reference: bool = True,
                  roi_numbers: Sequence[int] | None = None) -> Mask:
    """Rasterise the ROIs of an RTSTRUCT on the grid of ``reference`` (a 3D image read from DICOM).

    Returns an overlapping ``Mask`` with one binary layer per ROI whose **label value is the ROI Number**
    (3006,0022) and name the ROIName (names may repeat; numbers never do). ``meta["roi_colors"]`` maps names to
    RGB display colours, ``meta["roi_numbers"]`` names to ROI numbers (first number of a repeated name; kept for
    older callers: use ``labels`` instead). ``roi_names`` selects ROIs by name (case-insensitive, a repeated name
    selects all), ``roi_numbers`` by ROI Number; both together select the union.
    Raises ``DicomReadError`` when the structure set's FrameOfReferenceUID differs from the image's.
    """
    ds, where = _load(path)
    if reference.ndim_spatial != 3:
        raise GeometryError(f"{where}: RTSTRUCT contours need a 3D reference image, got {reference.ndim_spatial}D")
    names = _select(list_rois(ds), roi_names, where, roi_numbers)
    image_for = str(reference.meta.get("FrameOfReferenceUID", "") or "")
    rt_for = frame_of_reference_uids(ds)
    if check_frame_of_reference and image_for and rt_for and image_for not in rt_for:
        raise DicomReadError(where, f"structure set frame of reference {', '.join(sorted(rt_for))} does not match the image's "
                                    f"FrameOfReferenceUID {image_for} (series {reference.meta.get('SeriesInstanceUID', '?')})")
    if "ROIContourSequence" not in ds:
        raise DicomReadError(where, "RTSTRUCT has no ROIContourSequence (3006,0039): no contours at all (truncated or incomplete file?)")
    contours_by_roi = {}
    for n, item in enumerate(ds.ROIContourSequence):
        if getattr(item, "ReferencedROINumber", None) is None:
            raise DicomReadError(where, f"ROIContourSequence item {n} has no ReferencedROINumber (3006,0084) (truncated or incomplete file?)")
        contours_by_roi[int(item.ReferencedROINumber)] = item
    nz, ny, nx = reference.spatial_shape
    numbers = list(names)
    layers = np.zeros((len(numbers), nz, ny, nx), dtype=bool)
    colors: dict[str, list[int]] = {}
    for layer_index, number in enumerate(numbers):
        name = names[number]
        item = contours_by_roi.get(number)
        if item is None:
            log.warning("%s: ROI %r (number %d) has no contours", where, name, number)
            continue
        color = getattr(item, "ROIDisplayColor", None)
        if color is not None and len(color) == 3:
            colors[name] = [int(c) for c in color]
        per_slice: dict[int, list[np.ndarray]] = {}
        skipped_types: dict[str, int] = {}
        off_grid = 0
        for c_index, contour in enumerate(getattr(item, "ContourSequence", []) or []):
            ctype = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR") or "CLOSED_PLANAR").upper()
            if ctype != "CLOSED_PLANAR":
                skipped_types[ctype] = skipped_types.get(ctype, 0) + 1
                continue
            data = getattr(contour, "ContourData", None)
            if data is None or len(data) < 9 or len(data) % 3:
                raise DicomReadError(where, f"ROI {name!r} contour {c_index}: ContourData must hold >= 3 (x, y, z) points, got {0 if data is None else len(data)} values")
            points = np.asarray([float(v) for v in data], dtype=float).reshape(-1, 3)
            idx = reference.physical_to_index(points)
            k = idx[:, 2]
            if np.ptp(k) > 2 * slice_tolerance:
                raise DicomReadError(where, f"ROI {name!r} contour {c_index} is not parallel to the image slices "
                                            f"(spans slice index {k.min():.2f}..{k.max():.2f}); resample-free rasterisation needs in-plane contours")
            k_mean = float(k.mean())
            k_int = int(round(k_mean))
            if abs(k_mean - k_int) > slice_tolerance:
                raise DicomReadError(where, f"ROI {name!r} contour {c_index} lies between image slices (index {k_mean:.3f}); "
                                            "is this structure set drawn on another series?")
            if not 0 <= k_int < nz:
                off_grid += 1
                continue
            per_slice.setdefault(k_int, []).append(idx[:, :2])
        for ctype, count in skipped_types.items():
            log.warning("%s: ROI %r: %d %s contour(s) ignored (only CLOSED_PLANAR contours enclose voxels)", where, name, count, ctype)
        if off_grid:
            log.warning("%s: ROI %r: %d contour(s) outside the image's slices ignored", where, name, off_grid)
        for k_int, polys in per_slice.items():
            layers[layer_index, k_int] = fill_polygons(polys, (ny, nx))
        if not layers[layer_index].any():
            log.warning("%s: ROI %r covers no voxel centre of the reference image", where, name)
    mask = Mask.like(reference, layers, labels={n: names[n] for n in numbers}, overlapping=True)
    mask.meta = {
        "source_files": [where],
        "roi_format": "RTSTRUCT",
        "roi_colors": colors,
        "roi_numbers": {names[n]: n for n in reversed(numbers)},
        "FrameOfReferenceUID": image_for or (sorted(rt_for)[0] if rt_for else ""),
        "ReferencedSeriesInstanceUID": reference.meta.get("SeriesInstanceUID", ""),
        "StructureSetLabel": str(getattr(ds, "StructureSetLabel", "") or ""),
    }
    return mask


# ----- writing ----------------------------------------------------------------------------------------
def _ds_number(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    text = f"{value:.6g}"
    if len(text) > 16:
        text = f"{value:.8e}"[:16]
    return text


def write_rtstruct(mask: Mask, reference: Image, path: str | Path, roi_names: Sequence[str] | None = None,
                   structure_set_label: str = "nmkit", colors: Sequence[Sequence[int]] | None = None,
                   series_description: str = "nmkit RTSTRUCT") -> Path:
    """Write the labels of ``mask`` as an RT Structure Set referencing the DICOM series of ``reference``.

    ``reference`` must come from DICOM (``meta`` with StudyInstanceUID, SeriesInstanceUID,
    FrameOfReferenceUID and per-slice ``SOPInstanceUIDs``, as kept by ``stack_slices``); the mask must lie
    on its grid. ``roi_names`` overrides the mask's label names (same order as sorted label values).
    Each label value becomes the ROI Number, so reading the file back gives the same ``labels``.
    Each slice of each label is traced into CLOSED_PLANAR contours in patient coordinates.
    """
    path = Path(path)
    if reference.ndim_spatial != 3 or mask.ndim_spatial != 3:
        raise GeometryError("write_rtstruct needs a 3D mask and a 3D reference image")
    if not mask.same_grid(reference):
        raise GeometryError("the mask is not on the reference image's grid; resample it first (nmkit.io.resample_to)")
    meta = reference.meta
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID") if not meta.get(k)]
    sops = list(meta.get("SOPInstanceUIDs") or [])
    if len(sops) != reference.spatial_shape[0]:
        missing.append("SOPInstanceUIDs (one per slice)")
    if missing:
        raise InputError(path, f"the reference image lacks DICOM attributes needed to reference it: {', '.join(missing)}")
    values = sorted(mask.labels)
    names = list(roi_names) if roi_names is not None else [mask.labels[v] for v in values]
    if len(names) != len(values):
        raise InputError(path, f"{len(names)} ROI names given for {len(values)} labels")
    image_sop_class = str(meta.get("SOPClassUID", "") or "1.2.840.10008.5.1.4.1.1.2")

    now = _dt.datetime.now()
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = meta["StudyInstanceUID"]
    if meta.get("StudyDescription"):
        ds.StudyDescription = meta["StudyDescription"]
    ds.PatientName = meta.get("PatientName", "")
    ds.PatientID = meta.get("PatientID", "")
    ds.PatientBirthDate = ""
    ds.PatientSex = meta.get("PatientSex", "")
    ds.StudyDate = meta.get("StudyDate", "")
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 900
    ds.SeriesDescription = series_description
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = meta["FrameOfReferenceUID"]
    ds.Manufacturer = "nmkit"
    ds.OperatorsName = ""
    ds.StructureSetLabel = structure_set_label[:16]
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.StructureSetDate
    ds.InstanceCreationTime = ds.StructureSetTime

    contour_images = []
    for sop in sops:
        item = Dataset()
        item.ReferencedSOPClassUID = image_sop_class
        item.ReferencedSOPInstanceUID = sop
        contour_images.append(item)
    series_item = Dataset()
    series_item.SeriesInstanceUID = meta["SeriesInstanceUID"]
    series_item.ContourImageSequence = DicomSequence(contour_images)
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired; conventional here)
    study_item.ReferencedSOPInstanceUID = meta["StudyInstanceUID"]
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = meta["FrameOfReferenceUID"]
    frame_item.RTReferencedStudySequence = DicomSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_item])

    roi_items, contour_items, observation_items = [], [], []
    palette = list(colors) if colors is not None else DEFAULT_COLORS
    for position, (value, name) in enumerate(zip(values, names)):
        number = int(value)
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = meta["FrameOfReferenceUID"]
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_items.append(roi)
        binary = mask.binary(value)
        contours = []
        for k in range(binary.shape[0]):
            if not binary[k].any():
                continue
            for poly in mask_to_polygons(binary[k]):
                pts = reference.index_to_physical(np.column_stack([poly, np.full(len(poly), float(k))]))
                c = Dataset()
                img_ref = Dataset()
                img_ref.ReferencedSOPClassUID = image_sop_class
                img_ref.ReferencedSOPInstanceUID = sops[k]
                c.ContourImageSequence = DicomSequence([img_ref])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(pts)
                c.ContourData = [_ds_number(v) for v in pts.ravel()]
                contours.append(c)
        if not contours:
            log.warning("%s: ROI %r is empty; written without contours", path, name)
        rc = Dataset()
        rc.ROIDisplayColor = [int(v) for v in palette[position % len(palette)]]
        rc.ReferencedROINumber = number
        if contours:
            rc.ContourSequence = DicomSequence(contours)
        contour_items.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        observation_items.append(obs)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
