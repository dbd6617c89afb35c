"""Tomographic QC on reconstructed volumes (SPECT, also PET): point-source resolution and uniform-phantom uniformity.

* ``point_resolution``: FWHM/FWTM (mm) along x, y and z through the hottest point of a point-source scan: 1D profiles
  through the peak voxel, summed over +-1 voxel across (a separable response is only scaled by that); widths by the
  NEMA rule (parabolic peak, linear interpolation at 50 % and 10 %) and, as a check, a Gaussian fit.
* ``tomo_uniformity``: a uniform cylinder (or the uniform section of a Jaszczak phantom): per transverse slice in the
  central 80 % of the cylinder's length, a central disc of 75 % of the cylinder radius, rebinned in plane to the pixel
  nearest 6.4 mm and smoothed with the NEMA 9-point kernel: integral uniformity (%), and noise = CoV (%) of the
  unsmoothed voxels at the original size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .qc_gamma import NEMA_PIXEL_MM, _largest, integral_uniformity, nema_peak_width, rebin, smooth9
from .resolution import line_fwhm


def _volume(image: Any) -> np.ndarray:
    arr = np.asarray(image.array, float)
    if arr.ndim != 3 or image.ndim_spatial != 3:
        raise InputError(None, f"a reconstructed 3D volume is needed, got shape {arr.shape}")
    if min(arr.shape) < 5:
        raise InputError(None, f"volume {arr.shape} is too small (truncated series?)")
    if not np.isfinite(arr).all():
        raise InputError(None, "volume has non-finite values")
    return arr


def point_resolution(image: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """FWHM/FWTM (mm) along x, y, z of one point source (see module docstring)."""
    from scipy.ndimage import gaussian_filter

    arr = _volume(image)
    sm = gaussian_filter(arr, 0.7)
    k, j, i = np.unravel_index(int(np.argmax(sm)), sm.shape)
    peak = float(sm[k, j, i])
    bg = float(np.median(sm))
    hot = sm > bg + 0.5 * (peak - bg)
    if peak <= 0 or hot.sum() * image.voxel_volume > 30.0**3 or peak < 5 * max(bg, 1e-12) and bg > 0:
        raise InputError(None, "no single point source: the hottest spot is not compact and well above the background")
    rows = []
    for axis, name, sp in ((2, "x", image.spacing[0]), (1, "y", image.spacing[1]), (0, "z", image.spacing[2])):
        sl = [slice(max(c - 1, 0), c + 2) for c in (k, j, i)]
        sl[axis] = slice(None)
        box = arr[tuple(sl)]
        prof = box.sum(axis=tuple(a for a in range(3) if a != axis))
        prof = prof - np.median(prof)
        centre = (k, j, i)[axis]
        if centre in (0, len(prof) - 1):
            raise InputError(None, f"the point source lies on the edge of the volume along {name}")
        w = nema_peak_width(prof, centre)
        pos = np.arange(len(prof)) * sp
        lo, hi = max(centre - 8, 0), min(centre + 9, len(prof))
        try:
            g = line_fwhm(pos[lo:hi], prof[lo:hi])["fwhm_mm"]
        except (RuntimeError, ValueError):
            g = math.nan
        rows.append({"axis": name, "voxel_mm": sp, "fwhm_mm": w["fwhm_px"] * sp, "fwtm_mm": w["fwtm_px"] * sp,
                     "fwhm_gauss_fit_mm": g, "peak_index": int(centre)})
    table = pd.DataFrame(rows)
    centre_mm = image.index_to_physical(np.array([i, j, k], float))
    summary = {"peak_x_mm": float(centre_mm[0]), "peak_y_mm": float(centre_mm[1]), "peak_z_mm": float(centre_mm[2]),
               "fwhm_mm_mean": float(table["fwhm_mm"].mean()), "fwtm_mm_mean": float(table["fwtm_mm"].mean()),
               "voxels_over_fwhm_min": float((table["fwhm_mm"] / table["voxel_mm"]).min())}
    if summary["voxels_over_fwhm_min"] < 2.5:
        summary["note"] = ("NEMA asks for voxels <= FWHM/3 (here FWHM is only "
                           f"{summary['voxels_over_fwhm_min']:.1f} voxels): widths are sampling-limited")
    return table, summary


def tomo_uniformity(image: Any, roi_fraction: float = 0.75, end_fraction: float = 0.1,
                    slices: Sequence[int] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-slice integral uniformity and noise (%) in a uniform cylinder (see module docstring); ``slices`` (indices)
    replaces the automatic choice, e.g. the uniform sections of a Jaszczak phantom on both sides of its spheres."""
    from scipy.ndimage import gaussian_filter

    arr = _volume(image)
    sp = image.spacing
    sm = gaussian_filter(arr, 1.0)
    top = float(np.percentile(sm, 99.5))
    if top <= 0:
        raise InputError(None, "volume holds no activity")
    body = _largest(sm > 0.5 * top)
    areas = body.sum(axis=(1, 2)) * sp[0] * sp[1]
    full = np.nonzero(areas >= 0.8 * np.median(areas[areas > 0]))[0] if (areas > 0).any() else np.array([], int)
    if full.size < 3:
        raise InputError(None, "no uniform cylinder found (fewer than 3 slices with a full cross-section)")
    if slices is None:
        drop = max(1, int(round(end_fraction * full.size)))
        slices = full[drop:-drop] if full.size > 2 * drop + 1 else full
    else:
        slices = np.array([k for k in slices if k in set(full.tolist())], int)
        if slices.size == 0:
            raise InputError(None, "none of the chosen slices has the cylinder's full cross-section")
    radius_mm = float(math.sqrt(np.median(areas[slices]) / math.pi))
    factor = max(1, int(round(NEMA_PIXEL_MM / sp[0])))
    rows = []
    for k in slices:
        m = body[k]
        jj, ii = np.nonzero(m)
        cy, cx = jj.mean(), ii.mean()
        yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
        roi = ((yy - cy) * sp[1]) ** 2 + ((xx - cx) * sp[0]) ** 2 <= (roi_fraction * radius_mm) ** 2
        vals = arr[k][roi]
        reb = rebin(arr[k] * roi, factor)
        rmask = rebin(roi.astype(float), factor) >= factor**2 - 1e-9  # rebinned pixels wholly inside the ROI
        if rmask.sum() < 5:
            continue
        s9 = smooth9(reb, rmask)
        rows.append({"slice": int(k), "z_mm": float(image.index_to_physical(np.array([0, 0, k], float))[2]),
                     "mean": float(vals.mean()), "noise_cov_percent": float(100 * vals.std(ddof=1) / vals.mean()),
                     "integral_uniformity_percent": integral_uniformity(s9[rmask]), "roi_voxels": int(roi.sum()),
                     "rebinned_pixels": int(rmask.sum())})
    table = pd.DataFrame(rows)
    if table.empty:
        raise InputError(None, "the cylinder is too small for a uniformity ROI")
    means = table["mean"]
    summary = {"cylinder_radius_mm": radius_mm, "roi_radius_mm": roi_fraction * radius_mm, "slices": int(len(table)),
               "rebin_factor": factor, "pixel_mm": factor * sp[0],
               "integral_uniformity_percent_mean": float(table["integral_uniformity_percent"].mean()),
               "integral_uniformity_percent_max": float(table["integral_uniformity_percent"].max()),
               "noise_cov_percent_mean": float(table["noise_cov_percent"].mean()),
               "axial_uniformity_percent": float(100 * (means.max() - means.min()) / (means.max() + means.min())),
               "mean_value": float(means.mean())}
    return table, summary
