"""Gamma camera four-quadrant bar phantom: modulation per bar group and an equivalent FWHM (Hander et al. 1997).

* The bar area is the part of the field whose smoothed counts lie below 70 % of the open-field level (bars block
  about half the photons); the open cross between the quadrants is its brightest column and row. Each quadrant's
  ROI is its part of the bar area eroded by ``margin_mm`` (edges and the cross left out).
* Bar period: the dominant frequency of the ROI's mean profile across the bars (the bars' direction is the axis with
  the stronger profile modulation); measured bar width = period / 2. Nominal widths (default 4.23 3.18 2.54 2.12 mm,
  1/6 1/8 1/10 1/12 inch) are assigned to the groups in the order of their measured periods.
* Modulation (Hander et al., Med. Phys. 24 (1997) 327, eq. 8): M = sqrt(2 (sigma^2 - mu)) / mu, the amplitude of a
  sinusoid with the ROI's variance once the Poisson variance (= mu, raw counts) is removed. Equivalent FWHM: for a
  Gaussian line spread function MTF(f) = exp(-2 pi^2 s^2 f^2) at the bars' fundamental f = 1 / (2 w), so
  FWHM = (4 sqrt(ln 2) / pi) w sqrt(ln(1 / M)) = 1.0601 w sqrt(ln(1/M)) (Hander's A8 rounds the constant to 1.058).
  Not defined when M >= 1 or M <= 0 (then NaN and a note). Square bars carry harmonics that add variance, so M is
  somewhat above the MTF and the FWHM somewhat low when the coarse bars are well resolved (about -10 % at M ~ 0.5,
  tests/test_qc_bars.py); near the resolution limit the harmonics are gone and the relation is exact.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .qc_gamma import _largest, planar_counts

DEFAULT_BAR_WIDTHS_MM = (4.23, 3.18, 2.54, 2.12)
FWHM_CONSTANT = 4.0 * math.sqrt(math.log(2.0)) / math.pi  # 1.0601


def hander_modulation(values: np.ndarray) -> float:
    """sqrt(2 (variance - mean)) / mean of raw counts (NaN when the variance does not exceed Poisson noise)."""
    mu = float(values.mean())
    excess = float(values.var(ddof=1)) - mu
    return math.sqrt(2.0 * excess) / mu if mu > 0 and excess > 0 else math.nan


def equivalent_fwhm_mm(modulation: float, bar_width_mm: float) -> float:
    """FWHM (mm) of the Gaussian LSF whose MTF at 1 / (2 w) equals ``modulation``."""
    if not 0 < modulation < 1:
        return math.nan
    return FWHM_CONSTANT * bar_width_mm * math.sqrt(math.log(1.0 / modulation))


def _period_px(profile: np.ndarray) -> tuple[float, float]:
    """Dominant period (pixels) of a 1D profile and its peak's share of the non-DC power (zero-padded FFT)."""
    p = profile - profile.mean()
    p = p * np.hanning(p.size)
    n = 16 * p.size
    power = np.abs(np.fft.rfft(p, n)) ** 2
    freqs = np.fft.rfftfreq(n)
    ok = freqs > 1.0 / 40.0  # periods below 40 px
    k = int(np.argmax(np.where(ok, power, 0)))
    return 1.0 / freqs[k], float(power[k] / power[ok].sum())


def find_bar_groups(counts: np.ndarray, pixel_mm: float, margin_mm: float = 8.0) -> list[np.ndarray]:
    """The ROIs (boolean masks) of the four bar groups, largest region first (see module docstring)."""
    from scipy.ndimage import binary_erosion, gaussian_filter, label

    sm = gaussian_filter(counts, 4.0 / pixel_mm)
    field = sm > 0.2 * np.percentile(sm, 99.5)
    if field.sum() * pixel_mm**2 < 100 * 100:
        raise InputError(None, "no counted field of at least 10 x 10 cm: not a four-quadrant bar phantom image (four line sources? use `nmkit qc lines`)")
    open_level = float(np.percentile(sm[field], 95))
    bars = field & (sm < 0.7 * open_level)
    jj, ii = np.nonzero(bars)
    if jj.size == 0:
        raise InputError(None, "no bar pattern (no region at about half the open-field counts): not a bar phantom image")
    # the open cross between the quadrants: the brightest column and row in the middle 60 % of the bar area
    j0, j1, i0, i1 = jj.min(), jj.max() + 1, ii.min(), ii.max() + 1
    col = sm[j0:j1, i0:i1].mean(axis=0)
    row = sm[j0:j1, i0:i1].mean(axis=1)
    mid_c = slice(int(0.2 * col.size), int(0.8 * col.size) + 1)
    mid_r = slice(int(0.2 * row.size), int(0.8 * row.size) + 1)
    xc = i0 + mid_c.start + int(np.argmax(col[mid_c]))
    yc = j0 + mid_r.start + int(np.argmax(row[mid_r]))
    yy, xx = np.mgrid[: counts.shape[0], : counts.shape[1]]
    regions = [bars & (yy < yc) & (xx < xc), bars & (yy < yc) & (xx > xc), bars & (yy > yc) & (xx < xc),
               bars & (yy > yc) & (xx > xc)]
    order = [0, 1, 2, 3]
    rois = []
    for i in order:
        region = _largest(regions[i]) if regions[i].any() else regions[i]
        if region.sum() * pixel_mm**2 < 40 * 40:
            continue
        roi = binary_erosion(region, iterations=max(1, int(round(margin_mm / pixel_mm))))
        if roi.sum() > 100:
            rois.append(roi)
    if len(rois) != 4:
        raise InputError(None, f"found {len(rois)} bar groups of at least 4 x 4 cm, not the 4 quadrants of a bar phantom")
    return rois


