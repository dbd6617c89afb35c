"""QC history: every QC result appended to one SQLite file per scanner, and trends against tolerances.

The scanner is identified from the DICOM header (Manufacturer, ManufacturerModelName, StationName,
DeviceSerialNumber); its file is ``<folder>/<manufacturer>_<model>_<station>_<serial>.sqlite``. One row per measure:
``results(test, measure, value, unit, acquired, recorded_utc, source)``; ``acquired`` is the acquisition date/time from
the header (ISO), so re-analysing an old scan lands at its own date. Re-recording the same (test, measure, source,
acquired) replaces the earlier value (re-runs do not duplicate points).

``trend_table`` flags a point when it is outside its tolerance (``TOLERANCES`` or user limits), or drifts: more than
3 standard deviations from the mean of the earlier points (at least 3 earlier points).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import sqlite3
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

SCANNER_KEYS = ("Manufacturer", "ManufacturerModelName", "StationName", "DeviceSerialNumber")

#: typical acceptance limits (min, max) per measure; vendors' own specifications take precedence (--tolerance)
TOLERANCES: dict[str, tuple[float, float]] = {
    "integral_uniformity_ufov_percent": (0.0, 5.0), "integral_uniformity_cfov_percent": (0.0, 4.0),
    "differential_uniformity_ufov_percent": (0.0, 3.5), "differential_uniformity_cfov_percent": (0.0, 3.0),
    "absolute_linearity_cfov_mm": (0.0, 1.0), "differential_linearity_cfov_mm": (0.0, 0.5),
    "lung_residual_percent": (0.0, 25.0),
}

SCHEMA = """CREATE TABLE IF NOT EXISTS results (
  test TEXT NOT NULL, measure TEXT NOT NULL, value REAL, unit TEXT, acquired TEXT, recorded_utc TEXT, source TEXT,
  manufacturer TEXT, model TEXT, station TEXT, serial TEXT,
  UNIQUE(test, measure, source, acquired))"""


def scanner_identity(meta: Mapping[str, Any], source_file: str | Path | None = None) -> dict[str, str]:
    """Manufacturer, model, station and serial from an image's meta, completed from its first DICOM file's header."""
    ident = {k: str(meta.get(k, "") or "") for k in SCANNER_KEYS + ("AcquisitionDate", "AcquisitionTime", "StudyDate")}
    files = meta.get("source_files") or ([source_file] if source_file else [])
    if files and any(not ident[k] for k in SCANNER_KEYS + ("AcquisitionDate",)):
        try:
            import pydicom

            ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
            for k in ident:
                if not ident[k]:
                    ident[k] = str(ds.get(k, "") or "")
        except Exception:  # noqa: BLE001 - a NIfTI or unreadable header: the identity stays partial
            pass
    return ident


def acquired_iso(ident: Mapping[str, str]) -> str:
    """ISO date/time of the acquisition ('' when the header has none)."""
    d = ident.get("AcquisitionDate") or ident.get("StudyDate") or ""
    t = (ident.get("AcquisitionTime") or "000000").split(".")[0].ljust(6, "0")
    if not re.fullmatch(r"\d{8}", d) or d.startswith("0001"):
        return ""
    return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:6]}"


def history_file(folder: str | Path, ident: Mapping[str, str]) -> Path:
    """The scanner's SQLite file in ``folder`` (name from the four identity fields, 'unknown' where missing)."""
    parts = [re.sub(r"[^A-Za-z0-9.-]+", "-", ident.get(k, "") or "unknown").strip("-") or "unknown" for k in SCANNER_KEYS]
    return Path(folder) / ("_".join(parts) + ".sqlite")


def record(folder: str | Path, ident: Mapping[str, str], test: str, measures: Mapping[str, Any], units: Mapping[str, str],
           source: str) -> Path:
    """Append the numeric ``measures`` of one QC test to the scanner's history; returns the file."""
    path = history_file(folder, ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    acquired = acquired_iso(ident) or now
    rows = [(test, k, float(v), units.get(k, ""), acquired, now, str(source), ident.get("Manufacturer", ""),
             ident.get("ManufacturerModelName", ""), ident.get("StationName", ""), ident.get("DeviceSerialNumber", ""))
            for k, v in measures.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    with sqlite3.connect(path) as con:
        con.execute(SCHEMA)
        con.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    return path


def read_history(path: str | Path) -> pd.DataFrame:
    from ..errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "QC history file not found")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            return pd.read_sql_query("SELECT * FROM results ORDER BY acquired", con)
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
        raise InputError(path, f"not a QC history database ({exc})") from None


def trend_table(history: pd.DataFrame, tolerances: Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Each point with its tolerance, and flags: out of tolerance, drift (> 3 SD from the earlier points' mean)."""
    tol = {**TOLERANCES, **(tolerances or {})}
    out = []
    for (test, measure), g in history.groupby(["test", "measure"], sort=True):
        g = g.sort_values("acquired").reset_index(drop=True)
        lo, hi = tol.get(measure, (math.nan, math.nan))
        for i, r in g.iterrows():
            prev = g["value"].iloc[:i]
            drift = bool(len(prev) >= 3 and prev.std(ddof=1) > 0 and abs(r["value"] - prev.mean()) > 3 * prev.std(ddof=1))
            out_tol = bool((not math.isnan(lo) and r["value"] < lo) or (not math.isnan(hi) and r["value"] > hi))
            out.append({"test": test, "measure": measure, "acquired": r["acquired"], "value": r["value"], "unit": r["unit"],
                        "tolerance_min": lo, "tolerance_max": hi, "out_of_tolerance": out_tol, "drift": drift,
                        "source": r["source"]})
    return pd.DataFrame(out)


def trend_figure(trend: pd.DataFrame, title: str):
    """One panel per (test, measure): values over time, tolerance lines, flagged points in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(trend.groupby(["test", "measure"]).groups)
    n = max(len(keys), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        g = trend[(trend["test"] == key[0]) & (trend["measure"] == key[1])]
        t = pd.to_datetime(g["acquired"], errors="coerce")
        ax.plot(t, g["value"], "o-", color="tab:blue")
        bad = g["out_of_tolerance"] | g["drift"]
        ax.plot(t[bad], g["value"][bad], "o", color="tab:red", label="flagged")
        for lim in (g["tolerance_min"].iloc[0], g["tolerance_max"].iloc[0]):
            if not math.isnan(lim):
                ax.axhline(lim, color="tab:orange", ls="--", lw=1)
        unit = g["unit"].iloc[0]
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=8)
        ax.set_ylabel(unit or "value")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
