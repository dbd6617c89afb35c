"""Inference: whole-image 2D prediction or streamed sliding-window 3D, model ensembles, test-time flips, post-processing.

3D sliding window (:func:`sliding_window_probabilities`): windows are cut from the (channel-first) input one batch at a
time (``SlidingWindow.batch``, never all at once), each batch's logits are weighted by a Gaussian importance map and
added into one float32 accumulator of the output's size, with a weight-sum map beside it; the softmax is taken slab by
slab in place. So memory beyond the input is the output (classes x voxels x 4 bytes), the weight map and one window
batch, whatever the volume size - a 512x512x600 PET/CT fits a few GiB on a CPU. Window positions and the importance map
are MONAI's (``dense_patch_slices``, ``compute_importance_map``), so one model gives what
``monai.inferers.sliding_window_inference`` gives. Several models (k-fold ensembles, ``Bundle.models``) and test-time
flips are combined by averaging their softmax probabilities. When every input channel's normalisation is pointwise (SUV
for PET, a window for CT) the windows are normalised as they are cut from the raw image, so not even a float32 copy of
the input is made.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..io.image import Image, Mask
from .preprocess import Preprocessing, normalise

log = logging.getLogger(__name__)

_SLAB_VOXELS = 1 << 22  # voxels per slab when normalising/arg-maxing the accumulator in place (bounded temporaries)


@dataclass(frozen=True)
class SlidingWindow:
    """3D sliding-window settings: ``overlap`` of neighbouring windows (fraction of the window, 0 <= overlap < 1),
    ``batch`` windows per forward pass, ``mode`` of blending ("gaussian": centre-weighted, "constant": plain mean)."""

    overlap: float = 0.25
    batch: int = 2
    mode: str = "gaussian"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"sliding-window overlap must be in [0, 1), got {self.overlap}")
        if int(self.batch) < 1 or int(self.batch) != self.batch:
            raise ValueError(f"sliding-window batch must be a whole number >= 1, got {self.batch}")
        if self.mode not in ("gaussian", "constant"):
            raise ValueError(f"sliding-window mode must be gaussian or constant, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_WINDOW = SlidingWindow()


def grouped_softmax(logits: torch.Tensor, n_heads: int = 1) -> torch.Tensor:
    """Softmax over the classes of each head: logits (B, heads * C, ...) -> probabilities of the same shape."""
    if n_heads == 1:
        return torch.softmax(logits, 1)
    b, kc = logits.shape[:2]
    grouped = logits.reshape(b, n_heads, kc // n_heads, *logits.shape[2:])
    return torch.softmax(grouped, 2).reshape(logits.shape)


def _model_list(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """One model or an ensemble, as a non-empty list."""
    models = [model] if isinstance(model, nn.Module) else list(model)
    if not models:
        raise ValueError("no model to predict with")
    return models


def bundle_models(bundle) -> list[nn.Module]:
    """The networks of an own-engine bundle: every fold of a k-fold ensemble (``Bundle.models``), else its one model."""
    models = getattr(bundle, "models", None)
    return list(models) if models else [bundle.model]


def network_input(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Channel-first float32 network input (C, *spatial): a plain spatial array is one channel; several channels are
    normalised one by one (each with its own kind, ``prep.channel_preprocessing(c)``) into one preallocated array."""
    arr = np.asarray(array)
    if arr.ndim == prep.spatial_dims:
        return normalise(arr, prep)[None]
    expected = getattr(prep, "n_channels", arr.shape[0])
    if arr.ndim != prep.spatial_dims + 1 or (arr.shape[0] != expected and expected > 1):
        raise ValueError(f"the model takes {expected} channel(s) before {prep.spatial_dims} spatial axes; got an image of shape {arr.shape}")
    out = np.empty(arr.shape, dtype=np.float32)
    per_channel = getattr(prep, "channel_preprocessing", None)
    for c in range(arr.shape[0]):
        out[c] = normalise(arr[c], per_channel(c) if per_channel else prep)
    return out


_POINTWISE = ("suv", "window")  # normalisations without image-wide statistics: a window normalised alone is the same


def _channel_preps(prep: Preprocessing, n: int) -> list[Preprocessing]:
    per_channel = getattr(prep, "channel_preprocessing", None)
    return [per_channel(c) if per_channel else prep for c in range(n)]


