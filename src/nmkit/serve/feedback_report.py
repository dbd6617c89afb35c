"""``nmkit feedback report`` and ``export``: how much experts edit the AI per model version and week, and the
corrected cases as a dataset case table (``nmkit.dataset``) for ``nmkit train``.

Report tables (CSV, every column with its unit in its name or in ``<stem>.units.json``):

* ``<stem>.csv``: one row per scored structure of each correction (reader, model, version, week, Dice, HD95 mm,
  AI/corrected/added/removed sizes in ml for volumes or mm2 for planar images);
* ``<stem>_by_version.csv``: per model and version: corrections, readers, Dice mean/median, HD95 median (mm),
  mean added/removed size, the fraction of structures left unchanged;
* ``<stem>_by_week.csv``: the same per ISO week (``2026-W49``, of the correction's content date, UTC).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .db import Store

#: unit of every column of the report CSVs ("1": dimensionless; "count"; "text")
UNITS = {"feedback_id": "text", "reader": "text", "model": "text", "model_version": "text", "job_id": "text", "instance": "text",
         "kind": "text", "linked_by": "text", "via": "text", "corrected_date": "date (UTC)", "week": "ISO week", "structure": "text",
         "segment_number": "number", "corrected_segment": "number", "geometry": "text", "dice": "1", "hd95_mm": "mm",
         "ai_voxels": "count", "corrected_voxels": "count", "added_voxels": "count", "removed_voxels": "count", "voxel_mm3": "mm3",
         "ai_ml": "ml", "corrected_ml": "ml", "added_ml": "ml", "removed_ml": "ml", "ai_mm2": "mm2", "corrected_mm2": "mm2",
         "added_mm2": "mm2", "removed_mm2": "mm2", "corrections": "count", "readers": "count", "structures": "count",
         "dice_mean": "1", "dice_median": "1", "hd95_mm_median": "mm", "added_ml_mean": "ml", "removed_ml_mean": "ml",
         "added_mm2_mean": "mm2", "removed_mm2_mean": "mm2", "unchanged_fraction": "1"}
_SEGMENT_COLUMNS = ["feedback_id", "reader", "model", "model_version", "corrected_date", "week", "structure", "segment_number",
                    "corrected_segment", "geometry", "dice", "hd95_mm", "ai_voxels", "corrected_voxels", "added_voxels", "removed_voxels",
                    "ai_ml", "corrected_ml", "added_ml", "removed_ml", "ai_mm2", "corrected_mm2", "added_mm2", "removed_mm2",
                    "job_id", "instance", "kind", "linked_by", "via"]


def open_store(server_dir: str | Path) -> tuple[Store, Path]:
    """The server database of a storage folder (or of the ``storage`` of a server YAML configuration)."""
    path = Path(server_dir)
    if not path.exists():
        raise InputError(path, "server folder does not exist")
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise InputError(path, "give the server's storage folder (holding server.sqlite) or its YAML configuration")
        from .config import load_config

        path = load_config(path).storage
    db = path / "server.sqlite"
    if not db.is_file():
        raise InputError(path, "not a server storage folder: no server.sqlite in it (give the `storage` folder of `nmkit serve`)")
    return Store(db), path


def _week(seconds: float) -> tuple[str, str]:
    day = dt.datetime.fromtimestamp(float(seconds), dt.timezone.utc).date()
    year, week, _ = day.isocalendar()
    return day.isoformat(), f"{year}-W{week:02d}"


def segment_table(store: Store):
    """One row per scored structure of each correction (columns of :data:`_SEGMENT_COLUMNS`)."""
    import pandas as pd

    rows = store.feedback_scores()
    for r in rows:
        r["corrected_date"], r["week"] = _week(r["corrected_at"] or r["received_at"])
    return pd.DataFrame(rows, columns=_SEGMENT_COLUMNS)


def _summary(frame, keys: list[str]):
    import pandas as pd

    out = []
    for key, g in frame.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        row.update(corrections=int(g["feedback_id"].nunique()), readers=int(g["reader"].nunique()), structures=int(len(g)),
                   dice_mean=float(g["dice"].mean()), dice_median=float(g["dice"].median()),
                   hd95_mm_median=float(g["hd95_mm"].astype(float).median()))
        for col in ("added_ml", "removed_ml", "added_mm2", "removed_mm2"):
            values = pd.to_numeric(g[col], errors="coerce").dropna()
            row[f"{col}_mean"] = float(values.mean()) if len(values) else np.nan
        row["unchanged_fraction"] = float(((g["added_voxels"] == 0) & (g["removed_voxels"] == 0)).mean())
        out.append(row)
    return pd.DataFrame(out, columns=keys + ["corrections", "readers", "structures", "dice_mean", "dice_median", "hd95_mm_median",
                                             "added_ml_mean", "removed_ml_mean", "added_mm2_mean", "removed_mm2_mean",
                                             "unchanged_fraction"])


def report_tables(store: Store) -> dict[str, Any]:
    """The segment table and its summaries per model version and per week."""
    seg = segment_table(store)
    return {"segments": seg, "by_version": _summary(seg, ["model", "model_version"]),
            "by_week": _summary(seg, ["model", "model_version", "week"])}


def _figures(tables: dict[str, Any]) -> list[tuple[Any, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg, week = tables["segments"], tables["by_week"]
    figs = []
    versions = [f"{m} v{v}" for m, v in tables["by_version"][["model", "model_version"]].itertuples(index=False)]
    groups = [g for _, g in seg.groupby(["model", "model_version"], sort=True)]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(groups) + 2), 3.4))
    ax.boxplot([g["dice"].to_numpy(float) for g in groups], widths=0.5, showfliers=False)
    for i, g in enumerate(groups, start=1):
        ax.plot(np.full(len(g), i) + np.linspace(-0.12, 0.12, len(g)), g["dice"].to_numpy(float), "o", ms=4, alpha=0.6)
    ax.set_xticks(range(1, len(groups) + 1), versions)
    ax.set_ylabel("Dice AI vs correction (1)")
    ax.set_ylim(0, 1.05)
    figs.append((fig, "Dice between the AI output and the expert's correction, per model version (1 = left unchanged)"))
    for unit in ("ml", "mm2"):
        values = [(g[f"added_{unit}"].astype(float), g[f"removed_{unit}"].astype(float)) for g in groups]
        if not any(a.notna().any() for a, _ in values):
            continue
        fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(groups) + 2), 3.4))
        x = np.arange(len(groups))
        ax.bar(x - 0.18, [a.mean() for a, _ in values], 0.36, label="added by the expert")
        ax.bar(x + 0.18, [-r.mean() for _, r in values], 0.36, label="removed by the expert")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, versions)
        ax.set_ylabel(f"mean change per structure ({'ml' if unit == 'ml' else 'mm²'})")
        ax.legend(fontsize=8)
        figs.append((fig, f"Size added (up) and removed (down) by the experts per structure, per model version ({unit})"))
    if len(week):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
        weeks = sorted(week["week"].unique())
        bottom = np.zeros(len(weeks))
        for (m, v), g in week.groupby(["model", "model_version"], sort=True):
            ax1.plot([weeks.index(w) for w in g["week"]], g["dice_mean"], "o-", label=f"{m} v{v}")
            counts = g.set_index("week")["corrections"].reindex(weeks, fill_value=0).to_numpy(float)
            ax2.bar(np.arange(len(weeks)), counts, bottom=bottom, label=f"{m} v{v}")  # stacked: versions per week
            bottom += counts
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(weeks)), weeks)
        ax1.set_ylabel("mean Dice AI vs correction (1)")
        ax1.set_ylim(0, 1.05)
        ax2.set_ylabel("corrections (count)")
        for ax in (ax1, ax2):
            ax.set_xlabel("ISO week of the correction")
            ax.tick_params(axis="x", rotation=45)
            ax.legend(fontsize=8)
        figs.append((fig, "Per week: mean Dice (left) and number of corrections (right), per model version"))
    return figs


def write_report(store: Store, out: str | Path, server_dir: str | Path) -> dict[str, Path]:
    """HTML report plus ``<stem>.csv``, ``<stem>_by_version.csv``, ``<stem>_by_week.csv`` and ``<stem>.units.json``."""
    from ..report.html import Report

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    tables = report_tables(store)
    paths = {"html": out}
    for name, key in ((f"{stem}.csv", "segments"), (f"{stem}_by_version.csv", "by_version"), (f"{stem}_by_week.csv", "by_week")):
        paths[key] = out.with_name(name)
        tables[key].to_csv(paths[key], index=False)
    columns = sorted({c for t in tables.values() for c in t.columns})
    paths["units"] = out.with_name(f"{stem}.units.json")
    paths["units"].write_text(json.dumps({c: UNITS.get(c, "") for c in columns}, indent=1))
    failed = store.feedback_rows("failed")
    unlinked = store.unlinked_rows()
    report = Report("Expert feedback on the AI results")
    s = report.section("Summary")
    s.text(f"Server storage {server_dir}: {tables['segments']['feedback_id'].nunique()} scored correction(s) of "
           f"{len(tables['by_version'])} model version(s); {len(failed)} could not be scored; {len(unlinked)} unlinked (quarantined).")
    if len(tables["segments"]):
        for fig, caption in _figures(tables):
            s.figure(fig, caption)
        report.section("Per model version").table(_with_units(tables["by_version"]), "Per model version (units in the column names)")
        report.section("Per week").table(_with_units(tables["by_week"]), "Per ISO week of the correction")
        report.section("Every corrected structure").table(_with_units(tables["segments"][_SEGMENT_COLUMNS[:24]]))
    else:
        s.text("No scored correction yet: send a corrected SEG/RTSTRUCT to the server or run `nmkit feedback import`.", note=True)
    if failed or unlinked:
        import pandas as pd

        q = report.section("Not scored")
        if failed:
            q.table(pd.DataFrame([{"feedback_id": r["id"], "job_id": r["job_id"], "reader": r["reader"], "reason": r["reason"]} for r in failed]),
                    "Linked but not scored (reason)")
        if unlinked:
            q.table(pd.DataFrame([{"received": _week(r["received_at"])[0], "via": r["via"], "calling_ae": r["calling_ae"], "file": r["path"],
                                   "reason": r["reason"]} for r in unlinked]), "Unlinked corrections (quarantine)")
    report.write(out)
    return paths


def _with_units(frame):
    """Column headers with their units for the HTML tables (the CSVs keep the plain names)."""
    names = {}
    for c in frame.columns:
        unit = UNITS.get(c, "")
        names[c] = c if unit in ("", "text", "number") or c.endswith(("_mm", "_ml", "_mm2", "_mm3")) else f"{c} ({unit})"
    return frame.rename(columns=names)


# ----- export as a dataset ------------------------------------------------------------------------------------
def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_dataset(store: Store, out: str | Path, server_dir: str | Path, val_fraction: float = 0.2, seed: int = 0,
                   model: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Write the scored corrections as a case table: image = the source series (hard-linked or copied under
    ``<out folder>/images/<case>/``), masks = the corrected label map (values = the AI's segment numbers),
    reader = the expert, split train/val by patient; provenance names the AI model versions."""
    import pydicom

    from .. import dataset as ds_mod
    from ..catalog.manifest import split_by_patient
    from .feedback import _source_files

    if not 0 <= val_fraction < 1:
        raise InputError(None, f"--val-fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    folder = out.parent
    rows = [r for r in store.feedback_rows("scored") if (model is None or r["model"] == model) and (version is None or r["model_version"] == version)]
    if not rows:
        what = f" of model {model}" + (f" v{version}" if version else "") if model else ""
        raise InputError(server_dir, f"no scored correction{what} to export (see `nmkit feedback report`)")
    records, labels_seen = [], {}
    for r in rows:
        kept = Path(r["image"]) if r.get("image") else None
        if kept is not None and kept.exists():
            files = [str(kept)] if kept.is_file() else sorted(str(p) for p in kept.glob("*.dcm"))
        else:
            files = _source_files(store, r)
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        case = r["id"]
        images = [folder / "images" / case / f"{i:05d}.dcm" for i in range(len(files))]
        for src, dst in zip(files, images):
            _link_or_copy(Path(src), dst)
        label_map = Path(r["label_map"])
        mask = folder / "masks" / f"{case}.nii.gz"
        _link_or_copy(label_map, mask)
        names = json.loads(label_map.with_name("corrected_labels.labels.json").read_text())
        shutil.copyfile(label_map.with_name("corrected_labels.labels.json"), mask.with_name(f"{case}.labels.json"))
        labels_seen.update(names)
        masks = [ds_mod.MaskRef(file=str(mask), kind="labelmap", label=int(n), structure=name, reader=r["reader"]) for n, name in sorted(names.items())]
        records.append({"case_id": case, "patient_id": str(head.get("PatientID", "") or f"unknown-{case}"), "study_uid": r["study_uid"],
                        "series_uid": r["source_series_uid"], "study_date": str(head.get("StudyDate", "") or ""),
                        "modality": str(head.get("Modality", "") or ""), "series_description": str(head.get("SeriesDescription", "") or ""),
                        "image": str(images[0] if len(images) == 1 else images[0].parent), "masks": masks, "mask": str(mask),
                        "reader": r["reader"], "ai_model": r["model"], "ai_model_version": r["model_version"], "ai_job": r["job_id"],
                        "ai_sop_uid": r["ai_sop_uid"], "correction_sop_uid": r["sop_uid"], "feedback_id": r["id"],
                        "corrected_date": _week(r["corrected_at"] or r["received_at"])[0]})
    table = ds_mod.new_table(records)
    if val_fraction > 0 and table["patient_id"].nunique() >= 2:
        table = split_by_patient(table, (1 - val_fraction, val_fraction), seed=seed, names=["train", "val"])
    else:
        table["split"] = "train"
    provenance = {"producer": "nmkit feedback export", "server_storage": str(server_dir), "val_fraction": val_fraction, "seed": seed,
                  "ai_models": sorted({f"{r['model']} v{r['model_version']}" for r in rows}), "labels": labels_seen,
                  "readers": sorted({r["reader"] for r in rows}), "corrections": len(rows)}
    ds_mod.write_dataset(table, out, provenance)
    return {"path": out, "rows": len(table), "labels": {int(k): v for k, v in labels_seen.items()},
            "splits": table["split"].value_counts().to_dict()}
