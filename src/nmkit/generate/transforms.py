"""Invertible intensity transforms between images and diffusion-model space, and count-aware resampling.

Why: a diffusion model works on values in about [-1, 1]; nuclear-medicine count images carry Poisson noise
whose variance equals the mean. Count images are mapped exactly as segmentation does
(``nmkit.segment.preprocess.normalise`` with ``counts``: Anscombe ``2*sqrt(x + 3/8)``, unit-variance noise at any
count level, divided by the image's own high percentile) and then linearly to [-1, 1]. Going back, the per-image
scale is unknown for a synthetic image, so the median training scale is used and the count level is set
afterwards by ``poisson_resample`` (a synthetic acquisition at a chosen number of counts).

The inverse Anscombe used is the closed-form approximation of the *exact unbiased* inverse
(Makitalo & Foi, IEEE TIP 2011), which - unlike the algebraic inverse ``(y/2)^2 - 3/8`` - has no bias at low counts.
"""

from __future__ import annotations

import math

import numpy as np

from ..segment.preprocess import Preprocessing, normalise

NORMALISATIONS = ("counts", "percentile")
ANSCOMBE_ZERO = 2.0 * math.sqrt(0.375)  # Anscombe value of zero counts


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Variance-stabilising Anscombe transform of Poisson counts."""
    return 2.0 * np.sqrt(np.clip(np.asarray(counts, dtype=np.float64), 0, None) + 0.375)


def inverse_anscombe(values: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse Anscombe transform (never negative)."""
    d = np.maximum(np.asarray(values, dtype=np.float64), ANSCOMBE_ZERO)
    s = math.sqrt(1.5)
    out = 0.25 * d**2 + 0.25 * s / d - 1.375 / d**2 + 0.625 * s / d**3 - 0.125
    return np.clip(out, 0.0, None)


def to_model_space(array: np.ndarray, normalisation: str = "counts", percentile: float = 99.5) -> tuple[np.ndarray, float]:
    """Map one raw image to model space [-1, 1]; returns the array and the image's scale (needed to go back).

    ``counts``: Anscombe / high percentile (as segmentation's ``normalise``); ``percentile``: robust min-max to [0, 1].
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; choose one of {', '.join(NORMALISATIONS)}")
    x = np.asarray(array, dtype=np.float32)
    if normalisation == "counts":
        scale = float(max(np.percentile(anscombe(x), percentile), 1e-6))
        unit = normalise(x, Preprocessing(normalisation="counts", percentile=percentile))
    else:
        lo, hi = np.percentile(x, [100 - percentile, percentile])
        scale = float(max(hi - lo, 1e-6))
        unit = normalise(x, Preprocessing(normalisation="percentile", percentile=percentile))
    return (2.0 * unit - 1.0).astype(np.float32), scale


def from_model_space(values: np.ndarray, normalisation: str, scale: float) -> np.ndarray:
    """Back from model space: counts (expected-count estimate via inverse Anscombe) or [0, scale] intensities."""
    unit = (np.asarray(values, dtype=np.float64) + 1.0) / 2.0
    if normalisation == "counts":
        return inverse_anscombe(np.clip(unit, 0, None) * scale)
    if normalisation == "percentile":
        return np.clip(unit, 0, 1) * scale
    raise ValueError(f"unknown normalisation {normalisation!r}")


def poisson_resample(counts_estimate: np.ndarray, total_counts: float, rng: np.random.Generator | int,
                     smooth_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic acquisition with ``total_counts`` from a (noisy) count image: returns (counts, expected).

    A sample of the diffusion model already looks noisy; drawing Poisson counts from it directly would add a
    second layer of noise (variance above the mean). The rate map is therefore the sample smoothed by a small
    Gaussian (``smooth_px`` pixels, 0 = none), rescaled to sum to ``total_counts``, and each pixel is an
    independent Poisson draw - so the result has exactly Poisson statistics around ``expected``.
    """
    from scipy.ndimage import gaussian_filter

    if not (total_counts > 0 and math.isfinite(total_counts)):
        raise ValueError(f"total_counts must be positive, got {total_counts}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    rate = np.clip(np.asarray(counts_estimate, dtype=np.float64), 0, None)
    if smooth_px > 0:
        rate = gaussian_filter(rate, smooth_px, mode="nearest")
    total = rate.sum()
    if total <= 0:
        raise ValueError("the image holds no counts to resample")
    expected = rate * (total_counts / total)
    return rng.poisson(expected).astype(np.float64), expected


def dispersion_index(counts: np.ndarray, expected: np.ndarray, min_expected: float = 5.0, window: int = 5,
                     flatness: float = 0.05) -> float:
    """Variance / mean of counts in flat regions (windows where the expected rate varies < ``flatness``).

    About 1 for Poisson data, above 1 for over-dispersed (e.g. doubly noisy) images.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    c = sliding_window_view(np.asarray(counts, float), (window, window))[::window, ::window].reshape(-1, window * window)
    e = sliding_window_view(np.asarray(expected, float), (window, window))[::window, ::window].reshape(-1, window * window)
    mean_e = e.mean(axis=1)
    flat = (mean_e >= min_expected) & ((e.max(axis=1) - e.min(axis=1)) <= flatness * mean_e)
    if not flat.any():
        raise ValueError("no flat region with enough counts to measure the dispersion")
    return float(np.mean(c[flat].var(axis=1, ddof=1) / c[flat].mean(axis=1)))
