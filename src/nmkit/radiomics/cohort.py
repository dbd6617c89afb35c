"""Cohort radiomics: one tidy table for many (image, mask, ROI) cases from a manifest CSV or a DataFrame.

Manifest columns: ``image`` and ``mask`` (paths; relative paths are resolved against the manifest's folder),
optional ``patient_id``, ``study_uid``, ``series_uid``, ``roi`` (label name or value; empty = any foreground),
``suv`` ("bw"/"lbm" for DICOM PET) and any other columns, which are copied to the output. Each output row also
carries ``roi_name``, ``config_name``, ``config_hash`` and ``nmkit_version``.

Failing cases are logged and skipped (listed in ``CohortResult.failures``). Work runs in a local process pool
(``n_workers``), or on Dask when ``scheduler`` is an address or ``"dask-local"`` (a LocalCluster).
"""

from __future__ import annotations

import logging
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
    table: Any  # pandas.DataFrame, one row per successful case
    failures: list[dict[str, str]] = field(default_factory=list)


def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _read_mask(path: str, image):
    from ..io.volume_files import is_volume_file, read_label_map

    if is_volume_file(path):
        return read_label_map(path)
    raise InputError(path, "masks must be NIfTI/NRRD/MetaImage label maps in a manifest")


def _read_image(path: str, suv: str | None):
    from ..io.volume_files import is_volume_file, read_volume

    if is_volume_file(path) and suv is None:
        return read_volume(path)
    from ..io.reader import read_image

    return read_image(path, suv=suv)


def run_case(case: Mapping[str, Any], config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Extract one case (runs in a worker). Returns the output row; raises on failure."""
    import numpy as np

    from .. import __version__
    from ..provenance import config_hash
    from .engine import extract

    cfg = RadiomicsConfig.from_dict(config_dict)
    suv = None if _is_blank(case.get("suv")) else str(case["suv"])
    image = _read_image(str(case["image"]), suv)
    mask = _read_mask(str(case["mask"]), image)
    roi = case.get("roi")
    label: int | str | None = None
    if not _is_blank(roi):
        text = str(roi)
        label = int(float(text)) if text.replace(".", "", 1).isdigit() else text
        try:
            mask.label_value(label)
        except KeyError as exc:
            raise InputError(case["mask"], f"ROI {roi!r} not found (labels: {mask.labels})") from exc
    if mask.spatial_shape != image.spatial_shape or not image.same_grid(mask):
        raise InputError(case["mask"], f"mask grid differs from image {case['image']}")
    feats = extract(image, mask, cfg, label=label)
    row = {k: (None if _is_blank(v) else v) for k, v in case.items()}
    row["roi_name"] = mask.labels[mask.label_value(label)] if label is not None else ",".join(mask.labels.values())
    row["config_name"] = cfg.name
    row["config_hash"] = config_hash(cfg.to_dict())
    row["nmkit_version"] = __version__
    row.update({k: (float(v) if np.isscalar(v) else v) for k, v in feats.items()})
    return row


def _safe_run_case(case: Mapping[str, Any], config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``run_case`` for worker processes: failures come back as ``{"__error__": message}``.

    nmkit's exceptions take (path, problem) arguments and do not survive pickling back to the parent (which
    would break the whole pool), so the message is sent as text."""
    try:
        return run_case(case, config_dict)
    except Exception as exc:  # noqa: BLE001 - reported per case by the caller
        return {"__error__": f"{type(exc).__name__}: {exc}"}


def _unwrap(row: dict[str, Any]) -> dict[str, Any]:
    if "__error__" in row:
        raise RuntimeError(row["__error__"])
    return row


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
        df[col] = [str(p) if Path(p).is_absolute() else str((path.parent / p).resolve()) for p in df[col]]
    return df


def _client(scheduler: str):
    from dask.distributed import Client, LocalCluster

    if scheduler == "dask-local":
        return Client(LocalCluster(processes=True, dashboard_address=None))
    return Client(scheduler)


def extract_cohort(cases, config: RadiomicsConfig, n_workers: int = 1, scheduler: str | None = None,
                   progress: bool = True) -> CohortResult:
    """Features for every row of ``cases`` (DataFrame or manifest path); bad cases are logged and skipped."""
    import pandas as pd
    from tqdm.auto import tqdm

    df = read_manifest(cases) if isinstance(cases, (str, Path)) else cases
    records = df.to_dict(orient="records")
    cfg_dict = config.to_dict()
    rows: dict[int, dict[str, Any]] = {}
    failures: list[dict[str, str]] = []

    def fail(i: int, exc: BaseException) -> None:
        case = records[i]
        log.warning("radiomics: skipping case %d (%s): %s", i, case.get("image"), exc)
        failures.append({"index": str(i), "image": str(case.get("image")), "mask": str(case.get("mask")), "error": str(exc)})

    bar = tqdm(total=len(records), disable=not progress, desc="radiomics", unit="case")
    if scheduler:
        client = _client(scheduler)
        try:
            futures = {client.submit(_safe_run_case, rec, cfg_dict, pure=False): i for i, rec in enumerate(records)}
            from dask.distributed import as_completed as dask_completed

            for fut in dask_completed(list(futures)):
                i = futures[fut]
                try:
                    rows[i] = _unwrap(fut.result())
                except Exception as exc:  # noqa: BLE001 - a failing case must not stop the cohort
                    fail(i, exc)
                bar.update()
        finally:
            client.close()
    elif n_workers <= 1:
        for i, rec in enumerate(records):
            try:
                rows[i] = run_case(rec, cfg_dict)
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
                    rows[i] = _unwrap(fut.result())
                except Exception as exc:  # noqa: BLE001
                    fail(i, exc)
                bar.update()
    bar.close()
    table = pd.DataFrame([rows[i] for i in sorted(rows)])
    failures.sort(key=lambda f: int(f["index"]))
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
