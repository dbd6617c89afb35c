"""One entry point for images: ``read_image(path)`` for NIfTI/NRRD files and DICOM files or folders.

DICOM series are chosen by SeriesInstanceUID (an error lists the candidates when a folder holds several
image series and none was chosen) and dispatched by SOP class / modality:

* NM Image Storage (multi-frame planar, TOMO projections, RECON TOMO)  -> :mod:`nmkit.io.nm`
* Enhanced / legacy-converted multi-frame CT, MR, PET                  -> per-frame functional groups
* single-frame CT, MR, PT (incl. xSPECT stored as PT), NM slices       -> :func:`stack_slices`
* single-frame grey CR, DX, MG, IO radiographs                          -> :mod:`nmkit.io.radiograph`
* anything else with pixels (secondary capture, US, XA, ...)           -> a 2D image (frames on a leading axis)
* PNG/JPEG/TIFF files                                                  -> :mod:`nmkit.io.radiograph`

PT images come in their stored units ("Bq/ml" for BQML) or in SUV with ``suv="bw"|"lbm"`` (:mod:`nmkit.io.suv`).
Every failure is an :class:`nmkit.errors.NmkitError` naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DicomReadError, InputError, NmkitError
from .image import Image

log = logging.getLogger(__name__)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2": "CT",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.4": "MR",  # Legacy Converted Enhanced MR
    "1.2.840.10008.5.1.4.1.1.130": "PT",  # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.128.1": "PT",  # Legacy Converted Enhanced PET
}
NON_IMAGE_MODALITIES = {"RTSTRUCT", "SEG", "SR", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "RWV", "FID", "PLAN", "AU", "ECG",
                        "HD"}
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.66",
                          "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.104.")
SUV_CHOICES = (None, "bw", "lbm")


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder (headers only)."""

    series_uid: str
    modality: str
    description: str
    n_files: int
    n_frames: int
    sop_class_uid: str
    is_image: bool
    first_file: str

    def label(self) -> str:
        kind = "" if self.is_image else " (not an image)"
        return f"{self.series_uid} {self.modality} '{self.description}' {self.n_files} file(s){kind}"


