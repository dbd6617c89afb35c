"""NEMA NU 2 / IEC body phantom analysis: sphere localisation, contrast recovery, background variability,
lung residual, noise, recovery coefficients, activity recovery and resolution.

Definitions (NEMA NU 2-2018 section 7, adapted to SPECT as in the IEC body phantom literature):

* hot contrast ``Q_H = (C_H / C_B - 1) / (a_H / a_B - 1)`` with ``C_H`` the mean in the sphere and ``C_B`` the mean of
  the background ROIs of the same size;
* background variability ``N = SD_B / C_B`` over the background ROI means;
* lung residual ``dC_lung = C_lung / C_B`` (mean in the lung insert, eroded by 10 mm, over the background mean);
* recovery ``RC_mean = C_H / a_H``, ``RC_max = max_H / a_H`` against the known activity;
* noise CoV in the background region; total activity recovery (sum over the body vs the true total).

Documented simplifications: the sphere and background means use 3D VOIs (spheres of the physical diameter at
the located centres; background spheres of each diameter) rather than 2D circles on one slice; the background
ROIs (60 per sphere size by default) are spread by farthest-point sampling over a background region on slices
at 0, ±10 and ±20 mm from the sphere plane, wherever the whole ROI fits in that region.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..io.image import Image, Mask
from .resolution import fit_sphere_fwhm


def _sphere_kernel(diameter_mm: float, spacing_xyz: Sequence[float]) -> np.ndarray:
    r = diameter_mm / 2
    half = [int(math.ceil(r / s)) for s in reversed(spacing_xyz)]  # z, y, x
    zz, yy, xx = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, reversed(spacing_xyz))], indexing="ij")
    return ((zz**2 + yy**2 + xx**2) <= r**2).astype(float)


def sphere_mask(image: Image, centre_mm: Sequence[float], diameter_mm: float) -> np.ndarray:
    """Boolean array of the voxels whose centres lie inside a sphere (physical space; computed in a bounding box)."""
    out = np.zeros(image.spatial_shape, bool)
    c = np.asarray(centre_mm, float)
    ci = image.physical_to_index(c)
    reach = diameter_mm / 2 / min(image.spacing) + 1
    size = np.asarray(image.size)
    lo = np.clip(np.floor(ci - reach).astype(int), 0, size)
    hi = np.clip(np.ceil(ci + reach).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return out
    k, j, i = np.meshgrid(*(np.arange(lo[d], hi[d]) for d in (2, 1, 0)), indexing="ij")
    pts = image.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.linalg.norm(pts - c, axis=-1) <= diameter_mm / 2
    return out


def locate_spheres(image: Image, diameters_mm: Sequence[float], approx_centres_mm: Sequence[Sequence[float]] | None = None,
                   search_mm: float = 20.0) -> list[dict[str, float]]:
    """Sphere centres by template matching: the image is correlated with a sphere of each diameter and the
    maximum is taken within ``search_mm`` of the approximate centre (known phantom geometry), or, without
    approximate centres, the strongest separated maxima (largest sphere first)."""
    from scipy.signal import fftconvolve

    arr = np.asarray(image.array, float)
    found: list[dict[str, float]] = []
    taken = np.zeros(arr.shape, bool)
    order = np.argsort(diameters_mm)[::-1]
    for idx in order:
        d = float(diameters_mm[idx])
        kern = _sphere_kernel(d, image.spacing)
        score = fftconvolve(arr, kern / kern.sum(), mode="same")
        if approx_centres_mm is not None:
            allowed = sphere_mask(image, approx_centres_mm[idx], 2 * search_mm)
        else:
            allowed = ~taken
        score = np.where(allowed, score, -np.inf)
        k, j, i = np.unravel_index(int(np.argmax(score)), score.shape)
        centre = image.index_to_physical(np.array([i, j, k], float))  # voxel precision; fit_sphere_fwhm refines
        found.append({"diameter_mm": d, "x_mm": float(centre[0]), "y_mm": float(centre[1]), "z_mm": float(centre[2]),
                      "index": int(idx)})
        taken |= sphere_mask(image, centre, d + 2 * search_mm)
    return sorted(found, key=lambda s: s["index"])


def background_rois(image: Image, region: np.ndarray, diameter_mm: float, plane_z_mm: float,
                    offsets_mm: Sequence[float] = (-20.0, -10.0, 0.0, 10.0, 20.0), per_slice: int = 12) -> list[np.ndarray]:
    """Up to ``per_slice`` x len(offsets) spherical background ROIs (boolean arrays) of ``diameter_mm`` whose
    every voxel lies in ``region``, spread by farthest-point sampling on each slice."""
    from scipy.ndimage import distance_transform_edt

    inside = distance_transform_edt(region, sampling=tuple(reversed(image.spacing)))
    fits = inside > diameter_mm / 2
    rois = []
    k_all = np.arange(image.spatial_shape[0])
    zs = image.index_to_physical(np.stack([np.zeros_like(k_all), np.zeros_like(k_all), k_all], axis=-1).astype(float))[:, 2]
    for off in offsets_mm:
        k = int(np.argmin(np.abs(zs - (plane_z_mm + off))))
        cand = np.argwhere(fits[k])  # (j, i)
        if cand.size == 0:
            continue
        chosen = [cand[len(cand) // 2]]
        dist = np.linalg.norm((cand - chosen[0]) * np.array(image.spacing[1::-1]), axis=1)
        while len(chosen) < per_slice and dist.max() > diameter_mm:
            nxt = cand[int(np.argmax(dist))]
            chosen.append(nxt)
            dist = np.minimum(dist, np.linalg.norm((cand - nxt) * np.array(image.spacing[1::-1]), axis=1))
        for j, i in chosen:
            centre = image.index_to_physical(np.array([i, j, k], float))
            rois.append(sphere_mask(image, centre, diameter_mm) & region)
    return rois


def nema_analysis(image: Image, spheres: Sequence[dict[str, float]], background_region: np.ndarray,
                  sphere_concentration: float, background_concentration: float, lung_region: np.ndarray | None = None,
                  body_region: np.ndarray | None = None, true_total_activity_bq: float | None = None,
                  fit_resolution: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-sphere table (Q_H, N, RC_mean, RC_max, fitted FWHM) and phantom-wide summary.

    ``spheres``: dicts with ``diameter_mm`` and centre ``x_mm, y_mm, z_mm`` (from ``locate_spheres`` or the known
    geometry). ``background_region``: boolean array of pure background (water) voxels. Concentrations in the
    image's units.
    """
    arr = np.asarray(image.array, float)
    ratio = sphere_concentration / background_concentration
    rows = []
    plane = float(np.median([s["z_mm"] for s in spheres]))
    all_spheres = np.zeros(arr.shape, bool)
    for s in spheres:
        all_spheres |= sphere_mask(image, (s["x_mm"], s["y_mm"], s["z_mm"]), s["diameter_mm"])
    bg_means_all = []
    for s in spheres:
        centre = (s["x_mm"], s["y_mm"], s["z_mm"])
        voi = sphere_mask(image, centre, s["diameter_mm"])
        ch = float(arr[voi].mean())
        rois = background_rois(image, background_region, s["diameter_mm"], plane)
        means = np.array([arr[r].mean() for r in rois if r.any()])
        bg_means_all.append(means)
        cb = float(means.mean())
        row: dict[str, Any] = {"diameter_mm": s["diameter_mm"], "voxels": int(voi.sum()), "c_sphere": ch, "c_background": cb,
                               "n_background_rois": int(means.size), "contrast_recovery_qh": (ch / cb - 1) / (ratio - 1),
                               "background_variability": float(means.std(ddof=1) / cb) if means.size > 1 else math.nan,
                               "rc_mean": ch / sphere_concentration, "rc_max": float(arr[voi].max()) / sphere_concentration}
        if fit_resolution:
            valid = ~(all_spheres & ~voi)
            if body_region is not None:
                valid &= body_region
            if lung_region is not None:
                valid &= ~lung_region
            try:
                fit = fit_sphere_fwhm(image, centre, s["diameter_mm"], valid=valid)
                row["fwhm_mm"] = fit["fwhm_mm"]
            except (ValueError, RuntimeError):
                row["fwhm_mm"] = math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    bg_vals = arr[background_region]
    summary: dict[str, float] = {"background_mean": float(bg_vals.mean()), "background_cov": float(bg_vals.std(ddof=1) / bg_vals.mean()),
                                 "background_recovery": float(bg_vals.mean() / background_concentration)}
    cb_all = float(np.concatenate(bg_means_all).mean()) if bg_means_all else float(bg_vals.mean())
    if lung_region is not None and lung_region.any():
        from scipy.ndimage import distance_transform_edt

        core = distance_transform_edt(lung_region, sampling=tuple(reversed(image.spacing))) > 10.0
        core = core if core.any() else lung_region
        summary["lung_residual"] = float(arr[core].mean() / cb_all)
    if true_total_activity_bq is not None and body_region is not None:
        total = float(arr[body_region].sum() * image.voxel_volume / 1000.0)  # Bq/ml x ml
        summary["activity_recovery"] = total / true_total_activity_bq
    if fit_resolution and "fwhm_mm" in table:
        big = table[table["diameter_mm"] >= table["diameter_mm"].median()]["fwhm_mm"]
        summary["fwhm_mm_median"] = float(np.nanmedian(big)) if big.notna().any() else math.nan
    return table, summary


