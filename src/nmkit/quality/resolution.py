"""Spatial resolution (FWHM) of a reconstructed image from spheres, edges and lines.

Three estimators, all by least-squares fits of closed-form models (scipy.optimize.curve_fit):

* ``fit_sphere_fwhm`` — a uniform sphere of known (or fitted) radius convolved with an isotropic 3D Gaussian,
  fitted to the voxel values against their distance from the sphere centre (radial profile). The closed form
  of the blurred sphere is exact (no numerical convolution), so small spheres work too.
* ``edge_fwhm`` — an error-function edge-spread function fitted to a profile across an edge.
* ``line_fwhm`` — a Gaussian line-spread function fitted to a profile across a line source.

FWHM = 2 sqrt(2 ln 2) sigma. Voxel sampling adds a box blur of variance v^2/12 per axis; ``voxel_correction``
removes it (quadrature) so that the FWHM describes the system blur rather than blur plus voxelisation.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.special import erf

from ..io.image import Image

SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def blurred_sphere(r: np.ndarray, radius: float, sigma: float, amplitude: float = 1.0, background: float = 0.0) -> np.ndarray:
    """Value at distance ``r`` from the centre of a uniform sphere (``amplitude`` above ``background``)
    convolved with an isotropic 3D Gaussian of standard deviation ``sigma`` (all in mm)."""
    r = np.maximum(np.asarray(r, dtype=float), 1e-6)
    s = max(float(sigma), 1e-6)
    a = (radius - r) / (math.sqrt(2) * s)
    b = (radius + r) / (math.sqrt(2) * s)
    core = 0.5 * (erf(a) + erf(b))
    tail = s / (r * math.sqrt(2 * math.pi)) * (np.exp(-a**2) - np.exp(-b**2))
    return background + amplitude * (core - tail)


def _voxel_corrected(sigma: float, spacing: Sequence[float], correct: bool) -> float:
    if not correct:
        return sigma
    box = float(np.mean(np.asarray(spacing, float) ** 2)) / 12.0
    return math.sqrt(max(sigma**2 - box, 0.0))


def _box_samples(image: Image, centre_mm: np.ndarray, max_radius_mm: float,
                 valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Physical positions (n, 3) and values of every voxel within ``max_radius_mm`` of ``centre_mm``
    (only voxels where the boolean array ``valid`` is True, when given)."""
    idx_c = image.physical_to_index(centre_mm)  # (i, j, k)
    reach = np.ceil(max_radius_mm / np.asarray(image.spacing)).astype(int) + 1
    shape_xyz = np.asarray(image.size)
    lo = np.clip(np.floor(idx_c).astype(int) - reach, 0, shape_xyz - 1)
    hi = np.clip(np.floor(idx_c).astype(int) + reach + 1, 1, shape_xyz)
    ii, jj, kk = np.meshgrid(*(np.arange(lo[d], hi[d]) for d in range(3)), indexing="ij")
    pts = image.index_to_physical(np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(float))
    vals = np.asarray(image.array, float)[kk.ravel(), jj.ravel(), ii.ravel()]
    keep = np.linalg.norm(pts - centre_mm, axis=1) <= max_radius_mm
    if valid is not None:
        keep &= np.asarray(valid, bool)[kk.ravel(), jj.ravel(), ii.ravel()]
    return pts[keep], vals[keep]


