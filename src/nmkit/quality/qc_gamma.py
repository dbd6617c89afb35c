"""Gamma camera acceptance tests after NEMA NU 1-2018 on planar images: flood uniformity, planar spatial resolution
from line sources, and spatial linearity (and intrinsic resolution) from a slit mask.

* Flood (``flood_uniformity``): the image is rebinned by an integer factor to the pixel size nearest 6.4 mm (NEMA:
  6.4 mm +- 30 %); the field is the counted area; UFOV = the field scaled by 0.95 about its centroid, with edge pixels
  under 75 % of the CFOV mean dropped; CFOV = the UFOV scaled by 0.75; the 9-point kernel (1 2 1 / 2 4 2 / 1 2 1)/16
  smooths inside the UFOV (normalised at its edge). Integral uniformity 100 (max - min) / (max + min); differential
  uniformity: the largest such value over 5 consecutive pixels along every row and column.
* Lines (``line_resolution``): profiles across two parallel line sources summed over 30 mm bands; the peak is the
  vertex of a parabola through the maximum and its neighbours, FWHM/FWTM by linear interpolation between pixels
  (NEMA). The pixel size comes from the header or from the two lines' known spacing (``spacing_mm``).
* Slit mask (``slit_linearity``): the peak position of every slit in ~6 mm bands; a straight line per slit; absolute
  linearity = the largest deviation (mm) from it in the UFOV/CFOV, differential linearity = the standard deviation of
  the deviations (mm); the slits' FWHM/FWTM give the intrinsic resolution.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

NEMA_PIXEL_MM = 6.4
KERNEL9 = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])


def planar_counts(image: Any) -> tuple[np.ndarray, float]:
    """The 2D counts array and the pixel size (mm) of a planar image (one frame; square pixels required)."""
    arr = np.asarray(image.array, float)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(None, f"a planar (2D, one frame) gamma camera image is needed, got shape {arr.shape}")
    sx, sy = image.spacing[0], image.spacing[1]
    if abs(sx - sy) > 1e-3 * sx:
        raise InputError(None, f"pixels are not square ({sx} x {sy} mm)")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.sum() <= 0:
        raise InputError(None, "image holds no counts (negative, non-finite or all zero values): not a gamma camera image")
    return arr, float(sx)


def rebin(arr: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor`` x ``factor`` blocks (the edges that do not fill a block are dropped)."""
    if factor <= 1:
        return arr.copy()
    ny, nx = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    return arr[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).sum(axis=(1, 3))


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes, label

    lab, n = label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return binary_fill_holes(lab == int(np.argmax(sizes)))


def _scaled(mask: np.ndarray, scale: float) -> np.ndarray:
    """The mask shrunk about its centroid by ``scale`` (a pixel is kept when its point scaled by 1/scale is in the mask)."""
    jj, ii = np.nonzero(mask)
    cy, cx = jj.mean(), ii.mean()
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    sy = np.round(cy + (yy - cy) / scale).astype(int)
    sx = np.round(cx + (xx - cx) / scale).astype(int)
    ok = (sy >= 0) & (sy < mask.shape[0]) & (sx >= 0) & (sx < mask.shape[1])
    out = np.zeros_like(mask)
    out[ok] = mask[sy[ok], sx[ok]]
    return out


