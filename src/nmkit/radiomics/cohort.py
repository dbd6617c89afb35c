"""Cohort radiomics: one tidy table for many (image, mask, ROI) cases from a manifest CSV, a DataFrame or a DICOM catalog.

Manifest columns: ``image`` and ``mask`` (paths; relative paths are resolved against the manifest's folder),
optional ``patient_id``, ``study_uid``, ``series_uid``, ``roi``, ``suv`` ("bw"/"lbm" for DICOM PET) and any other
columns, which are copied to the output.

* ``image``: a NIfTI/NRRD file, a DICOM file or series folder (``nmkit.io.reader.read_image``; a DICOM UID in
  ``series_uid`` picks that series in a folder holding several), or ``;``-separated files of one DICOM series.
* ``mask``: a NIfTI/NRRD label map on the image grid (``roi`` = label name or value; blank = any foreground, one
  row), or a DICOM RTSTRUCT/SEG (or ``nmkit-polygons/1`` JSON) rasterised onto the image grid by
  ``nmkit.io.roi.load_rois``. With those, ``roi`` selects a structure by name (exact, else case-insensitive, else
  ROI/segment number); a blank ``roi`` gives one output row per structure.
* Blank ``patient_id``/``study_uid``/``series_uid`` are filled from the image's DICOM header.

Each output row also carries ``roi_name``, ``config_name``, ``config_hash`` and ``nmkit_version``.
:func:`cases_from_catalog` builds the cases from a catalog (``nmkit index``): one row per (image series, ROI file).

Failing cases (or single structures of a case) are logged and skipped (listed in ``CohortResult.failures``).
Work runs in a local process pool (``n_workers``), or on Dask when ``scheduler`` is an address or
``"dask-local"`` (a LocalCluster).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from .config import RadiomicsConfig

log = logging.getLogger(__name__)

ID_COLUMNS = ("patient_id", "study_uid", "series_uid", "roi")


@dataclass
class CohortResult:
    table: Any  # pandas.DataFrame, one row per extracted ROI
    failures: list[dict[str, str]] = field(default_factory=list)


def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _text(v: Any) -> str | None:
    return None if _is_blank(v) else str(v).strip()


_DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _read_image(path: str, suv: str | None, series_uid: str | None = None):
    """The case's image: a volume file, a DICOM file/folder (``series_uid`` picks one series), or ``;``-separated files."""
    from ..io.reader import read_image, read_series_files
    from ..io.volume_files import is_volume_file, read_volume

    if ";" in path:
        files = [Path(f.strip()) for f in path.split(";") if f.strip()]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputError(missing[0], f"file of the image series does not exist ({len(missing)} of {len(files)} missing)")
        return read_series_files(files, suv=suv)
    if is_volume_file(path) and suv is None:
        return read_volume(path)
    uid = series_uid if series_uid and _DICOM_UID.match(series_uid) and Path(path).is_dir() else None
    return read_image(path, series_uid=uid, suv=suv)


def _roi_numbers(path: str, kind: str) -> dict[int, str]:
    """ROI number -> name of an RTSTRUCT or SEG, from its header (no rasterisation)."""
    if kind == "rtstruct":
        from ..io.rtstruct import list_rois

        return list_rois(path)
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for broken files
        raise InputError(path, f"cannot read the SEG header ({type(exc).__name__}: {exc})") from exc
    names = {int(item.SegmentNumber): str(getattr(item, "SegmentLabel", "") or f"segment_{int(item.SegmentNumber)}")
             for item in getattr(ds, "SegmentSequence", []) or [] if int(getattr(item, "SegmentNumber", 0) or 0) != 0}
    if not names:
        raise InputError(path, "the Segmentation defines no segments")
    return names


