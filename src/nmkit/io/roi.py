"""One entry point for ROI files: ``load_rois(path, reference) -> Mask`` whatever the format.

Formats (detected from the file, not only its name):

* DICOM RT Structure Set    -> :func:`nmkit.io.rtstruct.read_rtstruct` (needs the reference image)
* DICOM SEG (incl. LABELMAP) -> :func:`nmkit.io.seg.read_seg`
* ``nmkit-polygons/1`` JSON  -> :func:`nmkit.io.polygons.read_polygons` (needs the reference image)
* NIfTI / NRRD label map     -> :func:`read_named_label_map`, with label names from a JSON sidecar
  ``{"1": "liver", "2": "tumour"}`` (``<name>.json`` or ``<name>.labels.json`` next to the file),
  resampled (nearest neighbour, in patient space) onto the reference grid when it is on another grid.

It also finds the image series an ROI file refers to (:func:`referenced_series_uid`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, Mapping, Sequence

from ..errors import DicomReadError, InputError
from .image import Image, Mask, resample_to
from .volume_files import is_volume_file, read_label_map

log = logging.getLogger(__name__)

RoiKind = Literal["rtstruct", "seg", "polygons", "labelmap"]
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
NON_IMAGE_MODALITIES = {"RTSTRUCT", "SEG", "SR", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG"}


def _volume_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def detect_roi_kind(path: str | Path) -> RoiKind | None:
    """The kind of ROI file at ``path``, or ``None`` when it is none of the supported ones."""
    path = Path(path)
    if not path.is_file():
        return None
    if is_volume_file(path):
        return "labelmap"
    if path.suffix.lower() == ".json":
        try:
            with path.open("r", encoding="utf-8") as fh:
                head = fh.read(4096)
        except (OSError, UnicodeDecodeError):
            return None
        return "polygons" if "nmkit-polygons/1" in head else None
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:
        return None
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    modality = str(getattr(ds, "Modality", "") or "")
    if sop == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        return "rtstruct"
    from .seg import SEG_SOP_CLASSES

    if sop in SEG_SOP_CLASSES:
        return "seg"
    return None


def label_sidecar(path: str | Path) -> Path | None:
    """The JSON label-name sidecar of a label-map file, if there is one."""
    path = Path(path)
    stem = _volume_stem(path)
    for name in (f"{stem}.labels.json", f"{stem}.json"):
        candidate = path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def read_label_names(path: str | Path) -> dict[int, str]:
    """Read a ``{value: name}`` JSON file (keys may be strings of integers); errors name the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON label-name file ({exc})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("labels"), dict):
        doc = doc["labels"]
    if not isinstance(doc, dict):
        raise InputError(path, "label names must be a JSON object {value: name}")
    names: dict[int, str] = {}
    for key, value in doc.items():
        try:
            number = int(key)
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"label value {key!r} is not an integer") from exc
        if number <= 0 or not isinstance(value, str) or not value:
            raise InputError(path, f"label {key!r}: values must be positive integers and names non-empty strings")
        names[number] = value
    return names


def read_named_label_map(path: str | Path, labels: Mapping[int, str] | str | Path | None = None) -> Mask:
    """A NIfTI/NRRD label map with label names from ``labels`` (a mapping or a JSON file) or the sidecar.

    Values present in the image but missing from the names keep the default ``label_<value>`` name (and
    a warning); names for absent values are kept, so a mask always lists every structure of its protocol.
    """
    path = Path(path)
    if isinstance(labels, (str, Path)):
        names = read_label_names(labels)
    elif labels is not None:
        names = {int(k): str(v) for k, v in labels.items()}
    else:
        sidecar = label_sidecar(path)
        names = read_label_names(sidecar) if sidecar else {}
    mask = read_label_map(path)
    if names:
        present = {v for v in mask.labels if mask.labels[v] == f"label_{v}"}
        unnamed = sorted(present - set(names))
        if unnamed:
            log.warning("%s: label value(s) %s have no name in the label-name file", path, unnamed)
        merged = dict(names)
        for value in unnamed:
            merged[value] = f"label_{value}"
        mask.labels = dict(sorted(merged.items()))
    mask.meta["roi_format"] = "labelmap"
    return mask