def field_masks(counts: np.ndarray, threshold: float = 0.2, sigma_px: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Field (counted area), UFOV (0.95) and CFOV (0.75 of the UFOV) masks of a flood-like image (``sigma_px``:
    smoothing before the threshold, e.g. half the slit spacing for a slit-mask image)."""
    from scipy.ndimage import gaussian_filter

    sm = gaussian_filter(counts, sigma_px)
    field = _largest(sm > threshold * np.percentile(sm[sm > 0], 90))
    ufov = _scaled(field, 0.95)
    cfov = _scaled(field, 0.95 * 0.75)
    return field, ufov, cfov


def smooth9(counts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """NEMA 9-point smoothing inside ``mask`` (kernel weights renormalised over the pixels in the mask)."""
    from scipy.ndimage import convolve

    num = convolve(counts * mask, KERNEL9, mode="constant")
    den = convolve(mask.astype(float), KERNEL9, mode="constant")
    return np.where(mask, num / np.maximum(den, 1e-12), 0.0)


def integral_uniformity(values: np.ndarray) -> float:
    hi, lo = float(values.max()), float(values.min())
    return 100.0 * (hi - lo) / (hi + lo)


def differential_uniformity(sm: np.ndarray, mask: np.ndarray, n: int = 5) -> float:
    """Largest 100 (max - min)/(max + min) over ``n`` consecutive pixels in ``mask`` along any row or column."""
    from numpy.lib.stride_tricks import sliding_window_view

    best = 0.0
    for a, m in ((sm, mask), (sm.T, mask.T)):
        if a.shape[1] < n:
            continue
        win = sliding_window_view(a, n, axis=1)
        ok = sliding_window_view(m, n, axis=1).all(axis=-1)
        if not ok.any():
            continue
        hi, lo = win.max(-1)[ok], win.min(-1)[ok]
        best = max(best, float(np.max(100.0 * (hi - lo) / (hi + lo))))
    return best


def flood_uniformity(image: Any, target_pixel_mm: float = NEMA_PIXEL_MM) -> dict[str, Any]:
    """NEMA NU 1 integral and differential uniformity (%) in the UFOV and CFOV of a flood image."""
    counts, px = planar_counts(image)
    factor = max(1, int(round(target_pixel_mm / px)))
    reb = rebin(counts, factor)
    if min(reb.shape, default=0) < 5:
        raise InputError(None, f"{counts.shape[1]} x {counts.shape[0]} pixels of {px:.2f} mm is too small for a flood image")
    field, ufov, cfov = field_masks(reb)
    if cfov.sum() < 25:
        raise InputError(None, f"the counted field covers only {int(field.sum())} pixels of {factor * px:.2f} mm: not a flood image")
    cfov_mean = float(reb[cfov].mean())
    ufov = ufov & (reb >= 0.75 * cfov_mean)  # NEMA: edge pixels under 75 % of the CFOV mean are dropped
    ufov = _largest(ufov)
    frac = float(field.sum() / field.size)
    uniform_cv = float(reb[cfov].std() / cfov_mean)
    if uniform_cv > 0.25:
        raise InputError(None, f"counts in the central field vary by {100 * uniform_cv:.0f} % (CoV): not a uniform flood")
    sm = smooth9(reb, ufov)
    out = {
        "pixel_mm_original": px, "rebin_factor": factor, "pixel_mm": factor * px,
        "integral_uniformity_ufov_percent": integral_uniformity(sm[ufov]),
        "integral_uniformity_cfov_percent": integral_uniformity(sm[cfov & ufov]),
        "differential_uniformity_ufov_percent": differential_uniformity(sm, ufov),
        "differential_uniformity_cfov_percent": differential_uniformity(sm, cfov & ufov),
        "ufov_pixels": int(ufov.sum()), "cfov_pixels": int((cfov & ufov).sum()),
        "cfov_mean_counts_per_pixel": cfov_mean, "total_counts": float(counts.sum()), "field_fraction": frac,
        "cfov_poisson_iu_percent": 100 * 3 / math.sqrt(max(cfov_mean, 1.0)),
    }
    out["note"] = ("" if cfov_mean >= 10000 else
                   f"NEMA NU 1 asks for >= 10000 counts per {NEMA_PIXEL_MM} mm pixel; this flood has {cfov_mean:.0f}, so "
                   "Poisson noise adds to the uniformity figures")
    return out


# ----- line profiles -------------------------------------------------------------------------------
def _orient_vertical(counts: np.ndarray) -> tuple[np.ndarray, str]:
    """Transpose so that the lines run along the rows' axis (profiles taken along x); returns the axis measured."""
    def peakiness(p: np.ndarray) -> float:
        return float(p.max() / max(np.median(p[p > 0]) if (p > 0).any() else 1.0, 1e-9))

    across_x = counts.sum(axis=0)  # vertical lines give sharp peaks here
    across_y = counts.sum(axis=1)
    return (counts, "x") if peakiness(across_x) >= peakiness(across_y) else (counts.T, "y")


def nema_peak_width(profile: np.ndarray, peak_index: int) -> dict[str, float]:
    """Parabolic peak (position, height) and FWHM/FWTM in pixels by linear interpolation (NEMA NU 1)."""
    i = int(peak_index)
    if i <= 0 or i >= len(profile) - 1:
        raise ValueError("peak at the profile's edge")
    y0, y1, y2 = profile[i - 1], profile[i], profile[i + 1]
    den = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / den if den != 0 else 0.0
    shift = float(np.clip(shift, -0.5, 0.5))
    height = float(y1 - 0.25 * (y0 - y2) * shift)
    out = {"position_px": i + shift, "height": height}
    for name, frac in (("fwhm_px", 0.5), ("fwtm_px", 0.1)):
        level = frac * height
        left = i
        while left > 0 and profile[left] > level:
            left -= 1
        right = i
        while right < len(profile) - 1 and profile[right] > level:
            right += 1
        if profile[left] > level or profile[right] > level:
            out[name] = math.nan
            continue
        xl = left + (level - profile[left]) / (profile[left + 1] - profile[left])
        xr = right - 1 + (profile[right - 1] - level) / (profile[right - 1] - profile[right])
        out[name] = float(xr - xl)
    return out


def _two_peaks(profile: np.ndarray, min_sep_px: int) -> list[int]:
    from scipy.signal import find_peaks

    peaks, props = find_peaks(profile, distance=max(min_sep_px, 1), prominence=0.2 * (profile.max() - np.median(profile)))
    if len(peaks) < 2:
        return []
    top = peaks[np.argsort(props["prominences"])[::-1][:2]]
    return sorted(int(p) for p in top)


def line_resolution(image: Any, spacing_mm: float | None = None, band_mm: float = 30.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Planar FWHM/FWTM (mm) of two parallel line sources, per 30 mm band and line; optional pixel calibration."""
    counts, px = planar_counts(image)
    arr, axis = _orient_vertical(counts)
    raw = arr
    arr = np.clip(arr - np.median(arr), 0, None)  # the empty detector's level (~0) off
    rows = arr.sum(axis=1)
    present = rows > 0.3 * np.percentile(rows, 95)
    idx = np.nonzero(present)[0]
    if idx.size < 10:
        raise InputError(None, "no line sources found (no rows with line counts)")
    lo, hi = int(idx.min() + 0.1 * idx.size), int(idx.max() - 0.1 * idx.size)  # leave the line ends out
    band = max(int(round(band_mm / px)), 3)
    recs = []
    for start in range(lo, hi - band + 1, band):
        prof = arr[start:start + band].sum(axis=0)
        pk = _two_peaks(prof, int(10 / px))
        if len(pk) != 2:
            continue
        rp = raw[start:start + band].sum(axis=0)
        if rp[pk[0]:pk[1] + 1].min() > 0.5 * min(rp[pk[0]], rp[pk[1]]):
            continue  # no deep valley between the peaks: not two line sources
        for line, p in enumerate(pk):
            try:
                w = nema_peak_width(prof, p)
            except ValueError:
                continue
            recs.append({"band_start_px": start, "line": line, "position_px": w["position_px"], "fwhm_px": w["fwhm_px"],
                         "fwtm_px": w["fwtm_px"], "peak_counts": w["height"]})
    table = pd.DataFrame(recs)
    if table.empty or (table["peak_counts"] < 5 * max(float(np.median(arr)), 1.0)).mean() > 0.5 \
            or not (table["fwhm_px"] * px < 40.0).mean() > 0.5:
        raise InputError(None, "no band shows two narrow line-source peaks well above the background: not a two-line "
                               "resolution image?")
    sep = table.pivot_table(index="band_start_px", columns="line", values="position_px").dropna()
    sep_px = float((sep[1] - sep[0]).mean()) if len(sep) else math.nan
    pixel_mm = spacing_mm / sep_px if spacing_mm else px
    for c in ("fwhm", "fwtm"):
        table[f"{c}_mm"] = table[f"{c}_px"] * pixel_mm
    table["position_mm"] = table["position_px"] * pixel_mm
    summary = {"profile_axis": axis, "pixel_mm_header": px, "pixel_mm": pixel_mm,
               "pixel_source": f"calibrated from the line spacing {spacing_mm} mm" if spacing_mm else "DICOM header",
               "line_separation_px": sep_px, "line_separation_mm": sep_px * pixel_mm, "bands": int(table["band_start_px"].nunique()),
               "fwhm_mm": float(table["fwhm_mm"].mean()), "fwtm_mm": float(table["fwtm_mm"].mean()),
               "fwhm_mm_per_line": [float(v) for v in table.groupby("line")["fwhm_mm"].mean()],
               "fwtm_mm_per_line": [float(v) for v in table.groupby("line")["fwtm_mm"].mean()]}
    if spacing_mm is None:
        summary["note"] = "pixel size from the DICOM header; give --spacing-mm (the lines' true distance) to calibrate it"
    return table, summary


# ----- slit mask linearity -----------------------------------------------------------------------
def slit_linearity(image: Any, band_mm: float = 6.0, slit_spacing_mm: float = 30.0, calibrate: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """NEMA NU 1 spatial linearity (absolute and differential, mm) and intrinsic FWHM/FWTM (mm) from a slit-mask image."""
    from scipy.signal import find_peaks

    counts, px = planar_counts(image)
    arr, axis = _orient_vertical(counts)
    sep = slit_spacing_mm / px
    field, ufov, cfov = field_masks(arr, sigma_px=sep / 2)
    global_prof = (arr * ufov).sum(axis=0)
    slits, _ = find_peaks(global_prof, distance=max(int(0.6 * sep), 1), prominence=0.2 * (global_prof.max() - np.median(global_prof)))
    if len(slits) < 3:
        raise InputError(None, f"found {len(slits)} slits (need >= 3 parallel slits {slit_spacing_mm} mm apart): not a slit-mask image?")
    inner = global_prof[slits[0]:slits[-1] + 1]
    contrast = 1.0 - float(inner.min()) / float(global_prof[slits].mean())
    if contrast < 0.5:
        raise InputError(None, f"the profile across the field has valleys at {100 * (1 - contrast):.0f} % of its peaks: "
                               "no slit mask (its slits give valleys near zero)")
    band = max(int(round(band_mm / px)), 2)
    recs = []
    for start in range(0, arr.shape[0] - band + 1, band):
        centre_row = start + band // 2
        prof = arr[start:start + band].mean(axis=0)
        for k, s in enumerate(slits):
            a, b = int(max(s - sep / 2, 1)), int(min(s + sep / 2, arr.shape[1] - 2))
            p = a + int(np.argmax(prof[a:b]))
            if not ufov[centre_row, p]:
                continue
            try:
                w = nema_peak_width(prof, p)
            except ValueError:
                continue
            recs.append({"slit": k, "row_px": centre_row, "position_px": w["position_px"], "fwhm_px": w["fwhm_px"],
                         "fwtm_px": w["fwtm_px"], "in_cfov": bool(cfov[centre_row, p])})
    table = pd.DataFrame(recs)
    if table.empty:
        raise InputError(None, "no slit peaks inside the useful field of view")
    table = table[table.groupby("slit")["row_px"].transform("count") >= 5].copy()
    spacing = float(np.median(np.diff(sorted(table.groupby("slit")["position_px"].median()))))
    if not calibrate and abs(spacing * px / slit_spacing_mm - 1) > 0.2:
        raise InputError(None, f"slits are {spacing * px:.1f} mm apart by the header pixel size, not {slit_spacing_mm} mm: "
                               "give --slit-spacing-mm, or --calibrate to trust the mask")
    pixel_mm = slit_spacing_mm / spacing if calibrate else px
    dev = np.zeros(len(table))
    keep = np.ones(len(table), bool)
    for k, g in table.groupby("slit"):
        pos = table.index.get_indexer(g.index)
        coef = np.polyfit(g["row_px"], g["position_px"], 1)
        res = g["position_px"].to_numpy() - np.polyval(coef, g["row_px"])
        # a peak far off the slit's line is the field edge (edge packing), not the slit: leave it out and refit
        ok = np.abs(res) * px <= max(2.0, 5 * 1.4826 * float(np.median(np.abs(res - np.median(res)))) * px)
        coef = np.polyfit(g["row_px"][ok], g["position_px"][ok], 1)
        dev[pos] = (g["position_px"].to_numpy() - np.polyval(coef, g["row_px"])) * pixel_mm
        keep[pos] = ok
    table["deviation_mm"] = dev
    n_rejected = int((~keep).sum())
    table = table[keep].copy()
    for c in ("fwhm", "fwtm"):
        table[f"{c}_mm"] = table[f"{c}_px"] * pixel_mm
    cf = table[table["in_cfov"]]
    summary = {"profile_axis": axis, "pixel_mm_header": px, "pixel_mm": pixel_mm,
               "pixel_source": f"calibrated from the slit spacing {slit_spacing_mm} mm" if calibrate else "DICOM header",
               "slits": int(table["slit"].nunique()), "slit_spacing_mm_measured": spacing * px,
               "absolute_linearity_ufov_mm": float(np.abs(table["deviation_mm"]).max()),
               "absolute_linearity_cfov_mm": float(np.abs(cf["deviation_mm"]).max()) if len(cf) else math.nan,
               "differential_linearity_ufov_mm": float(table["deviation_mm"].std(ddof=1)),
               "differential_linearity_cfov_mm": float(cf["deviation_mm"].std(ddof=1)) if len(cf) > 1 else math.nan,
               "intrinsic_fwhm_ufov_mm": float(table["fwhm_mm"].mean()), "intrinsic_fwtm_ufov_mm": float(table["fwtm_mm"].mean()),
               "intrinsic_fwhm_cfov_mm": float(cf["fwhm_mm"].mean()) if len(cf) else math.nan,
               "intrinsic_fwtm_cfov_mm": float(cf["fwtm_mm"].mean()) if len(cf) else math.nan,
               "points": int(len(table)), "points_rejected_off_line": n_rejected}
    return table, summary