def window_normaliser(array: np.ndarray, prep: Preprocessing, roi: Sequence[int]):
    """``(raw channel-first view, per-window normaliser)`` when every channel's normalisation is pointwise (SUV, CT
    window) and no padding is needed: windows are then normalised as they are cut - exactly the values of normalising
    the whole image first - and the image-sized float32 copy is never made. ``None`` otherwise."""
    arr = np.asarray(array)
    x = arr[None] if arr.ndim == prep.spatial_dims else arr
    if x.ndim != prep.spatial_dims + 1 or any(s < int(r) for s, r in zip(x.shape[1:], roi)):
        return None
    preps = _channel_preps(prep, x.shape[0])
    if x.shape[0] != getattr(prep, "n_channels", x.shape[0]) and getattr(prep, "n_channels", 1) > 1:
        return None  # network_input raises the clear error
    if any(p.normalisation not in _POINTWISE for p in preps):
        return None

    def apply(windows: np.ndarray) -> np.ndarray:
        out = np.empty(windows.shape, dtype=np.float32)
        for c, p in enumerate(preps):
            out[:, c] = normalise(windows[:, c], p)
        return out

    return x, apply


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Window positions covering ``shape`` (each dimension >= ``roi``): MONAI's scan (step ``int(roi * (1 - overlap))``,
    the last window flush with the far edge), so results match ``monai.inferers.sliding_window_inference``."""
    from monai.data.utils import dense_patch_slices

    interval = [int(r) if int(r) == int(s) else max(int(r * (1 - overlap)), 1) for s, r in zip(shape, roi)]
    return list(dense_patch_slices(tuple(int(s) for s in shape), tuple(int(r) for r in roi), interval))


def importance_map(roi: Sequence[int], mode: str = "gaussian") -> np.ndarray:
    """Weight of each window voxel when windows are blended (MONAI's map: Gaussian, sigma 1/8 of the window)."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(r) for r in roi), mode=mode, sigma_scale=0.125, device="cpu",
                                  dtype=torch.float32).numpy()