def resolve_roi(requested: str, names: Mapping[int, str], where: Any) -> str:
    """The structure name ``requested`` stands for: exact name, else the one case-insensitive match, else ROI number."""
    if requested in names.values():
        return requested
    folded = sorted({n for n in names.values() if n.lower() == requested.lower()})
    if len(folded) == 1:
        return folded[0]
    if len(folded) > 1:
        raise InputError(where, f"ROI {requested!r} is ambiguous: {folded} differ only in case; give the exact name")
    if requested.isdigit() and int(requested) in names:
        return names[int(requested)]
    raise InputError(where, f"ROI {requested!r} not found; the file has {sorted(names.values())}")


def _read_mask(path: str, image, roi: str | None) -> tuple[Any, list[tuple[int | None, str]]]:
    """The mask on the image grid and the ROIs to extract as ``(label value or None, roi_name)`` pairs.

    Label maps keep the manifest's old meaning (``roi`` = label name or value; blank = any foreground, one ROI).
    RTSTRUCT/SEG/polygon files give one ROI per structure when ``roi`` is blank."""
    from ..io.roi import detect_roi_kind, load_rois, read_named_label_map

    if not Path(path).exists():
        raise InputError(path, "mask file does not exist")
    kind = detect_roi_kind(path)
    if kind is None:
        raise InputError(path, "not a mask: expected a NIfTI/NRRD label map, a DICOM RTSTRUCT or SEG, or nmkit-polygons/1 JSON")
    if kind == "labelmap":
        mask = read_named_label_map(path)
        if roi is None:
            return mask, [(None, ",".join(mask.labels.values()))]
        label: int | str = int(float(roi)) if roi.replace(".", "", 1).isdigit() else roi
        try:
            value = mask.label_value(label)
        except KeyError as exc:
            raise InputError(path, f"ROI {roi!r} not found (labels: {mask.labels})") from exc
        return mask, [(value, mask.labels[value])]
    if kind in ("rtstruct", "seg"):
        wanted = None if roi is None else [resolve_roi(roi, _roi_numbers(path, kind), path)]
        mask = load_rois(path, image, roi_names=wanted)
    else:
        mask = load_rois(path, image)
        wanted = None if roi is None else [resolve_roi(roi, mask.labels, path)]
    if wanted is not None:
        value = mask.label_value(wanted[0])  # exact name: load_rois selected case-insensitively
        return mask, [(value, wanted[0])]
    return mask, [(value, name) for value, name in sorted(mask.labels.items())]


def _fill_ids(row: dict[str, Any], image) -> None:
    """Blank patient/study/series IDs from the image's DICOM header (NIfTI images have none)."""
    for column, key in (("patient_id", "PatientID"), ("study_uid", "StudyInstanceUID"), ("series_uid", "SeriesInstanceUID")):
        value = image.meta.get(key)
        if _is_blank(row.get(column)) and not _is_blank(value):
            row[column] = str(value)


