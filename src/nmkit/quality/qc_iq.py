"""PET/SPECT image quality of a real NEMA NU 2 / IEC 61675-1 body phantom scan, found automatically.

Pipeline (``analyse_iq``):

1. ``locate_iec_phantom``: the body (smoothed image above half the background level, holes filled per slice), the
   lung insert (the cold cylinder inside the body; its axis is the median of the per-slice centroids), the sphere
   plane (slice with the most activity on the 57.2 mm ring around the lung axis) and the orientation: a 2D template
   of the six spheres (60 degrees apart, both handednesses, 1 degree steps) is correlated with the sphere plane.
   This handles a phantom off-centre, rotated in plane by any angle, or mirrored (feet/head first).
2. ``fit_sphere``: each sphere's centre (sub-voxel), blur (FWHM) and activity are fitted with a blurred hot sphere
   inside a cold wall (glass, ``wall_mm``) in a warm background: closed form, voxel values averaged over the voxel.
3. NEMA NU 2-2018 section 7.4: 2D circular ROIs of the sphere diameters on the central slice (sphere ROIs at the
   fitted centres), 12 background ROIs of 37 mm on the central slice and at +-10, +-20 mm (60 per size, the
   smaller ones concentric), percent contrast Q_H,j, background variability N_j and lung residual dC_lung.
4. EARL: RCmax (hottest voxel), RCmean (A50: voxels connected to the maximum above 50 % of the background-adapted
   maximum) and RCpeak (1 ml sphere placed to maximise the mean) against the sphere concentration, with the
   EARL1 and EARL2 (EANM Research Ltd., 2019) acceptance bands.

The sphere concentration comes from the user (``sphere_conc``/``bg_conc`` or ``ratio``); when absent, it is estimated
from the fitted signal of the largest sphere (as pynemaiqpet does) and every output says so (``activity_source``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.image import Image
from .resolution import SIGMA_TO_FWHM, blurred_sphere

log = logging.getLogger(__name__)

NEMA_DIAMETERS_MM = (37.0, 28.0, 22.0, 17.0, 13.0, 10.0)  # largest first, counter-/clockwise 60 degrees apart
RING_RADIUS_MM = 57.2
LUNG_DIAMETER_MM = 50.0
ROI_OFFSETS_MM = (-20.0, -10.0, 0.0, 10.0, 20.0)
PEAK_VOLUME_ML = 1.0

#: EARL acceptance bands (min, max) per sphere diameter (mm), from the EARL FDG-PET/CT accreditation specifications
#: (EARL1 2010; EARL2 2019, Kaalep et al. EJNMMI 2018). RCpeak bands exist for EARL2 only.
EARL_BANDS: dict[str, dict[str, dict[float, tuple[float, float]]]] = {
    "EARL1": {
        "rc_max": {37: (0.95, 1.16), 28: (0.91, 1.13), 22: (0.83, 1.09), 17: (0.73, 1.01), 13: (0.59, 0.85), 10: (0.34, 0.57)},
        "rc_mean": {37: (0.76, 0.89), 28: (0.72, 0.85), 22: (0.63, 0.78), 17: (0.57, 0.73), 13: (0.44, 0.60), 10: (0.27, 0.43)},
    },
    "EARL2": {
        "rc_max": {37: (1.05, 1.29), 28: (1.01, 1.26), 22: (1.01, 1.32), 17: (1.00, 1.38), 13: (0.85, 1.22), 10: (0.52, 0.88)},
        "rc_mean": {37: (0.85, 1.00), 28: (0.82, 0.97), 22: (0.80, 0.99), 17: (0.76, 0.97), 13: (0.63, 0.86), 10: (0.39, 0.61)},
        "rc_peak": {37: (0.99, 1.07), 28: (0.95, 1.07), 22: (0.90, 1.09), 17: (0.75, 0.99), 13: (0.45, 0.69), 10: (0.27, 0.41)},
    },
}


@dataclass
class PhantomGeometry:
    """Where the phantom is: lung axis (x, y mm), sphere plane z (mm), ring angle of the largest sphere and handedness."""

    lung_x_mm: float
    lung_y_mm: float
    plane_z_mm: float
    angle_deg: float
    handedness: int  # +1: sizes decrease counter-clockwise in (x, y); -1: clockwise
    background: float  # rough background level (image units)
    body_area_mm2: float
    lung_area_mm2: float
    score: float
    sphere_guess_mm: list[tuple[float, float, float]] = field(default_factory=list)


# ----- helpers ------------------------------------------------------------------------------------
def _check_axial(image: Image) -> None:
    if image.ndim_spatial != 3 or image.array.ndim != 3:
        raise InputError(None, f"image quality needs a 3D volume, got shape {image.array.shape}")
    d = image.direction_matrix
    if abs(abs(d[2, 2]) - 1) > 1e-3 or abs(abs(d[0, 0]) - 1) > 1e-3:
        raise InputError(None, "image is not an axial volume aligned with the scanner axes; resample it first")
    if image.array.shape[0] < 8:
        raise InputError(None, f"only {image.array.shape[0]} slices: a truncated series? the IEC phantom needs >= 8 slices")


def _xyz_axes(image: Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical x (per column), y (per row), z (per slice) coordinates of an axis-aligned image."""
    nz, ny, nx = image.array.shape
    zero = np.zeros
    xs = image.index_to_physical(np.stack([np.arange(nx), zero(nx), zero(nx)], -1).astype(float))[:, 0]
    ys = image.index_to_physical(np.stack([zero(ny), np.arange(ny), zero(ny)], -1).astype(float))[:, 1]
    zs = image.index_to_physical(np.stack([zero(nz), zero(nz), np.arange(nz)], -1).astype(float))[:, 2]
    return xs, ys, zs