def _pad_to_window(x: np.ndarray, roi: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad spatial dimensions smaller than the window (centred, as MONAI does); returns the crop that undoes it."""
    before = [max(int(r) - s, 0) // 2 for s, r in zip(x.shape[1:], roi)]
    after = [max(int(r) - s, 0) - b for s, r, b in zip(x.shape[1:], roi, before)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, x.shape[1:]))
    if not any(before) and not any(after):
        return x, crop
    return np.pad(x, [(0, 0)] + list(zip(before, after))), crop


def _accumulate(model: nn.Module, x: np.ndarray, slices: Sequence[tuple[slice, ...]], weight: np.ndarray, batch: int,
                device: torch.device, acc: np.ndarray, stats: dict[str, int] | None, transform=None) -> None:
    """Add every window's weighted logits into ``acc`` (n_out, *spatial); windows cut and run ``batch`` at a time
    (``transform``: the per-window normalisation when ``x`` is the raw image)."""
    w = torch.from_numpy(weight)
    for start in range(0, len(slices), batch):
        group = slices[start:start + batch]
        cut = np.stack([x[(slice(None), *s)] for s in group])
        windows = torch.from_numpy(transform(cut) if transform is not None else np.asarray(cut, dtype=np.float32))
        out = model(windows.to(device))
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution output comes first
            out = out[0]
        logits = out.float().cpu() * w
        if stats is not None:
            stats["windows"] = stats.get("windows", 0) + len(group)
            stats["max_batch"] = max(stats.get("max_batch", 0), len(group))
            stats["forward_passes"] = stats.get("forward_passes", 0) + 1
        for s, window_logits in zip(group, logits.numpy()):
            acc[(slice(None), *s)] += window_logits


def _slabs(n: int, voxels_per_index: int) -> list[slice]:
    """Slices along the first spatial axis holding about ``_SLAB_VOXELS`` voxels each."""
    step = max(1, _SLAB_VOXELS // max(voxels_per_index, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _softmax_in_place(acc: np.ndarray, weight_sum: np.ndarray, n_heads: int) -> None:
    """acc (n_out, *spatial) weighted logit sums -> probabilities, slab by slab (temporaries of one slab only)."""
    plane = int(np.prod(acc.shape[2:], dtype=np.int64))
    for sl in _slabs(acc.shape[1], plane * acc.shape[0]):
        block = acc[:, sl]
        block /= weight_sum[sl]
        block[...] = grouped_softmax(torch.from_numpy(np.ascontiguousarray(block))[None], n_heads)[0].numpy()


@torch.no_grad()
def sliding_window_probabilities(model: nn.Module | Sequence[nn.Module], x: np.ndarray, roi: Sequence[int],
                                 n_out: int, device: torch.device | str = "cpu", window: SlidingWindow = DEFAULT_WINDOW,
                                 n_heads: int = 1, flips: Sequence[int] = (), stats: dict[str, int] | None = None,
                                 transform=None) -> np.ndarray:
    """Softmax probabilities (n_out, *spatial) float32 of a channel-first input ``x`` (C, *spatial), streamed.

    Each model and each test-time flip (spatial axis) is one pass: its windows' Gaussian-weighted logits are summed
    into one accumulator, divided by the weight sum and turned into probabilities in place; passes are averaged.
    Peak memory beyond ``x``: one accumulator (two with several passes), the weight-sum map and one window batch.
    ``stats`` (optional dict) counts windows, forward passes and the largest batch. ``transform``: normalise each window
    batch as it is cut (``x`` is then the raw image, every dimension at least the window; :func:`window_normaliser`).
    """
    models = _model_list(model)
    device = torch.device(device)
    nd = x.ndim - 1
    xp, crop = (x, tuple(slice(None) for _ in x.shape[1:])) if transform is not None else \
        _pad_to_window(np.asarray(x, dtype=np.float32), roi)
    shape = xp.shape[1:]
    slices = window_slices(shape, roi, window.overlap)
    weight = importance_map(roi, window.mode)
    weight_sum = np.zeros(shape, dtype=np.float32)
    for s in slices:
        weight_sum[s] += weight
    passes = [(m, axis) for m in models for axis in (None, *flips)]
    total: np.ndarray | None = None
    acc: np.ndarray | None = None
    for i, (m, axis) in enumerate(passes):
        if i <= 1:  # the first pass's result becomes the total; later passes share a second accumulator
            acc = np.zeros((n_out, *shape), dtype=np.float32)
        else:
            acc[...] = 0.0
        if axis is None:
            _accumulate(m, xp, slices, weight, int(window.batch), device, acc, stats, transform)
            _softmax_in_place(acc, weight_sum, n_heads)
        else:  # the flipped image's windows, accumulated straight into the unflipped frame (no flipped copy)
            dim = axis % nd
            _accumulate(m, np.flip(xp, 1 + dim), slices, weight, int(window.batch), device, np.flip(acc, 1 + dim), stats,
                        transform)
            _softmax_in_place(acc, np.flip(weight_sum, dim), n_heads)
        if total is None:
            total = acc
        else:
            total += acc
    assert total is not None
    if len(passes) > 1:
        total /= len(passes)
    if total.shape[1:] != x.shape[1:]:
        total = np.ascontiguousarray(total[(slice(None), *crop)])
    return total


@torch.no_grad()
def _probabilities_2d(models: list[nn.Module], x: np.ndarray, prep: Preprocessing, device: torch.device,
                      flips: Sequence[int], n_heads: int) -> np.ndarray:
    """Whole-image 2D probabilities at the native grid, averaged over models and flips."""
    t = torch.from_numpy(x)[None].to(device)
    native = tuple(x.shape[1:])

    def run(model: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        small = nn.functional.interpolate(inp, size=tuple(prep.target_size), mode="bilinear", align_corners=False) \
            if tuple(inp.shape[2:]) != tuple(prep.target_size) else inp
        logits = model(small)
        if tuple(logits.shape[2:]) != native:
            logits = nn.functional.interpolate(logits, size=native, mode="bilinear", align_corners=False)
        return grouped_softmax(logits, n_heads)

    probs = None
    for model in models:
        p = run(model, t)
        for axis in flips:
            dim = 2 + (axis % 2)
            p = p + torch.flip(run(model, torch.flip(t, (dim,))), (dim,))
        probs = p if probs is None else probs + p
    assert probs is not None
    probs = probs / (len(models) * (1 + len(flips)))
    return probs[0].cpu().numpy()


def predict_probabilities(model: nn.Module | Sequence[nn.Module], array: np.ndarray, prep: Preprocessing,
                          device: torch.device | str, n_classes: int, flips: Sequence[int] = (), n_heads: int = 1,
                          window: SlidingWindow | None = None, stats: dict[str, int] | None = None) -> np.ndarray:
    """Class probabilities (heads * C, *spatial) at the image's native grid. ``flips``: spatial axes for test-time flips.

    ``model``: one network or an ensemble (softmax averaged). ``array``: spatial, or channel-first for several input
    channels. A multi-head network (one head per reader) gives each head's C probabilities one after the other.
    ``window``: 3D sliding-window settings (default overlap 0.25, batch 2).
    """
    models = _model_list(model)
    device = torch.device(device)
    if prep.spatial_dims == 2:
        return _probabilities_2d(models, network_input(array, prep), prep, device, flips, n_heads)
    roi = tuple(prep.patch_size)
    lazy = window_normaliser(array, prep, roi)
    x, transform = lazy if lazy is not None else (network_input(array, prep), None)
    return sliding_window_probabilities(models, x, roi, n_classes * n_heads, device, window or DEFAULT_WINDOW, n_heads, flips,
                                        stats, transform)


def labels_from_probabilities(probs: np.ndarray, n_heads: int, n_classes: int) -> np.ndarray:
    """Arg-max label map per head (heads, *spatial) uint8, slab by slab (no full-size int64 temporary)."""
    spatial = probs.shape[1:]
    out = np.empty((n_heads, *spatial), dtype=np.uint8)
    plane = int(np.prod(spatial[1:], dtype=np.int64)) if len(spatial) > 1 else 1
    for h in range(n_heads):
        head = probs[h * n_classes:(h + 1) * n_classes]
        for sl in _slabs(spatial[0], plane * n_classes):
            out[h, sl] = head[:, sl].argmax(0)
    return out


def predict_array(model: nn.Module | Sequence[nn.Module], array: np.ndarray, prep: Preprocessing, device: torch.device | str,
                  n_classes: int, flips: Sequence[int] = (), n_heads: int = 1, head: int | None = 0,
                  window: SlidingWindow | None = None) -> np.ndarray:
    """Label map of one head (``head`` index), or of every head stacked as (heads, *spatial) when ``head`` is None.

    ``model``: one network or an ensemble (their softmax averaged)."""
    models = _model_list(model)
    training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        probs = predict_probabilities(models, array, prep, device, n_classes, flips, n_heads, window)
    finally:
        for m, was in zip(models, training):
            m.train(was)
    per_head = labels_from_probabilities(probs, n_heads, n_classes)
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


def window_settings(bundle, window: SlidingWindow | None = None) -> dict[str, Any]:
    """The sliding-window settings a prediction with ``bundle`` uses (for provenance), applying ``window`` to a foreign
    engine where it has an equivalent: nnU-Net's ``tile_step_size`` = 1 - overlap (it runs one tile at a time, so no
    window batch); a MONAI bundle's sliding-window inferer takes overlap and ``sw_batch_size``. ``window`` None keeps
    each engine's own default."""
    predictor = getattr(bundle, "predictor", None)
    if predictor is not None and hasattr(predictor, "tile_step_size"):  # nnU-Net
        if window is not None:
            predictor.tile_step_size = max(1.0 - float(window.overlap), 1e-3)
        step = float(predictor.tile_step_size)
        return {"engine": "nnunet", "tile_step_size": step, "overlap": round(1.0 - step, 6), "batch": None,
                "mode": "gaussian" if getattr(predictor, "use_gaussian", True) else "constant"}
    inferer = getattr(bundle, "inferer", None)
    if inferer is not None and getattr(bundle, "predict_labels", None) is not None:  # MONAI bundle
        if not hasattr(inferer, "overlap"):
            return {"engine": "monai", "inferer": type(inferer).__name__}
        if window is not None:
            inferer.overlap = float(window.overlap)
            inferer.sw_batch_size = int(window.batch)
        return {"engine": "monai", "inferer": type(inferer).__name__, "overlap": float(inferer.overlap),
                "batch": int(getattr(inferer, "sw_batch_size", 1)), "mode": str(getattr(inferer, "mode", ""))}
    if getattr(bundle, "predict_labels", None) is not None:
        return {"engine": "foreign"}
    prep = getattr(bundle, "preprocessing", None)
    if getattr(prep, "spatial_dims", 3) == 2:
        return {"engine": "nmkit", "whole_image": True, "models": len(bundle_models(bundle))}
    return {"engine": "nmkit", **(window or DEFAULT_WINDOW).to_dict(), "window_voxels": list(prep.patch_size or []),
            "models": len(bundle_models(bundle))}


