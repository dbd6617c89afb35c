"""Model bundles: one directory with safetensors weights and a JSON description (no pickle anywhere).

``bundle.json`` holds the network (name, options, input size), preprocessing, label names, the output heads
(one per reader, when the network mimics several readers at once, and which one is the default), bundle name and
version, the training configuration and data summary, validation metrics and provenance. Loading builds
the network from that description and loads the weights with ``safetensors`` (never unpickles).

Several input channels: ``channels`` (e.g. ``["PT", "CT"]``, the order the network takes them) with their
normalisations in ``preprocessing.channel_normalisations``. A k-fold ensemble: ``ensemble`` = ``{"folds": [...],
"members": ["fold_0/model.safetensors", ...], "combine": "mean softmax"}``; :func:`load_bundle` loads every member once
into ``Bundle.models`` (inference averages their softmax), ``model.safetensors`` is the first member's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import device_name
from ..errors import InputError
from ..provenance import library_versions, provenance
from .nets import build_network
from .preprocess import Preprocessing

BUNDLE_FORMAT = "nmkit-bundle/1"
WEIGHTS = "model.safetensors"
DESCRIPTION = "bundle.json"


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@dataclass
class Bundle:
    """A loaded model bundle, ready for inference."""

    path: Path
    model: nn.Module
    description: dict[str, Any]
    preprocessing: Preprocessing
    models: list[nn.Module] = field(default_factory=list)  # every ensemble member (k folds), else [model]

    def __post_init__(self) -> None:
        if not self.models:
            self.models = [self.model]

    @property
    def channels(self) -> list[str] | None:
        """Input channel names in the network's order (e.g. ``["PT", "CT"]``), or None for one channel."""
        channels = self.description.get("channels")
        return list(channels) if channels else None

    @property
    def folds(self) -> list[int] | None:
        """The folds of a k-fold ensemble, or None for a single model."""
        ensemble = self.description.get("ensemble") or {}
        return list(ensemble.get("folds") or []) or None

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.description["labels"].items()}

    @property
    def name(self) -> str:
        return self.description.get("name", self.path.name)

    @property
    def version(self) -> str:
        return str(self.description.get("version", "0"))

    @property
    def n_classes(self) -> int:
        """Classes per head (background included)."""
        return 1 + max(self.labels)

    @property
    def heads(self) -> tuple[str, ...] | None:
        """Names of the output heads (e.g. one per reader and the consensus), or None for a single-head network."""
        heads = self.description.get("heads")
        return tuple(heads) if heads else None

    @property
    def n_heads(self) -> int:
        return len(self.heads) if self.heads else 1

    @property
    def default_head(self) -> str | None:
        if not self.heads:
            return None
        return self.description.get("default_head") or self.heads[0]

    def resolve_head(self, head: str | None) -> str | None:
        """The head to use: ``head`` (checked against the bundle's heads) or the default one."""
        if not self.heads:
            if head is not None:
                raise InputError(self.path, f"bundle {self.name!r} has a single output; no head {head!r}")
            return None
        if head is None:
            return self.default_head
        if head not in self.heads:
            raise InputError(self.path, f"bundle {self.name!r} has no head {head!r}; heads: {', '.join(self.heads)}")
        return head

    def head_index(self, head: str | None) -> int:
        return 0 if not self.heads or head is None else self.heads.index(head)


def write_bundle(out_dir: str | Path, model: nn.Module, config: Any, prep: Preprocessing, validation: dict[str, Any] | None = None,
                 data_summary: dict[str, Any] | None = None, name: str | None = None, version: str = "1.0.0") -> Path:
    """Write weights + description; returns the bundle folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), out_dir / WEIGHTS)
    img_size = prep.target_size if prep.spatial_dims == 2 else prep.patch_size
    labels = {str(k): v for k, v in config.labels.items()}
    description = {
        "format": BUNDLE_FORMAT,
        "name": name or out_dir.name,
        "version": version,
        "network": {"name": config.network, "spatial_dims": prep.spatial_dims, "in_channels": prep.n_channels,
                    "out_channels": (1 + max(config.labels)) * len(getattr(config, "heads", None) or [None]),
                    "img_size": list(img_size) if img_size else None, "options": dict(config.network_options)},
        "preprocessing": prep.to_dict(),
        "channels": list(prep.channels) if prep.channels else None,
        "labels": labels,
        "heads": list(config.heads) if getattr(config, "heads", None) else None,
        "default_head": config.resolved_default_head() if getattr(config, "heads", None) else None,
        "training": config.to_dict(),
        "training_data": data_summary or {},
        "validation": validation or {},
        "provenance": provenance(config=config.to_dict(), libraries=library_versions()),
    }
    (out_dir / DESCRIPTION).write_text(json.dumps(description, indent=2, default=str))
    return out_dir


def _shipped_root() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "bundles"


def shipped_bundle(name: str) -> Path | None:
    """Folder of a bundle shipped inside the package (``nmkit/data/bundles/<name>``), or None when absent."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    folder = _shipped_root() / name
    return folder if (folder / DESCRIPTION).exists() and (folder / WEIGHTS).exists() else None