def quadrant_bars(image: Any, bar_widths_mm: Sequence[float] = DEFAULT_BAR_WIDTHS_MM,
                  margin_mm: float = 8.0) -> tuple[pd.DataFrame, dict[str, Any], list[np.ndarray]]:
    """Per bar group: position, bar direction, measured and nominal bar width, modulation and equivalent FWHM."""
    counts, pixel = planar_counts(image)
    if len(bar_widths_mm) != 4:
        raise InputError(None, f"--bar-widths-mm needs 4 widths, got {len(bar_widths_mm)}")
    rois = find_bar_groups(counts, pixel, margin_mm)
    cy, cx = (np.array(counts.shape) - 1) / 2
    rows = []
    for roi in rois:
        jj, ii = np.nonzero(roi)
        box = counts[jj.min():jj.max() + 1, ii.min():ii.max() + 1]
        inside = roi[jj.min():jj.max() + 1, ii.min():ii.max() + 1]
        means = {}
        for axis, name in ((0, "vertical"), (1, "horizontal")):  # vertical bars: profile along x (mean over rows)
            prof = np.nansum(np.where(inside, box, 0), axis=axis) / np.maximum(inside.sum(axis=axis), 1)
            good = inside.sum(axis=axis) > 0.5 * inside.sum(axis=axis).max()
            means[name] = prof[good]
        direction = max(means, key=lambda k: means[k].std())
        period, share = _period_px(means[direction])
        vals = counts[roi]
        m = hander_modulation(vals)
        rows.append({"x_px": float(ii.mean()), "y_px": float(jj.mean()),
                     "quadrant": ("upper" if jj.mean() < cy else "lower") + "-" + ("left" if ii.mean() < cx else "right"),
                     "bar_direction": direction, "measured_bar_width_mm": period * pixel / 2, "period_power_share": share,
                     "roi_pixels": int(roi.sum()), "mean_counts": float(vals.mean()), "sd_counts": float(vals.std(ddof=1)),
                     "modulation": m})
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["measured_bar_width_mm"])
    table = pd.DataFrame([rows[i] for i in order])
    rois = [rois[i] for i in order]
    table.insert(0, "bar_width_mm", sorted((float(w) for w in bar_widths_mm), reverse=True))
    table["equivalent_fwhm_mm"] = [equivalent_fwhm_mm(m, w) for m, w in zip(table["modulation"], table["bar_width_mm"])]
    notes = []
    if not table["modulation"].is_monotonic_decreasing:
        notes.append("modulation does not fall with bar width: non-uniform field or wrong bar widths")
    if table["equivalent_fwhm_mm"].isna().any():
        notes.append("equivalent FWHM undefined where the modulation is not between 0 and 1 (bars unresolved or "
                     "not raw counts)")
    width_error = (table["measured_bar_width_mm"] / table["bar_width_mm"] - 1).abs().max()
    if width_error > 0.15:
        notes.append(f"measured bar widths differ from the nominal ones by up to {100 * width_error:.0f} %: check "
                     "--bar-widths-mm and the pixel size")
    fwhm = table["equivalent_fwhm_mm"].dropna()
    summary = {"pixel_mm": pixel, "method": "Hander et al. 1997: M = sqrt(2 (var - mean)) / mean; FWHM = 1.0601 w "
                                             "sqrt(ln(1/M)) (Gaussian LSF)",
               "equivalent_fwhm_mm_median": float(fwhm.median()) if len(fwhm) else math.nan,
               "modulation_finest": float(table["modulation"].iloc[-1]),
               "max_bar_width_error_percent": 100.0 * float(width_error), "notes": notes}
    for _, r in table.iterrows():
        summary[f"modulation_{r['bar_width_mm']:g}mm"] = float(r["modulation"])
        summary[f"equivalent_fwhm_{r['bar_width_mm']:g}mm_mm"] = float(r["equivalent_fwhm_mm"])
    return table, summary, rois


def bars_figure(counts: np.ndarray, table: pd.DataFrame, rois: list[np.ndarray], title: str):
    """The image with the four ROIs outlined and labelled, and modulation / equivalent FWHM against bar width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    axes[0].imshow(counts, cmap="gray")
    for roi, (_, r) in zip(rois, table.iterrows()):
        axes[0].contour(roi, levels=[0.5], colors="tab:red", linewidths=0.8)
        axes[0].annotate(f"{r['bar_width_mm']:g} mm\nM={r['modulation']:.2f}", (r["x_px"], r["y_px"]), color="yellow",
                         ha="center", fontsize=8)
    axes[0].set_title(title)
    axes[0].axis("off")
    ax = axes[1]
    ax.plot(table["bar_width_mm"], table["modulation"], "ko-", label="modulation M (1)")
    ax.set_xlabel("bar width (mm)")
    ax.set_ylabel("modulation (1)")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(table["bar_width_mm"], table["equivalent_fwhm_mm"], "s--", color="tab:blue", label="equivalent FWHM (mm)")
    ax2.set_ylabel("equivalent FWHM (mm)", color="tab:blue")
    top = float(np.nanmax(table["equivalent_fwhm_mm"])) if table["equivalent_fwhm_mm"].notna().any() else 1.0
    ax2.set_ylim(0, 1.5 * top)
    ax.set_title("Hander 1997: M and FWHM = 1.0601 w sqrt(ln 1/M)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