def referenced_series_uid(path: str | Path) -> str | None:
    """The SeriesInstanceUID of the image series an RTSTRUCT or SEG was drawn on (first one), if stated."""
    kind = detect_roi_kind(path)
    if kind == "rtstruct":
        from .rtstruct import referenced_series_uids

        uids = referenced_series_uids(path)
        return uids[0] if uids else None
    if kind == "seg":
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        for item in getattr(ds, "ReferencedSeriesSequence", []) or []:
            uid = str(getattr(item, "SeriesInstanceUID", "") or "")
            if uid:
                return uid
        for item in getattr(ds, "SharedFunctionalGroupsSequence", []) or []:
            for der in getattr(item, "DerivationImageSequence", []) or []:
                for src in getattr(der, "SourceImageSequence", []) or []:
                    if getattr(src, "ReferencedSeriesInstanceUID", None):
                        return str(src.ReferencedSeriesInstanceUID)
    return None


def roi_frame_of_reference(path: str | Path) -> str | None:
    """The FrameOfReferenceUID an RTSTRUCT or SEG is defined in, if stated."""
    import pydicom

    kind = detect_roi_kind(path)
    if kind not in ("rtstruct", "seg"):
        return None
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:
        return None
    if kind == "rtstruct":
        from .rtstruct import frame_of_reference_uids

        uids = sorted(frame_of_reference_uids(ds))
        return uids[0] if uids else None
    return str(getattr(ds, "FrameOfReferenceUID", "") or "") or None


