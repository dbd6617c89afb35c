"""Foreign segmentation engines run by nmkit: nnU-Net v2 results folders (and nmkit bundles wrapping them) and MONAI
bundles. Each engine's model object has the interface of :class:`nmkit.segment.bundle.Bundle` that predict and the
server use (``name``, ``version``, ``labels``, ``heads``...) plus ``predict_labels(image) -> label array``, so
``nmkit predict`` and server instances run any of them through :func:`nmkit.segment.bundle.load_bundle`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InputError


def sha256(path: str | Path) -> str:
    """SHA-256 of a file (model identity in provenance and SEG)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_engine(path: Path) -> str:
    """``nnunet``, ``monai`` or ``nmkit`` for a model folder or file the user named (no loading)."""
    if path.is_file() and path.suffix.lower() == ".zip":
        return "nnunet"
    if path.is_dir():
        desc = path / "bundle.json"
        if desc.exists():
            try:
                engine = json.loads(desc.read_text()).get("engine")
            except (UnicodeDecodeError, json.JSONDecodeError):
                engine = None
            return engine or "nmkit"
        configs = path / "configs"
        if configs.is_dir() and (any(configs.glob("*.json")) or any(configs.glob("*.yaml"))):
            return "monai"
        if (path / "plans.json").exists() or (path / "dataset.json").exists() or any(path.glob("*/plans.json")) \
                or any(path.glob("*/*/plans.json")):
            return "nnunet"
    return "nmkit"


@dataclass
class EnginePreprocessing:
    """What nmkit needs to know about a foreign engine's input: the normalisation kind (``suv`` reads DICOM PET in SUV)."""

    normalisation: str = "engine"


@dataclass
class EngineModel:
    """Common part of foreign-engine models: identity, label names, channels, single output head."""

    path: Path
    name: str
    version: str
    label_names: dict[int, str]
    channels: list[str]
    description: dict[str, Any] = field(default_factory=dict)
    preprocessing: EnginePreprocessing = field(default_factory=EnginePreprocessing)

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.label_names)

    @property
    def n_classes(self) -> int:
        return 1 + max(self.labels) if self.labels else 1

    heads = None
    n_heads = 1
    default_head = None

    def resolve_head(self, head: str | None) -> str | None:
        if head is not None:
            raise InputError(self.path, f"model {self.name!r} has a single output; no head {head!r}")
        return None

    def head_index(self, head: str | None) -> int:
        return 0

    @property
    def identity(self) -> dict[str, Any]:
        """Model identity and checksums for provenance and the SEG."""
        return dict(self.description.get("identity") or {})
