"""Build/update the SQLite catalog of a DICOM folder (headers only, incremental, never stops on bad files).

A file already indexed with the same modification time and size is skipped, so re-running ``index_folder``
on a growing archive only reads new or changed files. DICOM files that cannot be read are recorded in the
``errors`` table with the reason (and retried only when they change); files that are not DICOM at all
(README, LICENSE, CSV, PNG, NIfTI, ...) are only counted (``IndexStats.non_dicom``). pydicom's warnings are
collected per file in a :class:`nmkit.io.dicom_warnings.DicomWarnings` (reported by the caller).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pydicom.dataset import Dataset

from ..io.dicom_series import iter_dicom_files, read_header
from ..io.dicom_warnings import DicomWarnings, looks_like_dicom
from .schema import connect

log = logging.getLogger(__name__)

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
ROI_MODALITIES = ("RTSTRUCT", "SEG")


@dataclass
class IndexStats:
    """Counts of one indexing run."""

    seen: int = 0
    indexed: int = 0
    skipped_unchanged: int = 0
    errors: int = 0
    removed: int = 0
    non_dicom: int = 0
    warned: int = 0  # files that raised at least one pydicom warning

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (f"{self.seen} file(s) seen, {self.indexed} indexed, {self.skipped_unchanged} unchanged, "
                f"{self.errors} unreadable DICOM (see the errors table), {self.non_dicom} not DICOM (skipped), "
                f"{self.warned} with DICOM warnings, {self.removed} removed")


NOT_DICOM = "not_dicom"


def _walk(root: Path) -> tuple[list[Path], int]:
    """(DICOM candidates, number of other regular files skipped by name/extension) under ``root``."""
    candidates = list(iter_dicom_files(root))
    if root.is_file():
        return candidates, 0
    wanted = set(candidates)
    others = sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and p not in wanted)
    return candidates, others


def _s(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _f(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _i(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(float(value))
    except (TypeError, ValueError):
        return None


def _tracer(ds: Dataset) -> dict[str, Any]:
    seq = ds.get("RadiopharmaceuticalInformationSequence", None)
    if not seq:
        return {}
    rp = seq[0]
    out = {"radiopharmaceutical": _s(rp, "Radiopharmaceutical"), "injected_dose_bq": _f(rp.get("RadionuclideTotalDose")),
           "half_life_s": _f(rp.get("RadionuclideHalfLife")),
           "injection_time": _s(rp, "RadiopharmaceuticalStartDateTime") or _s(rp, "RadiopharmaceuticalStartTime")}
    for kw, key in (("RadionuclideCodeSequence", "radionuclide"), ("RadiopharmaceuticalCodeSequence", "radiopharmaceutical_code")):
        codes = rp.get(kw, None)
        out[key] = _s(codes[0], "CodeMeaning") if codes else ""
    if out["injected_dose_bq"] == 0:
        out["injected_dose_bq"] = None  # 0 is "not recorded" in practice (e.g. raw GE projections)
    return out


def _energy_windows(ds: Dataset) -> list[tuple[str, float | None, float | None]]:
    windows = []
    for info in ds.get("EnergyWindowInformationSequence", None) or []:  # NM
        name = _s(info, "EnergyWindowName")
        ranges = info.get("EnergyWindowRangeSequence", None) or [Dataset()]
        for rng in ranges:
            windows.append((name, _f(rng.get("EnergyWindowLowerLimit")), _f(rng.get("EnergyWindowUpperLimit"))))
    for rng in ds.get("EnergyWindowRangeSequence", None) or []:  # PT (and xSPECT stored as PT)
        windows.append(("", _f(rng.get("EnergyWindowLowerLimit")), _f(rng.get("EnergyWindowUpperLimit"))))
    return windows


def _collimator(ds: Dataset) -> str:
    for det in ds.get("DetectorInformationSequence", None) or []:
        name = _s(det, "CollimatorGridName") or _s(det, "CollimatorType")
        if name:
            return name
    return _s(ds, "CollimatorGridName") or (_s(ds, "CollimatorType") if _s(ds, "Modality") == "NM" else "")


def _references(ds: Dataset) -> list[tuple[str, str, str]]:
    """(referenced series UID, referenced SOP UID, kind) of a SEG or RTSTRUCT."""
    refs: list[tuple[str, str, str]] = []
    modality = _s(ds, "Modality")
    if modality == "RTSTRUCT" or _s(ds, "SOPClassUID") == RTSTRUCT_CLASS:
        for frame in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
            for study in frame.get("RTReferencedStudySequence", None) or []:
                for series in study.get("RTReferencedSeriesSequence", None) or []:
                    refs.append((_s(series, "SeriesInstanceUID"), "", "RTSTRUCT"))
        if not refs:  # older structure sets: only contour-level image references
            for roi in ds.get("ROIContourSequence", None) or []:
                for contour in roi.get("ContourSequence", None) or []:
                    for img in contour.get("ContourImageSequence", None) or []:
                        refs.append(("", _s(img, "ReferencedSOPInstanceUID"), "RTSTRUCT"))
    elif modality == "SEG" or _s(ds, "SOPClassUID") == SEG_CLASS:
        for series in ds.get("ReferencedSeriesSequence", None) or []:
            refs.append((_s(series, "SeriesInstanceUID"), "", "SEG"))
        if not refs:
            shared = ds.get("SharedFunctionalGroupsSequence", None) or []
            groups = list(shared) + list(ds.get("PerFrameFunctionalGroupsSequence", None) or [])
            for group in groups:
                for der in group.get("DerivationImageSequence", None) or []:
                    for src in der.get("SourceImageSequence", None) or []:
                        refs.append(("", _s(src, "ReferencedSOPInstanceUID"), "SEG"))
    seen, unique = set(), []
    for r in refs:
        if r not in seen and (r[0] or r[1]):
            seen.add(r)
            unique.append(r)
    return unique


def _roi_creator(ds: Dataset) -> str:
    creator = _s(ds, "ContentCreatorName") or _s(ds, "OperatorsName")
    if not creator:
        for obs in ds.get("RTROIObservationsSequence", None) or []:
            creator = _s(obs, "ROIInterpreter")
            if creator:
                break
    return creator


def _record(con: sqlite3.Connection, path: Path, ds: Dataset) -> None:
    series_uid = _s(ds, "SeriesInstanceUID")
    sop_uid = _s(ds, "SOPInstanceUID")
    if not series_uid or not sop_uid:
        raise ValueError("no SeriesInstanceUID/SOPInstanceUID: not a composite DICOM instance (DICOMDIR or broken file?)")
    patient_id, study_uid = _s(ds, "PatientID"), _s(ds, "StudyInstanceUID")
    modality = _s(ds, "Modality")
    con.execute("INSERT OR IGNORE INTO patient VALUES (?,?,?,?)",
                (patient_id, _s(ds, "PatientName"), _s(ds, "PatientSex"), _s(ds, "PatientBirthDate")))
    con.execute("INSERT OR IGNORE INTO study VALUES (?,?,?,?,?,?,?)",
                (study_uid, patient_id, _s(ds, "StudyDate"), _s(ds, "StudyTime"), _s(ds, "StudyDescription"),
                 _s(ds, "AccessionNumber"), _s(ds, "StudyID")))
    exists = con.execute("SELECT 1 FROM series WHERE series_uid=?", (series_uid,)).fetchone()
    if not exists:
        tracer = _tracer(ds)
        windows = _energy_windows(ds)
        con.execute(
            """INSERT INTO series (series_uid, study_uid, patient_id, modality, description, series_number, series_date,
               series_time, body_part, manufacturer, model, protocol, image_type, units, reconstruction_method,
               convolution_kernel, frame_of_reference_uid, sop_class_uid, radiopharmaceutical, radiopharmaceutical_code,
               radionuclide, injected_dose_bq, half_life_s, injection_time, collimator, n_energy_windows, roi_creator)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (series_uid, study_uid, patient_id, modality, _s(ds, "SeriesDescription"), _i(ds.get("SeriesNumber")),
             _s(ds, "SeriesDate"), _s(ds, "SeriesTime"), _s(ds, "BodyPartExamined"), _s(ds, "Manufacturer"),
             _s(ds, "ManufacturerModelName"), _s(ds, "ProtocolName"), _s(ds, "ImageType"), _s(ds, "Units"),
             _s(ds, "ReconstructionMethod"), _s(ds, "ConvolutionKernel"), _s(ds, "FrameOfReferenceUID"),
             _s(ds, "SOPClassUID"), tracer.get("radiopharmaceutical", ""), tracer.get("radiopharmaceutical_code", ""),
             tracer.get("radionuclide", ""), tracer.get("injected_dose_bq"), tracer.get("half_life_s"),
             tracer.get("injection_time", ""), _collimator(ds), len(windows),
             _roi_creator(ds) if modality in ROI_MODALITIES else ""))
        con.executemany("INSERT OR REPLACE INTO energy_window VALUES (?,?,?,?,?)",
                        [(series_uid, k, *w) for k, w in enumerate(windows)])
    con.execute("INSERT OR REPLACE INTO instance VALUES (?,?,?,?,?,?,?,?)",
                (sop_uid, series_uid, str(path), _s(ds, "SOPClassUID"), _i(ds.get("InstanceNumber")),
                 _i(ds.get("NumberOfFrames")) or 1, _i(ds.get("Rows")), _i(ds.get("Columns"))))
    for ref_series, ref_sop, kind in _references(ds):
        con.execute("INSERT INTO reference VALUES (?,?,?,?,?)", (series_uid, ref_series, ref_sop, kind, str(path)))


