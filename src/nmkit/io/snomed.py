"""SNOMED-CT codes for segment names, so a DICOM SEG says what each segment is in codes a PACS or viewer understands.

Tables shipped in ``nmkit/data/snomed/`` (CSV: name, code, meaning, category, modifier_code, modifier_meaning,
region_code, region_meaning; every code SNOMED-CT, scheme designator SCT):

- ``totalsegmentator.csv``: TotalSegmentator's class names (all 117 of the v2 ``total`` task and the sub-tasks' names),
  transcribed from TotalSegmentator's published mapping; laterality as a type modifier (Left 7771000 / Right 24028007),
  as DICOM's segmentation templates do; the subclavian artery takes DICOM's 36765005.
- ``nmkit.csv``: the names nmkit's own models and phantoms use (lesion, gtv, metastasis, thyroid, nodules...).

Categories are DICOM CID 7150's (Anatomical Structure 91723000, Morphologically Abnormal Structure 49755003, Tissue
85756007, Physical object 260787004). A name is matched case-insensitively with spaces/hyphens read as underscores; a
``_left``/``_right`` name whose base is in a table gets the base's code and the laterality modifier. Any other name gets
the generic code (category and type Tissue 85756007, what DICOM's generic segmentations use); the name itself stays in
the SEG's SegmentLabel, so nothing is lost.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLES = ("totalsegmentator", "nmkit")  # looked up in this order
SCHEME = "SCT"
CATEGORIES = {
    "anatomical_structure": ("91723000", "Anatomical Structure"),
    "morphologically_abnormal_structure": ("49755003", "Morphologically Abnormal Structure"),
    "tissue": ("85756007", "Tissue"),
    "physical_object": ("260787004", "Physical object"),
}
GENERIC = ("85756007", "Tissue")
_LATERALITY = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}


@dataclass(frozen=True)
class Concept:
    """One coded concept: (code value, code meaning) in SNOMED-CT."""

    value: str
    meaning: str
    scheme: str = SCHEME

    def to_pydicom(self):
        from pydicom.sr.coding import Code

        return Code(self.value, self.scheme, self.meaning)


@dataclass(frozen=True)
class SegmentCodes:
    """What a segment is: its category, type, optional type modifier (laterality) and anatomic region."""

    name: str
    category: Concept
    type: Concept
    modifier: Concept | None = None
    region: Concept | None = None
    source: str = "generic"  # the table the codes came from, or "generic"

    @property
    def generic(self) -> bool:
        return self.source == "generic"


def _key(name: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[\s\-]+", "_", str(name).strip().lower())).strip("_")


def table_path(table: str) -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "snomed" / f"{table}.csv"


@lru_cache(maxsize=None)
def load_table(table: str) -> dict[str, dict[str, str]]:
    """A shipped table as ``{normalised name: row}``."""
    with open(table_path(table), newline="", encoding="utf-8") as fh:
        return {_key(row["name"]): row for row in csv.DictReader(fh)}


def _from_row(name: str, row: dict[str, str], source: str, laterality: str | None = None) -> SegmentCodes:
    category = CATEGORIES[row["category"]]
    modifier = Concept(row["modifier_code"], row["modifier_meaning"]) if row.get("modifier_code") else None
    if modifier is None and laterality:
        modifier = Concept(*_LATERALITY[laterality])
    region = Concept(row["region_code"], row["region_meaning"]) if row.get("region_code") else None
    return SegmentCodes(name=name, category=Concept(*category), type=Concept(row["code"], row["meaning"]),
                        modifier=modifier, region=region, source=source)


def _lookup(key: str) -> tuple[dict[str, str], str] | None:
    for table in TABLES:
        row = load_table(table).get(key)
        if row is not None:
            return row, table
    return None


def segment_codes(name: str) -> SegmentCodes:
    """The SNOMED-CT codes of a segment name: from a shipped table, else the generic Tissue code (name kept as label)."""
    key = _key(name)
    found = _lookup(key)
    if found:
        return _from_row(name, found[0], found[1])
    match = re.fullmatch(r"(?:(left|right)_(.+))|(?:(.+)_(left|right))", key)
    if match:
        side = match.group(1) or match.group(4)
        base = match.group(2) or match.group(3)
        found = _lookup(base)
        if found and not found[0].get("modifier_code"):
            return _from_row(name, found[0], found[1], laterality=side)
    return SegmentCodes(name=name, category=Concept(*GENERIC), type=Concept(*GENERIC))
