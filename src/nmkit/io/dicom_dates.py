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
