"""Voxel-wise feature maps: IBSI-1 first-order statistics in a sliding neighbourhood around every ROI voxel.

Why: a map of local mean / variance / skewness ... (LIFEx "texture maps") shows where in a lesion a feature comes
from, for reports and viewers. The neighbourhood is a box of ``2 r + 1`` voxels per axis, ``r = floor(radius_mm /
spacing + 0.5)`` (r = 0 along an axis whose spacing exceeds the radius: 2D maps on thick slices). Only voxels inside the
image count, and with ``within_roi`` only voxels inside the ROI: every statistic is that of the voxels the window
holds, as ``intensity.statistics_features`` defines it (population moments, numpy's linear percentiles).
Moments come from box sums (exact up to round-off); percentiles from the gathered windows of the ROI voxels.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

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
    return tuple(int(math.floor(radius_mm / float(s) + 0.5)) for s in spacing_xyz[::-1])  # type: ignore[return-value]


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
                       within_roi: bool = False, discretisation: Any = None) -> dict[str, np.ndarray]:
    """``{feature: float32 map}`` on the grid of ``image`` (z, y, x); NaN outside ``mask`` (everywhere computed
    when ``mask`` is None). ``within_roi``: the neighbourhood only holds ROI voxels.

    ``cm_*`` features (``GLCM_FEATURES``) are local GLCM features of grey levels from ``discretisation`` (a
    ``config.Discretisation``; default fixed bin number 32 over the ROI's range; window voxels outside that range
    take the first / last bin); 3D with 13 directions, or in-plane (4 directions) when the window is one slice."""
    feats = list(dict.fromkeys(features))
    unknown = [f for f in feats if f not in LOCAL_FEATURES + GLCM_FEATURES]
    if unknown:
        raise InputError(None, f"unknown feature-map features {unknown}; known: "
                               f"{', '.join(LOCAL_FEATURES + GLCM_FEATURES)}")
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
    texture = [f for f in feats if f in GLCM_FEATURES]
    if texture:
        levels = grey_levels(sub, sub_roi, member, discretisation)
        out.update(local_glcm_maps(levels, r, sub_roi, texture, dims="2D" if r[0] == 0 else "3D"))
    full = {}
    for name in feats:
        a = np.full(img.shape, np.nan, dtype=np.float32)
        a[box] = np.where(sub_roi, out[name], np.nan)
        full[name] = a
    return full


def grey_levels(sub: np.ndarray, roi: np.ndarray, member: np.ndarray, discretisation: Any = None) -> np.ndarray:
    """Grey levels (>= 1) of the window members, 0 elsewhere; bins from the ROI's intensities (IBSI-1 rules)."""
    from .config import Discretisation
    from .preprocess import discretise

    disc = discretisation or Discretisation(method="FBN", n_bins=32)
    lv, ng = discretise(sub[member], disc, None, roi_values=sub[roi])
    if disc.method == "FBN":
        lv = np.clip(lv, 1, ng)
    out = np.zeros(sub.shape, dtype=np.int64)
    out[member] = np.maximum(lv, 1)
    return out


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
    table = {"var": squared, "energy": squared, "skew": "1", "kurt": "1", "count": "voxels",
             "cm_joint_avg": "grey level", "cm_diff_avg": "grey level", "cm_joint_var": "grey level^2",
             "cm_contrast": "grey level^2", "cm_auto_corr": "grey level^2", "cm_clust_tend": "grey level^2",
             "cm_inv_diff": "1", "cm_inv_diff_mom": "1", "cm_corr": "1"}
    return {f: table.get(f, image_unit) for f in features}


# ----------------------------------------------------------------------------------------------- local GLCM maps
#: local GLCM features computable from pair sums (IBSI-1 names; symmetric GLCM merged over directions, "comb")
GLCM_FEATURES = ("cm_joint_avg", "cm_joint_var", "cm_contrast", "cm_diff_avg", "cm_inv_diff", "cm_inv_diff_mom",
                 "cm_auto_corr", "cm_corr", "cm_clust_tend")
_DIRECTIONS_3D = [d for d in ((0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (0, 1, -1), (1, 0, 1), (1, 0, -1),
                              (1, 1, 0), (1, -1, 0), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1))]
