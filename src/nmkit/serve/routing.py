"""Routing received instances to interpretation instances (called AE title and rules on DICOM attributes)."""

from __future__ import annotations

import re
from typing import Any

from .config import Instance


def tracer_text(ds: Any) -> str:
    """Radiopharmaceutical names and code meanings of a PT/NM dataset, joined by '|' (empty when none)."""
    parts: list[str] = []
    for item in getattr(ds, "RadiopharmaceuticalInformationSequence", None) or []:
        parts.append(str(getattr(item, "Radiopharmaceutical", "") or ""))
        for seq in ("RadiopharmaceuticalCodeSequence", "RadionuclideCodeSequence"):
            for code in getattr(item, seq, None) or []:
                parts.append(str(getattr(code, "CodeMeaning", "") or ""))
    return "|".join(p for p in parts if p)


def routing_attributes(ds: Any) -> dict[str, str]:
    """The attributes routing rules can test, as strings."""
    return {
        "modality": str(getattr(ds, "Modality", "") or ""),
        "series_description": str(getattr(ds, "SeriesDescription", "") or ""),
        "study_description": str(getattr(ds, "StudyDescription", "") or ""),
        "body_part": str(getattr(ds, "BodyPartExamined", "") or ""),
        "sop_class_uid": str(getattr(ds, "SOPClassUID", "") or ""),
        "tracer": tracer_text(ds),
    }


def rules_match(rules: dict[str, str], attrs: dict[str, str]) -> bool:
    """Every rule is a regular expression searched (case-insensitive) in its attribute."""
    return all(re.search(str(pattern), attrs.get(key, ""), flags=re.IGNORECASE) for key, pattern in rules.items())


def route(instances: list[Instance], called_ae: str, attrs: dict[str, str], server_ae: str) -> list[str]:
    """Names of the instances that take a received object.

    Sent to an instance's own AE title: that instance (and others sharing the title) when its rules match.
    Sent to the server's main AE title (or any other): every instance without an own AE title whose rules match.
    """
    called_ae = called_ae.strip()
    own = [i for i in instances if i.ae_title and i.ae_title.strip() == called_ae]
    candidates = own if own else [i for i in instances if not i.ae_title]
    # derived objects (our own results, SEG/SR/PR) are never interpreted again
    if attrs.get("modality") in ("SEG", "SR", "PR", "RTSTRUCT", "KO", "REG"):
        return []
    return [i.name for i in candidates if rules_match(i.match, attrs)]