def radial_samples(image: Image, centre_mm: Sequence[float], max_radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from ``centre_mm`` and values of every voxel within ``max_radius_mm``."""
    c = np.asarray(centre_mm, float)
    pts, vals = _box_samples(image, c, max_radius_mm)
    return np.linalg.norm(pts - c, axis=1), vals


def fit_sphere_fwhm(image: Image, centre_mm: Sequence[float], diameter_mm: float | None = None,
                    max_radius_mm: float | None = None, background: float | None = None, fit_centre: bool = True,
                    voxel_correction: bool = True, valid: np.ndarray | None = None) -> dict[str, float]:
    """FWHM (mm) from a blurred-sphere fit to the voxels around ``centre_mm``.

    ``diameter_mm`` known (phantom spheres): blur, amplitude, background (and the centre, ``fit_centre``) are
    fitted; unknown: the radius is fitted too. ``background`` fixes the background level (e.g. from background
    ROIs). The fit uses voxels within ``max_radius_mm`` (default radius + 15 mm, keep neighbours out) where
    ``valid`` (boolean array on the image grid) is True: pass e.g. the phantom's water region plus the sphere
    so that walls, air and other inserts do not bias the background.
    Returns fwhm_mm, sigma_mm, amplitude, background, radius_mm, the fitted centre and the RMS residual.
    """
    from scipy.optimize import least_squares

    c0 = np.asarray(centre_mm, float)
    guess_r = diameter_mm / 2 if diameter_mm else 10.0
    reach = max_radius_mm or (guess_r + 15.0)
    pts, v = _box_samples(image, c0, reach, valid)
    if v.size < 10:
        raise ValueError(f"only {v.size} voxels within {reach} mm of {tuple(c0)}: sphere outside the image?")
    r0 = np.linalg.norm(pts - c0, axis=1)
    outer = r0 > guess_r + 8
    bg0 = float(np.median(v[outer])) if outer.any() else float(v.min())
    amp0 = max(float(v.max() - bg0), 1e-6)
    fix_r = diameter_mm / 2 if diameter_mm else None
    fix_bg = background
    # parameter vector: [dx, dy, dz]? [radius]? sigma, amplitude, [background]
    names = (["dx", "dy", "dz"] if fit_centre else []) + ([] if fix_r else ["radius"]) + ["sigma", "amp"] + ([] if fix_bg is not None else ["bg"])
    start = {"dx": 0.0, "dy": 0.0, "dz": 0.0, "radius": guess_r, "sigma": 3.0, "amp": amp0, "bg": bg0}
    lo = {"dx": -reach / 2, "dy": -reach / 2, "dz": -reach / 2, "radius": 0.5, "sigma": 0.05, "amp": 0.0, "bg": -np.inf}
    hi = {"dx": reach / 2, "dy": reach / 2, "dz": reach / 2, "radius": 200.0, "sigma": 100.0, "amp": np.inf, "bg": np.inf}
    scale = max(abs(amp0), 1e-12)

    def unpack(p: np.ndarray) -> dict[str, float]:
        d = dict(zip(names, p))
        d.setdefault("dx", 0.0), d.setdefault("dy", 0.0), d.setdefault("dz", 0.0)
        d.setdefault("radius", fix_r), d.setdefault("bg", fix_bg)
        return d

    def residual(p: np.ndarray) -> np.ndarray:
        d = unpack(p)
        r = np.linalg.norm(pts - (c0 + [d["dx"], d["dy"], d["dz"]]), axis=1)
        return (blurred_sphere(r, d["radius"], d["sigma"], d["amp"], d["bg"]) - v) / scale

    best = None
    for sigma0 in (2.0, 5.0, 10.0):  # a few starts guard against a local minimum at the wrong blur
        start["sigma"] = sigma0
        res = least_squares(residual, [start[n] for n in names], bounds=([lo[n] for n in names], [hi[n] for n in names]), x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    d = unpack(best.x)
    sigma_sys = _voxel_corrected(float(d["sigma"]), image.spacing, voxel_correction)
    centre = c0 + [d["dx"], d["dy"], d["dz"]]
    rms = float(np.sqrt(np.mean(best.fun**2))) * scale
    return {"fwhm_mm": sigma_sys * SIGMA_TO_FWHM, "sigma_mm": sigma_sys, "amplitude": float(d["amp"]), "background": float(d["bg"]),
            "radius_mm": float(d["radius"]), "rms_residual": rms, "x_mm": float(centre[0]), "y_mm": float(centre[1]), "z_mm": float(centre[2])}


def line_profile(image: Image, start_mm: Sequence[float], end_mm: Sequence[float], step_mm: float | None = None,
                 order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positions (mm from ``start_mm``) and interpolated values along a straight line in physical space."""
    from scipy.ndimage import map_coordinates

    a, b = np.asarray(start_mm, float), np.asarray(end_mm, float)
    length = float(np.linalg.norm(b - a))
    step = step_mm or min(image.spacing) / 4
    t = np.arange(0.0, length + 1e-9, step)
    pts = a + (b - a)[None, :] * (t / length)[:, None]
    ijk = image.physical_to_index(pts)
    vals = map_coordinates(np.asarray(image.array, float), ijk[:, ::-1].T, order=order, mode="nearest")
    return t, vals


def edge_fwhm(positions: np.ndarray, values: np.ndarray, voxel_mm: float | None = None) -> dict[str, float]:
    """FWHM of the line-spread function from an edge-spread profile (error-function fit).

    ``voxel_mm``: remove the voxel box blur (v^2/12) in quadrature.
    """
    from scipy.optimize import curve_fit

    x = np.asarray(positions, float)
    y = np.asarray(values, float)
    lo, hi = float(np.median(y[: max(3, y.size // 8)])), float(np.median(y[-max(3, y.size // 8):]))
    mid = 0.5 * (lo + hi)
    x0 = float(x[np.argmin(np.abs(y - mid))])

    def esf(xx, low, high, centre, sigma):
        return low + (high - low) * 0.5 * (1 + erf((xx - centre) / (math.sqrt(2) * sigma)))

    p, _ = curve_fit(esf, x, y, p0=[lo, hi, x0, 3.0], bounds=([-np.inf, -np.inf, x.min(), 0.01], [np.inf, np.inf, x.max(), 200.0]),
                     maxfev=5000)
    sigma = abs(float(p[3]))
    if voxel_mm:
        sigma = math.sqrt(max(sigma**2 - voxel_mm**2 / 12.0, 0.0))
    return {"fwhm_mm": sigma * SIGMA_TO_FWHM, "sigma_mm": sigma, "edge_mm": float(p[2]), "low": float(p[0]), "high": float(p[1])}


def line_fwhm(positions: np.ndarray, values: np.ndarray, voxel_mm: float | None = None) -> dict[str, float]:
    """FWHM of a line-spread profile (Gaussian plus constant background fit)."""
    from scipy.optimize import curve_fit

    x = np.asarray(positions, float)
    y = np.asarray(values, float)
    bg = float(np.median(np.concatenate([y[: max(2, y.size // 10)], y[-max(2, y.size // 10):]])))
    peak = int(np.argmax(y))

    def gauss(xx, amp, centre, sigma, base):
        return base + amp * np.exp(-0.5 * ((xx - centre) / sigma) ** 2)

    p, _ = curve_fit(gauss, x, y, p0=[y[peak] - bg, x[peak], 3.0, bg], maxfev=5000)
    sigma = abs(float(p[2]))
    if voxel_mm:
        sigma = math.sqrt(max(sigma**2 - voxel_mm**2 / 12.0, 0.0))
    return {"fwhm_mm": sigma * SIGMA_TO_FWHM, "sigma_mm": sigma, "centre_mm": float(p[1]), "amplitude": float(p[0])}