_DIRECTIONS_2D = [(0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, -1)]


def _box_sum_range(a: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    """Sum of ``a`` over offsets ``lo[k] .. hi[k]`` (inclusive) around each voxel, zero outside the array."""
    out = a
    for axis, (l, h) in enumerate(zip(lo, hi)):
        if l == 0 and h == 0:
            continue
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (max(0, -l) + 1, max(0, h))
        c = np.cumsum(np.pad(out, pad), axis=axis)
        base = max(0, -l) + 1  # index in c of the element just after original index 0
        hi_idx = np.arange(n) + h + base - 1 + 1  # inclusive end -> cumsum index
        lo_idx = np.arange(n) + l + base - 1
        out = np.take(c, hi_idx, axis=axis) - np.take(c, lo_idx, axis=axis)
    return out


def local_glcm_maps(levels: np.ndarray, r: tuple[int, int, int], roi: np.ndarray, features: Iterable[str],
                    dims: str = "3D") -> dict[str, np.ndarray]:
    """Local GLCM features at each ROI voxel from the voxel pairs (distance 1) inside its window.

    ``levels``: grey levels >= 1 of the voxels that may enter a window, 0 elsewhere. A pair counts in a window when
    both voxels are in it; the symmetric co-occurrence matrices of all directions (13 in 3D, 4 in-plane in 2D) are
    merged, as IBSI's "comb" aggregation, so every feature is a mean over pairs. Returns float arrays (NaN where a
    window holds no pair)."""
    feats = list(dict.fromkeys(features))
    bad = [f for f in feats if f not in GLCM_FEATURES]
    if bad:
        raise InputError(None, f"unknown local GLCM features {bad}; known: {', '.join(GLCM_FEATURES)}")
    lv = np.asarray(levels, dtype=np.float64)
    if dims == "2D":
        r = (0, r[1], r[2])
    dirs = _DIRECTIONS_2D if dims == "2D" else _DIRECTIONS_3D
    names = ("n", "s", "s2", "ij", "sum2", "k2", "k", "id", "idm")
    acc = {k: np.zeros(lv.shape) for k in names}
    for d in dirs:
        # pair (v, v + d) is stored at v
        src = tuple(slice(max(0, -o), lv.shape[a] - max(0, o)) for a, o in enumerate(d))
        dst = tuple(slice(max(0, o), lv.shape[a] - max(0, -o)) for a, o in enumerate(d))
        i = np.zeros(lv.shape)
        j = np.zeros(lv.shape)
        i[src], j[src] = lv[src], lv[dst]
        valid = (i > 0) & (j > 0)
        i, j = np.where(valid, i, 0.0), np.where(valid, j, 0.0)
        k = np.abs(i - j)
        per_pair = {"n": valid.astype(float), "s": i + j, "s2": i * i + j * j, "ij": i * j, "sum2": (i + j) ** 2,
                    "k2": k * k, "k": k, "id": np.where(valid, 1.0 / (1.0 + k), 0.0),
                    "idm": np.where(valid, 1.0 / (1.0 + k * k), 0.0)}
        lo = tuple(-h + max(0, -o) for h, o in zip(r, d))
        hi = tuple(h - max(0, o) for h, o in zip(r, d))
        for name, arr in per_pair.items():
            acc[name] += _box_sum_range(arr, lo, hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(acc["n"] > 0, acc["n"], np.nan)
        mu = acc["s"] / (2 * n)
        var = acc["s2"] / (2 * n) - mu * mu
        auto = acc["ij"] / n
        maps = {"cm_joint_avg": mu, "cm_joint_var": var, "cm_contrast": acc["k2"] / n, "cm_diff_avg": acc["k"] / n,
                "cm_inv_diff": acc["id"] / n, "cm_inv_diff_mom": acc["idm"] / n, "cm_auto_corr": auto,
                # a single grey level has no spread: correlation 0, as the ROI-level features report it
                "cm_corr": np.where(var > 1e-12 * mu * mu, (auto - mu * mu) / var, 0.0),
                "cm_clust_tend": acc["sum2"] / n - 4 * mu * mu}
    return {f: np.where(roi, maps[f], np.nan) for f in feats}
