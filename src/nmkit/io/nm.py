"""Nuclear-medicine (NM Image Storage) multi-frame objects: planar, TOMO projections and RECON TOMO.

An NM object stores all its frames in one file; which frame is which is given by the Frame Increment
Pointer (0028,0009) and the frame vectors it points to (EnergyWindowVector, DetectorVector, ...;
a vector not listed is 1 for every frame). ``frame_table`` decodes them, the readers split on them:

* :func:`read_nm_planar`      STATIC / WHOLE BODY / DYNAMIC / GATED planar images, one ``Image`` per view
  (anterior/posterior from ViewCodeSequence in the Detector Information Sequence, else ``detector<n>``);
* :func:`read_nm_projections` TOMO / GATED TOMO projections, one :class:`ProjectionSet` per bed (file),
  energy window, detector and rotation, with the gantry angle of every view;
* :func:`read_nm_recon`       RECON TOMO / RECON GATED TOMO volumes with geometry from the Detector
  Information Sequence (a negative SpacingBetweenSlices means slices run against the normal).

NM pixels are raw counts (units "counts"); ``meta`` keeps frame duration, energy windows, radionuclide,
collimator and acquisition time so that quantification downstream knows what it has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..errors import DicomReadError
from .image import Image

log = logging.getLogger(__name__)

FRAME_VECTORS = ("EnergyWindowVector", "DetectorVector", "PhaseVector", "RotationVector", "RRIntervalVector",
                 "TimeSlotVector", "SliceVector", "AngularViewVector", "TimeSliceVector")
_VIEW_ABBREVIATIONS = {"anterior": "ANT", "posterior": "POST", "left lateral": "LLAT", "right lateral": "RLAT",
                       "left anterior oblique": "LAO", "right anterior oblique": "RAO", "left posterior oblique": "LPO",
                       "right posterior oblique": "RPO", "vertex": "VERTEX"}


# ----- frame bookkeeping --------------------------------------------------------------------------
def frame_table(ds: Dataset, path: str | Path | None = None) -> dict[str, np.ndarray]:
    """1-based index of every frame along each frame vector (vectors not pointed to are all ones)."""
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pointers = getattr(ds, "FrameIncrementPointer", None)
    if pointers is None:
        pointers = []
    elif not isinstance(pointers, (list, tuple)) and not hasattr(pointers, "__iter__"):
        pointers = [pointers]
    from pydicom.datadict import keyword_for_tag

    pointed = {keyword_for_tag(int(t)) for t in pointers}
    table: dict[str, np.ndarray] = {}
    for kw in FRAME_VECTORS:
        values = getattr(ds, kw, None)
        if kw in pointed or values is not None:
            if values is None:
                raise DicomReadError(path, f"Frame Increment Pointer names {kw} but the attribute is missing")
            values = np.atleast_1d(np.asarray([int(v) for v in (values if hasattr(values, "__iter__") else [values])]))
            if len(values) != n:
                raise DicomReadError(path, f"{kw} has {len(values)} values for {n} frames")
            table[kw] = values
        else:
            table[kw] = np.ones(n, dtype=int)
    return table


def energy_windows(ds: Dataset) -> list[dict[str, Any]]:
    """Name and [lower, upper] keV of each energy window (Energy Window Information Sequence)."""
    out = []
    for i, item in enumerate(getattr(ds, "EnergyWindowInformationSequence", None) or [], start=1):
        rng = getattr(item, "EnergyWindowRangeSequence", None) or []
        lower = float(rng[0].EnergyWindowLowerLimit) if rng and "EnergyWindowLowerLimit" in rng[0] else None
        upper = float(rng[0].EnergyWindowUpperLimit) if rng and "EnergyWindowUpperLimit" in rng[0] else None
        out.append({"index": i, "name": str(getattr(item, "EnergyWindowName", "") or f"EW{i}"), "lower_keV": lower, "upper_keV": upper})
    return out


def nm_meta(ds: Dataset, path: Path) -> dict[str, Any]:
    """Key NM attributes for ``Image.meta``: timing, energy windows, radionuclide, collimators."""
    from .dicom_series import dataset_meta, radiopharmaceutical_meta

    meta = dataset_meta(ds)
    meta.update(radiopharmaceutical_meta(ds))
    meta["source_files"] = [str(path)]
    meta["energy_windows"] = energy_windows(ds)
    for kw in ("ActualFrameDuration", "NumberOfFrames", "CountsAccumulated", "TypeOfDetectorMotion", "ImageID"):
        value = getattr(ds, kw, None)
        if value not in (None, ""):
            meta[kw] = int(value) if kw in ("ActualFrameDuration", "NumberOfFrames", "CountsAccumulated") else str(value)
    detectors = []
    for item in getattr(ds, "DetectorInformationSequence", None) or []:
        det = {kw: str(getattr(item, kw)) for kw in ("CollimatorGridName", "CollimatorType") if getattr(item, kw, None) not in (None, "")}
        view = _view_name(item)
        if view:
            det["view"] = view
        detectors.append(det)
    meta["detectors"] = detectors
    if detectors:
        meta["collimator"] = detectors[0].get("CollimatorGridName", "")
        meta["collimator_type"] = detectors[0].get("CollimatorType", "")
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    meta["nm_image_type"] = image_type[2] if len(image_type) > 2 else ""
    return meta


def _view_name(detector_item: Dataset) -> str:
    codes = getattr(detector_item, "ViewCodeSequence", None)
    if not codes:
        return ""
    meaning = str(getattr(codes[0], "CodeMeaning", "") or "").strip().lower()
    # Standard code meanings read "Anterior projection", "Left lateral projection", ...
    base = meaning[: -len(" projection")] if meaning.endswith(" projection") else meaning
    return _VIEW_ABBREVIATIONS.get(base, meaning.upper().replace(" ", "_"))


def _frames(ds: Dataset, path: Path) -> np.ndarray:
    from .dicom_series import pixel_array

    arr = pixel_array(ds, path)
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise DicomReadError(path, "colour NM images are not supported")
    if n == 1 and arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != n:
        raise DicomReadError(path, f"pixel array shape {arr.shape} does not match {n} frames")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        arr = (arr.astype(np.float64) * slope + intercept).astype(np.float32)
    return arr


def _pixel_spacing(ds: Dataset, path: Path) -> tuple[float, float]:
    ps = getattr(ds, "PixelSpacing", None)
    if ps is None or len(ps) != 2 or not all(float(v) > 0 for v in ps):
        raise DicomReadError(path, "missing or invalid PixelSpacing (0028,0030)")
    return float(ps[1]), float(ps[0])  # (x = column spacing, y = row spacing)


def _read(path: str | Path) -> tuple[Path, Dataset]:
    from .dicom_series import read_dataset

    path = Path(path)
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.is_file()]
        if len(files) != 1:
            raise DicomReadError(path, f"expected one NM file, found {len(files)}; pass a file")
        path = files[0]
    return path, read_dataset(path)


def nm_image_type(ds: Dataset) -> str:
    """Value 3 of ImageType: STATIC, DYNAMIC, GATED, WHOLE BODY, TOMO, GATED TOMO, RECON TOMO, RECON GATED TOMO."""
    values = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    return values[2] if len(values) > 2 else ""


# ----- planar -------------------------------------------------------------------------------------
def read_nm_planar(path: str | Path) -> dict[str, Image]:
    """Planar NM frames grouped by view (detector) and energy window, keyed "ANT"/"POST" or "detector<n>".

    With several energy windows the key gets the window name ("ANT_EW2" style, ``_<name>``). Each value
    is a 2D image ``(rows, cols)``, or ``(frames, rows, cols)`` when several frames (dynamic/gated
    phases) share a view; pixel spacing is the detector pixel size.
    """
    path, ds = _read(path)
    frames = _frames(ds, path)
    table = frame_table(ds, path)
    spacing = _pixel_spacing(ds, path)
    base_meta = nm_meta(ds, path)
    detectors = list(getattr(ds, "DetectorInformationSequence", None) or [])
    windows = base_meta["energy_windows"]
    n_windows = len(set(table["EnergyWindowVector"].tolist()))
    out: dict[str, Image] = {}
    for det in sorted(set(table["DetectorVector"].tolist())):
        item = detectors[det - 1] if 0 < det <= len(detectors) else None
        view = _view_name(item) if item is not None else ""
        name = view or f"detector{det}"
        if name in out or any(k.startswith(name + "_") for k in out):
            name = f"{name}{det}"
        for ew in sorted(set(table["EnergyWindowVector"].tolist())):
            select = (table["DetectorVector"] == det) & (table["EnergyWindowVector"] == ew)
            idx = np.flatnonzero(select)
            if idx.size == 0:
                continue
            key = name
            if n_windows > 1:
                ew_name = windows[ew - 1]["name"] if 0 < ew <= len(windows) else f"EW{ew}"
                key = f"{name}_{ew_name}" if f"{name}_{ew_name}" not in out else f"{name}_EW{ew}"
            arr = frames[idx]
            if arr.shape[0] == 1:
                arr = arr[0]
            meta = dict(base_meta)
            meta.update(view=view or None, detector=int(det), energy_window=int(ew), frame_indices=[int(i) + 1 for i in idx])
            if item is not None:
                for kw in ("ImagePositionPatient", "ImageOrientationPatient"):
                    if getattr(item, kw, None) is not None:
                        meta[kw] = [float(v) for v in getattr(item, kw)]
            out[key] = Image(array=arr, spacing=spacing, modality="NM", units="counts", meta=meta)
    return out


# ----- TOMO projections ---------------------------------------------------------------------------
@dataclass
class ProjectionSet:
    """The views of one rotation of one detector in one energy window of one bed (file)."""

    bed: int
    energy_window: dict[str, Any]
    detector: int
    rotation: int
    angles_deg: np.ndarray  # gantry angle of each view, in acquisition order
    image: Image  # array (views, rows, cols), 2D pixel spacing
    frame_duration_ms: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int, int, int]:
        """(bed, energy-window index, detector, rotation), all 1-based (window names may repeat)."""
        return (self.bed, int(self.energy_window.get("index", 0)), self.detector, self.rotation)


def read_nm_projections(path: str | Path) -> list[ProjectionSet]:
    """TOMO projections of one NM file, or of every NM file in a folder (one bed per file, sorted by name).

    Angles: ``StartAngle + s * AngularStep * (view - 1)`` modulo 360 with ``s = +1`` for RotationDirection
    CW and ``-1`` for CC (DICOM angle convention of Start Angle).
    """
    path = Path(path)
    files = [p for p in sorted(path.iterdir()) if p.is_file()] if path.is_dir() else [path]
    out: list[ProjectionSet] = []
    for bed, file in enumerate(files, start=1):
        from .dicom_series import read_dataset

        ds = read_dataset(file)
        kind = nm_image_type(ds)
        if "TOMO" not in kind or "RECON" in kind:
            raise DicomReadError(file, f"not an NM TOMO projection object (ImageType value 3 is {kind or 'missing'})")
        out.extend(_projection_sets(ds, file, bed))
    return out


def _projection_sets(ds: Dataset, path: Path, bed: int) -> list[ProjectionSet]:
    frames = _frames(ds, path)
    table = frame_table(ds, path)
    spacing = _pixel_spacing(ds, path)
    base_meta = nm_meta(ds, path)
    windows = base_meta["energy_windows"]
    rotations = list(getattr(ds, "RotationInformationSequence", None) or [])
    detectors = list(getattr(ds, "DetectorInformationSequence", None) or [])
    sets = []
    for ew in sorted(set(table["EnergyWindowVector"].tolist())):
        for det in sorted(set(table["DetectorVector"].tolist())):
            for rot in sorted(set(table["RotationVector"].tolist())):
                select = (table["EnergyWindowVector"] == ew) & (table["DetectorVector"] == det) & (table["RotationVector"] == rot)
                idx = np.flatnonzero(select)
                if idx.size == 0:
                    continue
                views = table["AngularViewVector"][idx]
                order = np.argsort(views, kind="stable")
                idx, views = idx[order], views[order]
                if 0 < rot <= len(rotations):
                    info = rotations[rot - 1]
                else:
                    raise DicomReadError(path, f"no Rotation Information Sequence item for rotation {rot}")
                missing = [kw for kw in ("StartAngle", "AngularStep") if getattr(info, kw, None) in (None, "")]
                if missing:
                    raise DicomReadError(path, f"rotation {rot} lacks {', '.join(missing)}; cannot compute view angles")
                direction = str(getattr(info, "RotationDirection", "CW") or "CW").upper()
                sign = -1.0 if direction == "CC" else 1.0
                angles = np.mod(float(info.StartAngle) + sign * float(info.AngularStep) * (views - 1), 360.0)
                window = windows[ew - 1] if 0 < ew <= len(windows) else {"index": int(ew), "name": f"EW{ew}", "lower_keV": None, "upper_keV": None}
                meta = dict(base_meta)
                meta.update(bed=bed, energy_window=window, detector=int(det), rotation=int(rot), rotation_direction=direction,
                            radial_position=float(info.RadialPosition) if getattr(info, "RadialPosition", None) not in (None, "") else None,
                            frame_indices=[int(i) + 1 for i in idx], angles_deg=[float(a) for a in angles])
                if 0 < det <= len(detectors):
                    for kw in ("ImagePositionPatient", "ImageOrientationPatient"):
                        if getattr(detectors[det - 1], kw, None) is not None:
                            meta[kw] = [float(v) for v in getattr(detectors[det - 1], kw)]
                duration = getattr(info, "ActualFrameDuration", None) or getattr(ds, "ActualFrameDuration", None)
                image = Image(array=frames[idx], spacing=spacing, modality="NM", units="counts", meta=meta)
                sets.append(ProjectionSet(bed=bed, energy_window=window, detector=int(det), rotation=int(rot), angles_deg=angles,
                                          image=image, frame_duration_ms=float(duration) if duration not in (None, "") else None, meta=meta))
    return sets


# ----- RECON TOMO ---------------------------------------------------------------------------------
def read_nm_recon(path: str | Path) -> Image:
    """A reconstructed NM volume (RECON TOMO / RECON GATED TOMO) with patient geometry.

    Slice ``k`` (SliceVector order) lies at ``IPP + k * SpacingBetweenSlices * (row x col)`` where IPP/IOP
    come from the first Detector Information Sequence item (or the top level). A negative
    SpacingBetweenSlices is handled by reversing the slices so the image has positive spacing and the
    same physical positions. Gated volumes keep the gates on a leading axis.
    """
    path, ds = _read(path)
    frames = _frames(ds, path)
    table = frame_table(ds, path)
    det = (getattr(ds, "DetectorInformationSequence", None) or [None])[0]
    ipp = getattr(det, "ImagePositionPatient", None) if det is not None else None
    iop = getattr(det, "ImageOrientationPatient", None) if det is not None else None
    ipp = ipp if ipp is not None else getattr(ds, "ImagePositionPatient", None)
    iop = iop if iop is not None else getattr(ds, "ImageOrientationPatient", None)
    if ipp is None or len(ipp) != 3 or iop is None or len(iop) != 6:
        raise DicomReadError(path, "RECON TOMO without ImagePositionPatient/ImageOrientationPatient in the Detector Information Sequence")
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    sbs = getattr(ds, "SpacingBetweenSlices", None)
    if sbs in (None, ""):
        sbs = getattr(ds, "SliceThickness", None)
        if sbs in (None, ""):
            raise DicomReadError(path, "RECON TOMO without SpacingBetweenSlices or SliceThickness")
        log.warning("%s: no SpacingBetweenSlices; using SliceThickness %.4f mm", path, float(sbs))
    sbs = float(sbs)
    if sbs == 0:
        raise DicomReadError(path, "SpacingBetweenSlices is 0")
    slices = table["SliceVector"]
    gates = table["TimeSlotVector"] if len(set(table["TimeSlotVector"].tolist())) > 1 else None
    n_slices = len(set(slices.tolist()))
    spacing_xy = _pixel_spacing(ds, path)
    if gates is None:
        order = np.argsort(slices, kind="stable")
        if len(order) != n_slices:
            raise DicomReadError(path, f"{len(order)} frames for {n_slices} distinct SliceVector values (several volumes?)")
        volume = frames[order]
    else:
        gate_ids = sorted(set(gates.tolist()))
        volume = np.stack([frames[np.flatnonzero(gates == g)[np.argsort(slices[gates == g], kind="stable")]] for g in gate_ids])
    origin = np.array(ipp, float)
    if sbs < 0:
        volume = volume[..., ::-1, :, :]
        origin = origin + (n_slices - 1) * sbs * normal
    meta = nm_meta(ds, path)
    meta["spacing_between_slices_stored"] = sbs
    meta["slices_reversed"] = bool(sbs < 0)
    return Image(array=np.ascontiguousarray(volume), spacing=(spacing_xy[0], spacing_xy[1], abs(sbs)), origin=tuple(origin),
                 direction=tuple(np.stack([row, col, normal]).T.ravel()), modality="NM", units="counts", meta=meta)


# ----- one image for read_image -------------------------------------------------------------------
def read_nm(path: str | Path) -> Image:
    """One ``Image`` for any NM object (used by ``read_image``).

    RECON TOMO -> 3D volume; planar/TOMO -> 2D frames on a leading axis, with ``meta["frames"]``
    describing each frame (view, energy window, angle). Use the specific readers for split results.
    """
    path, ds = _read(path)
    kind = nm_image_type(ds)
    if "RECON" in kind:
        return read_nm_recon(path)
    if "TOMO" in kind:
        sets = _projection_sets(ds, path, bed=1)
        arr = np.concatenate([s.image.array for s in sets])
        meta = nm_meta(ds, path)
        meta["frames"] = [{"energy_window": s.energy_window.get("name"), "detector": s.detector, "rotation": s.rotation, "angle_deg": float(a)}
                          for s in sets for a in s.angles_deg]
        return Image(array=arr, spacing=sets[0].image.spacing, modality="NM", units="counts", meta=meta)
    views = read_nm_planar(path)
    if len(views) == 1:
        return next(iter(views.values()))
    first = next(iter(views.values()))
    if any(v.array.shape != first.array.shape for v in views.values()):
        raise DicomReadError(path, "NM views of different shapes cannot be one image; use read_nm_planar")
    meta = nm_meta(ds, path)
    meta["frames"] = list(views)
    return Image(array=np.stack([v.array for v in views.values()]), spacing=first.spacing, modality="NM", units="counts", meta=meta)
