"""Provenance recorded with every output: nmkit version, configuration, inputs, platform."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import sys
from typing import Any, Iterable, Mapping

from . import __version__


def config_hash(config: Any) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(config: Any = None, inputs: Iterable[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A dictionary describing how an output was made."""
    record: dict[str, Any] = {
        "software": "nmkit",
        "nmkit_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if isinstance(config, Mapping):  # an argparse namespace's vars(): its handler function is not configuration
        config = {k: v for k, v in config.items() if not callable(v)}
    if config is not None:
        record["config"] = config
        record["config_hash"] = config_hash(config)
    if inputs is not None:
        record["inputs"] = [str(i) for i in inputs]
    record.update(extra)
    return record


def library_versions(names: Iterable[str] = ("numpy", "scipy", "SimpleITK", "pydicom", "highdicom", "torch", "monai")) -> dict[str, str]:
    """Installed versions of the libraries an output depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
