"""Voxel-wise feature maps: IBSI-1 first-order statistics in a sliding neighbourhood around every ROI voxel.

Why: a map of local mean / variance / skewness ... (LIFEx "texture maps") shows where in a lesion a feature comes
from, for reports and viewers. The neighbourhood is a box of ``2 r + 1`` voxels per axis, ``r = round(radius_mm /
spacing)`` (r = 0 along an axis whose spacing exceeds the radius: 2D maps on thick slices). Only voxels inside the
image count, and with ``within_roi`` only voxels inside the ROI: every statistic is that of the voxels the window
holds, as ``intensity.statistics_features`` defines it (population moments, numpy's linear percentiles).
Moments come from box sums (exact up to round-off); percentiles from the gathered windows of the ROI voxels.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..errors import InputError

MOMENT_FEATURES = ("mean", "var", "sd", "skew", "kurt", "energy", "rms", "count")
ORDER_FEATURES = ("min", "max", "range")
PERCENTILE_FEATURES = {"median": 50.0, "p10": 10.0, "p25": 25.0, "p75": 75.0, "p90": 90.0}
LOCAL_FEATURES = MOMENT_FEATURES + ORDER_FEATURES + tuple(PERCENTILE_FEATURES) + ("iqr",)
DEFAULT_FEATURES = ("mean", "sd", "skew", "kurt", "min", "max", "median")


def half_widths(radius_mm: float, spacing_xyz: tuple[float, ...]) -> tuple[int, int, int]:
    """Window half-widths in voxels, numpy order (z, y, x)."""
    if not radius_mm > 0:
        raise InputError(None, f"feature-map radius must be a positive number of mm, got {radius_mm}")
    return tuple(int(round(radius_mm / float(s))) for s in spacing_xyz[::-1])  # type: ignore[return-value]


def _box_sum(a: np.ndarray, r: tuple[int, ...]) -> np.ndarray:
    """Sum over the (2r+1) box around each voxel, zero outside the array (cumulative sums: exact for integers)."""
    out = a
    for axis, h in enumerate(r):
        if h == 0:
            continue
        pad = [(0, 0)] * out.ndim
        pad[axis] = (h + 1, h)
        c = np.cumsum(np.pad(out, pad), axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * h + 1, 2 * h + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = hi - lo
    return out


def local_feature_maps(image: np.ndarray, spacing_xyz: tuple[float, ...], radius_mm: float,
                       mask: np.ndarray | None = None, features: Iterable[str] = DEFAULT_FEATURES,
                       within_roi: bool = False) -> dict[str, np.ndarray]:
    """``{feature: float32 map}`` on the grid of ``image`` (z, y, x); NaN outside ``mask`` (everywhere computed
    when ``mask`` is None). ``within_roi``: the neighbourhood only holds ROI voxels."""
    feats = list(dict.fromkeys(features))
    unknown = [f for f in feats if f not in LOCAL_FEATURES]
    if unknown:
        raise InputError(None, f"unknown feature-map features {unknown}; known: {', '.join(LOCAL_FEATURES)}")
    img = np.asarray(image, dtype=np.float64)
    roi = np.ones(img.shape, bool) if mask is None else np.asarray(mask, bool)
    if roi.shape != img.shape:
        raise InputError(None, f"mask shape {roi.shape} differs from image shape {img.shape}")
    if not roi.any():
        raise InputError(None, "the ROI mask is empty")
    r = half_widths(radius_mm, spacing_xyz)
    # work on the ROI's bounding box plus the window
    idx = np.nonzero(roi)
    box = tuple(slice(max(0, int(i.min()) - h), min(n, int(i.max()) + h + 1)) for i, h, n in zip(idx, r, img.shape))
    sub, sub_roi = img[box], roi[box]
    # image voxels outside the crop enter no window of a ROI voxel, so the crop is exact
    member = sub_roi if within_roi else np.ones(sub.shape, bool)
    shift = float(sub[sub_roi].mean())  # moments about the ROI mean: less cancellation in the power sums
    x = np.where(member, sub - shift, 0.0)
    out: dict[str, np.ndarray] = {}
    count = _box_sum(member.astype(np.float64), r)
    with np.errstate(invalid="ignore", divide="ignore"):
        if set(feats) & set(MOMENT_FEATURES):
            s1, s2 = _box_sum(x, r) / count, _box_sum(x * x, r) / count
            m = s1
            var = s2 - m * m
            # round-off leaves ~1e-16 of the squared scale in a constant window: that is a variance of zero
            var[var <= 1e-12 * max(float(np.max(x * x)), 1e-300)] = 0.0
            maps = {"mean": m + shift, "var": var, "sd": np.sqrt(var), "count": count}
            if {"skew", "kurt"} & set(feats):
                s3 = _box_sum(x ** 3, r) / count
                c3 = s3 - 3 * m * s2 + 2 * m ** 3
                maps["skew"] = np.where(var > 0, c3 / var ** 1.5, 0.0)
                if "kurt" in feats:
                    s4 = _box_sum(x ** 4, r) / count
                    c4 = s4 - 4 * m * s3 + 6 * m * m * s2 - 3 * m ** 4
                    maps["kurt"] = np.where(var > 0, c4 / var ** 2 - 3.0, 0.0)
            if {"energy", "rms"} & set(feats):
                y = np.where(member, sub, 0.0)
                e = _box_sum(y * y, r)
                maps["energy"], maps["rms"] = e, np.sqrt(e / count)
            out.update({k: v for k, v in maps.items() if k in feats})
    if set(feats) & (set(ORDER_FEATURES) | set(PERCENTILE_FEATURES) | {"iqr"}):
        out.update(_order_maps(sub, sub_roi, member, r, feats))
    full = {}
    for name in feats:
        a = np.full(img.shape, np.nan, dtype=np.float32)
        a[box] = np.where(sub_roi, out[name], np.nan)
        full[name] = a
    return full


def _order_maps(sub: np.ndarray, sub_roi: np.ndarray, member: np.ndarray, r: tuple[int, ...],
                feats: list[str], chunk: int = 20000) -> dict[str, np.ndarray]:
    """Min / max / percentiles of the windows around ROI voxels (NaN-padded window views, gathered in chunks)."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(np.where(member, sub, np.nan), [(h, h) for h in r], constant_values=np.nan)
    views = sliding_window_view(padded, tuple(2 * h + 1 for h in r))
    where = np.nonzero(sub_roi)
    qs = {name: q for name, q in PERCENTILE_FEATURES.items() if name in feats or (name in ("p25", "p75") and "iqr" in feats)}
    res = {name: np.zeros(where[0].size) for name in list(qs) + ["min", "max"]}
    for start in range(0, where[0].size, chunk):
        sel = tuple(w[start:start + chunk] for w in where)
        win = views[sel].reshape(sel[0].size, -1)
        res["min"][start:start + chunk] = np.nanmin(win, axis=1)
        res["max"][start:start + chunk] = np.nanmax(win, axis=1)
        if qs:
            pct = np.nanpercentile(win, list(qs.values()), axis=1)
            for name, row in zip(qs, pct):
                res[name][start:start + chunk] = row
    res["range"] = res["max"] - res["min"]
    if "iqr" in feats:
        res["iqr"] = res["p75"] - res["p25"]
    out = {}
    for name in feats:
        if name in res:
            a = np.zeros(sub.shape)
            a[where] = res[name]
            out[name] = a
    return out


def feature_units(features: Iterable[str], image_unit: str) -> Mapping[str, str]:
    """Unit of each map: intensities in the image's unit, var/energy squared, shape statistics dimensionless."""
    squared = f"({image_unit})^2"
    table = {"var": squared, "energy": squared, "skew": "1", "kurt": "1", "count": "voxels"}
    return {f: table.get(f, image_unit) for f in features}