def load_rois(path: str | Path, reference: Image | None = None, roi_names: Sequence[str] | None = None) -> Mask:
    """Read any supported ROI file as a ``Mask`` on the grid of ``reference``.

    RTSTRUCT and polygon files need ``reference`` (the image they were drawn on). SEG and label maps are
    read on their own grid when ``reference`` is ``None``. ``roi_names`` selects ROIs by name
    (case-insensitive) where the format names its ROIs.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    kind = detect_roi_kind(path)
    if kind is None:
        raise InputError(path, "not a supported ROI file (DICOM RTSTRUCT or SEG, nmkit-polygons/1 JSON, NIfTI/NRRD label map)")
    if kind in ("rtstruct", "polygons") and reference is None:
        raise InputError(path, f"a {kind} file needs the reference image it was drawn on")
    if kind == "rtstruct":
        from .rtstruct import read_rtstruct

        return read_rtstruct(path, reference, roi_names=roi_names)
    if kind == "seg":
        from .seg import read_seg

        return read_seg(path, reference, segment_names=roi_names)
    if kind == "polygons":
        from .polygons import read_polygons

        return read_polygons(path, reference, roi_names=roi_names)
    mask = read_named_label_map(path)
    if roi_names is not None:
        wanted = {n.lower() for n in roi_names}
        values = [v for v, n in mask.labels.items() if n.lower() in wanted]
        missing = wanted - {mask.labels[v].lower() for v in values}
        if missing:
            raise InputError(path, f"label(s) {sorted(missing)} not found; the label map has {sorted(mask.labels.values())}")
        import numpy as np

        keep = np.isin(mask.array, values)
        mask = Mask(array=np.where(keep, mask.array, 0), spacing=mask.spacing, origin=mask.origin, direction=mask.direction,
                    modality="SEG", meta=mask.meta, labels={v: mask.labels[v] for v in values})
    if reference is not None and not mask.same_grid(reference):
        if mask.ndim_spatial != reference.ndim_spatial:
            raise DicomReadError(path, f"a {mask.ndim_spatial}D label map cannot be put on a {reference.ndim_spatial}D image")
        log.info("%s: label map resampled (nearest neighbour) onto the reference grid", path)
        meta = mask.meta
        mask = resample_to(mask, reference)
        mask.meta = meta
    return mask


# ----- folder conversion (nmkit roi2mask) ----------------------------------------------------------------
SUMMARY_COLUMNS = ("roi_name", "voxels", "volume_ml", "mask_file", "image_file", "source_file", "roi_format", "series_uid")


def _safe(text: str, default: str = "x") -> str:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._")
    return cleaned[:80] or default


def find_roi_files(root: str | Path) -> list[tuple[Path, RoiKind]]:
    """Every RTSTRUCT, SEG and ``nmkit-polygons/1`` file under ``root`` (label maps are not guessed from a folder)."""
    from .dicom_series import iter_dicom_files

    root = Path(root)
    found: list[tuple[Path, RoiKind]] = []
    for path in sorted(root.rglob("*.json")):
        if detect_roi_kind(path) == "polygons":
            found.append((path, "polygons"))
    for path in iter_dicom_files(root):
        kind = detect_roi_kind(path)
        if kind in ("rtstruct", "seg"):
            found.append((path, kind))
    return found


class _ImageCache:
    """Reads each referenced image series once."""

    def __init__(self, root: Path):
        from .dicom_series import scan_series

        self.root = root
        self.series = scan_series(root)
        self.images: dict[str, Image] = {}
        self._sop_index: dict[str, Path] | None = None

    def by_series(self, uid: str, where: Path) -> Image:
        if uid not in self.images:
            entry = self.series.get(uid)
            if entry is None:
                raise InputError(where, f"the referenced image series {uid} is not in {self.root}")
            self.images[uid] = _read_series(entry.files)
        return self.images[uid]

    def by_frame_of_reference(self, for_uid: str, where: Path) -> tuple[Image, str]:
        """The one image series in the folder sharing ``for_uid`` (used when the referenced series UID is absent,
        e.g. after a re-export gave the images new UIDs); an error when none or several match."""
        import pydicom

        matches = []
        for uid, entry in self.series.items():
            if entry.modality.upper() in NON_IMAGE_MODALITIES:
                continue
            try:
                ds = pydicom.dcmread(str(entry.files[0]), stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
            except Exception:
                continue
            if str(getattr(ds, "FrameOfReferenceUID", "") or "") == for_uid:
                matches.append(uid)
        if len(matches) != 1:
            found = "no image series" if not matches else f"{len(matches)} image series ({', '.join(sorted(matches))})"
            raise InputError(where, f"the referenced image series is not in {self.root} and {found} share(s) its frame of reference {for_uid}")
        log.info("%s: referenced series not found; using series %s with the same frame of reference", where, matches[0])
        return self.by_series(matches[0], where), matches[0]

    def sop_file(self, sop_uid: str) -> Path | None:
        if self._sop_index is None:
            import pydicom

            self._sop_index = {}
            for entry in self.series.values():
                for f in entry.files:
                    try:
                        ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                    except Exception:
                        continue
                    self._sop_index[str(getattr(ds, "SOPInstanceUID", ""))] = f
        return self._sop_index.get(sop_uid)


def _read_series(files: Sequence[Path]) -> Image:
    try:
        from .reader import read_series_files  # full dispatcher (NM, enhanced, PT units) when available
    except ImportError:  # pragma: no cover - older layout
        read_series_files = None
    if read_series_files is not None:
        return read_series_files(list(files))
    from .dicom_series import stack_slices

    return stack_slices(files)[0]


def _reference_for(path: Path, kind: RoiKind, cache: _ImageCache) -> tuple[Image, str, str]:
    """The image an ROI file refers to, its series UID and a short name for its output folder."""
    if kind in ("rtstruct", "seg"):
        uid = referenced_series_uid(path)
        if uid and uid in cache.series:
            return cache.by_series(uid, path), uid, uid
        for_uid = roi_frame_of_reference(path)
        if not for_uid:
            raise InputError(path, "the ROI file names neither an image series in the folder nor a frame of reference")
        image, uid = cache.by_frame_of_reference(for_uid, path)
        return image, uid, uid
    doc = json.loads(path.read_text(encoding="utf-8"))
    ref = str(doc.get("image", "") or "")
    if not ref:
        raise InputError(path, "the polygon file does not name its image ('image' is empty)")
    candidate = (path.parent / ref)
    if candidate.is_file():
        if is_volume_file(candidate):
            from .volume_files import read_volume

            return read_volume(candidate), "", _volume_stem(candidate)
        image_file = candidate
    else:
        image_file = cache.sop_file(ref)
        if image_file is None:
            raise InputError(path, f"the polygon file's image {ref!r} is neither a file next to it nor a SOPInstanceUID under {cache.root}")
    image = _read_series([image_file])
    uid = str(image.meta.get("SeriesInstanceUID", ""))
    return image, uid, f"{uid}_{_safe(image_file.stem)}"


def convert_folder(in_dir: str | Path, out_dir: str | Path, roi_names: Sequence[str] | None = None) -> dict:
    """Convert every ROI file under ``in_dir`` into NIfTI masks next to a NIfTI copy of their image.

    Output: ``out_dir/<case>/image.nii.gz`` and ``out_dir/<case>/<roi>.nii.gz`` (one binary mask per ROI),
    ``out_dir/roi_summary.csv`` (roi name, voxels, volume ml, files, series UID) and
    ``out_dir/roi_summary.json`` (provenance, converted and failed files). A file that cannot be
    converted is logged and listed under ``failed``; the others are still converted.
    """
    import csv

    from ..errors import NmkitError
    from ..provenance import library_versions, provenance
    from .volume_files import write_volume

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise InputError(in_dir, "input folder does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = _ImageCache(in_dir)
    rows: list[dict] = []
    failed: list[dict] = []
    written_images: dict[str, Path] = {}
    roi_files = find_roi_files(in_dir)
    if not roi_files:
        log.warning("%s: no RTSTRUCT, SEG or polygon file found", in_dir)
    for path, kind in roi_files:
        try:
            reference, series_uid, key = _reference_for(path, kind, cache)
            mask = load_rois(path, reference, roi_names=roi_names)
            patient = _safe(str(reference.meta.get("PatientID", "") or "patient"))
            case = f"{patient}_{_safe(reference.modality or 'image')}_{_safe(key)[-12:]}"
            case_dir = out_dir / case
            if case not in written_images:
                written_images[case] = write_volume(reference, case_dir / "image.nii.gz")
            for value, name in sorted(mask.labels.items()):
                target = case_dir / f"{_safe(name, f'roi_{value}')}.nii.gz"
                if any(r["mask_file"] == str(target) for r in rows):
                    target = case_dir / f"{_safe(path.stem)}__{_safe(name, f'roi_{value}')}.nii.gz"
                binary = mask.binary_mask(value)
                binary = binary.with_array(binary.array.astype("uint8"))
                write_volume(binary, target)
                rows.append({"roi_name": name, "voxels": mask.voxel_count(value), "volume_ml": round(mask.volume_ml(value), 4),
                             "mask_file": str(target), "image_file": str(written_images[case]), "source_file": str(path),
                             "roi_format": kind, "series_uid": series_uid})
        except NmkitError as exc:
            log.warning("skipping %s: %s", path, exc)
            failed.append({"file": str(path), "error": str(exc)})
        except Exception as exc:  # a malformed file must not stop the batch; record what broke
            log.warning("skipping %s: unexpected %s: %s", path, type(exc).__name__, exc)
            failed.append({"file": str(path), "error": f"{type(exc).__name__}: {exc}"})
    with (out_dir / "roi_summary.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "provenance": provenance({"command": "roi2mask", "in_dir": str(in_dir), "roi_names": list(roi_names) if roi_names else None},
                                 inputs=[str(p) for p, _ in roi_files], libraries=library_versions(("numpy", "SimpleITK", "pydicom", "highdicom"))),
        "converted": rows,
        "failed": failed,
    }
    (out_dir / "roi_summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return summary
