"""The compiled kernels (C extensions built by ``pip install``, see setup.py), or None to use the NumPy code.

``native("_ctexture")`` returns the extension module when it was built and ``NMKIT_NO_NATIVE`` is not set (any
value but ``0``/empty); callers keep an equivalent NumPy path, and the tests run both and compare them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_LOADED: dict[str, ModuleType | None] = {}


def native(name: str) -> ModuleType | None:
    """The compiled module ``nmkit.radiomics.<name>``, or None (not built, or disabled by ``NMKIT_NO_NATIVE``)."""
    if os.environ.get("NMKIT_NO_NATIVE", "0") not in ("", "0"):
        return None
    if name not in _LOADED:
        try:
            _LOADED[name] = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            _LOADED[name] = None
    return _LOADED[name]
