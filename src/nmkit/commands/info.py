"""`nmkit info PATH`: what is in a file or folder (DICOM series, NIfTI/NRRD images, SEG/RTSTRUCT objects).

Per image: modality, size, spacing, value range with units; PT images also in SUV when the header allows
(``--suv`` forces a kind and fails loudly when it cannot); NM TOMO projections with their breakdown
(detectors x energy windows x rotations x views, from the NM frame vectors); SEG objects with their segments
(number, label, voxels); RTSTRUCT with its structure names. pydicom warnings are collected per file and
printed at the end as at most one line per file (every message with ``-v``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("nmkit.info")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="list the images (DICOM series, NIfTI/NRRD files) in a folder or file",
                                   description="Read every DICOM series and NIfTI/NRRD file under PATH and print modality, "
                                               "description, size, spacing, value range with units (SUV for PT when "
                                               "possible), the NM TOMO frame breakdown, SEG segments and RTSTRUCT "
                                               "structures. Other files are counted, not read.")
    parser.add_argument("path", help="DICOM/NIfTI/NRRD file, or a folder holding any mix of them")
    parser.add_argument("--suv", choices=["bw", "lbm"], default=None,
                        help="show PT series in SUV (body weight or lean body mass); without it SUVbw is shown when "
                             "the header has what it needs")
    parser.add_argument("--json", action="store_true", help="print JSON (one record per image/object) instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal only anyway)")
    parser.set_defaults(func=run)


# ----- walking -------------------------------------------------------------------------------------
def _walk(target: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(DICOM candidates, NIfTI/NRRD files, other files) under ``target`` (or ``target`` itself)."""
    from ..io.dicom_series import iter_dicom_files
    from ..io.volume_files import is_volume_file

    if target.is_file():
        return ([], [target], []) if is_volume_file(target) else ([target], [], [])
    files = [p for p in sorted(target.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    candidates = set(iter_dicom_files(target))
    volumes = [p for p in files if is_volume_file(p)]
    dicom = [p for p in files if p in candidates and not is_volume_file(p)]
    taken = set(volumes) | set(dicom)
    return dicom, volumes, [p for p in files if p not in taken]


def describe(path: str | Path, suv: str | None = None, collector: Any = None,
             progress: Callable[[Iterable, str], Iterable] | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records (one per DICOM series or NIfTI/NRRD file; failures carry their error) and file counts.

    ``collector`` is a :class:`nmkit.io.dicom_warnings.DicomWarnings` receiving pydicom's warnings per file;
    ``progress(iterable, label)`` wraps the loops (e.g. tqdm).
    """
    from ..io.dicom_series import scan_series
    from ..io.dicom_warnings import DicomWarnings, looks_like_dicom

    target = Path(path)
    if not target.exists():
        from ..errors import InputError

        raise InputError(target, "does not exist")
    collector = collector if collector is not None else DicomWarnings()
    wrap = progress or (lambda xs, label: xs)
    dicom, volumes, others = _walk(target)
    counts = {"dicom_files": 0, "unreadable_dicom": 0, "not_image_files": len(others), "volume_files": len(volumes)}
    series: dict[str, Any] = {}
    for f in wrap(dicom, "scan"):
        with collector.capture(f):
            found = scan_series(f)
        if not found:
            if looks_like_dicom(f):
                counts["unreadable_dicom"] += 1
            else:  # not DICOM: the warnings of pydicom's forced read of it say nothing
                counts["not_image_files"] += 1
                collector.by_file.pop(str(f), None)
            continue
        counts["dicom_files"] += 1
        for uid, s in found.items():
            if uid in series:
                series[uid].files.extend(s.files)
            else:
                series[uid] = s
    if target.is_file() and not series and not volumes:
        from ..io.reader import read_image

        read_image(target)  # raises the precise reason (not DICOM, DICOMDIR, ...)
    ordered = sorted(series.values(), key=lambda s: (not _is_image(s), s.modality, s.description, s.series_uid))
    records = [r for s in wrap(ordered, "read") for r in _describe_series(s, suv, collector)]
    records += [_describe_volume(f, target) for f in wrap(volumes, "read")]
    _number_beds(records)
    return records, counts


def _is_image(s: Any) -> bool:
    from ..io.reader import is_image_series

    return is_image_series(s.modality, s.sop_class_uid)


# ----- one DICOM series ----------------------------------------------------------------------------
def _describe_series(s: Any, suv: str | None, collector: Any) -> list[dict[str, Any]]:
    """Record(s) of one DICOM series: image summary, or SEG segments / RTSTRUCT structures / 'not an image'.

    A multi-file series that cannot be read as one volume (2D objects sharing a series UID, several
    multi-frame files) is described file by file."""
    from dataclasses import replace

    from ..errors import NmkitError

    record = _describe_one(s, suv, collector)
    if record["status"].startswith("error") and len(s.files) > 1:
        return [_describe_one(replace(s, files=[f]), suv, collector) for f in s.files]
    return [record]


def _describe_one(s: Any, suv: str | None, collector: Any) -> dict[str, Any]:
    """Record of the files of ``s`` read together."""
    from ..errors import NmkitError

    base = {"kind": "dicom", "series_uid": s.series_uid, "study_uid": s.study_uid, "modality": s.modality,
            "description": s.description, "files": len(s.files), "path": str(s.files[0])}
    key = f"series {s.series_uid}" if len(s.files) > 1 else s.files[0]
    with collector.capture(key, known=s.files):
        if not _is_image(s):
            record = {**base, "status": "not an image"}
            try:
                if s.modality == "SEG" and len(s.files) == 1:
                    record["segments"] = seg_segments(s.files[0])
                elif s.modality == "RTSTRUCT" and len(s.files) == 1:
                    record["structures"] = rtstruct_structures(s.files[0])
            except NmkitError as exc:
                record["status"] = f"not an image; cannot list its content: {exc}"
            return record
        try:
            image, suv_note = _read_series(s, suv)
        except NmkitError as exc:
            return {**base, "status": "error: " + " ".join(str(exc).split())}
        record = _image_record(image, base, suv or "bw")
        if suv_note:
            record["suv_unavailable"] = suv_note
        if image.modality == "NM" or s.modality == "NM":
            try:
                record.update(nm_breakdown(s.files[0]))
            except NmkitError as exc:
                record["nm_breakdown_error"] = str(exc)
        return record


def _read_series(s: Any, suv: str | None) -> tuple[Any, str]:
    """The image; PT in SUV when asked (errors propagate) or when possible (SUVbw; why not in the note)."""
    from ..errors import NmkitError
    from ..io.reader import read_series_files

    if s.modality != "PT":
        return read_series_files(s.files), ""
    if suv is not None:
        return read_series_files(s.files, suv=suv), ""
    try:
        return read_series_files(s.files, suv="bw"), ""
    except NmkitError as exc:
        image = read_series_files(s.files)
        if image.units == "g/ml":
            return image, ""
        return image, str(exc)


def _image_record(image: Any, base: dict[str, Any], suv_kind: str = "bw") -> dict[str, Any]:
    """Size, spacing, units, value range and (for SUV images) SUV statistics of one image."""
    import numpy as np

    record = dict(base)
    record.update(status="ok", shape=list(image.array.shape), size=list(image.size),
                  spacing=[round(float(v), 4) for v in image.spacing], units=image.units or "-",
                  modality=image.modality or base.get("modality", ""))
    arr = image.array
    if arr.size and arr.ndim and (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        values = arr.astype(np.float64) if arr.dtype == bool else arr
        finite = np.isfinite(values) if np.issubdtype(values.dtype, np.floating) else None
        lo, hi = (float(np.min(values[finite])), float(np.max(values[finite]))) if finite is not None and finite.any() else \
                 (float(np.min(values)), float(np.max(values)))
        record["value_range"] = [lo, hi]
        if np.issubdtype(arr.dtype, np.integer) and 0 <= lo and hi <= 255 and arr.ndim >= 3:
            uniq = np.unique(arr)
            if len(uniq) <= 32:
                record["distinct_values"] = [int(v) for v in uniq]
    if "frames" in image.meta:
        record["frames"] = len(image.meta["frames"])
    if image.units == "g/ml":
        values = image.array[np.isfinite(image.array)] if np.issubdtype(image.array.dtype, np.floating) else image.array
        suv_meta = image.meta.get("suv", {})
        record["suv"] = {"kind": suv_meta.get("kind", "stored in the file (Units GML)") if suv_meta else "stored in the file (Units GML)",
                         "max_g_per_ml": round(float(np.max(values)), 4), "mean_g_per_ml": round(float(np.mean(values)), 4)}
        stored_units = image.meta.get("units_source", "")
        if suv_meta and stored_units != "g/ml":
            record["suv_factor"] = suv_meta["factor"]
            record["suv"]["kind"] = suv_kind
            if stored_units and "value_range" in record:
                record["stored_value_range"] = [v / suv_meta["factor"] for v in record["value_range"]]
                record["stored_units"] = stored_units
    for key in ("Radionuclide", "Radiopharmaceutical"):
        if key in image.meta:
            record[key.lower()] = image.meta[key]
    return record


def _describe_volume(path: Path, target: Path) -> dict[str, Any]:
    """Record of one NIfTI/NRRD file (no units are stored in these formats: shown as '-')."""
    from ..errors import NmkitError
    from ..io.volume_files import read_volume

    name = str(path.relative_to(target)) if path != target else path.name
    base = {"kind": "volume", "series_uid": "", "modality": "", "description": name, "files": 1, "path": str(path)}
    try:
        image = read_volume(path)
    except NmkitError as exc:
        return {**base, "status": f"error: {exc}"}
    return _image_record(image, base)


# ----- NM, SEG, RTSTRUCT details -------------------------------------------------------------------
def nm_breakdown(path: str | Path) -> dict[str, Any]:
    """Frame breakdown of an NM object from its frame vectors: detectors, energy windows, rotations, views
    (TOMO), phases/time slots (dynamic/gated), slices (RECON), with the energy windows in keV."""
    from ..io.dicom_series import read_header
    from ..io.nm import energy_windows, frame_table, nm_image_type

    ds = read_header(path)
    table = frame_table(ds, path)
    kind = nm_image_type(ds)
    n = {kw: len(set(v.tolist())) for kw, v in table.items()}
    parts = [("detector", n["DetectorVector"]), ("energy window", n["EnergyWindowVector"])]
    if "TOMO" in kind and "RECON" not in kind:
        parts += [("rotation", n["RotationVector"]), ("view", n["AngularViewVector"])]
        if n["TimeSlotVector"] > 1:
            parts.append(("time slot", n["TimeSlotVector"]))
    elif "RECON" in kind:
        parts = [("time slot", n["TimeSlotVector"])] if n["TimeSlotVector"] > 1 else []
        parts.append(("slice", n["SliceVector"]))
    else:
        for kw, label in (("PhaseVector", "phase"), ("TimeSlotVector", "time slot"), ("RRIntervalVector", "R-R interval")):
            if n[kw] > 1:
                parts.append((label, n[kw]))
    out: dict[str, Any] = {"nm_image_type": kind, "nm_frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
                           "nm_breakdown": {label.replace(" ", "_").replace("-", "") + "s": count for label, count in parts},
                           "nm_breakdown_text": " x ".join(f"{c} {label}{'s' if c != 1 else ''}" for label, c in parts),
                           "energy_windows": energy_windows(ds)}
    rotations = []
    for item in getattr(ds, "RotationInformationSequence", None) or []:
        rotations.append({kw: float(getattr(item, kw)) if kw != "RotationDirection" else str(getattr(item, kw))
                          for kw in ("StartAngle", "AngularStep", "ScanArc", "RotationDirection") if getattr(item, kw, None) not in (None, "")})
    if rotations:
        out["rotations"] = rotations
    return out


def seg_segments(path: str | Path) -> list[dict[str, Any]]:
    """Segments of a DICOM SEG: number, label, voxels (frame pixels set; fractional >= half the maximum;
    label-map SEGs count pixels equal to the segment number). Voxels are None when the pixels cannot be decoded."""
    import numpy as np

    from ..io.dicom_series import pixel_array, read_dataset

    ds = read_dataset(path)
    segments = {int(item.SegmentNumber): str(getattr(item, "SegmentLabel", "") or "") for item in getattr(ds, "SegmentSequence", None) or []
                if getattr(item, "SegmentNumber", None) is not None}
    voxels: dict[int, int | None] = {k: None for k in segments}
    try:
        arr = pixel_array(ds, Path(path))
        arr = arr[None] if arr.ndim == 2 else arr
    except Exception as exc:  # noqa: BLE001 - a SEG whose pixels cannot be decoded still lists its segments
        log.debug("%s: SEG pixels not decoded: %s", path, exc)
        arr = None
    if arr is not None and arr.ndim == 3:
        seg_type = str(getattr(ds, "SegmentationType", "BINARY") or "BINARY").upper()
        if seg_type == "LABELMAP":
            for k in voxels:
                voxels[k] = int(np.count_nonzero(arr == k))
        else:
            threshold = 0.5 * float(getattr(ds, "MaximumFractionalValue", 1) or 1) if seg_type == "FRACTIONAL" else 0.5
            per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
            shared = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [None])[0]
            shared_ident = getattr(shared, "SegmentIdentificationSequence", None) if shared is not None else None
            default = int(shared_ident[0].ReferencedSegmentNumber) if shared_ident else (
                next(iter(segments)) if len(segments) == 1 else None)  # one segment: every frame is its
            frame_segment = []
            for item in per_frame or [None] * arr.shape[0]:
                ident = getattr(item, "SegmentIdentificationSequence", None) if item is not None else None
                frame_segment.append(int(ident[0].ReferencedSegmentNumber) if ident else default)
            if len(frame_segment) == arr.shape[0]:
                counts = (arr >= threshold).reshape(arr.shape[0], -1).sum(axis=1)
                for k in voxels:
                    voxels[k] = int(sum(int(c) for c, s in zip(counts, frame_segment) if s == k))
    return [{"number": k, "label": segments[k], "voxels": voxels[k]} for k in sorted(segments)]


def rtstruct_structures(path: str | Path) -> list[dict[str, Any]]:
    """Structures of an RT Structure Set: ROI number, name and number of contours."""
    from ..io.dicom_series import read_dataset

    ds = read_dataset(path)
    contours = {int(getattr(item, "ReferencedROINumber", -1)): len(getattr(item, "ContourSequence", None) or [])
                for item in getattr(ds, "ROIContourSequence", None) or []}
    return [{"number": int(item.ROINumber), "name": str(getattr(item, "ROIName", "") or ""), "contours": contours.get(int(item.ROINumber), 0)}
            for item in getattr(ds, "StructureSetROISequence", None) or [] if getattr(item, "ROINumber", None) is not None]


def _number_beds(records: list[dict[str, Any]]) -> None:
    """NM TOMO projection series of one study with the same breakdown are beds: number them in file order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("nm_image_type", "").endswith("TOMO") and "RECON" not in r["nm_image_type"]:
            key = (r.get("study_uid", ""), json.dumps(r["nm_breakdown"], sort_keys=True))
            groups.setdefault(key, []).append(r)
    for group in groups.values():
        group.sort(key=lambda r: r["path"])
        for k, r in enumerate(group, start=1):
            r["bed"], r["beds"] = k, len(group)


# ----- printing ------------------------------------------------------------------------------------
def _g(value: float) -> str:
    return f"{value:.6g}"


def _breakdown_text(record: dict[str, Any]) -> str:
    text = record["nm_breakdown_text"]
    if record.get("beds", 1) > 1:
        text = f"bed {record['bed']} of {record['beds']}: {text}"
    return f"{record['nm_image_type'] or 'NM'} {text} = {record['nm_frames']} frame(s)"


def format_record(r: dict[str, Any]) -> list[str]:
    """Table lines of one record."""
    head = f"{r['modality'] or '?':8s} {r.get('description', '')[:40]!r:44s}"
    lines = []
    if r["status"] == "ok":
        size = "x".join(str(v) for v in r["size"])
        spacing = "x".join(f"{v:g}" for v in r["spacing"])
        extra = r["shape"][: len(r["shape"]) - len(r["size"])]
        frames = f" ({'x'.join(str(v) for v in extra)} frames)" if extra and "nm_breakdown" not in r else ""
        lines.append(f"{head} size {size}{frames}  spacing {spacing} mm  units {r['units']}")
        if "value_range" in r:
            lo, hi = r["value_range"]
            text = f"values {_g(lo)} .. {_g(hi)} {r['units'] if r['units'] != '-' else '(no units stored)'}"
            if "stored_value_range" in r:
                slo, shi = r["stored_value_range"]
                text += f" (stored {_g(slo)} .. {_g(shi)} {r['stored_units']})"
            if "distinct_values" in r:
                text += f"; {len(r['distinct_values'])} distinct values {r['distinct_values'][:12]} (label map?)"
            lines.append(f"         {text}")
        if "suv" in r:
            s = r["suv"]
            lines.append(f"         SUV ({s['kind']}): max {s['max_g_per_ml']:g} g/ml, mean {s['mean_g_per_ml']:g} g/ml (whole volume)")
        elif r.get("suv_unavailable"):
            lines.append(f"         SUV not available: {r['suv_unavailable']}")
        if "nm_breakdown" in r:
            lines.append(f"         {_breakdown_text(r)}")
            windows = ", ".join(f"{w['name']} {_g(w['lower_keV'])}-{_g(w['upper_keV'])} keV" if w["lower_keV"] is not None else w["name"]
                                for w in r.get("energy_windows", []))
            if windows:
                lines.append(f"         energy windows: {windows}")
            for rot in r.get("rotations", []):
                lines.append("         rotation: " + ", ".join(f"{k} {v:g}" + (" deg" if k != "RotationDirection" else "") if not isinstance(v, str)
                                                              else f"{k} {v}" for k, v in rot.items()))
    else:
        lines.append(f"{head} {r['status']}")
    for seg in r.get("segments", []):
        vox = "voxels n/a" if seg["voxels"] is None else f"{seg['voxels']} voxels"
        lines.append(f"         segment {seg['number']}: {seg['label']!r} {vox}")
    for roi in r.get("structures", []):
        lines.append(f"         structure {roi['number']}: {roi['name']!r} {roi['contours']} contour(s)")
    if r.get("series_uid"):
        where = f"  file {r['path']}" if r.get("files") == 1 else ""
        lines.append(f"         series {r['series_uid']}{where}")
    elif r.get("kind") == "volume":
        lines.append(f"         file {r['path']}")
    return lines


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import InputError
    from ..io.dicom_warnings import DicomWarnings

    collector = DicomWarnings()

    def progress(xs, label):
        return tqdm(xs, desc=f"info {label}", unit="file" if label == "scan" else "item", leave=False,
                    disable=True if args.no_progress else None, file=sys.stderr)

    records, counts = describe(args.path, args.suv, collector, progress)
    collector.report(log, verbose=getattr(args, "verbose", 0) > 0)
    if not records:
        raise InputError(args.path, f"no DICOM series or NIfTI/NRRD image found ({counts['not_image_files']} other file(s), "
                                    f"{counts['unreadable_dicom']} unreadable DICOM file(s))")
    status = str(records[0].get("status", "")) if len(records) == 1 else ""
    if status.startswith("error: ") and Path(args.path).is_file():
        raise InputError(None, status[len("error: "):])  # the one file asked about cannot be read: say so and fail
    if args.json:
        json.dump(records, sys.stdout, indent=2, default=str)
        print()
        return 0
    for r in records:
        print("\n".join(format_record(r)))
    n_series = sum(r["kind"] == "dicom" for r in records)
    print(f"{n_series} DICOM series in {counts['dicom_files']} file(s), {counts['volume_files']} NIfTI/NRRD file(s), "
          f"{counts['unreadable_dicom']} unreadable DICOM file(s), {counts['not_image_files']} other file(s) not read"
          + (f"; {collector.summary()} (-v lists them)" if collector.n_files else ""))
    return 0