def _background_level(arr: np.ndarray) -> float:
    """Mode-like background: median of the voxels above 20 % of the 99.5th percentile (hot spheres are few voxels)."""
    top = float(np.percentile(arr, 99.5))
    if not np.isfinite(top) or top <= 0:
        raise InputError(None, "image has no positive values: not an activity image of a phantom")
    vals = arr[arr > 0.2 * top]
    return float(np.median(vals))


def _sphere_template(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, angle: float, hand: int,
                     diameters: Sequence[float]) -> np.ndarray:
    """2D plane with discs of the given diameters on the ring (weights: 1 per disc, normalised by area)."""
    out = np.zeros((len(ys), len(xs)))
    for i, d in enumerate(diameters):
        t = math.radians(angle + hand * 60.0 * i)
        sx, sy = cx + RING_RADIUS_MM * math.cos(t), cy + RING_RADIUS_MM * math.sin(t)
        disc = (xs[None, :] - sx) ** 2 + (ys[:, None] - sy) ** 2 <= (d / 2) ** 2
        if disc.any():
            out[disc] += 1.0 / math.sqrt(disc.sum())
    return out


def locate_iec_phantom(image: Image, diameters: Sequence[float] = NEMA_DIAMETERS_MM) -> PhantomGeometry:
    """Find the IEC body phantom, its lung insert, sphere plane and in-plane orientation (see module docstring).

    Raises InputError with the reason when the image does not look like an IEC body phantom."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter, label

    _check_axial(image)
    arr = np.nan_to_num(np.asarray(image.array, float))
    sp = np.asarray(image.spacing, float)
    xs, ys, zs = _xyz_axes(image)
    sm = gaussian_filter(arr, sigma=(4.0 / sp[2], 4.0 / sp[1], 4.0 / sp[0]))
    bg = _background_level(sm)
    warm = sm > 0.5 * bg
    lab, n = label(warm)
    if n == 0:
        raise InputError(None, "no phantom body found (no connected region above half the background level)")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    pix = sp[0] * sp[1]
    cx_list, cy_list, areas, lung_areas, zk = [], [], [], [], []
    for k in range(arr.shape[0]):
        if body[k].sum() * pix < 20000:  # < 200 cm2: not a body slice
            continue
        filled = binary_fill_holes(body[k])
        holes = filled & ~body[k]
        hl, hn = label(holes)
        if hn == 0:
            continue
        hs = np.bincount(hl.ravel())
        hs[0] = 0
        big = hl == int(np.argmax(hs))
        a = big.sum() * pix
        if not 0.4 * math.pi * 25**2 <= a <= 2.0 * math.pi * 25**2:
            continue
        jj, ii = np.nonzero(big)
        cx_list.append(float(xs[ii].mean()))
        cy_list.append(float(ys[jj].mean()))
        areas.append(filled.sum() * pix)
        lung_areas.append(a)
        zk.append(k)
    if len(zk) < 3:
        raise InputError(None, "no IEC body phantom found: no cold lung insert (~50 mm cylinder) inside a warm body on "
                               f"3 or more slices (found on {len(zk)}); is this a phantom scan, and is it axial?")
    cx, cy = float(np.median(cx_list)), float(np.median(cy_list))
    body_area = float(np.median(areas))
    if not 30000 <= body_area <= 90000:
        raise InputError(None, f"body cross-section {body_area / 100:.0f} cm2 is not that of the IEC body phantom (~600 cm2)")
    # sphere plane: hottest slice on the ring annulus (relative to the background)
    r2 = (xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2
    ring = (r2 >= (RING_RADIUS_MM - 20) ** 2) & (r2 <= (RING_RADIUS_MM + 20) ** 2)
    excess = np.clip(sm[:, ring] - bg, 0, None).sum(axis=1)
    excess[[k for k in range(arr.shape[0]) if k not in set(zk)]] = 0
    kp = int(np.argmax(excess))
    if excess[kp] <= 0:
        raise InputError(None, "no hot spheres found on the ring around the lung insert (no activity above background)")
    # refine the plane as the excess-weighted mean slice around the maximum
    win = [k for k in range(max(kp - 6, 0), min(kp + 7, arr.shape[0]))]
    w = excess[win]
    plane_z = float(np.sum(zs[win] * w) / w.sum())
    reach = min(plane_z - zs.min(), zs.max() - plane_z)
    if reach < 25.0:
        raise InputError(None, f"the image ends {reach:.0f} mm from the sphere plane (z = {plane_z:.0f} mm); the NEMA ROIs "
                               "need +-20 mm and the spheres +-18.5 mm: a truncated series?")
    plane = sm[kp] - bg
    best = (-np.inf, 0.0, 1)
    for hand in (1, -1):
        for ang in np.arange(0.0, 360.0, 2.0):
            score = float(np.sum(plane * _sphere_template(xs, ys, cx, cy, ang, hand, diameters)))
            if score > best[0]:
                best = (score, float(ang), hand)
    score, ang, hand = best
    for a in np.arange(ang - 2.0, ang + 2.01, 0.5):
        s = float(np.sum(plane * _sphere_template(xs, ys, cx, cy, a, hand, diameters)))
        if s > score:
            score, ang = s, float(a)
    guess = []
    for i in range(len(diameters)):
        t = math.radians(ang + hand * 60.0 * i)
        guess.append((cx + RING_RADIUS_MM * math.cos(t), cy + RING_RADIUS_MM * math.sin(t), plane_z))
    return PhantomGeometry(lung_x_mm=cx, lung_y_mm=cy, plane_z_mm=plane_z, angle_deg=ang % 360.0, handedness=hand,
                           background=bg, body_area_mm2=body_area, lung_area_mm2=float(np.median(lung_areas)),
                           score=score, sphere_guess_mm=guess)


# ----- sphere model and fit ---------------------------------------------------------------------------
def walled_sphere(r: np.ndarray, radius: float, sigma: float, signal: float, background: float, wall_mm: float) -> np.ndarray:
    """Blurred hot sphere (``signal``) with a cold wall of ``wall_mm`` in a ``background``: closed form (mm)."""
    inner = blurred_sphere(r, radius, sigma)
    outer = blurred_sphere(r, radius + wall_mm, sigma) if wall_mm > 0 else inner
    return background * (1.0 - outer) + signal * inner


def _voxel_offsets(spacing: Sequence[float], n: int = 3) -> np.ndarray:
    """Sub-voxel sample offsets (n^3, 3) in mm (x, y, z): voxel values are averages of the model over the voxel."""
    g = (np.arange(n) + 0.5) / n - 0.5
    ox, oy, oz = np.meshgrid(g * spacing[0], g * spacing[1], g * spacing[2], indexing="ij")
    return np.stack([ox.ravel(), oy.ravel(), oz.ravel()], -1)


def model_voxels(pts: np.ndarray, centre: np.ndarray, radius: float, sigma: float, signal: float, background: float,
                 wall_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """The walled-sphere model averaged over each voxel centred at ``pts`` (n, 3)."""
    off = _voxel_offsets(spacing)
    r = np.linalg.norm(pts[:, None, :] + off[None] - centre, axis=-1)
    return walled_sphere(r, radius, sigma, signal, background, wall_mm).mean(axis=1)


def _neighbourhood(image: Image, centre: np.ndarray, reach_mm: float) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Voxel centres (n, 3 mm), values and the (z, y, x) box slices within ``reach_mm`` of ``centre`` (a box)."""
    ijk = image.physical_to_index(centre)
    sp = np.asarray(image.spacing)
    reach = np.ceil(reach_mm / sp).astype(int) + 1
    size = np.asarray(image.size)
    lo = np.clip(np.round(ijk).astype(int) - reach, 0, size)
    hi = np.clip(np.round(ijk).astype(int) + reach + 1, 0, size)
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    kk, jj, ii = np.meshgrid(*(np.arange(lo[d], hi[d]) for d in (2, 1, 0)), indexing="ij")
    pts = image.index_to_physical(np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float))
    vals = np.asarray(image.array, float)[box].ravel()
    return pts, vals, box