def run_case_rows(case: Mapping[str, Any], config_dict: Mapping[str, Any],
                  errors: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Extract every ROI of one case (runs in a worker): one output row per ROI.

    A failure reading the image or mask raises. A failure of one structure raises too, unless ``errors`` is
    given: then it is appended there (``{"roi", "error"}``) and the other structures still give rows."""
    import numpy as np

    from .. import __version__
    from ..provenance import config_hash
    from .engine import extract

    cfg = RadiomicsConfig.from_dict(config_dict)
    chash = config_hash(cfg.to_dict())
    image = _read_image(str(case["image"]), _text(case.get("suv")), _text(case.get("series_uid")))
    mask, rois = _read_mask(str(case["mask"]), image, _text(case.get("roi")))
    if mask.spatial_shape != image.spatial_shape or not image.same_grid(mask):
        raise InputError(case["mask"], f"mask grid differs from image {case['image']}")
    base = {k: (None if _is_blank(v) else v) for k, v in case.items()}
    _fill_ids(base, image)
    rows = []
    for value, name in rois:
        try:
            feats = extract(image, mask, cfg, label=value)
        except Exception as exc:
            if errors is None:
                raise
            errors.append({"roi": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        row = dict(base)
        row["roi_name"] = name
        row["config_name"] = cfg.name
        row["config_hash"] = chash
        row["nmkit_version"] = __version__
        row.update({k: (float(v) if np.isscalar(v) else v) for k, v in feats.items()})
        rows.append(row)
    return rows


def run_case(case: Mapping[str, Any], config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Extract one case with one ROI and return its row; raises on failure or when the case has several ROIs."""
    rows = run_case_rows(case, config_dict)
    if len(rows) != 1:
        raise InputError(case.get("mask"), f"{len(rows)} ROIs in the mask ({[r['roi_name'] for r in rows]}); choose one with roi "
                                           "or use run_case_rows")
    return rows[0]


def _safe_run_case(case: Mapping[str, Any], config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``run_case_rows`` for worker processes: ``{"rows": [...], "errors": [...]}`` or ``{"__error__": message}``.

    nmkit's exceptions take (path, problem) arguments and do not survive pickling back to the parent (which
    would break the whole pool), so the message is sent as text."""
    errors: list[dict[str, str]] = []
    try:
        return {"rows": run_case_rows(case, config_dict, errors), "errors": errors}
    except Exception as exc:  # noqa: BLE001 - reported per case by the caller
        return {"__error__": f"{type(exc).__name__}: {exc}"}


def _unwrap(result: dict[str, Any]) -> dict[str, Any]:
    if "__error__" in result:
        raise RuntimeError(result["__error__"])
    return result


def _absolute(value: str, folder: Path) -> str:
    """A manifest path (or ``;``-separated paths) made absolute against the manifest's folder."""
    parts = [p.strip() for p in str(value).split(";")] if ";" in str(value) else [str(value)]
    return ";".join(p if not p or Path(p).is_absolute() else str((folder / p).resolve()) for p in parts)


def read_manifest(path: str | Path):
    """A manifest CSV as a DataFrame with absolute image/mask paths."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest file does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise InputError(path, f"cannot read manifest CSV: {exc}") from exc
    missing = {"image", "mask"} - set(df.columns)
    if missing:
        raise InputError(path, f"manifest lacks column(s) {sorted(missing)} (needs image, mask)")
    for col in ("image", "mask"):
        df[col] = [_absolute(p, path.parent) for p in df[col]]
    return df


CATALOG_COLUMNS = ("patient_id", "study_uid", "series_uid", "modality", "image", "mask", "mask_format", "roi_series_uid",
                   "roi", "suv", "reader")


def cases_from_catalog(db: str | Path, modality: str | list[str] | None = None, roi: str | None = None,
                       suv: str | None = None, **criteria: Any):
    """Cohort cases from a catalog (``nmkit index``): one row per (image series, RTSTRUCT/SEG file referencing it).

    ``image`` is the series folder or its ``;``-separated files (``catalog.manifest.manifest_from_catalog``),
    ``mask`` the ROI file. ``roi`` selects a structure by name in every ROI file (a file without it fails at
    extraction, naming the structures it has); without ``roi`` each structure becomes its own output row.
    ``suv`` ("bw"/"lbm") applies to PT series only. Other ``Catalog.series`` criteria (``tracer``, ``patient``, ...)
    pass through. Raises ``InputError`` when nothing matches.
    """
    import pandas as pd

    from ..catalog.manifest import manifest_from_catalog
    from ..catalog.query import Catalog

    if suv not in (None, "bw", "lbm"):
        raise InputError(db, f"suv must be 'bw', 'lbm' or None, got {suv!r}")
    manifest = manifest_from_catalog(db, modality=modality, require_roi=True, **criteria)
    rows: list[dict[str, Any]] = []
    with Catalog(db) as cat:
        for m in manifest.itertuples(index=False):
            for r in cat.rois(m.series_uid).itertuples(index=False):
                if r.modality not in ("RTSTRUCT", "SEG"):
                    continue
                for path in str(r.paths).split(";"):
                    rows.append({"patient_id": m.patient_id, "study_uid": m.study_uid, "series_uid": m.series_uid,
                                 "modality": m.modality, "image": m.image, "mask": path, "mask_format": r.modality.lower(),
                                 "roi_series_uid": r.roi_series_uid, "roi": roi or "",
                                 "suv": suv if suv and m.modality == "PT" else "", "reader": r.roi_creator or ""})
    if not rows:
        wanted = {"modality": modality, **{k: v for k, v in criteria.items() if v is not None}}
        raise InputError(db, f"no image series with an RTSTRUCT/SEG referencing it matches {wanted}")
    return pd.DataFrame(rows, columns=list(CATALOG_COLUMNS))


def _client(scheduler: str):
    from dask.distributed import Client, LocalCluster

    if scheduler == "dask-local":
        return Client(LocalCluster(processes=True, dashboard_address=None))
    return Client(scheduler)


def extract_cohort(cases, config: RadiomicsConfig, n_workers: int = 1, scheduler: str | None = None,
                   progress: bool = True) -> CohortResult:
    """Features for every case of ``cases`` (DataFrame or manifest path): one row per ROI; bad cases are logged and skipped.

    ``failures`` lists ``{"index", "image", "mask", "roi", "error"}``: ``roi`` is blank when the whole case
    failed (image or mask unreadable, ROI not found) and names the structure when only that one failed."""
    import pandas as pd
    from tqdm.auto import tqdm

    df = read_manifest(cases) if isinstance(cases, (str, Path)) else cases
    records = df.to_dict(orient="records")
    cfg_dict = config.to_dict()
    rows: dict[int, list[dict[str, Any]]] = {}
    failures: list[dict[str, str]] = []

    def fail(i: int, error: Any, roi: str = "") -> None:
        case = records[i]
        what = f"case {i} ROI {roi!r}" if roi else f"case {i}"
        log.warning("radiomics: skipping %s (%s): %s", what, case.get("image"), error)
        failures.append({"index": str(i), "image": str(case.get("image")), "mask": str(case.get("mask")), "roi": roi,
                         "error": str(error)})

    def collect(i: int, result: dict[str, Any]) -> None:
        rows[i] = result["rows"]
        for err in result["errors"]:
            fail(i, err["error"], err["roi"])

    bar = tqdm(total=len(records), disable=not progress, desc="radiomics", unit="case")
    if scheduler:
        client = _client(scheduler)
        try:
            futures = {client.submit(_safe_run_case, rec, cfg_dict, pure=False): i for i, rec in enumerate(records)}
            from dask.distributed import as_completed as dask_completed

            for fut in dask_completed(list(futures)):
                i = futures[fut]
                try:
                    collect(i, _unwrap(fut.result()))
                except Exception as exc:  # noqa: BLE001 - a failing case must not stop the cohort
                    fail(i, exc)
                bar.update()
        finally:
            client.close()
    elif n_workers <= 1:
        for i, rec in enumerate(records):
            errors: list[dict[str, str]] = []
            try:
                collect(i, {"rows": run_case_rows(rec, cfg_dict, errors), "errors": errors})
            except Exception as exc:  # noqa: BLE001
                fail(i, exc)
            bar.update()
    else:
        import multiprocessing

        # spawn, not fork: forking a parent whose SimpleITK/BLAS thread pools are running can crash the children
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_safe_run_case, rec, cfg_dict): i for i, rec in enumerate(records)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    collect(i, _unwrap(fut.result()))
                except Exception as exc:  # noqa: BLE001
                    fail(i, exc)
                bar.update()
    bar.close()
    table = pd.DataFrame([row for i in sorted(rows) for row in rows[i]])
    failures.sort(key=lambda f: (int(f["index"]), f["roi"]))
    return CohortResult(table=table, failures=failures)


def write_table(table, path: str | Path) -> Path:
    """CSV, or Parquet when the name ends in .parquet (needs pyarrow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise InputError(path, "writing Parquet needs pyarrow (pip install pyarrow) - or use a .csv name") from exc
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path
