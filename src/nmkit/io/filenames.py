"""One rule for turning header text (patient IDs, descriptions, ROI names, UIDs) into a file or folder name.

Why one rule: roi2mask, pull and burden each had their own, and pull's kept ``..`` as a name, so a Patient ID of
``..`` wrote outside the output folder. Here every run of characters other than letters, digits, ``.``, ``_``
and ``-`` becomes one ``_``; leading and trailing dots/underscores go (no hidden files, no ``.``/``..``); the
name is cut to ``max_len`` characters; an empty result becomes ``default``.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: object, default: str = "unknown", max_len: int = 80) -> str:
    """A portable file name made from ``text`` (never empty, never ``.``/``..``, at most ``max_len`` characters)."""
    cleaned = _UNSAFE.sub("_", str(text).strip()).strip("._")
    return cleaned[:max_len].rstrip("._") or default