def is_image_series(modality: str, sop_class_uid: str) -> bool:
    """False for structure sets, segmentations, reports, plans and other non-image objects."""
    if modality.upper() in NON_IMAGE_MODALITIES:
        return False
    if sop_class_uid == RT_DOSE_STORAGE or modality.upper() == "RTDOSE":
        return True
    return not any(sop_class_uid.startswith(p) for p in NON_IMAGE_SOP_PREFIXES)


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (or of one file), image series first."""
    from .dicom_series import scan_series

    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "does not exist")
    found = []
    for uid, s in scan_series(folder).items():
        found.append(SeriesInfo(uid, s.modality, s.description, len(s.files), s.number_of_frames, s.sop_class_uid,
                                is_image_series(s.modality, s.sop_class_uid), str(s.files[0])))
    return sorted(found, key=lambda s: (not s.is_image, s.modality, s.description, s.series_uid))


def read_image(path: str | Path, series_uid: str | None = None, suv: str | None = None, lbm_formula: str = "janmahasatian") -> Image:
    """Read one image from a NIfTI/NRRD file, a DICOM file, or a folder holding one (or the chosen) DICOM series.

    ``suv`` ("bw" body weight, "lbm" lean body mass SUL, or None) applies to PT images only.
    """
    from .volume_files import is_volume_file, read_volume

    if suv not in SUV_CHOICES:
        raise InputError(path, f"suv must be one of 'bw', 'lbm' or None, got {suv!r}")
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file() and is_volume_file(path):
        if suv is not None:
            raise InputError(path, "SUV conversion needs DICOM PT attributes; a NIfTI/NRRD file has none")
        return read_volume(path)
    from .radiograph import is_bitmap_file, read_radiograph

    if path.is_file() and is_bitmap_file(path):
        if suv is not None:
            raise InputError(path, "SUV conversion needs DICOM PT attributes; a PNG/JPEG/TIFF file has none")
        return read_radiograph(path)
    from .dicom_series import scan_series

    series = scan_series(path)
    if not series:
        if path.is_dir():
            raise DicomReadError(path, "no readable DICOM file found")
        return _read_single_unscanned(path, suv, lbm_formula)
    if series_uid is not None:
        if series_uid not in series:
            raise DicomReadError(path, f"series {series_uid} not found; series here: {_describe(series)}")
        chosen = series[series_uid]
    else:
        images = {u: s for u, s in series.items() if is_image_series(s.modality, s.sop_class_uid)}
        if not images:
            if path.is_file():
                only = next(iter(series.values()))
                raise DicomReadError(path, f"a {only.modality or only.sop_class_uid} object, not an image"
                                     + (" (read it with the ROI readers)" if only.modality in ("SEG", "RTSTRUCT") else ""))
            raise DicomReadError(path, f"no image series found (only {_describe(series)})")
        if len(images) > 1:
            raise DicomReadError(path, f"{len(images)} image series found; choose one with series_uid: {_describe(images)}")
        chosen = next(iter(images.values()))
    if not is_image_series(chosen.modality, chosen.sop_class_uid):
        raise DicomReadError(chosen.files[0], f"series {chosen.series_uid} is a {chosen.modality or chosen.sop_class_uid} object, not an image")
    return read_series_files(chosen.files, suv=suv, lbm_formula=lbm_formula)


def _read_single_unscanned(path: Path, suv: str | None, lbm_formula: str) -> Image:
    """A single file the folder scan skipped: say precisely why, or read it when it is an image after all."""
    from .dicom_series import read_header

    header = read_header(path)  # raises a DicomReadError with pydicom's reason for unreadable files
    if "DirectoryRecordSequence" in header:
        raise DicomReadError(path, "a DICOMDIR (index of a DICOM medium), not an image; read the folder it indexes")
    if not getattr(header, "SOPClassUID", None) and not getattr(header, "Modality", None):
        raise DicomReadError(path, "no SOPClassUID, Modality or SeriesInstanceUID: not a DICOM image object")
    return read_series_files([path], suv=suv, lbm_formula=lbm_formula)


def read_case_image(path: str | Path, suv: str | None = None, series_uid: str | None = None) -> Image:
    """A case table's ``image`` cell as an image: a NIfTI/NRRD file, a DICOM file or series folder (a DICOM UID in
    ``series_uid`` picks that series in a folder holding several), or ``;``-separated files of one DICOM series."""
    import re

    from .volume_files import is_volume_file, read_volume

    path = str(path)
    if ";" in path:
        files = [Path(f.strip()) for f in path.split(";") if f.strip()]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputError(missing[0], f"file of the image series does not exist ({len(missing)} of {len(files)} missing)")
        return read_series_files(files, suv=suv)
    if is_volume_file(path) and suv is None:
        return read_volume(path)
    is_uid = bool(series_uid and re.match(r"^[0-9]+(\.[0-9]+)+$", series_uid))
    return read_image(path, series_uid=series_uid if is_uid and Path(path).is_dir() else None, suv=suv)


def read_images(folder: str | Path, suv: str | None = None) -> dict[str, Image]:
    """Every image series under ``folder`` keyed by SeriesInstanceUID; series that fail are logged and skipped."""
    out: dict[str, Image] = {}
    for info in list_series(folder):
        if not info.is_image:
            continue
        try:
            out[info.series_uid] = read_image(folder, series_uid=info.series_uid, suv=suv if info.modality == "PT" else None)
        except NmkitError as exc:
            log.warning("skipping series %s: %s", info.series_uid, exc)
    return out


def _describe(series: dict) -> str:
    return "; ".join(f"{uid} ({s.modality} '{s.description}', {len(s.files)} file(s))" for uid, s in sorted(series.items()))


def read_series_files(files: list[Path], suv: str | None = None, lbm_formula: str = "janmahasatian") -> Image:
    """Read the files of one series (dispatch by SOP class / modality); unexpected failures become DicomReadError."""
    files = [Path(f) for f in files]
    try:
        return _read_series_files(files, suv, lbm_formula)
    except NmkitError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a malformed file can break pydicom/numpy in many ways: name it
        where = files[0] if len(files) == 1 else files[0].parent
        raise DicomReadError(where, f"cannot read the series ({type(exc).__name__}: {exc})") from exc


def _read_series_files(files: list[Path], suv: str | None, lbm_formula: str) -> Image:
    from .dicom_series import read_header

    header = read_header(files[0])
    sop = str(getattr(header, "SOPClassUID", "") or "")
    modality = str(getattr(header, "Modality", "") or "").upper()
    n_frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    if suv is not None and modality != "PT":
        raise InputError(files[0], f"SUV needs a PT image; this series is {modality or 'of unknown modality'}")
    if sop == NM_IMAGE_STORAGE or (modality == "NM" and (n_frames > 1 or "FrameIncrementPointer" in header)):
        from .nm import read_nm

        if len(files) > 1:
            raise DicomReadError(files[0].parent, f"NM series with {len(files)} multi-frame files; read each file on its own")
        return read_nm(files[0])
    if sop == RT_DOSE_STORAGE or modality == "RTDOSE":
        if len(files) > 1:
            raise DicomReadError(files[0].parent, f"RTDOSE series with {len(files)} files; read each file on its own")
        return read_rtdose(files[0])
    from .radiograph import is_radiograph_dataset, read_dicom_radiograph

    if len(files) == 1 and is_radiograph_dataset(header):  # CR/DX/MG/IO: VOI, MONOCHROME1 -> 2, spacing source
        return read_dicom_radiograph(files[0])
    if (sop in ENHANCED_SOP_CLASSES and "PerFrameFunctionalGroupsSequence" not in header) and len(files) == 1:
        log.warning("%s: enhanced object without per-frame functional groups; frames kept as 2D images", files[0])
        return read_plain(files[0])
    if sop in ENHANCED_SOP_CLASSES or "PerFrameFunctionalGroupsSequence" in header:
        if len(files) > 1:
            raise DicomReadError(files[0].parent, f"enhanced multi-frame series with {len(files)} files; read each file on its own")
        image, datasets = read_enhanced(files[0])
    elif n_frames > 1 or not _has_volume_geometry(header):
        if len(files) > 1:
            raise DicomReadError(files[0].parent, f"{len(files)} files without slice geometry (ImagePositionPatient/ImageOrientationPatient) cannot be stacked")
        return read_plain(files[0])
    else:
        from .dicom_series import stack_slices

        image, datasets = stack_slices(files)
    if modality == "PT":
        image = _pet_units(image, datasets, suv, lbm_formula, files[0])
    elif modality == "CT":
        image.units = "HU"
    return image


def _has_volume_geometry(ds: Any) -> bool:
    return all(getattr(ds, kw, None) not in (None, "") for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))


def _pet_units(image: Image, datasets: list, suv: str | None, lbm_formula: str, path: Path) -> Image:
    from .dicom_series import radiopharmaceutical_meta
    from .suv import PHILIPS_ACTIVITY_SCALE, activity_units, apply_suv

    ref = datasets[0]
    image.meta.update(radiopharmaceutical_meta(ref))
    image.units = activity_units(ref)
    if image.units == "counts" and suv is None and PHILIPS_ACTIVITY_SCALE in ref:
        scales = np.array([float(d[PHILIPS_ACTIVITY_SCALE].value) if PHILIPS_ACTIVITY_SCALE in d else float(ref[PHILIPS_ACTIVITY_SCALE].value) for d in datasets])
        image = image.with_array((image.array.astype(np.float64) * scales[:, None, None]).astype(np.float32), units="Bq/ml")
        image.meta["philips_activity_scale_factor"] = float(np.median(scales))
    if suv is not None:
        image = apply_suv(image, datasets, suv, path, lbm_formula)
    return image


def read_plain(path: Path) -> Image:
    """A single DICOM object read as 2D image(s): frames and colour channels on leading axes.

    Used for secondary captures, US, XA, DX and other objects without a slice geometry. Pixel spacing
    comes from PixelSpacing, ImagerPixelSpacing or NominalScannedPixelSpacing; when none is present the
    spacing is 1 mm and ``meta["spacing_assumed"]`` is True (so the assumption is never silent).
    """
    from .dicom_series import dataset_meta, pixel_array, read_dataset, rescale

    ds = read_dataset(path)
    arr = pixel_array(ds, path)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if samples > 1:  # (..., rows, cols, samples) -> (samples, ..., rows, cols)
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = rescale(ds, arr)
    spacing, assumed = None, False
    shared = ds.get("SharedFunctionalGroupsSequence")
    measures = shared[0].get("PixelMeasuresSequence") if shared else None
    sources = [measures[0]] if measures else []
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = getattr(ds, kw, None)
        if value is None and kw == "PixelSpacing" and sources:
            value = getattr(sources[0], "PixelSpacing", None)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            spacing = (float(value[1]), float(value[0]))
            break
    if spacing is None:
        spacing, assumed = (1.0, 1.0), True
    meta = dataset_meta(ds)
    meta.update(source_files=[str(path)], number_of_frames=n_frames, spacing_assumed=assumed)
    if samples > 1:
        meta["photometric_interpretation"] = str(getattr(ds, "PhotometricInterpretation", ""))
    return Image(array=arr, spacing=spacing, modality=str(getattr(ds, "Modality", "") or ""), meta=meta)


def read_enhanced(path: Path) -> tuple[Image, list]:
    """An enhanced (or legacy-converted) multi-frame CT/MR/PET object as a 3D volume.

    Geometry per frame from the Plane Position / Plane Orientation / Pixel Measures functional groups
    (per-frame, falling back to shared); frames are sorted along the slice normal and per-frame
    rescale (Pixel Value Transformation) is applied. Objects with several stacks/time points at the same
    position raise ``DicomReadError``.
    """
    from .dicom_series import dataset_meta, pixel_array, read_dataset

    ds = read_dataset(path)
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    arr = pixel_array(ds, path)
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        raise DicomReadError(path, "colour enhanced multi-frame images are not supported")
    if len(per_frame) != n:
        raise DicomReadError(path, f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} frames")

    def group(i: int, name: str) -> Any:
        for source in (per_frame[i], shared):
            if source is not None and name in source and len(source[name].value):
                return source[name].value[0]
        return None

    positions, orientations, slopes, spacing = [], [], [], None
    for i in range(n):
        pos, ori, meas, trans = (group(i, k) for k in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
                                                         "PixelValueTransformationSequence"))
        if pos is None or ori is None or meas is None or "ImagePositionPatient" not in pos or "ImageOrientationPatient" not in ori:
            raise DicomReadError(path, f"frame {i + 1} lacks plane position/orientation or pixel measures")
        positions.append(np.array(pos.ImagePositionPatient, float))
        orientations.append(np.array(ori.ImageOrientationPatient, float))
        if spacing is None:
            spacing = [float(v) for v in meas.PixelSpacing]
        slope = float(getattr(trans, "RescaleSlope", 1) or 1) if trans is not None else float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(trans, "RescaleIntercept", 0) or 0) if trans is not None else float(getattr(ds, "RescaleIntercept", 0) or 0)
        slopes.append((slope, intercept))
    iop = orientations[0]
    if any(not np.allclose(o, iop, atol=1e-3) for o in orientations):
        raise DicomReadError(path, "frames have different orientations")
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    dist = np.array([p @ normal for p in positions])
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    if n > 1 and np.any(np.isclose(np.diff(dist), 0, atol=1e-4)):
        raise DicomReadError(path, "several frames share a position (multiple stacks, phases or time points); not a single volume")
    volume = np.stack([arr[i].astype(np.float64) * slopes[i][0] + slopes[i][1] for i in order])
    if all(s == (1.0, 0.0) for s in slopes):
        volume = volume.astype(arr.dtype)
    else:
        volume = volume.astype(np.float32)
    if n > 1:
        gaps = np.diff(dist)
        z = float(np.median(gaps))
        if np.max(np.abs(gaps - z)) > max(0.01 * z, 1e-3):
            log.warning("%s: non-uniform frame spacing; using the median %.4f mm", path, z)
    else:
        z = float(getattr(group(0, "PixelMeasuresSequence"), "SliceThickness", 1) or 1)
    meta = dataset_meta(ds)
    meta["source_files"] = [str(path)]
    image = Image(array=volume, spacing=(spacing[1], spacing[0], abs(z)), origin=tuple(positions[order[0]]),
                  direction=tuple(np.stack([row, col, normal]).T.ravel()), modality=str(getattr(ds, "Modality", "") or ""), meta=meta)
    return image, [ds] * n


def read_rtdose(path: Path) -> Image:
    """An RT Dose grid (e.g. a dosimetry result) in Gy: frames at ImagePositionPatient + GridFrameOffsetVector
    along the slice normal, values times DoseGridScaling. Offsets may be relative (first 0) or absolute."""
    from .dicom_series import dataset_meta, pixel_array, read_dataset

    ds = read_dataset(path)
    arr = pixel_array(ds, path)
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    missing = [kw for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if getattr(ds, kw, None) in (None, "")]
    if n > 1 and not getattr(ds, "GridFrameOffsetVector", None):
        missing.append("GridFrameOffsetVector")
    if missing:
        raise DicomReadError(path, f"RT Dose without {', '.join(missing)}; cannot place the dose grid")
    iop = np.array(ds.ImageOrientationPatient, float)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    offsets = np.array([float(v) for v in ds.GridFrameOffsetVector], float) if n > 1 else np.zeros(1)
    if len(offsets) != n:
        raise DicomReadError(path, f"GridFrameOffsetVector has {len(offsets)} values for {n} frames")
    ipp = np.array(ds.ImagePositionPatient, float)
    if offsets[0] != 0 and np.isclose(offsets[0], ipp @ normal, atol=1e-3):
        offsets = offsets - offsets[0]  # absolute offsets (type 2 in PS3.3 C.8.8.3.2)
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    if n > 1:
        gaps = np.diff(offsets)
        if np.any(np.isclose(gaps, 0)):
            raise DicomReadError(path, "GridFrameOffsetVector repeats an offset")
        z = float(np.median(gaps))
        if np.max(np.abs(gaps - z)) > max(0.01 * z, 1e-3):
            log.warning("%s: non-uniform dose grid spacing; using the median %.4f mm", path, z)
    else:
        z = float(getattr(ds, "SliceThickness", 1) or 1)
    scaling = float(getattr(ds, "DoseGridScaling", 1) or 1)
    volume = (arr[order].astype(np.float64) * scaling).astype(np.float32)
    ps = [float(v) for v in ds.PixelSpacing]
    meta = dataset_meta(ds)
    meta.update(source_files=[str(path)], DoseType=str(getattr(ds, "DoseType", "")), DoseSummationType=str(getattr(ds, "DoseSummationType", "")),
                DoseGridScaling=scaling)
    units = str(getattr(ds, "DoseUnits", "GY") or "GY").upper()
    return Image(array=volume, spacing=(ps[1], ps[0], abs(z)), origin=tuple(ipp + offsets[0] * normal),
                 direction=tuple(np.stack([row, col, normal]).T.ravel()), modality="RTDOSE", units={"GY": "Gy"}.get(units, units.lower()), meta=meta)
