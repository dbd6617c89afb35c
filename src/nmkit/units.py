"""Units of image values as people read them, so that every number nmkit prints or writes says its unit."""

from __future__ import annotations

#: DICOM Units (0054,1001) and common spellings -> a readable unit
IMAGE_UNITS = {"BQML": "Bq/ml", "BQ/ML": "Bq/ml", "GML": "g/ml", "SUV": "g/ml", "SUVBW": "g/ml", "SUVLBM": "g/ml",
               "CNTS": "counts", "COUNTS": "counts", "HU": "HU", "PROPCNTS": "counts", "CPS": "counts/s", "1": "1"}


def image_unit(units: str | None, modality: str = "") -> str:
    """A readable unit for an image's ``units`` field ("BQML" -> "Bq/ml"); CT without units is HU; else "unknown"."""
    key = str(units or "").strip().upper().replace(" ", "")
    if key in IMAGE_UNITS:
        return IMAGE_UNITS[key]
    if not key and modality.upper() == "CT":
        return "HU"
    return str(units).strip() if key else "unknown"


def is_activity_concentration(units: str | None) -> bool:
    return image_unit(units) == "Bq/ml"