def shipped_bundle_names() -> list[str]:
    """Names of the bundles shipped inside the package."""
    root = _shipped_root()
    return sorted(p.name for p in root.iterdir() if shipped_bundle(p.name)) if root.is_dir() else []


def resolve_bundle(spec: str | Path) -> Path:
    """The bundle folder a user named: an existing folder (or its ``bundle.json``), else a shipped bundle's name.

    Anything else is an ``InputError`` that lists the shipped names, so ``nmkit predict thyroid-unet2d img.dcm``
    works from any folder and a typo says what exists."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file() and path.name == DESCRIPTION:
        return path.parent
    shipped = shipped_bundle(str(spec))
    if shipped is not None:
        return shipped
    names = shipped_bundle_names()
    listed = ", ".join(names) if names else "none"
    what = "is a file, not a bundle folder" if path.exists() else "is neither a bundle folder nor a shipped bundle name"
    raise InputError(path, f"{what}; shipped bundles: {listed}")


def load_bundle(path: str | Path, device: str | torch.device | None = None, **engine_options: Any) -> Bundle:
    """Build the network described in ``bundle.json`` and load its safetensors weights.

    ``path``: a bundle folder, or the name of a shipped bundle (:func:`resolve_bundle`). An nnU-Net v2 results folder
    or exported zip, a MONAI bundle folder, or an nmkit bundle of another engine loads through
    :mod:`nmkit.segment.engines` (``engine_options``: e.g. ``folds`` for nnU-Net)."""
    from .engines import detect_engine

    engine = detect_engine(Path(path))
    if engine != "nmkit":
        from .engines.load import load_engine

        return load_engine(engine, Path(path), device=None if device is None else str(device), **engine_options)  # type: ignore[return-value]
    path = resolve_bundle(path)
    desc_path = path / DESCRIPTION
    if not desc_path.exists():
        names = ", ".join(shipped_bundle_names()) or "none"
        raise InputError(path, f"not a model bundle ({DESCRIPTION} missing); shipped bundles: {names}")
    try:
        description = json.loads(desc_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(desc_path, f"not a readable bundle description ({exc})") from exc
    if description.get("format") != BUNDLE_FORMAT:
        raise InputError(desc_path, f"unknown bundle format {description.get('format')!r}")
    net = description["network"]
    channels = description.get("channels")
    if channels and len(channels) != int(net.get("in_channels", 1)):
        raise InputError(desc_path, f"channels {channels} do not match the network's {net.get('in_channels')} input channels")
    members = ensemble_members(description, path)
    device = device_name(device)
    models = [_load_member(net, weights, path) for weights in members]
    for model in models:
        model.to(device).eval()
    return Bundle(path=path, model=models[0], description=description, preprocessing=Preprocessing.from_dict(description["preprocessing"]),
                  models=models)


def ensemble_members(description: dict[str, Any], path: Path) -> list[Path]:
    """Weight files to load: every fold of a k-fold ensemble, else the one model (``nmkit predict --folds`` keeps some
    of them after loading)."""
    members = [str(m) for m in (description.get("ensemble") or {}).get("members") or []]
    return [path / m for m in members] or [path / WEIGHTS]


def _load_member(net: dict[str, Any], weights: Path, bundle: Path) -> nn.Module:
    """One network of the bundle with its safetensors weights."""
    model = build_network(net["name"], net["spatial_dims"], net["in_channels"], net["out_channels"], img_size=net.get("img_size"),
                          **dict(net.get("options") or {}))
    if not weights.exists():
        what = f"{weights.relative_to(bundle)} missing" if weights.is_relative_to(bundle) else f"{weights} missing"
        raise InputError(bundle, what + (" (a fold of the ensemble in bundle.json)" if weights.name == WEIGHTS and weights.parent != bundle else ""))
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as exc:  # weights of another network than bundle.json describes
        raise InputError(weights, f"weights do not fit the network in {DESCRIPTION}: {str(exc).splitlines()[0]}") from exc
    return model


def load_models(bundle: Bundle) -> list[nn.Module]:
    """Every model of a loaded bundle (the k folds of an ensemble, else the one model), loaded once by load_bundle."""
    return list(bundle.models)


def pet_suv_reading(model: Any) -> str | None:
    """How DICOM PET is read for ``model`` (an nmkit bundle or a foreign engine's model): ``"bw"`` (SUV, body
    weight) or None (as stored, Bq/ml).

    One rule for ``nmkit predict`` and the server, so both feed the network the same numbers: SUV when the
    model normalises a channel as ``suv`` (own engine, one or several channels), or when it is a foreign engine
    (nnU-Net, MONAI) with a PET channel - community PET models (autoPET baselines, LION) are trained on SUV
    images, and nnU-Net's z-score normalisation of a PET channel does not depend on the scale."""
    prep = getattr(model, "preprocessing", None)
    kinds = {getattr(prep, "normalisation", None), *(getattr(prep, "channel_normalisations", None) or ())}
    if "suv" in kinds:
        return "bw"
    if "engine" in kinds:
        channels = [str(c).upper() for c in (getattr(model, "channels", None) or [])]
        if any(c in ("PT", "SUV") or "PET" in c for c in channels):
            return "bw"
    return None
