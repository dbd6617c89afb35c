"""Dataset manifests for training/evaluation, with patient-level splits and k-fold assignment.

A manifest is a table (CSV or JSON) with one row per image and the columns ``MANIFEST_COLUMNS``:

* ``patient_id``, ``study_uid``, ``series_uid``, ``modality``;
* ``image``: a folder holding exactly the series' DICOM files, or ``;``-separated files, or a NIfTI/NRRD file;
  ``image_format``: ``dicom`` or ``nifti``;
* ``roi``: ``;``-separated ROI files (RTSTRUCT/SEG/label maps), ``roi_format``: ``rtstruct``/``seg``/``nifti``;
* ``mask``: the ROI when it already is a label map (NIfTI/NRRD), the column that ``nmkit.segment`` and
  ``nmkit.radiomics`` manifests read (convert RTSTRUCT/SEG first with ``nmkit roi2mask``); ``case_id``;
* ``reader``: who drew the ROI (SEG ContentCreatorName, RTSTRUCT ROIInterpreter/OperatorsName), when known;
* ``split`` (and ``fold`` after ``assign_folds``).

Why patient-level: images of one patient (several studies, modalities or time points) are strongly
correlated; a patient in both training and test sets inflates every reported metric. Splits are
deterministic given the seed and independent of row order, and can be stratified by a column.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["case_id", "patient_id", "study_uid", "series_uid", "modality", "image", "image_format", "roi",
                    "roi_format", "mask", "reader", "split"]
ROI_MODALITIES = ("RTSTRUCT", "SEG")
NON_IMAGE_MODALITIES = ROI_MODALITIES + ("SR", "PR", "RTPLAN", "RTDOSE", "REG", "KO", "DOC")


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    for row in rows:
        row.setdefault("case_id", row["series_uid"])
        row.setdefault("mask", row["roi"] if row["roi_format"] in ("nifti", "nrrd") else "")
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return df.fillna("")


# ----- building ---------------------------------------------------------------------------------------
def manifest_from_catalog(db: str | Path, modality: str | Sequence[str] | None = None, require_roi: bool = False,
                          **criteria: Any):
    """One row per image series of the catalog (``Catalog.series`` criteria apply), with its linked ROI files."""
    from .query import Catalog

    rows = []
    with Catalog(db) as cat:
        series = cat.series(modality=modality, has_roi=True if require_roi else None, **criteria)
        series = series[~series.modality.isin(NON_IMAGE_MODALITIES)]
        for s in series.itertuples(index=False):
            files = cat.files(s.series_uid)
            if not files:
                continue
            folder = str(Path(files[0]).parent)
            in_folder = cat.sql("SELECT COUNT(*) AS n FROM instance WHERE path LIKE ? ESCAPE '\\'",
                                (folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%",)).n[0]
            same = all(str(Path(f).parent) == folder for f in files) and in_folder == len(files)
            rois = cat.rois(s.series_uid)
            rows.append({
                "patient_id": s.patient_id, "study_uid": s.study_uid, "series_uid": s.series_uid, "modality": s.modality,
                "image": folder if same else ";".join(files), "image_format": "dicom",
                "roi": ";".join(rois.paths) if len(rois) else "",
                "roi_format": ";".join(sorted({m.lower() for m in rois.modality})) if len(rois) else "",
                "reader": ";".join(sorted({r for r in rois.roi_creator if r})) if len(rois) else "",
                "split": ""})
    return _frame(rows)


_MODALITY_TOKENS = {"CT": "CT", "PET": "PT", "PT": "PT", "MR": "MR", "MRI": "MR", "NM": "NM", "SPECT": "NM"}


def manifest_from_nifti(folder: str | Path, image_token: str = "image", mask_token: str = "mask",
                        patient_regex: str = r"^([A-Za-z]+[-_]?\d+|[^_]+)", pattern: str = "*.nii*"):
    """Pair NIfTI/NRRD images with masks in ``folder`` (recursively).

    An image is a file whose name contains ``image_token``; its mask has the same name with the last
    ``image_token`` replaced by ``mask_token`` (``STS_001_PET_image.nii.gz`` -> ``STS_001_PET_mask.nii.gz``),
    or the same name in a sibling folder named ``mask_token``/``masks``/``labels`` (``images/x.nii.gz`` ->
    ``labels/x.nii.gz``). The patient ID is the first group of ``patient_regex`` on the file name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "NIfTI folder does not exist")
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
        match = regex.match(stem)
        patient = match.group(1) if match else stem
        tokens = re.split(r"[_\-. ]", stem.upper())
        modality = next((_MODALITY_TOKENS[t] for t in tokens if t in _MODALITY_TOKENS), "")
        rows.append({"patient_id": patient, "study_uid": "", "series_uid": stem, "modality": modality,
                     "image": str(path), "image_format": "nifti" if ".nii" in name else "nrrd",
                     "roi": str(mask) if mask else "", "roi_format": ("nifti" if ".nii" in mask.name else "nrrd") if mask else "",
                     "reader": "", "split": ""})
    if not rows:
        raise InputError(folder, f"no image files (names containing {image_token!r}) found")
    return _frame(rows)


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
def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".provenance.json")


def write_manifest(manifest, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write CSV (``.csv``) or JSON records (``.json``) and a ``<name>.provenance.json`` sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(manifest.to_json(orient="records", indent=1))
    else:
        manifest.to_csv(path, index=False)
    side = sidecar_path(path)
    record = dict(provenance or {})
    record["rows"] = int(len(manifest))
    record["patients"] = int(manifest.patient_id.nunique())
    if "split" in manifest.columns:
        record["split_patients"] = {str(k): int(v) for k, v in manifest.groupby("split").patient_id.nunique().items()}
    side.write_text(json.dumps(record, indent=1, default=str))
    return side


def read_manifest(path: str | Path):
    """Read a manifest written by ``write_manifest`` (CSV or JSON)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(path, "manifest file does not exist")
    try:
        df = pd.read_json(path, orient="records", dtype=False) if path.suffix.lower() == ".json" \
            else pd.read_csv(path, dtype=str, keep_default_na=False)
    except ValueError as exc:
        raise InputError(path, f"not a readable manifest ({exc})") from exc
    missing = [c for c in ("patient_id", "image") if c not in df.columns]
    if missing:
        raise InputError(path, f"manifest lacks column(s) {missing}")
    if "fold" in df.columns:
        df["fold"] = df["fold"].astype(int)
    return df
