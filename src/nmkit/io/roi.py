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
from .dicom_dates import iso_datetime
from .filenames import safe_name
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


def structure_names(path: str | Path, kind: RoiKind | None = None) -> dict[int, str]:
    """``{number: name}`` of every structure in an ROI file, without rasterising anything.

    The number is the RTSTRUCT ROI Number, the SEG Segment Number, the label value of a label map, or the position
    (1, 2, ...) of a polygon file's ROI names. Names may repeat; numbers never do."""
    path = Path(path)
    kind = kind or detect_roi_kind(path)
    if kind == "rtstruct":
        from .rtstruct import list_rois

        return dict(sorted(list_rois(path).items()))
    if kind == "seg":
        from .seg import segment_labels

        return segment_labels(path)
    if kind == "polygons":
        from .polygons import load_polygon_json, polygon_roi_numbers

        return polygon_roi_numbers(load_polygon_json(path))
    if kind == "labelmap":
        return dict(sorted(read_named_label_map(path).labels.items()))
    raise InputError(path, "not a supported ROI file (DICOM RTSTRUCT or SEG, nmkit-polygons/1 JSON, NIfTI/NRRD label map)")


def structure_readers(path: str | Path, kind: RoiKind | None = None) -> dict[int, str]:
    """``{number: reader}``: who drew each structure, where the file says it (RTSTRUCT ROIInterpreter or
    OperatorsName, SEG algorithm name or ContentCreatorName, the polygon file's ``reader``); empty when unknown."""
    path = Path(path)
    kind = kind or detect_roi_kind(path)
    try:
        if kind == "rtstruct":
            from .rtstruct import roi_interpreters

            return roi_interpreters(path)
        if kind == "seg":
            from .seg import segment_creators

            return segment_creators(path)
        if kind == "polygons":
            from .polygons import load_polygon_json, polygon_roi_numbers

            doc = load_polygon_json(path)
            reader = str(doc.get("reader", "") or "").strip()
            return {n: reader for n in polygon_roi_numbers(doc)} if reader else {}
    except Exception as exc:  # the reader is a courtesy: a header we cannot read here fails later, with its own message
        log.debug("%s: no reader information (%s)", path, exc)
    return {}


def _numbers_for(path: Path, kind: RoiKind, roi_names: Sequence[str] | None, roi_numbers: Sequence[int] | None,
                 selector: str | Sequence[str] | None) -> list[int] | None:
    """The structure numbers that ``roi_names``/``roi_numbers``/``selector`` choose (their union), ``None`` for all."""
    from .roi_select import select_rois, split_selectors

    if roi_names is None and roi_numbers is None and not split_selectors(selector):
        return None
    names = structure_names(path, kind)
    chosen: set[int] = set()
    if roi_names is not None:
        wanted = {str(n).lower() for n in roi_names}
        found = {n for n, name in names.items() if name.lower() in wanted}
        missing = wanted - {names[n].lower() for n in found}
        if missing:
            raise InputError(path, f"ROI(s) {sorted(missing)} not found; the file has {dict(names)}")
        chosen |= found
    if roi_numbers is not None:
        absent = sorted(int(n) for n in roi_numbers if int(n) not in names)
        if absent:
            raise InputError(path, f"ROI number(s) {absent} not found; the file has {dict(names)}")
        chosen |= {int(n) for n in roi_numbers}
    if split_selectors(selector):
        chosen |= set(select_rois(names, selector, path))
    return sorted(chosen)