def fit_sphere(image: Image, centre_mm: Sequence[float], diameter_mm: float, background: float, wall_mm: float = 1.0,
               signal: float | None = None, fwhm_mm: float | None = None, search_mm: float = 12.0,
               fit_diameter: bool = False, fix_centre: bool = False) -> dict[str, float]:
    """Sub-voxel centre, FWHM (mm) and signal of one sphere by a least-squares fit of the walled-sphere model.

    ``background`` is fixed (from the background ROIs); ``signal`` and ``fwhm_mm`` may be fixed too (small spheres
    with the signal of the largest); ``fit_diameter`` fits the diameter too (best with ``fwhm_mm`` fixed: blur and
    size trade off in small spheres). Voxels within radius + 15 mm of the centre are used."""
    from scipy.optimize import least_squares

    c0 = np.asarray(centre_mm, float)
    radius = diameter_mm / 2
    reach = radius + 15.0
    pts, vals, _ = _neighbourhood(image, c0, reach + search_mm)
    # start at the intensity-weighted centroid of the hot part near the guess (robust to a coarse guess)
    near = np.linalg.norm(pts - c0, axis=1) <= radius + search_mm
    hot = near & (vals > background + 0.5 * (vals[near].max() - background))
    if hot.sum() >= 1 and not fix_centre:
        w = vals[hot] - background
        c0 = (pts[hot] * w[:, None]).sum(0) / w.sum()
    keep = np.linalg.norm(pts - c0, axis=1) <= reach
    pts, vals = pts[keep], vals[keep]
    scale = max(float(vals.max() - background), 1e-9)
    names = ([] if fix_centre else ["dx", "dy", "dz"]) + (["sigma"] if fwhm_mm is None else []) + (["signal"] if signal is None else []) \
        + (["radius"] if fit_diameter else [])

    def unpack(p: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        d = dict(zip(names, p))
        sig = d.get("sigma", (fwhm_mm or 0) / SIGMA_TO_FWHM)
        s = d.get("signal", signal)
        shift = np.array([d.get("dx", 0.0), d.get("dy", 0.0), d.get("dz", 0.0)])
        return c0 + shift, float(sig), float(s), float(d.get("radius", radius))

    def residual(p: np.ndarray) -> np.ndarray:
        c, sig, s, rad = unpack(p)
        return (model_voxels(pts, c, rad, sig, s, background, wall_mm, image.spacing) - vals) / scale

    best = None
    for sig0 in ((2.0, 4.0) if fwhm_mm is None else (0.0,)):
        n0 = 0 if fix_centre else 3
        p0 = [0.0] * n0 + ([sig0] if fwhm_mm is None else []) + ([background + 1.5 * scale] if signal is None else []) \
            + ([radius] if fit_diameter else [])
        lo = [-search_mm] * n0 + ([0.2] if fwhm_mm is None else []) + ([0.0] if signal is None else []) + ([1.0] if fit_diameter else [])
        hi = [search_mm] * n0 + ([30.0] if fwhm_mm is None else []) + ([np.inf] if signal is None else []) \
            + ([2.0 * radius + 5.0] if fit_diameter else [])
        res = least_squares(residual, p0, bounds=(lo, hi), x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    c, sig, s, rad = unpack(best.x)
    return {"x_mm": float(c[0]), "y_mm": float(c[1]), "z_mm": float(c[2]), "fwhm_mm": sig * SIGMA_TO_FWHM,
            "signal": s, "diameter_mm": 2 * rad, "rms_residual": float(np.sqrt(np.mean(best.fun**2)) * scale),
            "voxels_fitted": int(vals.size)}


# ----- EARL recovery -------------------------------------------------------------------------------
def earl_values(image: Image, centre_mm: Sequence[float], diameter_mm: float, background: float) -> dict[str, float]:
    """Max, A50 mean (background-adapted 50 % isocontour connected to the max) and 1 ml peak near one sphere."""
    from scipy.ndimage import label

    c = np.asarray(centre_mm, float)
    radius = diameter_mm / 2
    pts, vals, box = _neighbourhood(image, c, radius + 12.0)
    sub = np.asarray(image.array, float)[box]
    dist = np.linalg.norm(pts - c, axis=1).reshape(sub.shape)
    inside = dist <= radius + max(image.spacing)  # the max is searched in the sphere plus one voxel
    vmax = float(sub[inside].max())
    thr = background + 0.5 * (vmax - background)
    above = (sub >= thr) & (dist <= radius + 10.0)
    lab, _ = label(above)
    kmax = np.unravel_index(int(np.argmax(np.where(inside, sub, -np.inf))), sub.shape)
    comp = lab == lab[kmax]
    peak = peak_value(image, c, radius)
    return {"max": vmax, "a50_mean": float(sub[comp].mean()), "a50_voxels": int(comp.sum()), "a50_threshold": float(thr),
            "peak": peak}


def peak_value(image: Image, centre_mm: np.ndarray, radius_mm: float, volume_ml: float = PEAK_VOLUME_ML) -> float:
    """Highest mean of a ``volume_ml`` sphere (voxel-area weighted, supersampled) with its centre within the sphere."""
    from scipy.ndimage import correlate

    sp = np.asarray(image.spacing, float)
    rp = (3 * volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)  # 6.2 mm for 1 ml
    half = np.ceil(rp / sp + 0.5).astype(int)
    n = 5
    g = [(np.arange(-h * n, (h + 1) * n) + 0.5) / n - 0.5 for h in half]  # sub-samples in voxel units
    wx = np.zeros((2 * half[2] + 1, 2 * half[1] + 1, 2 * half[0] + 1))
    zz, yy, xx = np.meshgrid(g[2] * sp[2], g[1] * sp[1], g[0] * sp[0], indexing="ij")
    inside = (zz**2 + yy**2 + xx**2) <= rp**2
    iz = np.round(zz / sp[2]).astype(int) + half[2]
    iy = np.round(yy / sp[1]).astype(int) + half[1]
    ix = np.round(xx / sp[0]).astype(int) + half[0]
    np.add.at(wx, (iz[inside], iy[inside], ix[inside]), 1.0)
    wx /= wx.sum()
    pts, _, box = _neighbourhood(image, centre_mm, radius_mm + rp + 2 * sp.max())
    sub = np.asarray(image.array, float)[box]
    conv = correlate(sub, wx, mode="nearest")
    dist = np.linalg.norm(pts - centre_mm, axis=1).reshape(sub.shape)
    return float(conv[dist <= max(radius_mm, sp.max())].max())


def earl_check(diameter_mm: float, measure: str, value: float) -> dict[str, Any]:
    """Band limits and pass/fail for one RC value in EARL1 and EARL2 (None where the band is not defined)."""
    out: dict[str, Any] = {}
    for version, bands in EARL_BANDS.items():
        band = bands.get(measure, {}).get(int(round(diameter_mm)))
        key = f"{measure}_{version.lower()}"
        if band is None or not np.isfinite(value):
            out[f"{key}_min"], out[f"{key}_max"], out[f"{key}_pass"] = math.nan, math.nan, None
        else:
            out[f"{key}_min"], out[f"{key}_max"] = band
            out[f"{key}_pass"] = bool(band[0] <= value <= band[1])
    return out


# ----- NEMA 2D ROIs -------------------------------------------------------------------------------
def disc_weights(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, diameter_mm: float, n: int = 5) -> np.ndarray:
    """Fraction of each pixel inside a circle (supersampled n x n): partial-pixel 2D ROI weights."""
    dx = abs(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = abs(ys[1] - ys[0]) if len(ys) > 1 else 1.0
    g = (np.arange(n) + 0.5) / n - 0.5
    acc = np.zeros((len(ys), len(xs)))
    r2 = (diameter_mm / 2) ** 2
    for oy in g:
        for ox in g:
            acc += ((xs[None, :] + ox * dx - cx) ** 2 + (ys[:, None] + oy * dy - cy) ** 2) <= r2
    return acc / n**2


def _slice_value(arr2d: np.ndarray, w: np.ndarray) -> float:
    s = w.sum()
    return float((arr2d * w).sum() / s) if s > 0 else math.nan


def background_roi_centres(body2d: np.ndarray, xs: np.ndarray, ys: np.ndarray, avoid: Sequence[tuple[float, float, float]],
                           n: int = 12, roi_mm: float = 37.0, edge_mm: float = 15.0) -> list[tuple[float, float]]:
    """NEMA background ROI centres: ``n`` points evenly spread along the curve ``edge_mm`` + ROI radius inside the
    body outline, leaving out points whose ROI would come within 5 mm of a sphere or the lung insert (``avoid``:
    (x, y, radius) circles)."""
    from scipy.ndimage import distance_transform_edt
    from skimage import measure

    sp = (abs(ys[1] - ys[0]), abs(xs[1] - xs[0]))
    depth = distance_transform_edt(body2d, sampling=sp)
    contours = measure.find_contours(depth, edge_mm + roi_mm / 2)
    if not contours:
        return []
    path = max(contours, key=len)  # (row, col) float
    px = np.interp(path[:, 1], np.arange(len(xs)), xs)
    py = np.interp(path[:, 0], np.arange(len(ys)), ys)
    ok = np.ones(len(px), bool)
    for ax, ay, ar in avoid:
        ok &= np.hypot(px - ax, py - ay) > ar + roi_mm / 2 + 5.0
    seg = np.hypot(np.diff(px), np.diff(py))
    arc = np.concatenate([[0.0], np.cumsum(seg * ok[1:] * ok[:-1])])  # arc length counted on allowed stretches only
    total = arc[-1]
    if total <= 0:
        return []
    targets = (np.arange(n) + 0.5) * total / n
    out = []
    for t in targets:
        i = int(np.searchsorted(arc, t))
        i = min(max(i, 0), len(px) - 1)
        while not ok[i] and i < len(px) - 1:
            i += 1
        out.append((float(px[i]), float(py[i])))
    return out


# ----- the analysis -------------------------------------------------------------------------------
@dataclass
class IQSettings:
    """Inputs of ``analyse_iq`` besides the image."""

    diameters_mm: tuple[float, ...] = NEMA_DIAMETERS_MM
    sphere_conc: float | None = None  # image units
    bg_conc: float | None = None
    ratio: float | None = None
    wall_mm: float = 1.0
    a50_background: float | None = None  # background for the A50 isocontour; default: the NEMA background ROI mean

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse_iq(image: Image, settings: IQSettings | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sphere table (centres, fitted FWHM, Q_H, N, RCmax, RCmean(A50), RCpeak, EARL bands) and summary."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    cfg = settings or IQSettings()
    if len(cfg.diameters_mm) != 6:
        raise InputError(None, f"--diameters needs 6 values (mm), got {len(cfg.diameters_mm)}")
    diam = tuple(sorted((float(d) for d in cfg.diameters_mm), reverse=True))
    geo = locate_iec_phantom(image, diam)
    arr = np.nan_to_num(np.asarray(image.array, float))
    xs, ys, zs = _xyz_axes(image)
    sp = np.asarray(image.spacing, float)
    # background level for the fits: mean of the central-slice 37 mm background ROIs (first pass at the guesses)
    sm = gaussian_filter(arr, sigma=(4.0 / sp[2], 4.0 / sp[1], 4.0 / sp[0]))
    body = sm > 0.5 * geo.background
    avoid = [(g[0], g[1], d / 2 + 2.0) for g, d in zip(geo.sphere_guess_mm, diam)] + [(geo.lung_x_mm, geo.lung_y_mm, LUNG_DIAMETER_MM / 2 + 2.0)]
    k0 = int(np.argmin(np.abs(zs - geo.plane_z_mm)))
    body2d = binary_fill_holes(body[k0])
    centres_bg = background_roi_centres(body2d, xs, ys, avoid)
    if len(centres_bg) < 12:
        raise InputError(None, f"only {len(centres_bg)} of the 12 NEMA background ROIs fit in the phantom's central slice")
    bg_fit = float(np.mean([_slice_value(arr[k0], disc_weights(xs, ys, x, y, 37.0)) for x, y in centres_bg]))
    # sphere fits: the largest sphere fits the signal and blur; the others fit their own too (blur reported per sphere)
    fits = []
    for g, d in zip(geo.sphere_guess_mm, diam):
        try:
            fits.append(fit_sphere(image, g, d, bg_fit, wall_mm=cfg.wall_mm))
        except (ValueError, RuntimeError) as exc:  # pragma: no cover - least_squares rarely fails
            raise InputError(None, f"sphere {d:g} mm could not be fitted near {tuple(round(v, 1) for v in g)}: {exc}")
    for f, g, d in zip(fits, geo.sphere_guess_mm, diam):
        moved = math.dist((f["x_mm"], f["y_mm"], f["z_mm"]), g)
        if moved > 12.0:
            raise InputError(None, f"sphere {d:g} mm fitted {moved:.0f} mm from where the phantom geometry puts it: "
                                   "not an IEC body phantom, or sphere diameters (--diameters) wrong")
    # the diameters as the image shows them (blur fixed at the median of the three largest spheres' fits): a check
    # that the spheres found are the ones expected
    fwhm_ref = float(np.median([f["fwhm_mm"] for f in fits[:3]]))
    for f, d in zip(fits, diam):
        f["fitted_diameter_mm"] = fit_sphere(image, (f["x_mm"], f["y_mm"], f["z_mm"]), d, bg_fit, wall_mm=cfg.wall_mm,
                                             fwhm_mm=fwhm_ref, fit_diameter=True, fix_centre=True)["diameter_mm"]
    plane_z = float(np.median([f["z_mm"] for f in fits]))
    # activities
    if cfg.sphere_conc is not None and cfg.bg_conc is not None:
        a_h, a_b, source = float(cfg.sphere_conc), float(cfg.bg_conc), "given (sphere and background concentrations)"
    elif cfg.ratio is not None:
        a_b = None  # set from the background ROIs below
        a_h, source = math.nan, f"given ratio {cfg.ratio:g}:1; background concentration = measured background"
    else:
        a_h, a_b = fits[0]["signal"], None
        source = "ESTIMATED: sphere concentration = fitted signal of the largest sphere, background = measured background"
    # NEMA 2D ROIs: 60 background ROIs per size, sphere ROIs on the central slice
    kc = int(np.argmin(np.abs(zs - plane_z)))
    avoid = [(f["x_mm"], f["y_mm"], d / 2 + 2.0) for f, d in zip(fits, diam)] + [(geo.lung_x_mm, geo.lung_y_mm, LUNG_DIAMETER_MM / 2 + 2.0)]
    centres_bg = background_roi_centres(binary_fill_holes(body[kc]), xs, ys, avoid)
    slices = []
    for off in ROI_OFFSETS_MM:
        k = int(np.argmin(np.abs(zs - (plane_z + off))))
        if abs(zs[k] - (plane_z + off)) > sp[2] or not binary_fill_holes(body[k])[body2d].mean() > 0.95:
            raise InputError(None, f"the slice {off:+g} mm from the sphere plane is outside the phantom or the image "
                                   "(truncated series?)")
        slices.append(k)
    bg_means = {d: np.array([[_slice_value(arr[k], disc_weights(xs, ys, x, y, d)) for x, y in centres_bg] for k in slices]).ravel()
                for d in diam}
    c_b37 = float(bg_means[diam[0]].mean())
    if a_b is None:
        a_b = c_b37
        if cfg.ratio is not None:
            a_h = cfg.ratio * a_b
    ratio = a_h / a_b
    rows = []
    for f, d in zip(fits, diam):
        c = np.array([f["x_mm"], f["y_mm"], f["z_mm"]])
        c_h = _slice_value(arr[kc], disc_weights(xs, ys, f["x_mm"], f["y_mm"], d))
        cb = float(bg_means[d].mean())
        sd = float(bg_means[d].std(ddof=1))
        e = earl_values(image, c, d, cb if cfg.a50_background is None else float(cfg.a50_background))
        row: dict[str, Any] = {
            "diameter_mm": d, "fitted_diameter_mm": f["fitted_diameter_mm"], "x_mm": f["x_mm"], "y_mm": f["y_mm"],
            "z_mm": f["z_mm"], "fwhm_mm": f["fwhm_mm"],
            "fitted_signal": f["signal"], "c_hot_roi": c_h, "c_background_roi": cb, "n_background_rois": int(bg_means[d].size),
            "contrast_q_h_percent": 100.0 * (c_h / cb - 1.0) / (ratio - 1.0) if ratio != 1 else math.nan,
            "background_variability_n_percent": 100.0 * sd / cb,
            "max": e["max"], "a50_mean": e["a50_mean"], "a50_voxels": e["a50_voxels"], "peak_1ml": e["peak"],
            "rc_max": e["max"] / a_h, "rc_mean": e["a50_mean"] / a_h, "rc_peak": e["peak"] / a_h,
        }
        for m in ("rc_max", "rc_mean", "rc_peak"):
            row.update(earl_check(d, m, row[m]))
        rows.append(row)
    table = pd.DataFrame(rows)
    # lung residual: 30 mm ROI on the lung insert on every slice with the whole body cross-section, over C_B,37
    lung_vals = []
    for k in range(arr.shape[0]):
        if binary_fill_holes(body[k])[body2d].mean() > 0.95 and abs(zs[k] - plane_z) <= 70.0:
            lung_vals.append(_slice_value(arr[k], disc_weights(xs, ys, geo.lung_x_mm, geo.lung_y_mm, 30.0)))
    summary: dict[str, Any] = {
        "activity_source": source, "ratio_estimated": cfg.sphere_conc is None and cfg.ratio is None,
        "sphere_concentration": a_h, "background_concentration": a_b, "sphere_to_background_ratio": ratio,
        "background_37mm_mean": c_b37, "lung_residual_percent": 100.0 * float(np.mean(lung_vals)) / c_b37 if lung_vals else math.nan,
        "lung_slices": len(lung_vals), "lung_x_mm": geo.lung_x_mm, "lung_y_mm": geo.lung_y_mm, "sphere_plane_z_mm": plane_z,
        "orientation_deg": geo.angle_deg, "handedness": geo.handedness, "background_roi_centres_mm": [list(c) for c in centres_bg],
        "roi_slices_z_mm": [float(zs[k]) for k in slices], "wall_mm": cfg.wall_mm,
        "fwhm_mm_median_large": float(np.median(table["fwhm_mm"].iloc[:3])),
    }
    for version in ("earl1", "earl2"):
        flags = [v for m in ("rc_max", "rc_mean", "rc_peak") for v in table[f"{m}_{version}_pass"] if v is not None]
        summary[f"{version}_pass"] = bool(all(flags)) if flags else None
    return table, summary


def analytic_rc(image: Image, centre_mm: Sequence[float], diameter_mm: float, fwhm_mm: float, sphere_conc: float,
                bg_conc: float, wall_mm: float) -> dict[str, float]:
    """RCmax and RCmean(A50) of the closed-form walled sphere sampled on ``image``'s grid (voxel-averaged)."""
    from scipy.ndimage import label

    c = np.asarray(centre_mm, float)
    pts, _, box = _neighbourhood(image, c, diameter_mm / 2 + 12.0)
    shape = tuple(s.stop - s.start for s in box)
    model = model_voxels(pts, c, diameter_mm / 2, fwhm_mm / SIGMA_TO_FWHM, sphere_conc, bg_conc, wall_mm, image.spacing)
    sub = model.reshape(shape)
    dist = np.linalg.norm(pts - c, axis=1).reshape(shape)
    inside = dist <= diameter_mm / 2 + max(image.spacing)
    vmax = float(sub[inside].max())
    thr = bg_conc + 0.5 * (vmax - bg_conc)
    lab, _ = label((sub >= thr) & (dist <= diameter_mm / 2 + 10.0))
    kmax = np.unravel_index(int(np.argmax(np.where(inside, sub, -np.inf))), shape)
    return {"rc_max": vmax / sphere_conc, "rc_mean": float(sub[lab == lab[kmax]].mean()) / sphere_conc}
