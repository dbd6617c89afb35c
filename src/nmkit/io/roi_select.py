"""Choose structures of an ROI file (RTSTRUCT ROIs, SEG segments, label-map labels) the way users name them.

One rule for every command (``roi2mask --roi``, ``radiomics --roi``, manifests' ``roi`` column):

* a number (``3``) is the ROI Number of an RTSTRUCT, the Segment Number of a SEG, or the label value of a label map;
* a glob (``GTV*``, ``*lesion?``) matches names case-insensitively and may select several structures;
* anything else is a name: the exact name, else the case-insensitive match. Several structures may share a name
  (a QIN-style SEG with ten "Neoplasm, Secondary" segments): a name selects all of them, each kept apart by number.

Several selectors may be given (a list, or one string separated by ``;``); the result is their union, in number order.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import InputError

_GLOB_CHARS = set("*?[")


def split_selectors(selector: str | Sequence[str] | None) -> list[str]:
    """``"GTV;3"`` or ``["GTV", "3"]`` -> ``["GTV", "3"]``; blank -> ``[]`` (meaning: every structure)."""
    if selector is None:
        return []
    items = selector.split(";") if isinstance(selector, str) else [str(s) for s in selector]
    return [s.strip() for s in items if s is not None and str(s).strip()]


def is_number(text: str) -> bool:
    return text.isdigit() or (text.endswith(".0") and text[:-2].isdigit())


def _one(names: Mapping[int, str], selector: str, where: str | Path | None) -> list[int]:
    if is_number(selector):
        number = int(float(selector))
        if number in names:
            return [number]
        exact = [n for n, name in names.items() if name == selector]
        if exact:
            return exact
        raise InputError(where, f"ROI number {number} not found; the file has {_listing(names)}")
    if _GLOB_CHARS & set(selector):
        pattern = selector.lower()
        found = [n for n, name in names.items() if fnmatch.fnmatchcase(name.lower(), pattern)]
        if not found:
            raise InputError(where, f"no ROI matches {selector!r}; the file has {_listing(names)}")
        return found
    exact = [n for n, name in names.items() if name == selector]
    if exact:
        return exact
    folded = [n for n, name in names.items() if name.lower() == selector.lower()]
    if folded:
        return folded
    raise InputError(where, f"ROI {selector!r} not found; the file has {_listing(names)} "
                            "(select by exact name, glob such as 'GTV*', or number)")


def _listing(names: Mapping[int, str]) -> str:
    shown = ", ".join(f"{n}={name!r}" for n, name in sorted(names.items())[:20])
    more = f", ... ({len(names)} in all)" if len(names) > 20 else ""
    return "{" + shown + more + "}"


def select_rois(names: Mapping[int, str], selector: str | Sequence[str] | None,
                where: str | Path | None = None) -> dict[int, str]:
    """The ``{number: name}`` structures that ``selector`` chooses among ``names`` (all of them when blank).

    Raises ``InputError`` naming ``where`` (the ROI file) and listing what the file has when a selector matches nothing.
    """
    selectors = split_selectors(selector)
    if not selectors:
        return dict(sorted(names.items()))
    chosen: set[int] = set()
    for s in selectors:
        chosen.update(_one(names, s, where))
    return {n: names[n] for n in sorted(chosen)}