def load_rois(path: str | Path, reference: Image | None = None, roi_names: Sequence[str] | None = None,
              roi_numbers: Sequence[int] | None = None, selector: str | Sequence[str] | None = None) -> Mask:
    """Read any supported ROI file as a ``Mask`` on the grid of ``reference``; structures are keyed by NUMBER.

    The returned mask's ``labels`` are ``{number: name}``: the RTSTRUCT ROI Number, the SEG Segment Number, the
    label value of a label map, or the 1-based position of a polygon file's ROI name. Names may repeat (a SEG
    with ten "Neoplasm, Secondary" segments), numbers never do: take ``mask.binary(number)`` for one structure.
    RTSTRUCT/SEG/polygon masks are overlapping (one layer per structure); label maps stay label maps.
    ``meta["readers"]`` gives ``{number: reader}`` where the file names who drew a structure.

    Selection (all optional; given together they select the union, blank = every structure):

    * ``selector``: the :mod:`nmkit.io.roi_select` rule used by every command: ``"3"`` (number), ``"GTV*"``
      (glob), ``"GTV_Mass_PET"`` (exact, else case-insensitive name; a repeated name selects all), or a list /
      ``;``-separated string of those;
    * ``roi_numbers``: numbers;
    * ``roi_names``: names, case-insensitive.

    RTSTRUCT and polygon files need ``reference`` (the image they were drawn on). SEG and label maps are
    read on their own grid when ``reference`` is ``None``. Unknown names/numbers raise ``InputError`` listing
    what the file has.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    kind = detect_roi_kind(path)
    if kind is None:
        raise InputError(path, "not a supported ROI file (DICOM RTSTRUCT or SEG, nmkit-polygons/1 JSON, NIfTI/NRRD label map)")
    if kind in ("rtstruct", "polygons") and reference is None:
        raise InputError(path, f"a {kind} file needs the reference image it was drawn on")
    numbers = _numbers_for(path, kind, roi_names, roi_numbers, selector)
    if kind == "rtstruct":
        from .rtstruct import read_rtstruct

        mask = read_rtstruct(path, reference, roi_numbers=numbers)
    elif kind == "seg":
        from .seg import read_seg

        mask = read_seg(path, reference, segment_numbers=numbers)
    elif kind == "polygons":
        from .polygons import read_polygons

        mask = read_polygons(path, reference, roi_numbers=numbers)
    else:
        mask = _label_map_on(path, reference, numbers)
    readers = structure_readers(path, kind)
    mask.meta["readers"] = {n: readers[n] for n in mask.labels if n in readers}
    mask.meta.setdefault("roi_format", kind)
    return mask


def _label_map_on(path: Path, reference: Image | None, numbers: Sequence[int] | None) -> Mask:
    """A named label map, reduced to the label values ``numbers`` (all when ``None``), on the reference grid."""
    import numpy as np

    mask = read_named_label_map(path)
    if numbers is not None:
        keep = np.isin(mask.array, list(numbers))
        mask = Mask(array=np.where(keep, mask.array, 0), spacing=mask.spacing, origin=mask.origin, direction=mask.direction,
                    modality="SEG", meta=mask.meta, labels={v: mask.labels[v] for v in numbers})
    if reference is not None and not mask.same_grid(reference):
        if mask.ndim_spatial != reference.ndim_spatial:
            raise DicomReadError(path, f"a {mask.ndim_spatial}D label map cannot be put on a {reference.ndim_spatial}D image")
        log.info("%s: label map resampled (nearest neighbour) onto the reference grid", path)
        meta = mask.meta
        mask = resample_to(mask, reference)
        mask.meta = meta
    return mask


# ----- folder conversion (nmkit roi2mask) ----------------------------------------------------------------
#: roi_summary.csv columns: one row per mask FILE written (voxels: count; volume_ml: millilitres; image_units: the
#: units of the written image's values)
SUMMARY_COLUMNS = ("case", "roi_name", "segment", "reader", "voxels", "volume_ml", "mask_file", "image_file", "image_units",
                   "source_file", "roi_format", "series_uid")
#: structure-number tag in a repeated name's file name (``Neoplasm_Secondary__seg03.nii.gz``)
NUMBER_TAGS = {"seg": "seg", "rtstruct": "roi", "polygons": "roi", "labelmap": "label"}
_RESERVED_STEMS = {"image"}


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


def tracer_of(ds) -> str:
    """The tracer a PT/NM header names: Radiopharmaceutical, else its code meaning, else the radionuclide's
    (the same order as the catalog manifest); blank when none."""
    for item in getattr(ds, "RadiopharmaceuticalInformationSequence", None) or []:
        text = str(getattr(item, "Radiopharmaceutical", "") or "").strip()
        if text:
            return text
        for seq in ("RadiopharmaceuticalCodeSequence", "RadionuclideCodeSequence"):
            for code in getattr(item, seq, None) or []:
                meaning = str(getattr(code, "CodeMeaning", "") or "").strip()
                if meaning:
                    return meaning
    return ""


def _header_facts(ds, series_uid: str) -> dict[str, str]:
    """The case-table facts of an image series from one of its headers."""
    def get(kw: str) -> str:
        return str(getattr(ds, kw, "") or "").strip()

    date = get("AcquisitionDate") or get("SeriesDate") or get("StudyDate")
    time = get("AcquisitionTime") if get("AcquisitionDate") else (get("SeriesTime") if get("SeriesDate") else get("StudyTime"))
    return {"patient_id": get("PatientID"), "study_uid": get("StudyInstanceUID"), "series_uid": get("SeriesInstanceUID") or series_uid,
            "study_date": get("StudyDate"), "acquisition_datetime": iso_datetime(date, time), "modality": get("Modality"),
            "tracer": tracer_of(ds), "series_description": get("SeriesDescription"), "series_number": get("SeriesNumber")}


class _Target:
    """One image that ROI files refer to: where it is, its header facts, its ROI files and its output folder."""

    def __init__(self, key: str, files: list[Path] | None = None, volume: Path | None = None, facts: dict | None = None):
        self.key, self.files, self.volume = key, files, volume
        self.facts: dict[str, str] = dict(facts or {})
        self.rois: list[tuple[Path, RoiKind]] = []
        self.time_point = ""
        self.folder = ""


class _Planner:
    """Finds the image each ROI file refers to from headers only (no pixel data), one ``_Target`` per image."""

    def __init__(self, root: Path):
        from .dicom_series import scan_series

        self.root = root
        self.series = scan_series(root)
        self.targets: dict[str, _Target] = {}
        self._sop_index: dict[str, Path] | None = None
        self._for_index: dict[str, list[str]] | None = None

    def _header(self, path: Path):
        import pydicom

        return pydicom.dcmread(str(path), stop_before_pixels=True)

    def _series_target(self, uid: str) -> _Target:
        if uid not in self.targets:
            entry = self.series[uid]
            self.targets[uid] = _Target(uid, files=list(entry.files), facts=_header_facts(self._header(entry.files[0]), uid))
        return self.targets[uid]

    def _by_frame_of_reference(self, for_uid: str, where: Path) -> str:
        """The one image series in the folder sharing ``for_uid`` (used when the referenced series UID is absent,
        e.g. after a re-export gave the images new UIDs); an error when none or several match."""
        import pydicom

        if self._for_index is None:
            self._for_index = {}
            for uid, entry in self.series.items():
                if entry.modality.upper() in NON_IMAGE_MODALITIES:
                    continue
                try:
                    ds = pydicom.dcmread(str(entry.files[0]), stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
                except Exception:
                    continue
                self._for_index.setdefault(str(getattr(ds, "FrameOfReferenceUID", "") or ""), []).append(uid)
        matches = sorted(self._for_index.get(for_uid, []))
        if len(matches) != 1:
            found = "no image series" if not matches else f"{len(matches)} image series ({', '.join(matches)})"
            raise InputError(where, f"the referenced image series is not in {self.root} and {found} share(s) its frame of reference {for_uid}")
        log.info("%s: referenced series not found; using series %s with the same frame of reference", where, matches[0])
        return matches[0]

    def _sop_file(self, sop_uid: str) -> Path | None:
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

    def add(self, path: Path, kind: RoiKind) -> _Target:
        """Attach an ROI file to the image it refers to; raises ``InputError`` naming the file when none is found."""
        if kind in ("rtstruct", "seg"):
            uid = referenced_series_uid(path)
            if not (uid and uid in self.series):
                for_uid = roi_frame_of_reference(path)
                if not for_uid:
                    raise InputError(path, "the ROI file names neither an image series in the folder nor a frame of reference")
                uid = self._by_frame_of_reference(for_uid, path)
            target = self._series_target(uid)
        else:
            target = self._polygon_target(path)
        target.rois.append((path, kind))
        return target

    def _polygon_target(self, path: Path) -> _Target:
        doc = json.loads(path.read_text(encoding="utf-8"))
        ref = str(doc.get("image", "") or "")
        if not ref:
            raise InputError(path, "the polygon file does not name its image ('image' is empty)")
        # "image" is relative to the JSON's folder, or to a folder above it (a cohort root: rois/R1/x.json -> dicom/...)
        folders = [path.parent, *[p for p in path.parent.parents if self.root == p or self.root in p.parents]]
        candidate = next((f / ref for f in folders if (f / ref).is_file()), path.parent / ref)
        if candidate.is_file() and is_volume_file(candidate):
            key = str(candidate.resolve())
            if key not in self.targets:
                stem = _volume_stem(candidate)
                self.targets[key] = _Target(key, volume=candidate, facts={"patient_id": stem, "series_description": stem})
            return self.targets[key]
        image_file = candidate if candidate.is_file() else self._sop_file(ref)
        if image_file is None:
            raise InputError(path, f"the polygon file's image {ref!r} is neither a file next to it nor a SOPInstanceUID under {self.root}")
        key = f"file:{Path(image_file).resolve()}"
        if key not in self.targets:
            ds = self._header(Path(image_file))
            facts = _header_facts(ds, "")
            facts["series_description"] = " ".join(x for x in (facts["series_description"], f"image {getattr(ds, 'InstanceNumber', '') or Path(image_file).stem}") if x)
            self.targets[key] = _Target(key, files=[Path(image_file)], facts=facts)
        return self.targets[key]


def assign_time_points(targets: Sequence[_Target]) -> None:
    """``TP1``, ``TP2`` ... per patient, modality and tracer by acquisition day (blank for a single day), the
    catalog manifest's rule (``io.dicom_dates.time_point_labels``)."""
    from .dicom_dates import scan_day, time_point_labels

    groups = [(t.facts.get("patient_id", ""), t.facts.get("modality", ""), t.facts.get("tracer", "")) for t in targets]
    days = [scan_day(t.facts.get("acquisition_datetime"), t.facts.get("study_date")) for t in targets]
    for t, label in zip(targets, time_point_labels(groups, days)):
        if label:
            t.time_point = label


