"""Dataset manifests (case tables, ``nmkit.dataset``) from a catalog or a NIfTI folder, with patient-level splits.

The table follows the one contract of :mod:`nmkit.dataset` (schema ``nmkit-dataset/1``): one row per image series,
its RTSTRUCT/SEG files as mask references, patient/study/series identifiers, study date, acquisition date-time, time
point, modality, tracer and series description, then ``split`` (and ``fold`` after ``assign_folds``).

Only image series are listed: non-image objects (RTSTRUCT, SEG, SR, ECG, RWV, ANN, presentation states, plans ...)
are recognised by their modality and SOP class. A series without a Patient ID is
never merged silently with other blank-ID series: ``blank_patient`` says whether to fail (default), skip it, or
give it a pseudo-patient per study (``blank:<StudyInstanceUID>``).

Why patient-level: images of one patient (several studies, modalities or time points) are strongly
correlated; a patient in both training and test sets inflates every reported metric. Splits are
deterministic given the seed and independent of row order, and can be stratified by a column.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..dataset import COLUMNS as MANIFEST_COLUMNS  # noqa: F401  (the contract's columns, re-exported)
from ..dataset import MaskRef, new_table, read_dataset, write_dataset
from ..errors import InputError
from ..io.dicom_dates import iso_datetime

log = logging.getLogger(__name__)

ROI_MODALITIES = ("RTSTRUCT", "SEG")
NON_IMAGE_MODALITIES = ROI_MODALITIES + ("SR", "PR", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "KO", "DOC", "ECG", "RWV", "ANN",
                                         "HD", "AU", "PLAN", "FID")
BLANK_PATIENT_POLICIES = ("error", "skip", "study")
#: SOP classes that carry no image (waveforms, real-world value maps, annotations, SR, presentation states, RT objects,
#: encapsulated documents, raw data, registrations, segmentations), as UID prefixes
NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.67", "1.2.840.10008.5.1.4.1.1.91.",
                          "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.481.",
                          "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.90.",
                          "1.2.840.10008.5.1.4.1.1.200.")


def is_image_sop_class(uid: str | None) -> bool:
    """False for the SOP classes that carry no image; True otherwise (and for an unknown class)."""
    return not any(str(uid or "").startswith(p) for p in NON_IMAGE_SOP_PREFIXES)


def _tracer(row: Any) -> str:
    for value in (row.radiopharmaceutical, row.radiopharmaceutical_code, row.radionuclide):
        if value and str(value).strip():
            return str(value).strip()
    return ""


def assign_time_points(table):
    """``time_point`` = TP1, TP2 ... per patient, modality and tracer, in acquisition order (blank for a single scan);
    a time point already in the table is kept (``io.dicom_dates.time_point_labels``, roi2mask's rule too)."""
    from ..io.dicom_dates import scan_day, time_point_labels

    table = table.copy()
    groups = list(zip(table["patient_id"].astype(str), table["modality"].astype(str), table["tracer"].astype(str)))
    days = [scan_day(a, s) for a, s in zip(table["acquisition_datetime"], table["study_date"])]
    labels = time_point_labels(groups, days)
    table["time_point"] = [old if str(old).strip() else new for old, new in zip(table["time_point"], labels)]
    return table


# ----- building ---------------------------------------------------------------------------------------
def manifest_from_catalog(db: str | Path, modality: str | Sequence[str] | None = None, require_roi: bool = False,
                          blank_patient: str = "error", **criteria: Any):
    """One row per image series of the catalog (``Catalog.series`` criteria apply), with its RTSTRUCT/SEG files as masks."""
    from .query import Catalog

    if blank_patient not in BLANK_PATIENT_POLICIES:
        raise InputError(None, f"blank_patient must be one of {BLANK_PATIENT_POLICIES}, got {blank_patient!r}")
    rows = []
    blank: list[str] = []
    with Catalog(db) as cat:
        series = cat.series(modality=modality, has_roi=True if require_roi else None, **criteria)
        series = series[~series.modality.fillna("").str.upper().isin(NON_IMAGE_MODALITIES)]
        images = series.sop_class_uid.map(is_image_sop_class).astype(bool)
        if (~images).any():
            log.info("%d non-image series left out (%s)", int((~images).sum()), sorted(set(series.modality[~images]))[:8])
        series = series[images]
        for s in series.itertuples(index=False):
            files = cat.files(s.series_uid)
            if not files:
                continue
            patient = str(s.patient_id or "").strip()
            if not patient:
                blank.append(files[0])
                if blank_patient == "error":
                    continue
                if blank_patient == "skip":
                    log.info("%s: series %s has no Patient ID; left out", files[0], s.series_uid)
                    continue
                patient = f"blank:{s.study_uid}"
                log.info("%s: series %s has no Patient ID; its study becomes pseudo-patient %s", files[0], s.series_uid,
                         patient)
            folder = str(Path(files[0]).parent)
            in_folder = cat.sql("SELECT COUNT(*) AS n FROM instance WHERE path LIKE ? ESCAPE '\\'",
                                (folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%",)).n[0]
            same = all(str(Path(f).parent) == folder for f in files) and in_folder == len(files)
            rois = cat.rois(s.series_uid)
            masks = [MaskRef(file=path, kind=str(r.modality).lower(), reader=(r.roi_creator or None))
                     for r in rois.itertuples(index=False) if str(r.modality) in ROI_MODALITIES
                     for path in str(r.paths).split(";") if path]
            rows.append({
                "patient_id": patient, "study_uid": s.study_uid, "series_uid": s.series_uid,
                "study_date": s.study_date or "", "acquisition_datetime": iso_datetime(s.series_date or s.study_date, s.series_time),
                "modality": s.modality, "tracer": _tracer(s), "series_description": s.description or "",
                "image": folder if same else ";".join(files), "image_format": "dicom", "masks": masks,
                "reader": ";".join(sorted({m.reader for m in masks if m.reader})), "split": ""})
    if blank and blank_patient != "error":
        action = "left out" if blank_patient == "skip" else "given one pseudo-patient per study (blank:<StudyInstanceUID>)"
        log.warning("%d image series without a Patient ID %s (first: %s; -v lists them)", len(blank), action, blank[0])
    if blank and blank_patient == "error":
        raise InputError(blank[0], f"{len(blank)} image series without a Patient ID (first shown); they cannot be split "
                                   "safely. Use --blank-patient skip (leave them out) or study (one pseudo-patient per study)")
    table = new_table(rows)
    return assign_time_points(table) if len(table) else table


_MODALITY_TOKENS = {"CT": "CT", "PET": "PT", "PT": "PT", "MR": "MR", "MRI": "MR", "NM": "NM", "SPECT": "NM"}
_GENERIC_STEMS = {"image", "img", "ct", "pet", "pt", "mr", "scan", "volume", "data"}


def manifest_from_nifti(folder: str | Path, image_token: str = "image", mask_token: str = "mask",
                        patient_regex: str = r"^([A-Za-z]+[-_]?\d+|[^_]+)", pattern: str = "*.nii*"):
    """Pair NIfTI/NRRD images with masks in ``folder`` (recursively).

    A folder written by ``nmkit roi2mask`` (or any producer of the contract) holds ``dataset.csv``: that table is
    read as it is. Otherwise an image is a file whose name contains ``image_token``; its mask has the same name with
    the last ``image_token`` replaced by ``mask_token`` (``STS_001_PET_image.nii.gz`` -> ``STS_001_PET_mask.nii.gz``),
    or the same name in a sibling folder named ``mask_token``/``masks``/``labels`` (``images/x.nii.gz`` ->
    ``labels/x.nii.gz``). The patient ID is the first group of ``patient_regex`` on the file name, or the case
    folder's name when the file name is generic (``image.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "NIfTI folder does not exist")
    if (folder / "dataset.csv").is_file():
        log.info("%s: reading the case table dataset.csv written by its producer", folder)
        return read_dataset(folder / "dataset.csv")
    regex = re.compile(patient_regex)
    rows = []
    for path in sorted(folder.rglob(pattern)) + sorted(folder.rglob("*.nrrd")):
        name = path.name
        parent_is_images = path.parent.name.lower() in ("image", "images", image_token)
        if image_token not in name and not parent_is_images:
            continue
        candidates = []
        if image_token in name:
            i = name.rfind(image_token)
            candidates.append(path.with_name(name[:i] + mask_token + name[i + len(image_token):]))
        if parent_is_images:
            candidates += [path.parent.parent / d / name for d in (mask_token, "masks", "labels", "mask")]
        mask = next((c for c in candidates if c.exists()), None)
        stem = name.split(".")[0]
        generic = stem.lower() in _GENERIC_STEMS
        id_source = path.parent.name if generic else stem
        match = regex.match(id_source)
        patient = match.group(1) if match else id_source
        tokens = re.split(r"[_\-. ]", (str(path.parent.name) + "_" + stem if generic else stem).upper())
        modality = next((_MODALITY_TOKENS[t] for t in tokens if t in _MODALITY_TOKENS), "")
        case_id = f"{path.parent.name}_{stem}" if generic else stem
        rows.append({"case_id": case_id, "patient_id": patient, "series_uid": "", "modality": modality,
                     "image": str(path), "masks": [MaskRef(file=str(mask), kind="labelmap")] if mask else []})
    if not rows:
        raise InputError(folder, f"no image files (names containing {image_token!r}) and no dataset.csv found")
    return new_table(rows)


# ----- splitting ----------------------------------------------------------------------------------------
def _split_names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != n:
            raise InputError(None, f"{n} fractions but {len(names)} split names {list(names)}")
        return list(names)
    return {1: ["train"], 2: ["train", "test"], 3: ["train", "val", "test"]}.get(n, [f"split{i}" for i in range(n)])


def _patient_strata(manifest, stratify: str | None) -> dict[str, list[str]]:
    """Stratum -> sorted patient IDs (a patient's stratum is the most frequent value among its rows)."""
    patients = sorted({str(p) for p in manifest.patient_id})
    if not stratify:
        return {"": patients}
    if stratify not in manifest.columns:
        raise InputError(None, f"stratification column {stratify!r} not in the manifest (columns: {list(manifest.columns)})")
    strata: dict[str, list[str]] = {}
    for pid, values in manifest.groupby(manifest.patient_id.astype(str))[stratify]:
        counts = values.astype(str).value_counts()
        best = sorted(counts[counts == counts.max()].index)[0]
        if len(counts) > 1:
            log.warning("patient %s has several %s values %s; stratified as %r", pid, stratify, list(counts.index), best)
        strata.setdefault(best, []).append(pid)
    return {k: sorted(v) for k, v in sorted(strata.items())}


def _counts(n: int, fractions: np.ndarray) -> list[int]:
    """Largest-remainder allocation of ``n`` items to fractions (sums exactly to ``n``)."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_by_patient(manifest, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                     stratify: str | None = None, names: Sequence[str] | None = None, column: str = "split"):
    """A copy of ``manifest`` with a patient-level split column (no patient in two splits).

    Deterministic for a given seed and set of patients, whatever the row order. With ``stratify``, each
    stratum (patient-level value of that column) is split with the same fractions.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) == 0 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0, atol=1e-6):
        raise InputError(None, f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    labels = _split_names(len(fr), names)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, patients in _patient_strata(manifest, stratify).items():
        order = [patients[i] for i in rng.permutation(len(patients))]
        start = 0
        for label, count in zip(labels, _counts(len(order), fr)):
            for pid in order[start:start + count]:
                assignment[pid] = label
            start += count
    out = manifest.copy()
    out[column] = [assignment[str(p)] for p in out.patient_id]
    return out


def assign_folds(manifest, k: int, seed: int = 0, stratify: str | None = None, where=None, column: str = "fold"):
    """A copy with a patient-level ``fold`` column 0..k-1 (rows outside ``where``, e.g. the test split, get -1).

    Patients are shuffled within each stratum and dealt round-robin, continuing across strata so fold sizes
    differ by at most one patient.
    """
    if k < 2:
        raise InputError(None, f"k-fold needs k >= 2, got {k}")
    selected = manifest if where is None else manifest[where]
    strata = _patient_strata(selected, stratify)
    if sum(len(v) for v in strata.values()) < k:
        raise InputError(None, f"{k} folds need at least {k} patients")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    deal = 0
    for _, patients in strata.items():
        for i in rng.permutation(len(patients)):
            fold_of[patients[i]] = deal % k
            deal += 1
    out = manifest.copy()
    out[column] = [fold_of.get(str(p), -1) if (where is None or w) else -1
                   for p, w in zip(out.patient_id, (where if where is not None else [True] * len(out)))]
    return out


# ----- files -------------------------------------------------------------------------------------------
def write_manifest(manifest, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write the case table (``nmkit.dataset.write_dataset``) and its ``<name>.provenance.json`` sidecar."""
    return write_dataset(manifest, path, provenance)


def read_manifest(path: str | Path, **options: Any):
    """Read a case table (``nmkit.dataset.read_dataset``)."""
    return read_dataset(path, **options)


def split_report(table, names: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Patients per split (every name listed, 0 included) and warnings for splits that got no patient."""
    counts = {str(k): int(v) for k, v in table.groupby("split")["patient_id"].nunique().items()}
    counts = {n: counts.get(n, 0) for n in names} | {k: v for k, v in counts.items() if k not in names}
    n = int(table["patient_id"].nunique())
    warnings = [f"split {name!r} got no patient ({n} patient(s) in all; give more patients or other fractions)"
                for name, c in counts.items() if c == 0]
    return counts, warnings


# ----- 2D image/mask folders (radiographs) -----------------------------------------------------------------
PATIENT_COLUMN_CANDIDATES = ("patient_id", "patientid", "PatientID", "patient")
KEY_COLUMN_CANDIDATES = ("case_id", "id", "image", "file", "filename")
LABEL_SIDECARS = ("labels.json",)


def parse_labels(items: Sequence[str] | None, where: str = "--labels") -> dict[int, str]:
    """``["1=right_lung", "2=left_lung"]`` -> ``{1: "right_lung", 2: "left_lung"}`` (a clear error otherwise)."""
    labels: dict[int, str] = {}
    for item in items or []:
        value, sep, name = str(item).partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1 or not name.strip():
            raise InputError(None, f"{where}: expected VALUE=NAME with an integer value >= 1, got {item!r}")
        labels[int(value)] = name.strip()
    return labels


def _read_label_sidecar(mask_dir: Path) -> dict[int, str]:
    """Label names from ``labels.json`` ({"1": "right_lung", ...}) in the mask folder, or {}."""
    import json

    for name in LABEL_SIDECARS:
        path = mask_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                return {int(k): str(v) for k, v in data.items()}
            except (ValueError, AttributeError, TypeError) as exc:
                raise InputError(path, f"expected a JSON object {{\"1\": \"name\", ...}} ({exc})") from exc
    return {}


def _detect_patients_csv(image_dir: Path) -> Path | None:
    """``manifest.csv`` next to (or in) the image folder when it has a patient column (e.g. cxr_lungs)."""
    import pandas as pd

    for candidate in (image_dir / "manifest.csv", image_dir.parent / "manifest.csv"):
        if candidate.is_file():
            columns = pd.read_csv(candidate, nrows=0).columns
            if any(c in columns for c in PATIENT_COLUMN_CANDIDATES):
                return candidate
    return None


def _patient_lookup(csv: Path, patient_column: str | None, key_column: str | None) -> tuple[dict[str, dict[str, Any]], str, str]:
    """{image key: row} from a patients CSV, with the patient and key columns used."""
    import pandas as pd

    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(csv, f"not a readable CSV ({exc})") from exc
    patient_column = patient_column or next((c for c in PATIENT_COLUMN_CANDIDATES if c in table.columns), None)
    key_column = key_column or next((c for c in KEY_COLUMN_CANDIDATES if c in table.columns), None)
    for option, column in (("--patient-column", patient_column), ("--patient-key", key_column)):
        if column is None or column not in table.columns:
            raise InputError(csv, f"{option}: column {column!r} not found (columns: {list(table.columns)})")
    lookup = {}
    for row in table.to_dict(orient="records"):
        key = str(row[key_column]).strip()
        lookup[key] = row
        lookup[Path(key).name] = row
        lookup[Path(key).name.split(".")[0]] = row
    return lookup, str(patient_column), str(key_column)


def manifest_from_image_folders(image_dir: str | Path, mask_dir: str | Path | None = None, patients: str | Path | None = None,
                                patient_column: str | None = None, patient_key: str | None = None,
                                labels: dict[int, str] | None = None, modality: str = ""):
    """Pair 2D images (PNG/JPEG/TIFF/DICOM) in ``image_dir`` with same-named label maps in ``mask_dir``.

    A mask matches an image by file stem (``images/gb_000.png`` -> ``masks/gb_000.png``). Patient IDs come from
    ``patients`` (a CSV: ``patient_column``, and ``patient_key`` matching the image stem, name or relative path);
    without one, a ``manifest.csv`` beside the images with a patient column is used (cxr_lungs); without either,
    every image is its own patient (logged as a warning: splits then cannot keep a patient's images together).
    Label names (``labels`` or the mask folder's ``labels.json``) become one ``MaskRef`` per label value (``label``,
    ``structure``), so analyses select a lung by name. Other columns of the patients CSV are passed through.
    """
    from ..io.radiograph import BITMAP_SUFFIXES

    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(image_dir, "image folder does not exist")
    mask_dir = Path(mask_dir) if mask_dir is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise InputError(mask_dir, "mask folder does not exist")
    labels = dict(labels or (_read_label_sidecar(mask_dir) if mask_dir is not None else {}))
    csv = Path(patients) if patients is not None else _detect_patients_csv(image_dir)
    if csv is not None and not csv.is_file():
        raise InputError(csv, "patients CSV does not exist")
    lookup, pcol, kcol = _patient_lookup(csv, patient_column, patient_key) if csv is not None else ({}, "", "")
    masks_by_stem: dict[str, Path] = {}
    if mask_dir is not None:
        for m in sorted(mask_dir.iterdir()):
            if m.is_file() and m.name.lower().endswith(BITMAP_SUFFIXES + (".dcm", ".nii", ".nii.gz", ".nrrd")):
                masks_by_stem.setdefault(m.name.split(".")[0], m)
    files = sorted(p for p in image_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(BITMAP_SUFFIXES + (".dcm",)))
    rows, missing_patient = [], []
    for path in files:
        stem = path.name.split(".")[0]
        rel = str(path.relative_to(image_dir))
        info = lookup.get(rel) or lookup.get(path.name) or lookup.get(stem) or lookup.get(f"{image_dir.name}/{rel}")
        patient = str(info[pcol]).strip() if info else ""
        if not patient:
            missing_patient.append(path)
            patient = stem
        mask = masks_by_stem.get(stem)
        refs = []
        if mask is not None:
            refs = [MaskRef(file=str(mask), kind="labelmap", label=v, structure=n) for v, n in sorted(labels.items())] \
                or [MaskRef(file=str(mask), kind="labelmap")]
        extra = {k: v for k, v in (info or {}).items() if k not in MANIFEST_COLUMNS and k not in (pcol, kcol)}
        rows.append({**extra, "case_id": stem, "patient_id": patient, "modality": modality, "image": str(path), "masks": refs})
    if not rows:
        raise InputError(image_dir, "no PNG/JPEG/TIFF/DICOM images found")
    if csv is not None and missing_patient:
        log.warning("%d image(s) not in %s (first: %s): each is its own patient", len(missing_patient), csv, missing_patient[0])
    elif csv is None:
        log.warning("%s: no patients CSV; every image is its own patient (give --patients CSV to keep a patient's "
                    "images in one split)", image_dir)
    if mask_dir is not None:
        unmatched = sum(not r["masks"] for r in rows)
        if unmatched:
            log.warning("%d of %d image(s) have no mask in %s", unmatched, len(rows), mask_dir)
    table = new_table(rows)
    table.attrs["patients_csv"] = str(csv.resolve()) if csv is not None else None
    return table
