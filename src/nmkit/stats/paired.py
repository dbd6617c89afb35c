"""Paired statistics for method comparison: the same quantity measured twice on the same subjects.

Used to compare two reconstructions (e.g. classic OSEM vs CT-guided SPECT) of the same patients:

* ``wilcoxon_paired`` — Wilcoxon signed-rank test (scipy) of the paired differences (B - A);
* ``holm`` / ``benjamini_hochberg`` — multiple-testing correction over many metrics / radiomic features;
* ``bland_altman`` — bias and 95 % limits of agreement (Bland & Altman 1986), ``bland_altman_plot``;
* ``icc`` — intraclass correlation, ICC(1,1), ICC(2,1) absolute agreement, ICC(3,1) consistency
  (Shrout & Fleiss 1979, from the two-way ANOVA mean squares);
* ``lin_ccc`` — Lin's concordance correlation coefficient (Lin 1989);
* ``paired_table`` — all of the above for every column of two aligned tables, with corrected p-values.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Two float vectors of the same length with pairs holding a non-finite value removed."""
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


# ----- multiple testing ---------------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (NaN stays NaN; family = the finite p-values)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false-discovery rate; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    raw = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(raw[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out


# ----- tests and agreement ------------------------------------------------------------------------
def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Wilcoxon signed-rank test of B - A (two-sided; zero differences dropped, scipy's 'wilcox' rule).

    Returns n, median of A and B, median difference, the W statistic and the p-value (NaN when fewer
    than two non-zero differences, where no test is possible).
    """
    from scipy.stats import wilcoxon

    x, y = _pair(a, b)
    d = y - x
    res: dict[str, float] = {"n": int(x.size), "median_a": float(np.median(x)) if x.size else math.nan,
                             "median_b": float(np.median(y)) if y.size else math.nan,
                             "median_diff": float(np.median(d)) if d.size else math.nan,
                             "wilcoxon_w": math.nan, "p_wilcoxon": math.nan}
    if np.count_nonzero(d) < 2:
        return res
    stat = wilcoxon(y, x, zero_method="wilcox", alternative="two-sided")
    res["wilcoxon_w"] = float(stat.statistic)
    res["p_wilcoxon"] = float(stat.pvalue)
    return res


def bland_altman(a: Sequence[float], b: Sequence[float], percent: bool = False) -> dict[str, float]:
    """Bias (mean of B - A) and 95 % limits of agreement bias ± 1.96 SD (SD with n - 1).

    ``percent=True`` uses the difference relative to the pair mean, 100 (B - A) / ((A + B) / 2), the usual
    choice when the spread grows with the magnitude (activity concentrations, SUVs). Also returns the
    95 % confidence interval of the bias (t distribution).
    """
    from scipy.stats import t as t_dist

    x, y = _pair(a, b)
    n = x.size
    if n < 2:
        raise ValueError("Bland-Altman needs at least two pairs")
    mean = (x + y) / 2
    d = y - x
    if percent:
        if np.any(mean == 0):
            raise ValueError("percent differences need non-zero pair means")
        d = 100.0 * d / mean
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    half = float(t_dist.ppf(0.975, n - 1) * sd / math.sqrt(n))
    return {"n": n, "bias": bias, "sd_diff": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd,
            "bias_ci_low": bias - half, "bias_ci_high": bias + half}


def _anova_two_way(ratings: np.ndarray) -> dict[str, float]:
    """Mean squares of the two-way ANOVA without replication (rows = subjects, columns = raters/methods)."""
    n, k = ratings.shape
    grand = ratings.mean()
    ss_total = float(((ratings - grand) ** 2).sum())
    ss_rows = float(k * ((ratings.mean(axis=1) - grand) ** 2).sum())
    ss_cols = float(n * ((ratings.mean(axis=0) - grand) ** 2).sum())
    ss_err = ss_total - ss_rows - ss_cols
    return {"msr": ss_rows / (n - 1), "msc": ss_cols / (k - 1), "mse": ss_err / ((n - 1) * (k - 1)),
            "msw": (ss_cols + ss_err) / (n * (k - 1)), "n": n, "k": k}


def icc(ratings: Any, b: Sequence[float] | None = None) -> dict[str, float]:
    """Single-measure intraclass correlations of an (n subjects x k methods) table (or two vectors).

    ``icc1`` = ICC(1,1) one-way random; ``icc2`` = ICC(2,1) two-way random, absolute agreement;
    ``icc3`` = ICC(3,1) two-way mixed, consistency — Shrout & Fleiss (1979) / McGraw & Wong (1996).
    Subjects with a missing value are dropped.
    """
    if b is not None:
        x, y = _pair(ratings, b)
        m = np.column_stack([x, y])
    else:
        m = np.asarray(ratings, dtype=float)
        if m.ndim != 2:
            raise ValueError("ratings must be an (n subjects x k raters) table")
        m = m[np.all(np.isfinite(m), axis=1)]
    n, k = m.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 subjects and 2 raters, got {n} x {k}")
    a = _anova_two_way(m)
    msr, msc, mse, msw = a["msr"], a["msc"], a["mse"], a["msw"]

    def ratio(num: float, den: float) -> float:
        return num / den if den != 0 else math.nan

    return {"n": n, "k": k,
            "icc1": ratio(msr - msw, msr + (k - 1) * msw),
            "icc2": ratio(msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n),
            "icc3": ratio(msr - mse, msr + (k - 1) * mse)}


def lin_ccc(a: Sequence[float], b: Sequence[float]) -> float:
    """Lin's concordance correlation 2 s_ab / (s_a² + s_b² + (mean_a - mean_b)²) with 1/n moments."""
    x, y = _pair(a, b)
    if x.size < 2:
        return math.nan
    sxy = float(np.mean((x - x.mean()) * (y - y.mean())))
    den = float(x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    return 2 * sxy / den if den > 0 else math.nan


def compare_pairs(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Every paired statistic of one quantity measured by method A and method B on the same subjects."""
    x, y = _pair(a, b)
    row: dict[str, float] = dict(wilcoxon_paired(x, y))
    row["mean_a"] = float(x.mean()) if x.size else math.nan
    row["mean_b"] = float(y.mean()) if y.size else math.nan
    row["mean_rel_diff_pct"] = float(np.mean(100 * (y - x) / np.where(x != 0, np.abs(x), np.nan))) if x.size else math.nan
    if x.size >= 2:
        ba = bland_altman(x, y)
        row.update({f"ba_{k}": v for k, v in ba.items() if k != "n"})
        try:
            ic = icc(x, y)
            row["icc3_1"], row["icc2_1"] = ic["icc3"], ic["icc2"]
        except ValueError:
            row["icc3_1"] = row["icc2_1"] = math.nan
        row["ccc"] = lin_ccc(x, y)
    return row


def paired_table(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[str] | None = None,
                 key: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per numeric column: Wilcoxon, Bland-Altman, ICC, CCC, with Holm and BH corrected p-values.

    ``a`` and ``b`` hold the same subjects (rows matched by ``key`` columns when given, by position
    otherwise). Constant columns (e.g. features equal on both) get NaN p-values and stay out of the
    correction family.
    """
    if key is not None:
        keys = [key] if isinstance(key, str) else list(key)
        merged = a.merge(b, on=keys, suffixes=("__a", "__b"), how="inner")
        if merged.empty:
            raise ValueError(f"no rows match on {keys} between the two tables")
        cols = [c for c in (columns or a.columns) if c not in keys and f"{c}__a" in merged and f"{c}__b" in merged]
        get_a = {c: merged[f"{c}__a"] for c in cols}
        get_b = {c: merged[f"{c}__b"] for c in cols}
    else:
        if len(a) != len(b):
            raise ValueError(f"tables have {len(a)} and {len(b)} rows; give key columns to match them")
        cols = [c for c in (columns or a.columns) if c in b.columns]
        get_a = {c: a[c].reset_index(drop=True) for c in cols}
        get_b = {c: b[c].reset_index(drop=True) for c in cols}
    rows = []
    for c in cols:
        xa = pd.to_numeric(get_a[c], errors="coerce").to_numpy(float)
        xb = pd.to_numeric(get_b[c], errors="coerce").to_numpy(float)
        if not np.isfinite(xa).any():
            continue
        rows.append({"metric": c, **compare_pairs(xa, xb)})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = holm(out["p_wilcoxon"])
        out["p_bh"] = benjamini_hochberg(out["p_wilcoxon"])
    return out


def bland_altman_plot(a: Sequence[float], b: Sequence[float], title: str = "", label_a: str = "A", label_b: str = "B",
                      percent: bool = False, ax: Any = None):
    """Bland-Altman scatter (pair mean vs difference B - A) with bias and limits of agreement; returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x, y = _pair(a, b)
    ba = bland_altman(x, y, percent=percent)
    mean = (x + y) / 2
    d = y - x if not percent else 100 * (y - x) / mean
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4))
    else:
        fig = ax.figure
    ax.scatter(mean, d, s=18, alpha=0.75)
    for v, style in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
        ax.axhline(v, color="C3", ls=style, lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"mean of {label_a} and {label_b}")
    ax.set_ylabel(f"{label_b} - {label_a}" + (" (%)" if percent else ""))
    ax.set_title(title or f"bias {ba['bias']:.3g}, LoA [{ba['loa_low']:.3g}, {ba['loa_high']:.3g}]", fontsize=9)
    return fig