def case_folder_names(targets: Sequence[_Target]) -> None:
    """Readable, unique case folders: ``<patient>/<YYYY-MM-DD>_<series description>[_<time point>]``."""
    used: set[str] = set()
    for t in targets:
        f = t.facts
        patient = safe_name(f.get("patient_id", "") or "unknown_patient")
        date = f.get("acquisition_datetime", "")[:10]
        if not date and len(f.get("study_date", "")) == 8:
            date = f"{f['study_date'][:4]}-{f['study_date'][4:6]}-{f['study_date'][6:]}"
        description = f.get("series_description", "") or " ".join(x for x in (f.get("modality", ""), f.get("series_number", "")) if x)
        leaf = "_".join(x for x in (date, safe_name(description, "image")[:60], t.time_point) if x)
        name = f"{patient}/{leaf}"
        extras = [f"S{safe_name(f.get('series_number', ''))}" if f.get("series_number") else "", safe_name(t.key)[-12:]]
        for extra in [e for e in extras if e]:
            if name not in used:
                break
            name = f"{name}_{extra}"
        n = 2
        base = name
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        t.folder = name


def _mask_file_name(name: str, number: int, kind: RoiKind, repeated: bool, source: Path, taken: set[str],
                    reader: str | None = None) -> str:
    """A mask file name in a case folder that no other mask of this run has: the structure's name, with its number
    (``__seg03``) when the name repeats in its file, or its reader (``thyroid__R2``) when another file took the name,
    then the source file's stem."""
    stem = safe_name(name, f"roi_{number}")
    tagged = f"{stem}__{NUMBER_TAGS.get(kind, 'roi')}{number:02d}"
    by_reader = [f"{stem}__{safe_name(reader)}"] if reader and not repeated else []
    candidates = [tagged] if repeated else [stem, *by_reader, tagged]
    candidates.append(f"{tagged}__{safe_name(source.stem)}")
    for c in candidates:
        if c.lower() not in taken and c.lower() not in _RESERVED_STEMS:
            return f"{c}.nii.gz"
    n = 2
    while f"{candidates[-1]}_{n}".lower() in taken:
        n += 1
    return f"{candidates[-1]}_{n}.nii.gz"


