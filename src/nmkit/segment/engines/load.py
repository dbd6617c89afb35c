"""Load a model of a foreign engine by the kind :func:`nmkit.segment.engines.detect_engine` found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import InputError
from . import EngineModel


def load_engine(engine: str, path: Path, device: str | None = None, **options: Any) -> EngineModel:
    """An engine model ready for ``predict_labels``: nnU-Net results folder/zip, nmkit bundle of nnU-Net, MONAI bundle."""
    options = {k: v for k, v in options.items() if v is not None}
    if engine == "nnunet":
        from .nnunet import load_nnunet

        desc_path = path / "bundle.json" if path.is_dir() else None
        if desc_path is not None and desc_path.exists():
            return _load_nnunet_bundle(path, json.loads(desc_path.read_text()), device, **options)
        return load_nnunet(path, device=device, **options)
    if engine == "monai":
        from .monai_bundle import load_monai_bundle

        options.pop("folds", None)
        return load_monai_bundle(path, device=device, **options)
    raise InputError(path, f"unknown model engine {engine!r} in bundle.json (known: nmkit, nnunet, monai)")


def _load_nnunet_bundle(path: Path, desc: dict[str, Any], device: str | None, **options: Any) -> EngineModel:
    """An nmkit bundle that wraps an nnU-Net results folder (``nmkit train --engine nnunet``)."""
    from .nnunet import load_nnunet

    spec = desc.get("nnunet") or {}
    results = path / str(spec.get("results", "nnunet"))
    options.setdefault("folds", spec.get("folds"))
    model = load_nnunet(results, device=device, name=desc.get("name") or path.name, version=str(desc.get("version", "1.0.0")),
                        **options)
    labels = {int(k): v for k, v in (desc.get("labels") or {}).items()}
    if labels and set(labels) != set(model.labels):
        raise InputError(path / "bundle.json", f"labels {sorted(labels)} do not match the nnU-Net dataset.json's {sorted(model.labels)}")
    model.label_names = labels or model.label_names
    channels = desc.get("channels")
    if channels and len(channels) != len(model.channels):
        raise InputError(path / "bundle.json", f"channels {channels} do not match the nnU-Net dataset.json's {model.channels}")
    model.channels = list(channels or model.channels)
    model.path = path
    model.description = {**desc, **model.description, "identity": {**model.identity, "bundle": str(path)}}
    return model