def analyse_nema_phantom(image: Image, phantom: Any, locate: bool = True, fit_resolution: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """``nema_analysis`` of a reconstruction of ``nmkit.phantoms.nema.NemaPhantom`` (truth and masks from it).

    ``locate=True`` finds the sphere centres in the image (template matching near the nominal positions)
    instead of using the nominal geometry."""
    m = phantom.masks
    spheres = [dict(s) for s in phantom.spheres]
    if locate:
        approx = [(s["x_mm"], s["y_mm"], s["z_mm"]) for s in spheres]
        found = locate_spheres(image, [s["diameter_mm"] for s in spheres], approx)
        for s, f in zip(spheres, found):
            s.update({k: f[k] for k in ("x_mm", "y_mm", "z_mm")})
    body = m.array > 0
    lung = m.binary("lung_insert")
    water = m.array >= 8  # background VOI + body water, spheres and lung excluded
    total = float(phantom.activity.array.sum() * phantom.activity.voxel_volume / 1000.0)
    return nema_analysis(image, spheres, water, phantom.sphere_bq_ml, phantom.background_bq_ml, lung_region=lung,
                         body_region=body, true_total_activity_bq=total, fit_resolution=fit_resolution)


def phantom_from_truth(masks: Mask, activity: Image) -> Any:
    """The truth ``analyse_nema_phantom`` needs, rebuilt from a saved label map and true activity image
    (as written by ``nmkit phantom nema``): spheres named ``sphere_<d>mm``, ``lung_insert``, ``background``."""
    import re
    from types import SimpleNamespace

    from ..errors import InputError

    if not masks.same_grid(activity):
        raise InputError(None, "the phantom label map and the true activity image are on different grids")
    spheres = []
    arr = masks.array
    for value, name in sorted(masks.labels.items()):
        m = re.fullmatch(r"sphere_(\d+(?:\.\d+)?)mm", name)
        if not m or not np.any(arr == value):
            continue
        k, j, i = np.nonzero(arr == value)
        centre = activity.index_to_physical(np.array([i.mean(), j.mean(), k.mean()]))
        spheres.append({"label": value, "diameter_mm": float(m.group(1)), "x_mm": float(centre[0]), "y_mm": float(centre[1]),
                        "z_mm": float(centre[2])})
    names = set(masks.labels.values())
    if not spheres or not {"lung_insert", "background"} <= names:
        raise InputError(None, f"label map needs sphere_<d>mm, lung_insert and background labels; it has {sorted(names)}")
    truth = np.asarray(activity.array, float)
    sphere_conc = float(np.median(np.concatenate([truth[arr == s["label"]] for s in spheres])))
    bg_conc = float(np.median(truth[masks.binary("background")]))
    return SimpleNamespace(masks=masks, spheres=spheres, activity=activity, sphere_bq_ml=sphere_conc, background_bq_ml=bg_conc)