def _read_target(target: _Target, suv: str | None) -> Image:
    """The target's image (PT in SUV when ``suv`` is given; other modalities in their stored units)."""
    if target.volume is not None:
        from .volume_files import read_volume

        return read_volume(target.volume)
    from .reader import read_series_files

    modality = str(target.facts.get("modality", "") or "").upper()
    if suv and modality != "PT":
        log.info("%s: %s image kept in stored units (--suv applies to PT images)", target.files[0].parent, modality or "non-PT")
    return read_series_files(list(target.files or []), suv=suv if modality == "PT" else None)


def _image_units(image: Image) -> str:
    units = str(image.units or "")
    return "" if units in ("", "unknown") else units


def convert_folder(in_dir: str | Path, out_dir: str | Path, roi_names: Sequence[str] | None = None,
                   selector: str | Sequence[str] | None = None, suv: str | None = None) -> dict:
    """Convert every ROI file under ``in_dir`` into one NIfTI mask per structure, next to a NIfTI copy of its image.

    Output: ``out_dir/<patient>/<date>_<series description>[_TPn]/image.nii.gz`` and one binary mask file per
    structure (``<name>.nii.gz``; a name repeated in its file, or already taken in the folder, gets the structure
    number: ``Neoplasm_Secondary__seg03.nii.gz``; nothing is ever overwritten), ``roi_summary.csv`` (one row per
    mask file, ``SUMMARY_COLUMNS``) and ``roi_summary.json`` (provenance, converted and failed files).
    ``selector`` (``nmkit.io.roi_select``: numbers, globs, names) or ``roi_names`` chooses structures; ``suv``
    (``bw``/``lbm``) writes PT images in SUV (g/ml), the factor recorded per case.

    Returns ``{"converted": [summary rows], "cases": [case-table rows], "failed": [...], "provenance": {...}}``;
    ``cases`` holds one row per image in the ``nmkit.dataset`` contract (``masks`` as dicts of MaskRef fields).
    A file that cannot be converted is logged and listed under ``failed``; the others are still converted.
    """
    from ..errors import NmkitError

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise InputError(in_dir, "input folder does not exist")
    if suv not in (None, "bw", "lbm"):
        raise InputError(None, f"--suv must be 'bw' or 'lbm', got {suv!r}")
    roi_files = find_roi_files(in_dir)
    if not roi_files:
        raise InputError(in_dir, "no DICOM RTSTRUCT, DICOM SEG or nmkit-polygons/1 JSON file found in this folder (nothing to convert)")
    out_dir.mkdir(parents=True, exist_ok=True)
    planner = _Planner(in_dir)
    failed: list[dict] = []
    for path, kind in roi_files:
        try:
            planner.add(path, kind)
        except NmkitError as exc:
            log.warning("skipping %s: %s", path, exc)
            failed.append({"file": str(path), "error": str(exc)})
        except Exception as exc:  # a malformed header must not stop the batch; record what broke
            log.warning("skipping %s: unexpected %s: %s", path, type(exc).__name__, exc)
            failed.append({"file": str(path), "error": f"{type(exc).__name__}: {exc}"})
    return _convert_targets(list(planner.targets.values()), out_dir, roi_names, selector, suv, failed,
                            config={"command": "roi2mask", "in_dir": str(in_dir)}, inputs=[str(p) for p, _ in roi_files])