def _own_labels(bundle, image: Image, flips: Sequence[int], window: SlidingWindow | None) -> np.ndarray:
    """(heads, *spatial) labels of an own-engine bundle on the image's grid; at the bundle's target spacing when it has
    one (image resampled to it, probabilities resampled back before the arg-max, as training saw the data)."""
    models = bundle_models(bundle)
    device = next(models[0].parameters()).device
    prep = bundle.preprocessing
    target = getattr(prep, "target_spacing_mm", None)
    if not target or prep.spatial_dims != 3 or np.allclose(image.spacing, target, rtol=1e-3):
        return predict_array(models, image.array, prep, device, bundle.n_classes, flips, n_heads=bundle.n_heads, head=None,
                             window=window)
    from .preprocess import resample_array, resample_to_spacing

    on_grid = resample_to_spacing(image, tuple(target), getattr(prep, "interpolation", "linear"))
    for m in models:
        m.eval()
    probs = predict_probabilities(models, on_grid.array, prep, device, bundle.n_classes, flips, bundle.n_heads, window)
    probs = resample_array(probs, on_grid, image, order=1)
    return labels_from_probabilities(np.asarray(probs, dtype=np.float32), bundle.n_heads, bundle.n_classes)


def _side_safe_flips(bundle, flips: tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    """``flips`` without the left-right (last) axis when the bundle's labels name a body side: flipping a chest
    radiograph makes the right lung look like a left one to a model that learnt the sides."""
    from .names import side_safe_axes

    kept, sided = side_safe_axes(bundle.labels.values(), flips, spatial_dims)
    if sided:
        log.warning("test-time left-right flip skipped: the labels %s name a body side", ", ".join(sided))
    return kept


def predict_heads(bundle, image: Image, heads: Sequence[str | None] | None = None, flips: Sequence[int] | None = None,
                  keep_largest: bool | None = None, fill: bool | None = None,
                  window: SlidingWindow | None = None) -> dict[str | None, Mask]:
    """Label maps of several output heads from ONE forward pass per test-time flip; ``{head: Mask}``.

    A multi-head network computes every head in the same pass, so asking for all readers' delineations costs as much
    as asking for one. ``heads``: head names (``None`` = the bundle's default head; a single-head bundle has only
    ``None``); default: the default head. ``flips``, ``keep_largest`` and ``fill`` (hole filling) default to the
    bundle's recommended post-processing. ``window``: 3D sliding-window settings (own engine; passed on to nnU-Net and
    MONAI bundles where they have an equivalent); None = each engine's default. A k-fold bundle averages its models'
    softmax. Each mask is on the image's own grid and carries the bundle's label names.
    """
    from .data import squeeze_planar

    defaults = bundle_postprocessing(bundle)
    asked_flips = flips
    flips = tuple(defaults.get("flips", ())) if flips is None else tuple(flips)
    image2 = squeeze_planar(image)
    flips = _side_safe_flips(bundle, flips, image2.ndim_spatial)
    if asked_flips is not None:
        asked_flips = flips
    keep_largest = bool(defaults.get("keep_largest", False)) if keep_largest is None else keep_largest
    fill = bool(defaults.get("fill_holes", False)) if fill is None else fill
    names = list(dict.fromkeys(bundle.resolve_head(h) for h in (heads if heads else [None])))  # unknown head: error first
    settings = window_settings(bundle, window)
    engine_predict = getattr(bundle, "predict_labels", None)  # nnU-Net / MONAI bundle (nmkit.segment.engines)
    if engine_predict is not None:
        every_head = engine_predict(image2, flips=asked_flips)[None]  # flips None: the engine's own default
    else:
        every_head = _own_labels(bundle, image2, flips, window)
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
                          "sliding_window": settings,
                          "SeriesInstanceUID": image.meta.get("SeriesInstanceUID"), "source_files": image.meta.get("source_files")})
        masks[name] = mask
    return masks


def predict_image(bundle, image: Image, flips: Sequence[int] | None = None, keep_largest: bool | None = None,
                  fill: bool | None = None, head: str | None = None, window: SlidingWindow | None = None) -> Mask:
    """Segment one image with a loaded bundle; returns a label map on the image's own grid.

    ``flips``, ``keep_largest`` and ``fill`` (hole filling) default to the bundle's recommended post-processing.
    ``head``: for a bundle with one output head per reader, whose delineation to produce (default: the bundle's
    ``default_head``, usually the readers' consensus). For several heads of one image use :func:`predict_heads`
    (one forward pass for all of them). ``window``: 3D sliding-window settings.
    """
    masks = predict_heads(bundle, image, [head], flips=flips, keep_largest=keep_largest, fill=fill, window=window)
    return next(iter(masks.values()))
