"""MONAI bundles (``configs/inference.json|yaml``, ``configs/metadata.json``, ``models/model.pt``) run offline.

nmkit builds the bundle's own components from its config with ``monai.bundle.ConfigParser`` (``network_def``,
``preprocessing``, ``inferer``, ``postprocessing``; file savers left out), loads ``models/model.pt`` with
``torch.load(weights_only=True)``, and feeds each image as a NIfTI written from nmkit's image, so the bundle's loader,
orientation and spacing transforms see what they would see from ``monai.bundle run``. The prediction comes back on the
image's own grid (through the affine, nearest neighbour when the bundle does not invert its resampling). Label names
come from ``metadata.json`` (``network_data_format.outputs.pred.channel_def``). Nothing is ever downloaded: a missing
file is an ``InputError`` naming it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...devices import device_name
from ...errors import InputError
from . import EngineModel, sha256

log = logging.getLogger(__name__)

_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
_SAVERS = ("SaveImage", "SaveImaged")


def _config_file(path: Path) -> Path:
    for name in _CONFIGS:
        if (path / "configs" / name).is_file():
            return path / "configs" / name
    raise InputError(path, "MONAI bundle without configs/inference.json (or .yaml): expected configs/inference.json, "
                           "configs/metadata.json and models/model.pt")


def _label_names(meta: dict[str, Any]) -> dict[int, str]:
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    channel_def = pred.get("channel_def") or {}
    names = {int(k): str(v) for k, v in channel_def.items() if str(k).isdigit() and int(k) != 0}
    return names or {1: "label_1"}


def _drop_savers(transform):
    """The bundle's postprocessing without its file writers (nmkit writes the outputs itself)."""
    from monai.transforms import Compose

    if isinstance(transform, Compose):
        kept = [t for t in transform.transforms if type(t).__name__ not in _SAVERS]
        return Compose(kept, map_items=transform.map_items, unpack_items=transform.unpack_items)
    return transform


class MonaiBundleModel(EngineModel):
    """A MONAI bundle's network, transforms and inferer, ready for ``predict_labels``."""

    network: Any = None
    preprocess: Any = None
    inferer: Any = None
    postprocess: Any = None
    device: Any = None
    image_key: str = "image"

    def predict_labels(self, image, flips: Sequence[int] | None = None) -> np.ndarray:
        """Label map on the image's grid (the bundle's own pre-/post-processing; ``flips`` is not used)."""
        import SimpleITK as sitk
        import torch

        if image.array.ndim != image.ndim_spatial:
            raise InputError(None, f"MONAI bundle {self.name} takes one image channel; the input has {image.array.shape[0]}")
        with tempfile.TemporaryDirectory(prefix="nmkit-monai-") as tmp:
            src = Path(tmp) / "image.nii.gz"
            sitk.WriteImage(image.to_sitk(), str(src))
            data = self.preprocess({self.image_key: str(src)})
            if isinstance(data, list):
                data = data[0]
            with torch.no_grad():
                pred = self.inferer(data[self.image_key][None].to(self.device), self.network)
            data["pred"] = pred[0].cpu() if isinstance(pred, torch.Tensor) else pred
            out = self.postprocess(data) if self.postprocess is not None else data
            if isinstance(out, list):
                out = out[0]
            return _on_grid(out["pred"], image)


def _on_grid(pred, image) -> np.ndarray:
    """A MONAI prediction (channel-first, RAS affine) as labels on the nmkit image's grid."""
    import SimpleITK as sitk
    import torch

    arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if arr.shape[0] > 1:  # probabilities / one-hot: take the argmax
        arr = arr.argmax(0)
    else:
        arr = arr[0]
    arr = np.rint(arr).astype(np.int32)
    affine = np.asarray(getattr(pred, "affine", np.eye(4)), dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    out = sitk.GetImageFromArray(arr.transpose(2, 1, 0).astype(np.int32))
    out.SetSpacing(spacing.tolist())
    out.SetOrigin(lps[:, 3].tolist())
    out.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    ref = image.to_sitk()
    resampled = sitk.Resample(out, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    labels = sitk.GetArrayFromImage(resampled)
    return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)


def load_monai_bundle(path: str | Path, device: str | None = None, checkpoint: str = "models/model.pt",
                      name: str | None = None) -> MonaiBundleModel:
    """Build a MONAI bundle's inference components from its config and load its weights safely."""
    import torch
    from monai.bundle import ConfigParser

    path = Path(path)
    config_file = _config_file(path)
    meta_file = path / "configs" / "metadata.json"
    weights = path / checkpoint
    if not weights.is_file():
        raise InputError(path, f"MONAI bundle without its weights: {checkpoint} missing (nmkit never downloads weights; "
                               f"copy the bundle's {checkpoint} there)")
    meta: dict[str, Any] = {}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(meta_file, f"not readable JSON ({exc})") from exc
    device = device_name(device)
    parser = ConfigParser()
    try:
        parser.read_config(str(config_file))
    except Exception as exc:
        raise InputError(config_file, f"MONAI bundle config not readable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    parser["bundle_root"] = str(path)
    parser["device"] = f"$torch.device('{device}')"
    tmp_out = tempfile.mkdtemp(prefix="nmkit-monai-out-")
    for key in ("output_dir", "dataset_dir"):
        parser[key] = tmp_out
    try:
        net_id = "network_def" if "network_def" in parser else "network"
        network = parser.get_parsed_content(net_id)
        preprocess = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        postprocess = _drop_savers(parser.get_parsed_content("postprocessing")) if "postprocessing" in parser else None
    except Exception as exc:
        raise InputError(config_file, f"MONAI bundle components cannot be built: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(weights, f"weights cannot be loaded safely (tensors and plain data only): {str(exc).splitlines()[0]}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(weights, f"weights do not fit the bundle's network_def: {str(exc).splitlines()[0]}") from exc
    network.to(device).eval()
    checksums = {str(p.relative_to(path)): sha256(p) for p in (config_file, meta_file, weights) if p.is_file()}
    bundle_name = name or str(meta.get("name") or path.name)
    version = str(meta.get("version") or "0")
    from hashlib import sha256 as _h

    identity = {"engine": "monai-bundle", "bundle": str(path), "name": bundle_name, "version": version,
                "config": str(config_file.relative_to(path)), "monai_version": meta.get("monai_version"), "sha256": checksums,
                "model_sha256": _h(json.dumps(checksums, sort_keys=True).encode()).hexdigest()}
    model = MonaiBundleModel(path=path, name=bundle_name, version=version, label_names=_label_names(meta), channels=["image"],
                             description={"engine": "monai", "postprocessing": {}, "identity": identity})
    model.network, model.preprocess, model.inferer, model.postprocess, model.device = network, preprocess, inferer, postprocess, torch.device(device)
    return model