def convert_cases(cases: Sequence[Mapping], out_dir: str | Path, selector: str | Sequence[str] | None = None,
                  suv: str | None = None, source: str | Path | None = None) -> dict:
    """``convert_folder`` for the rows of a case table (``nmkit.dataset``): each row's image (DICOM folder or
    ``;``-separated files; ``series_uid`` picks the series in a folder holding several) and its RTSTRUCT/SEG/polygon
    masks (``masks``: ``MaskRef`` objects or dicts; label-map masks are already masks and are left out).
    Row facts (patient, tracer, time point ...) fill what the headers lack. Returns what ``convert_folder`` returns."""
    from .dicom_series import scan_series

    out_dir = Path(out_dir)
    if suv not in (None, "bw", "lbm"):
        raise InputError(None, f"--suv must be 'bw' or 'lbm', got {suv!r}")
    failed: list[dict] = []
    targets: list[_Target] = []
    inputs: list[str] = []
    for number, row in enumerate(cases, start=1):
        where = row.get("image") or f"row {number}"
        try:
            masks = [m if isinstance(m, Mapping) else m.to_dict() for m in (row.get("masks") or [])]
            rois = [(Path(m["file"]), m.get("kind") or detect_roi_kind(m["file"])) for m in masks]
            rois = [(f, k) for f, k in rois if k in ("rtstruct", "seg", "polygons")]
            if not rois:
                log.info("%s: no RTSTRUCT/SEG/polygon mask to convert", where)
                continue
            image = str(row.get("image") or "")
            paths = [Path(p.strip()) for p in image.split(";") if p.strip()]
            if len(paths) == 1 and is_volume_file(paths[0]):
                target = _Target(str(paths[0].resolve()), volume=paths[0], facts={})
            else:
                if len(paths) == 1 and paths[0].is_dir():
                    found = scan_series(paths[0])
                    uid = str(row.get("series_uid") or "")
                    if uid not in found:
                        images = [u for u, e in found.items() if e.modality.upper() not in NON_IMAGE_MODALITIES]
                        if len(images) != 1:
                            raise InputError(paths[0], f"holds {len(images)} image series; give series_uid in the case table")
                        uid = images[0]
                    files = list(found[uid].files)
                else:
                    files = paths
                missing = [f for f in files if not Path(f).is_file()]
                if not files or missing:
                    raise InputError(missing[0] if missing else where, "image file does not exist")
                import pydicom

                facts = _header_facts(pydicom.dcmread(str(files[0]), stop_before_pixels=True), str(row.get("series_uid") or ""))
                target = _Target(facts.get("series_uid") or str(files[0]), files=files, facts=facts)
            for key in ("patient_id", "study_uid", "series_uid", "study_date", "acquisition_datetime", "modality", "tracer",
                        "series_description"):
                if not target.facts.get(key) and str(row.get(key) or "").strip():
                    target.facts[key] = str(row[key]).strip()
            target.rois = rois
            target.time_point = str(row.get("time_point") or "").strip()
            targets.append(target)
            inputs += [str(f) for f, _ in rois]
        except Exception as exc:  # batch job: one bad row never stops the others
            log.warning("skipping row %d (%s): %s", number, where, exc)
            failed.append({"file": str(where), "error": str(exc)})
    if not targets and not failed:
        raise InputError(source, "no row of the case table has an RTSTRUCT, SEG or polygon mask to convert")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(t.time_point for t in targets):
        assign_time_points(targets)
    return _convert_targets(targets, out_dir, None, selector, suv, failed,
                            config={"command": "roi2mask", "case_table": str(source or "")}, inputs=inputs,
                            time_points_given=True)


