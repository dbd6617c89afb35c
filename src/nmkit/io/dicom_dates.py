"""DICOM dates and times as ISO 8601, the form case tables and reports carry."""

from __future__ import annotations

from typing import Any


def iso_datetime(date: Any, time: Any = None) -> str:
    """``YYYYMMDD`` + ``HHMM[SS[.frac]]`` -> ``YYYY-MM-DDTHH:MM:SS`` (the date alone without a usable time; blank
    without a valid date)."""
    date, time = str(date or "").strip(), str(time or "").strip()
    if len(date) != 8 or not date.isdigit():
        return ""
    out = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = time.split(".")[0]
    if len(digits) >= 4 and digits.isdigit():
        digits = digits.ljust(6, "0")
        out += f"T{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    return out


def scan_day(acquisition_datetime: Any, study_date: Any) -> str:
    """The day of a scan as ``YYYY-MM-DD``: from its ISO acquisition date-time, else its DICOM study date."""
    day = str(acquisition_datetime or "").strip()[:10]
    return day or iso_datetime(study_date)


def time_point_labels(groups: list[Any], days: list[str]) -> list[str]:
    """``TP1``, ``TP2`` ... for items grouped by ``groups`` (e.g. patient, modality, tracer), numbered by distinct
    ``days`` in order; blank for an item without a day or in a group scanned on a single day (scans of one day,
    such as a PET and its variants, are one time point)."""
    by_group: dict[Any, set[str]] = {}
    for group, day in zip(groups, days):
        if day:
            by_group.setdefault(group, set()).add(day)
    ranks = {g: {d: i + 1 for i, d in enumerate(sorted(ds))} for g, ds in by_group.items() if len(ds) > 1}
    return [f"TP{ranks[g][d]}" if d and g in ranks else "" for g, d in zip(groups, days)]
