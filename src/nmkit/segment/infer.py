"""Inference: whole-image 2D prediction or sliding-window 3D, optional test-time flips, post-processing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..io.image import Image, Mask
from .preprocess import Preprocessing, normalise


def grouped_softmax(logits: torch.Tensor, n_heads: int = 1) -> torch.Tensor:
    """Softmax over the classes of each head: logits (B, heads * C, ...) -> probabilities of the same shape."""
    if n_heads == 1:
        return torch.softmax(logits, 1)
    b, kc = logits.shape[:2]
    grouped = logits.reshape(b, n_heads, kc // n_heads, *logits.shape[2:])
    return torch.softmax(grouped, 2).reshape(logits.shape)


@torch.no_grad()
def predict_probabilities(model: nn.Module, array: np.ndarray, prep: Preprocessing, device: torch.device | str,
                          n_classes: int, flips: Sequence[int] = (), n_heads: int = 1) -> np.ndarray:
    """Class probabilities (heads * C, *spatial) at the image's native grid. ``flips``: spatial axes for test-time flips.

    A multi-head network (one head per reader) gives each head's C probabilities one after the other.
    """
    device = torch.device(device)
    x = torch.from_numpy(normalise(array, prep))[None, None].to(device)
    native = tuple(array.shape)

    def run(t: torch.Tensor) -> torch.Tensor:
        if prep.spatial_dims == 2:
            small = nn.functional.interpolate(t, size=tuple(prep.target_size), mode="bilinear", align_corners=False) \
                if tuple(t.shape[2:]) != tuple(prep.target_size) else t
            logits = model(small)
            if tuple(logits.shape[2:]) != native:
                logits = nn.functional.interpolate(logits, size=native, mode="bilinear", align_corners=False)
            return grouped_softmax(logits, n_heads)
        from monai.inferers import sliding_window_inference

        logits = sliding_window_inference(t, roi_size=tuple(prep.patch_size), sw_batch_size=2, predictor=model, overlap=0.25, mode="gaussian")
        return grouped_softmax(logits, n_heads)

    probs = run(x)
    for axis in flips:
        dim = 2 + (axis % prep.spatial_dims)
        probs = probs + torch.flip(run(torch.flip(x, (dim,))), (dim,))
    probs = probs / (1 + len(flips))
    return probs[0].cpu().numpy()


def predict_array(model: nn.Module, array: np.ndarray, prep: Preprocessing, device: torch.device | str, n_classes: int,
                  flips: Sequence[int] = (), n_heads: int = 1, head: int | None = 0) -> np.ndarray:
    """Label map of one head (``head`` index), or of every head stacked as (heads, *spatial) when ``head`` is None."""
    was_training = model.training
    model.eval()
    probs = predict_probabilities(model, array, prep, device, n_classes, flips, n_heads)
    if was_training:
        model.train()
    per_head = probs.reshape(n_heads, n_classes, *probs.shape[1:]).argmax(1).astype(np.uint8)
    return per_head if head is None else per_head[head]


def largest_component(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Keep only the largest connected component of each label value."""
    out = labels.copy()
    for value in values:
        comp, n = ndimage.label(labels == value)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != int(sizes.argmax())) & (labels == value)] = 0
    return out


def fill_holes(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Fill enclosed holes of each label value (readers outline an organ, a cold nodule inside is still organ)."""
    out = labels.copy()
    for value in values:
        filled = ndimage.binary_fill_holes(labels == value)
        out[filled & (labels == 0)] = value
    return out


def bundle_postprocessing(bundle) -> dict:
    """Post-processing the bundle's author recommends (``bundle.json`` -> ``postprocessing``); empty when none."""
    description = getattr(bundle, "description", None) or {}
    return dict(description.get("postprocessing") or {})


def predict_heads(bundle, image: Image, heads: Sequence[str | None] | None = None, flips: Sequence[int] | None = None,
                  keep_largest: bool | None = None, fill: bool | None = None) -> dict[str | None, Mask]:
    """Label maps of several output heads from ONE forward pass per test-time flip; ``{head: Mask}``.

    A multi-head network computes every head in the same pass, so asking for all readers' delineations costs as much
    as asking for one. ``heads``: head names (``None`` = the bundle's default head; a single-head bundle has only
    ``None``); default: the default head. ``flips``, ``keep_largest`` and ``fill`` (hole filling) default to the
    bundle's recommended post-processing. Each mask is on the image's own grid and carries the bundle's label names.
    """
    from .data import squeeze_planar

    defaults = bundle_postprocessing(bundle)
    asked_flips = flips
    flips = tuple(defaults.get("flips", ())) if flips is None else tuple(flips)
    keep_largest = bool(defaults.get("keep_largest", False)) if keep_largest is None else keep_largest
    fill = bool(defaults.get("fill_holes", False)) if fill is None else fill
    names = list(dict.fromkeys(bundle.resolve_head(h) for h in (heads if heads else [None])))  # unknown head: error first
    image2 = squeeze_planar(image)
    engine_predict = getattr(bundle, "predict_labels", None)  # nnU-Net / MONAI bundle (nmkit.segment.engines)
    if engine_predict is not None:
        every_head = engine_predict(image2, flips=asked_flips)[None]  # flips None: the engine's own default
    else:
        device = next(bundle.model.parameters()).device
        every_head = predict_array(bundle.model, image2.array, bundle.preprocessing, device, bundle.n_classes, flips,
                                   n_heads=bundle.n_heads, head=None)
    masks: dict[str | None, Mask] = {}
    for name in names:
        labels = every_head[bundle.head_index(name)]
        if keep_largest:
            labels = largest_component(labels, list(bundle.labels))
        if fill:
            labels = fill_holes(labels, list(bundle.labels))
        if image2 is not image:  # back onto the caller's (one-slice 3D) grid
            labels = labels[None]
        mask = Mask.like(image, labels, labels=bundle.labels)
        if getattr(bundle, "identity", None):
            mask.meta["model_identity"] = bundle.identity
        mask.meta.update({"model_name": bundle.name, "model_version": bundle.version, "head": name,
                          "postprocessing": {"flips": list(flips), "keep_largest": keep_largest, "fill_holes": fill},
                          "SeriesInstanceUID": image.meta.get("SeriesInstanceUID"), "source_files": image.meta.get("source_files")})
        masks[name] = mask
    return masks


def predict_image(bundle, image: Image, flips: Sequence[int] | None = None, keep_largest: bool | None = None,
                  fill: bool | None = None, head: str | None = None) -> Mask:
    """Segment one image with a loaded bundle; returns a label map on the image's own grid.

    ``flips``, ``keep_largest`` and ``fill`` (hole filling) default to the bundle's recommended post-processing.
    ``head``: for a bundle with one output head per reader, whose delineation to produce (default: the bundle's
    ``default_head``, usually the readers' consensus). For several heads of one image use :func:`predict_heads`
    (one forward pass for all of them).
    """
    masks = predict_heads(bundle, image, [head], flips=flips, keep_largest=keep_largest, fill=fill)
    return next(iter(masks.values()))