def _convert_targets(targets: list[_Target], out_dir: Path, roi_names: Sequence[str] | None,
                     selector: str | Sequence[str] | None, suv: str | None, failed: list[dict], config: dict,
                     inputs: list[str], time_points_given: bool = False) -> dict:
    """Convert planned targets (shared by ``convert_folder`` and ``convert_cases``) and write the summaries."""
    import csv

    from ..provenance import library_versions, provenance

    if not time_points_given:
        assign_time_points(targets)
    case_folder_names(targets)
    rows: list[dict] = []
    cases: list[dict] = []
    suv_record: dict[str, dict] = {}
    for target in targets:
        case_rows, case_row = _convert_target(target, out_dir, roi_names, selector, suv, failed)
        rows.extend(case_rows)
        if case_row is not None:
            cases.append(case_row)
            if case_row.get("_suv"):
                suv_record[case_row["case_id"]] = case_row.pop("_suv")
            case_row.pop("_suv", None)
    files = [r["mask_file"] for r in rows]
    assert len(files) == len(set(files)), "two structures were given the same mask file"
    with (out_dir / "roi_summary.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        writer.writerows([{c: r.get(c, "") for c in SUMMARY_COLUMNS} for r in rows])
    config = {**config, "roi_names": list(roi_names) if roi_names else None,
              "selector": selector if selector is None or isinstance(selector, str) else list(selector), "suv": suv}
    record = provenance(config, inputs=inputs,
                        libraries=library_versions(("numpy", "SimpleITK", "pydicom", "highdicom")))
    summary = {"provenance": record, "units": {"voxels": "count", "volume_ml": "ml"}, "suv_factors": suv_record,
               "converted": rows, "failed": failed}
    (out_dir / "roi_summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return {**summary, "cases": cases}


def _convert_target(target: _Target, out_dir: Path, roi_names: Sequence[str] | None, selector: str | Sequence[str] | None,
                    suv: str | None, failed: list[dict]) -> tuple[list[dict], dict | None]:
    """Read one image, convert its ROI files; returns the summary rows and the case-table row (None: nothing written).
    Failures are appended to ``failed`` (``{"file", "error"}``)."""
    from ..errors import NmkitError
    from .volume_files import write_volume

    try:
        image = _read_target(target, suv)
    except Exception as exc:  # NmkitError, or anything a malformed image throws: the batch goes on
        for path, _ in target.rois:
            log.warning("skipping %s: its image cannot be read: %s", path, exc)
            failed.append({"file": str(path), "error": f"image {target.key}: {exc}"})
        return [], None
    case_dir = out_dir / target.folder
    image_file = case_dir / "image.nii.gz"
    taken: set[str] = set()
    rows: list[dict] = []
    masks: list[dict] = []
    units = _image_units(image)
    image_written = False
    for path, kind in target.rois:
        try:
            mask = load_rois(path, image, roi_names=roi_names, selector=selector)
        except NmkitError as exc:
            log.warning("skipping %s: %s", path, exc)
            failed.append({"file": str(path), "error": str(exc)})
            continue
        except Exception as exc:  # a malformed file must not stop the batch; record what broke
            log.warning("skipping %s: unexpected %s: %s", path, type(exc).__name__, exc)
            failed.append({"file": str(path), "error": f"{type(exc).__name__}: {exc}"})
            continue
        if not image_written:
            write_volume(image, image_file)
            image_written = True
        names = list(mask.labels.values())
        readers = mask.meta.get("readers", {})
        for number, name in sorted(mask.labels.items()):
            reader = readers.get(number) or None
            file_name = _mask_file_name(name, number, kind, names.count(name) > 1, path, taken, reader)
            taken.add(file_name[: -len(".nii.gz")].lower())
            target_file = case_dir / file_name
            binary = mask.binary_mask(number)
            write_volume(binary.with_array(binary.array.astype("uint8")), target_file)
            rows.append({"case": target.folder, "roi_name": name, "segment": number, "reader": reader or "",
                         "voxels": mask.voxel_count(number), "volume_ml": float(f"{mask.volume_ml(number):.6g}"),
                         "mask_file": str(target_file), "image_file": str(image_file), "image_units": units,
                         "source_file": str(path), "roi_format": kind, "series_uid": target.facts.get("series_uid", "")})
            masks.append({"file": str(target_file), "kind": "labelmap", "segment": number, "structure": name, "label": 1,
                          "reader": reader})
    if not masks:
        return rows, None
    facts = target.facts
    if not facts.get("patient_id"):
        log.warning("%s: the image has no PatientID; patient_id %r used in the case table", target.key, target.folder.split("/")[0])
    suv_meta = image.meta.get("suv") if isinstance(image.meta.get("suv"), dict) else None
    case = {"case_id": target.folder, "patient_id": facts.get("patient_id", "") or target.folder.split("/")[0],
            "study_uid": facts.get("study_uid", ""), "series_uid": facts.get("series_uid", ""),
            "study_date": facts.get("study_date", ""), "acquisition_datetime": facts.get("acquisition_datetime", ""),
            "time_point": target.time_point, "modality": facts.get("modality", ""), "tracer": facts.get("tracer", ""),
            "series_description": facts.get("series_description", ""), "image": str(image_file), "image_format": "nifti",
            "masks": [{k: v for k, v in m.items() if v is not None} for m in masks],
            "reader": "; ".join(sorted({m["reader"] for m in masks if m.get("reader")})),
            "suv": "", "units": units, "suv_factor": "" if suv_meta is None else suv_meta.get("factor", ""),
            "source_images": str(target.volume or (Path(target.files[0]).parent if target.files else ""))}
    case["_suv"] = suv_meta
    return rows, case
