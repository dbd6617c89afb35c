"""Intensity normalisation and augmentation that respect how NM/PET/CT/MR images are made.

Count images (planar scintigraphy, SPECT projections) carry Poisson noise whose variance equals the
mean, so the same organ looks different at 50k and 500k counts. ``counts`` normalisation applies the
Anscombe transform (variance-stabilising: 2*sqrt(x + 3/8) has unit variance whatever the count level)
and then scales by a high percentile inside the image, so the network sees comparable contrast at any
count level. ``thin_counts`` simulates a shorter acquisition by binomial thinning of every pixel's counts,
which is exactly what counting fewer photons does (the result is again Poisson with a lower mean).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .names import NORMALISATIONS


@dataclass
class Preprocessing:
    """How images are turned into network input; saved in model bundles so inference matches training."""

    normalisation: str = "counts"
    spatial_dims: int = 2
    target_size: tuple[int, ...] | None = (128, 128)  # 2D: images are resized to this (NumPy order)
    patch_size: tuple[int, ...] | None = None  # 3D: training patches and sliding-window size
    suv_max: float = 20.0
    window: tuple[float, float] = (-1000.0, 1000.0)
    percentile: float = 99.5
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_size", "patch_size", "window"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        d = dict(d)
        for key in ("target_size", "patch_size", "window"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def normalise(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Map raw image values to network input (float32)."""
    x = np.asarray(array, dtype=np.float32)
    kind = prep.normalisation
    if kind == "counts":
        x = 2.0 * np.sqrt(np.clip(x, 0, None) + 0.375)
        scale = np.percentile(x, prep.percentile)
        return x / max(float(scale), 1e-6)
    if kind == "peak":
        # planar NM read as readers do: relative to the hottest (lightly smoothed) spot, so an iso-contour at
        # 20-30 % of the maximum is one fixed input level whatever the count level
        from scipy.ndimage import gaussian_filter

        x = np.clip(x, 0, None)
        peak = float(gaussian_filter(x, float(prep.extra.get("peak_sigma_px", 2.0))).max())
        return x / max(peak, 1e-6)
    if kind == "zscore":
        return (x - x.mean()) / max(float(x.std()), 1e-6)
    if kind == "suv":
        return np.clip(x, 0, prep.suv_max) / prep.suv_max
    if kind == "window":
        lo, hi = prep.window
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    if kind == "percentile":
        lo, hi = np.percentile(x, [100 - prep.percentile, prep.percentile])
        return np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1)
    raise ValueError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMALISATIONS)}")


def thin_counts(counts: np.ndarray, keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning: the image a ``keep_fraction`` shorter acquisition would have recorded."""
    if not 0 < keep_fraction <= 1:
        raise ValueError("keep_fraction must be in (0, 1]")
    n = np.clip(np.rint(counts), 0, None).astype(np.int64)
    return rng.binomial(n, keep_fraction).astype(np.float32)


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prep: Preprocessing,
            count_reduction: tuple[float, float] | None = (0.25, 1.0), flip_axes: tuple[int, ...] = (-1,)) -> tuple[np.ndarray, np.ndarray]:
    """Random augmentation of one (raw) image/label pair: count reduction for count images, flips."""
    if prep.normalisation == "counts" and count_reduction is not None:
        image = thin_counts(image, float(rng.uniform(*count_reduction)), rng)
    for axis in flip_axes:
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