def _forget(con: sqlite3.Connection, path: str) -> None:
    con.execute("DELETE FROM instance WHERE path=?", (path,))
    con.execute("DELETE FROM reference WHERE path=?", (path,))
    con.execute("DELETE FROM errors WHERE path=?", (path,))
    con.execute("DELETE FROM file WHERE path=?", (path,))


def _refresh_counts(con: sqlite3.Connection) -> None:
    con.execute("""UPDATE series SET n_instances = (SELECT COUNT(*) FROM instance i WHERE i.series_uid = series.series_uid),
                   n_frames = (SELECT COALESCE(SUM(number_of_frames), 0) FROM instance i WHERE i.series_uid = series.series_uid)""")
    # series/studies/patients whose files all disappeared
    con.execute("DELETE FROM series WHERE n_instances = 0")
    con.execute("DELETE FROM energy_window WHERE series_uid NOT IN (SELECT series_uid FROM series)")
    con.execute("DELETE FROM study WHERE study_uid NOT IN (SELECT study_uid FROM series)")
    con.execute("DELETE FROM patient WHERE patient_id NOT IN (SELECT patient_id FROM study)")


def index_folder(root: str | Path, db: str | Path, progress: Callable[[Iterable], Iterable] | None = None,
                 prune: bool = True, commit_every: int = 500, collector: DicomWarnings | None = None) -> IndexStats:
    """Index every file under ``root`` into ``db`` (created when missing); return counts.

    ``prune`` removes entries of files under ``root`` that no longer exist. pydicom warnings are silenced and
    collected per file into ``collector`` (a new one when None); ``stats.warned`` counts the files concerned.
    """
    root = Path(root).resolve()
    if not root.exists():
        from ..errors import InputError

        raise InputError(root, "folder to index does not exist")
    con = connect(db)
    stats = IndexStats()
    collector = collector if collector is not None else DicomWarnings()
    warned_before = collector.n_files
    rows = list(con.execute("SELECT path, mtime_ns, size, status FROM file"))
    known = {row["path"]: (row["mtime_ns"], row["size"]) for row in rows}
    not_dicom = {row["path"] for row in rows if row["status"] == NOT_DICOM}
    paths, stats.non_dicom = _walk(root)
    stats.seen = stats.non_dicom
    present = set()
    try:
        for n, path in enumerate(progress(paths) if progress else paths, 1):
            stats.seen += 1
            key = str(path)
            present.add(key)
            try:
                st = path.stat()
            except OSError as exc:
                log.warning("cannot stat %s: %s", path, exc)
                continue
            if known.get(key) == (st.st_mtime_ns, st.st_size):
                if key in not_dicom:
                    stats.non_dicom += 1
                else:
                    stats.skipped_unchanged += 1
                continue
            _forget(con, key)
            status = _index_file(con, path, st, collector)
            if status == "ok":
                stats.indexed += 1
            elif status == NOT_DICOM:
                stats.non_dicom += 1
            else:
                stats.errors += 1
            con.execute("INSERT OR REPLACE INTO file VALUES (?,?,?,?)", (key, st.st_mtime_ns, st.st_size, status))
            if n % commit_every == 0:
                con.commit()
        if prune:
            prefix = str(root) + "/"
            for gone in [p for p in known if (p.startswith(prefix) or p == str(root)) and p not in present]:
                _forget(con, gone)
                stats.removed += 1
        _refresh_counts(con)
        con.commit()
    finally:
        con.close()
    stats.warned = collector.n_files - warned_before
    return stats


def _index_file(con: sqlite3.Connection, path: Path, st, collector: DicomWarnings) -> str:
    """Read one header and record it: "ok", NOT_DICOM (unreadable, no DICM prefix nor DICOM extension) or "error" (in `errors`)."""
    key = str(path)
    try:
        with collector.capture(path):  # pydicom validates values lazily: _record reads them too
            _record(con, path, read_header(path))
        return "ok"
    except Exception as exc:  # never stop on one bad file: record why
        if not looks_like_dicom(path) and "SOPInstanceUID" not in str(exc):
            collector.by_file.pop(key, None)  # warnings of a forced read of a text file say nothing
            return NOT_DICOM
        reason = str(exc) if key in str(exc) else f"{type(exc).__name__}: {exc}"
        con.execute("INSERT OR REPLACE INTO errors VALUES (?,?,?,?)", (key, reason, st.st_mtime_ns, st.st_size))
        return "error"
