"""IBSI-1 intensity statistics (on intensities), intensity histogram (on grey levels) and intensity-volume
histogram features. All operate on the 1D set of voxel values inside the intensity mask."""

from __future__ import annotations

import math

import numpy as np

from ._native import native
from .config import Discretisation


def _sorted_percentiles(xs: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Percentiles of already sorted data, as ``np.percentile`` (linear method) computes them but without its
    partition pass; the interpolation is numpy's own (``a + (b - a) t``, from ``b`` when ``t >= 0.5``)."""
    n = xs.size
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        t = pos - lo
        a, b = float(xs[lo]), float(xs[hi])
        out.append(b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def _moments(x: np.ndarray, prefix: str, xs: np.ndarray | None = None) -> dict[str, float]:
    """The 18 first-order statistics shared by ``stat_`` and (on grey levels) ``ih_`` features.

    ``xs``: ``x`` sorted, when the caller has it (percentiles, extremes and the robust 10-90 % subset then come
    from it by indexing)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    xs = np.sort(x) if xs is None else np.ascontiguousarray(xs, dtype=np.float64)
    n = x.size
    p10, p25, p50, p75, p90 = _sorted_percentiles(xs, (10, 25, 50, 75, 90))
    r0, r1 = int(np.searchsorted(xs, p10, side="left")), int(np.searchsorted(xs, p90, side="right"))  # p10 <= x <= p90
    cm = native("_cmorph")
    if cm is not None:  # the same pairwise sums as NumPy's of the same terms (identical numbers), no temporaries
        mean = cm.term_sums(x, 0, n, 0.0, "x")[0] / n
        s2, s3, s4, sa = cm.term_sums(x, 0, n, mean, "234a")
        m2, m3, m4, mad = s2 / n, s3 / n, s4 / n, sa / n
        if r1 > r0:
            r_mean = cm.term_sums(xs, r0, r1, 0.0, "x")[0] / (r1 - r0)
            rmad = cm.term_sums(xs, r0, r1, r_mean, "a")[0] / (r1 - r0)
        else:  # no value between p10 and p90 (two distinct values): NumPy's mean of nothing
            rmad = float("nan")
        medad = cm.term_sums(x, 0, n, p50, "a")[0] / n
    else:
        mean = float(x.mean())
        dev = x - mean
        dev2 = dev * dev  # products, not ** 3 / ** 4: numpy's general power is several times slower
        m2, m3, m4 = float(dev2.mean()), float((dev2 * dev).mean()), float((dev2 * dev2).mean())
        mad = float(np.abs(dev).mean())
        robust = xs[r0:r1]
        rmad = float(np.abs(robust - robust.mean()).mean())
        medad = float(np.abs(x - p50).mean())
    var = m2
    sd = var ** 0.5
    lo, hi = float(xs[0]), float(xs[-1])
    f = {
        "mean": mean,
        "var": var,
        "skew": float(m3 / var ** 1.5) if var > 0 else 0.0,
        "kurt": float(m4 / var ** 2 - 3.0) if var > 0 else 0.0,
        "median": p50,
        "min": lo,
        "p10": p10,
        "p90": p90,
        "max": hi,
        "iqr": p75 - p25,
        "range": hi - lo,
        "mad": mad,
    }
    f["rmad"] = rmad
    f["medad"] = medad
    f["cov"] = sd / mean if mean != 0 else float("nan")
    f["qcod"] = (p75 - p25) / (p75 + p25) if (p75 + p25) != 0 else float("nan")
    return {f"{prefix}_{k}": v for k, v in f.items()}


def statistics_features(values: np.ndarray, sorted_values: np.ndarray | None = None) -> dict[str, float]:
    """Intensity statistics (``stat_*``, 18 features); ``sorted_values`` (``values`` sorted) saves a sort."""
    x = np.ascontiguousarray(values, dtype=np.float64)
    f = _moments(x, "stat", sorted_values)
    cm = native("_cmorph")
    energy = cm.term_sums(x, 0, x.size, 0.0, "2")[0] if cm is not None else float((x * x).sum())
    f["stat_energy"] = energy
    f["stat_rms"] = float(np.sqrt(energy / x.size))
    return f


def histogram_features(levels: np.ndarray, n_levels: int, sorted_levels: np.ndarray | None = None) -> dict[str, float]:
    """Intensity histogram features (``ih_*``, 23) on discretised grey levels 1..Ng (``sorted_levels``: the same
    levels sorted, when the caller has them)."""
    lv = np.asarray(levels, dtype=np.int64)
    f = _moments(lv, "ih", sorted_levels)
    ng = max(int(n_levels), int(lv.max()))
    counts = np.bincount(lv, minlength=ng + 1)[1:].astype(np.float64)  # index 0 -> grey level 1
    p = counts / counts.sum()
    modes = np.flatnonzero(counts == counts.max()) + 1
    mean = f["ih_mean"]
    f["ih_mode"] = float(modes[np.argmin(np.abs(modes - mean))])  # ties: the one closest to the mean
    nz = p[p > 0]
    f["ih_entropy"] = float(-(nz * np.log2(nz)).sum())
    f["ih_uniformity"] = float((p * p).sum())
    if ng > 1:
        grad = np.empty(ng)
        grad[0] = counts[1] - counts[0]
        grad[-1] = counts[-1] - counts[-2]
        if ng > 2:
            grad[1:-1] = (counts[2:] - counts[:-2]) / 2.0
    else:
        grad = np.zeros(1)
    f["ih_max_grad"] = float(grad.max())
    f["ih_max_grad_g"] = float(np.argmax(grad) + 1)
    f["ih_min_grad"] = float(grad.min())
    f["ih_min_grad_g"] = float(np.argmin(grad) + 1)
    return f


def ivh_features(values: np.ndarray, disc: Discretisation, reseg_range=None, use_reseg_range: bool = True,
                 sorted_values: np.ndarray | None = None) -> dict[str, float]:
    """Intensity-volume histogram features (``ivh_*``) following IBSI's three cases.

    * ``none`` (discrete calibrated, e.g. CT): grey levels are the intensities, w = 1, range G = the
      re-segmentation range (upper bound the ROI max when open) or [min, max] of the ROI.
    * ``FBS`` (continuous calibrated, e.g. PET): bins of ``bin_width`` from the re-segmentation lower bound
      (or ROI min); grey levels are bin centres; G = [x_min + w/2, x_max - w/2].
    * ``FBN`` (arbitrary units): ``n_bins`` bins between ROI min and max; G = [1, Ng], w = 1.

    Open re-segmentation ranges (``[0, None]``, i.e. [0, inf) for SUV; IBSI does not define this case): the bound
    that is given is used, the open one becomes the ROI's own discretised extreme on that side, so G = [0 + w/2,
    centre of the bin holding the ROI maximum] for FBS from 0. The intensity fraction is then relative to the fixed
    lower bound and the ROI maximum: V90 is the volume fraction at or above 90 % of the way from the lower bound to
    the ROI maximum (for SUV from 0, roughly the fraction >= 0.9 SUVmax) and gamma spans exactly [0, 1]. The same
    rule holds for ``none`` (G's open end = the ROI's integer maximum / minimum). MIRP (2.x) instead treats a range
    with an open end as no range and uses the ROI's [min, max] on both sides (see bench/bench_radiomics_ivh.py).
    Pinned by tests/test_radiomics_ivh_open.py.

    Only the distribution of the values matters; every discretisation is monotone, so the values are sorted once
    (or ``sorted_values`` is used) and the discretised ones come out sorted.
    """
    x = np.sort(np.asarray(values, dtype=np.float64)) if sorted_values is None else np.asarray(sorted_values, np.float64)
    lo_r = hi_r = None
    if use_reseg_range and reseg_range is not None:
        lo_r, hi_r = reseg_range
    if disc.method == "none":
        xd = np.round(x)
        g_min = lo_r if lo_r is not None else float(xd.min())
        g_max = hi_r if hi_r is not None else float(xd.max())
        w = 1.0
    elif disc.method == "FBS":
        w = float(disc.bin_width)
        x_min = disc.min if disc.min is not None else (lo_r if lo_r is not None else float(x.min()))
        bins = np.floor((x - x_min) / w) + 1
        xd = x_min + (bins - 0.5) * w
        # a closed upper bound b gives the last full bin's centre b - w/2 (IBSI); an open one the ROI maximum's bin
        g_min, g_max = x_min + 0.5 * w, (hi_r - 0.5 * w) if hi_r is not None else float(xd[-1])
    else:
        n = int(disc.n_bins)
        lo, hi = float(x.min()), float(x.max())
        xd = np.ones_like(x) if hi == lo else np.clip(np.floor(n * (x - lo) / (hi - lo)) + 1, 1, n)
        g_min, g_max, w = 1.0, float(n), 1.0
    n_steps = int(round((g_max - g_min) / w)) + 1
    grid = g_min + np.arange(n_steps) * w  # every discretised intensity in G, present or not
    sorted_x = xd  # sorted: x is sorted and the discretisation monotone
    nu = 1.0 - np.searchsorted(sorted_x, grid - 1e-9 * max(1.0, w), side="left") / len(sorted_x)
    gamma = (grid - g_min) / (g_max - g_min) if g_max > g_min else np.zeros_like(grid)

    def v_at(frac: float) -> float:
        ok = gamma >= frac - 1e-12
        return float(nu[ok].max()) if ok.any() else 0.0

    def i_at(frac: float) -> float:
        ok = nu <= frac + 1e-12
        return float(grid[ok].min()) if ok.any() else float(g_max + w)

    f = {"ivh_v10": v_at(0.10), "ivh_v90": v_at(0.90), "ivh_i10": i_at(0.10), "ivh_i90": i_at(0.90)}
    f["ivh_diff_v10_v90"] = f["ivh_v10"] - f["ivh_v90"]
    f["ivh_diff_i10_i90"] = f["ivh_i10"] - f["ivh_i90"]
    f["ivh_auc"] = float(np.trapezoid(nu, gamma)) if len(grid) > 1 else 0.0
    return f
