"""Sphere contrast of a SPECT (or PET) phantom with cold or hot spheres: Jaszczak (cold solid spheres) or an IEC-type
phantom (hot fillable spheres), found automatically in a real reconstruction.

Pipeline (``analyse_contrast``):

1. ``phantom_body``: the cylinder (smoothed image above half its 99.5th percentile, largest component, holes filled
   per slice). ``upright``: a phantom lying along y or x (its mid cross-section along the slices is a rectangle) is
   resliced so its axis is the slice axis, and the summary says so; any in-plane position or rotation is fine
   (nothing below depends on an in-plane direction).
2. ``locate_spheres``: matched filter per diameter, largest first: mean of the relative deviation from the body
   median in a ball of the sphere's diameter minus its mean in a shell 4-10 mm outside it (rods and other long
   structures are cold in the shell too and score low). The polarity (cold or hot) is the sign whose largest-sphere
   score is higher. The two largest spheres are searched in the whole body; the others within
   ``plane_tolerance_mm`` of their mean plane (Jaszczak and IEC spheres have their centres in one transverse
   plane), never overlapping a sphere already found. Each sphere's detectability is its score over the score's SD
   inside the body.
3. Each sphere is fitted (``qc_iq.fit_sphere``: blurred uniform sphere, voxel-averaged; cold spheres on the image
   mirrored about the background): the largest sphere's sub-voxel centre, FWHM (mm), signal and diameter as imaged;
   the other spheres' centres and diameters with the largest's blur (and signal) fixed.
4. NEMA-style 2D ROIs on the slice nearest each fitted centre: a disc of the sphere diameter (partial-pixel
   weights). Background C_B: mean of the body (more than ``edge_mm`` inside its edge) on the slices within +-20 mm
   of the sphere plane, minus balls of radius + 10 mm around every sphere (IEC: minus the lung insert too, a 35 mm
   radius cylinder about the centre of the sphere ring). Contrast (%): cold 100 (1 - C_S/C_B),
   hot 100 (C_S/C_B - 1); contrast recovery (%) 100 (C_S/C_B - 1)/(R - 1) with R the true sphere-to-background
   ratio (cold solid spheres: R = 0, so it equals the cold contrast; hot: given, or ESTIMATED as the fitted signal of
   the largest sphere over C_B, and every output says so).
5. The uniform part: slices away from the ends and the spheres whose voxel CoV is within 20 % of the lowest (the
   rod section of a Jaszczak is excluded by its structure), analysed by ``qc_spect.tomo_uniformity``: integral
   uniformity and noise (%).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.image import Image

log = logging.getLogger(__name__)

#: sphere sets (mm, largest first), polarity and sphere wall (mm) of the phantoms ``--phantom`` names: Data Spectrum
#: Standard Jaszczak (solid acrylic spheres 12.7-38.1 mm) and Deluxe Jaszczak (9.5-31.8 mm), IEC 61675-1 body phantom
#: (fillable glass spheres, 1 mm wall)
PHANTOMS: dict[str, dict[str, Any]] = {
    "jaszczak-standard": {"diameters_mm": (38.1, 31.8, 25.4, 19.1, 15.9, 12.7), "polarity": "cold", "wall_mm": 0.0},
    "jaszczak-deluxe": {"diameters_mm": (31.8, 25.4, 19.1, 15.9, 12.7, 9.5), "polarity": "cold", "wall_mm": 0.0},
    "iec": {"diameters_mm": (37.0, 28.0, 22.0, 17.0, 13.0, 10.0), "polarity": "hot", "wall_mm": 1.0,
            "central_exclusion_mm": 35.0},
}
JASZCZAK_DIAMETERS_MM = PHANTOMS["jaszczak-standard"]["diameters_mm"]
SHELL_GAP_MM = 4.0
SHELL_OUTER_MM = 10.0
BACKGROUND_HALF_HEIGHT_MM = 20.0
#: the largest sphere must stand this many score SDs out, else: not a sphere phantom (real Jaszczak 10.1, simulated
#: 15-18, real IEC PET 22; the Jaszczak's rod section alone 4.5)
MIN_DETECTABILITY = 6.0


@dataclass
class ContrastSettings:
    """Options of ``analyse_contrast`` (see module docstring)."""

    diameters_mm: tuple[float, ...] = JASZCZAK_DIAMETERS_MM
    polarity: str = "auto"  # cold | hot | auto
    ratio: float | None = None  # true sphere-to-background ratio (cold default 0, hot: estimated when None)
    wall_mm: float = 0.0  # cold wall of fillable spheres (hot IEC: 1.0); solid spheres: 0
    plane_tolerance_mm: float = 10.0
    edge_mm: float = 15.0
    central_exclusion_mm: float = 0.0  # IEC: the 50 mm lung insert + 10 mm, about the sphere ring's centre
    uniform_slices: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- phantom and spheres -------------------------------------------------------------------------
def _volume(image: Image) -> np.ndarray:
    arr = np.asarray(image.array, float)
    if arr.ndim != 3 or image.ndim_spatial != 3:
        raise InputError(None, f"sphere contrast needs a reconstructed 3D volume, got shape {arr.shape}")
    d = image.direction_matrix
    if not np.allclose(np.abs(d), np.eye(3), atol=1e-3):
        raise InputError(None, "image is not aligned with the scanner axes (oblique direction cosines); resample it first")
    if arr.shape[0] < 8:
        raise InputError(None, f"only {arr.shape[0]} slices: a truncated series? sphere contrast needs >= 8 slices")
    if not np.isfinite(arr).all():
        raise InputError(None, "volume has non-finite values")
    return arr


def _fill_fraction(mask2d: np.ndarray) -> float:
    """Fraction of the bounding box the mask fills: a disc pi/4 = 0.79, a rectangle (cylinder seen sideways) ~1."""
    jj, ii = np.nonzero(mask2d)
    if jj.size == 0:
        return math.nan
    return float(mask2d.sum() / ((jj.max() - jj.min() + 1) * (ii.max() - ii.min() + 1)))


def phantom_body(arr: np.ndarray) -> np.ndarray:
    """The phantom (largest bright component, holes filled per slice); one-line errors when it is no cylinder along z."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    from .qc_gamma import _largest

    sm = gaussian_filter(arr, 1.0)
    top = float(np.percentile(sm, 99.5))
    if not top > 0:
        raise InputError(None, "volume holds no activity: not a phantom scan")
    body = _largest(sm > 0.5 * top)
    body = np.stack([binary_fill_holes(s) for s in body])
    nz, ny, nx = body.shape
    if body.sum() < 0.01 * body.size or body.sum() < 200:
        raise InputError(None, "no phantom found: the bright region is too small (a point source or a non-phantom image?)")
    return body


def cylinder_axis(body: np.ndarray) -> int:
    """The array axis the phantom cylinder lies along (0: slices, 1: rows/y, 2: columns/x): its mid cross-section
    across the axis is a disc (fills pi/4 of its bounding box), along it a rectangle (fills ~1)."""
    nz, ny, nx = body.shape
    fills = [_fill_fraction(m) for m in (body[nz // 2], body[:, ny // 2, :], body[:, :, nx // 2])]
    if fills[0] > 0.88 and min(fills[1:]) < 0.88:
        return 1 if fills[1] < fills[2] else 2
    return 0


def upright(image: Image) -> tuple[Image, str | None]:
    """The image with the phantom's axis along the slices: unchanged, or resliced (an exact permutation of the voxels,
    new origin 0 and identity directions) with a note saying so, when the phantom lies along y or x."""
    arr = _volume(image)
    axis = cylinder_axis(phantom_body(arr))
    if axis == 0:
        return image, None
    sx, sy, sz = image.spacing
    new, spacing = (np.moveaxis(arr, 1, 0), (sx, sz, sy)) if axis == 1 else (np.moveaxis(arr, 2, 0), (sy, sz, sx))
    out = Image(array=np.ascontiguousarray(new), spacing=spacing, modality=image.modality, units=image.units, meta=image.meta)
    if cylinder_axis(phantom_body(np.asarray(out.array, float))) != 0:  # pragma: no cover - a permutation cannot fail
        raise InputError(None, "the phantom's axis could not be brought along the slices")
    along = "y (rows)" if axis == 1 else "x (columns)"
    return out, (f"the phantom lies along {along}: analysed in planes across its axis; positions are in that "
                 "resliced frame (z along the phantom axis, origin at the first voxel)")


def _ball_kernels(spacing_zyx: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ball (radius) and shell (radius + gap .. radius + outer) kernels on the voxel grid (mm)."""
    n = np.ceil((radius + SHELL_OUTER_MM) / spacing_zyx).astype(int)
    z, y, x = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(n, spacing_zyx)], indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    ball = (r <= radius).astype(float)
    shell = ((r > radius + SHELL_GAP_MM) & (r <= radius + SHELL_OUTER_MM)).astype(float)
    if ball.sum() == 0:
        ball[tuple(n)] = 1.0
    return ball / ball.sum(), shell / shell.sum()


def score_map(rel: np.ndarray, spacing_zyx: np.ndarray, diameter_mm: float, rel_fft: Any = None) -> np.ndarray:
    """Matched-filter score (ball mean minus shell mean of ``rel``) for a sphere of ``diameter_mm``: one FFT
    convolution with the difference kernel (``rel_fft``: ``rfftn`` of ``rel`` zero-padded by 64 voxels per axis)."""
    from scipy import fft

    ball, shell = _ball_kernels(spacing_zyx, diameter_mm / 2)
    kernel = ball - shell
    shape = tuple(n + 64 for n in rel.shape)
    if any(k > 64 for k in kernel.shape):
        raise InputError(None, f"a {diameter_mm:g} mm sphere spans more than 64 voxels: voxels too small for this filter")
    spec = fft.rfftn(rel, shape) if rel_fft is None else rel_fft
    full = fft.irfftn(spec * fft.rfftn(kernel, shape), shape)
    h = [k // 2 for k in kernel.shape]
    return full[h[0]:h[0] + rel.shape[0], h[1]:h[1] + rel.shape[1], h[2]:h[2] + rel.shape[2]]


def locate_spheres(arr: np.ndarray, body: np.ndarray, spacing_zyx: Sequence[float], diameters_mm: Sequence[float],
                   polarity: str = "auto", plane_tolerance_mm: float = 10.0) -> tuple[list[dict[str, float]], str]:
    """Voxel centres (k, j, i), score and detectability of each sphere (largest first) and the polarity used."""
    from scipy.ndimage import distance_transform_edt

    sp = np.asarray(spacing_zyx, float)
    base = float(np.median(arr[body]))
    if not base > 0:
        raise InputError(None, "the phantom's median value is not positive")
    rel = np.where(body, arr / base - 1.0, 0.0)
    from scipy import fft

    rel_fft = fft.rfftn(rel, tuple(n + 64 for n in rel.shape))
    # distance to the phantom's edge, the volume's first and last slices counting as edge (a cut sphere is no sphere)
    inside = distance_transform_edt(np.pad(body, ((1, 1), (0, 0), (0, 0))), sampling=sp)[1:-1]
    diam = sorted((float(d) for d in diameters_mm), reverse=True)
    asked = polarity
    if polarity == "auto":
        s_big = score_map(rel, sp, diam[0], rel_fft)
        ok = inside > diam[0] / 2 + 3.0
        cold, hot = float((-s_big)[ok].max(initial=-np.inf)), float(s_big[ok].max(initial=-np.inf))
        polarity = "cold" if cold >= hot else "hot"
        log.info("polarity: largest-sphere score cold %.3f, hot %.3f -> %s", cold, hot, polarity)
    sign = -1.0 if polarity == "cold" else 1.0
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(arr.shape, sp)], indexing="ij", sparse=True)
    found: list[dict[str, float]] = []
    for n, d in enumerate(diam):
        r = d / 2
        score = sign * score_map(rel, sp, d, rel_fft)
        ok = inside > r + 3.0
        if not ok.any():
            raise InputError(None, f"the phantom is too small for a {d:g} mm sphere")
        noise = float(score[ok].std())
        for f in found:
            dist2 = sum((g - c * s) ** 2 for g, c, s in zip(grid, (f["k"], f["j"], f["i"]), sp))
            ok &= dist2 > (r + f["diameter_mm"] / 2 + 3.0) ** 2
        if n >= 2:
            plane = float(np.mean([f["k"] for f in found[:2]])) * sp[0]
            ok &= np.abs(grid[0] - plane) <= plane_tolerance_mm
        if not ok.any():
            raise InputError(None, f"no room left for the {d:g} mm sphere: are the --diameters right?")
        s = np.where(ok, score, -np.inf)
        k, j, i = np.unravel_index(int(np.argmax(s)), s.shape)
        found.append({"diameter_mm": d, "k": int(k), "j": int(j), "i": int(i), "score": float(s[k, j, i]),
                      "detectability": float(s[k, j, i] / noise) if noise > 0 else math.inf})
    if found[0]["detectability"] < MIN_DETECTABILITY:
        kind = "cold or hot" if asked == "auto" else polarity
        raise InputError(None, f"no {kind} spheres found (the largest stands out only {found[0]['detectability']:.1f} "
                               "SD): not a sphere phantom, or the spheres are outside the volume")
    return found, polarity


# ----- measures -------------------------------------------------------------------------------------
def _fit(image: Image, arr: np.ndarray, centre_mm: np.ndarray, d: float, bg: float, polarity: str, wall_mm: float,
         fwhm_mm: float | None = None, signal: float | None = None, fit_diameter: bool = False,
         fix_centre: bool = False) -> dict[str, float]:
    """``qc_iq.fit_sphere`` on the image, mirrored about ``2 bg`` for cold spheres (the fit expects a hot sphere)."""
    from .qc_iq import fit_sphere

    work = image if polarity == "hot" else image.with_array(2.0 * bg - arr)
    if signal is not None and polarity == "cold":
        signal = 2.0 * bg - signal
    f = fit_sphere(work, centre_mm, d, bg, wall_mm=wall_mm, fwhm_mm=fwhm_mm, signal=signal, fit_diameter=fit_diameter,
                   fix_centre=fix_centre, search_mm=8.0)
    if polarity == "cold":
        f["signal"] = 2.0 * bg - f["signal"]
    return f


def _centre(fit: dict[str, float]) -> np.ndarray:
    return np.array([fit["x_mm"], fit["y_mm"], fit["z_mm"]])


def ring_centre(spheres: Sequence[dict[str, float]]) -> tuple[float, float] | None:
    """Centre (row j, column i; voxel units) of the circle through the sphere centres (algebraic least squares), or
    None with fewer than 3 spheres or collinear ones."""
    if len(spheres) < 3:
        return None
    j = np.array([s["jf"] for s in spheres])
    i = np.array([s["if"] for s in spheres])
    a = np.stack([2 * j, 2 * i, np.ones_like(j)], 1)
    sol, *_ = np.linalg.lstsq(a, j**2 + i**2, rcond=None)
    if not np.all(np.isfinite(sol)) or np.linalg.matrix_rank(a) < 3:
        return None
    return float(sol[0]), float(sol[1])


def _background(arr: np.ndarray, body: np.ndarray, spacing_zyx: np.ndarray, plane_k: float,
                spheres: Sequence[dict[str, float]], edge_mm: float,
                central_exclusion_mm: float = 0.0) -> tuple[np.ndarray, float, float]:
    """Background region mask, its mean and its voxel CoV (%) around the sphere plane (see module docstring);
    ``central_exclusion_mm``: radius of a cylinder about the sphere ring's centre left out (the IEC lung insert)."""
    from scipy.ndimage import distance_transform_edt

    sp = spacing_zyx
    region = np.zeros_like(body)
    kk = np.arange(arr.shape[0])
    for k in kk[np.abs(kk - plane_k) * sp[0] <= BACKGROUND_HALF_HEIGHT_MM]:
        region[k] = distance_transform_edt(body[k], sampling=sp[1:]) > edge_mm
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(arr.shape, sp)], indexing="ij", sparse=True)
    for s in spheres:
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, (s["kf"] * sp[0], s["jf"] * sp[1], s["if"] * sp[2])))
        region &= dist2 > (s["diameter_mm"] / 2 + 10.0) ** 2
    centre = ring_centre(spheres) if central_exclusion_mm > 0 else None
    if centre is not None:
        region &= (grid[1] - centre[0] * sp[1]) ** 2 + (grid[2] - centre[1] * sp[2]) ** 2 > central_exclusion_mm**2
    vals = arr[region]
    if vals.size < 50:
        raise InputError(None, "too little background around the spheres for a background value (< 50 voxels)")
    return region, float(vals.mean()), float(100 * vals.std(ddof=1) / vals.mean())


def _disc_value(image: Image, arr: np.ndarray, centre_mm: Sequence[float], d: float) -> tuple[float, float, int]:
    """Mean (partial-pixel disc of diameter d on the nearest slice), extreme pixel inside it and the slice index."""
    from .qc_iq import _xyz_axes, disc_weights

    xs, ys, zs = _xyz_axes(image)
    k = int(np.argmin(np.abs(zs - centre_mm[2])))
    w = disc_weights(xs, ys, centre_mm[0], centre_mm[1], d)
    mean = float((arr[k] * w).sum() / w.sum())
    inside = arr[k][w >= 0.5]
    return mean, (float(inside.min()), float(inside.max())) if inside.size else (mean, mean), k


def uniform_slices(arr: np.ndarray, body: np.ndarray, spacing_zyx: np.ndarray, spheres: Sequence[dict[str, float]],
                   end_fraction: float = 0.1) -> list[int]:
    """Slices of the uniform part: full cross-section, not at the ends, away from the spheres, voxel CoV within
    20 % of the lowest (structure such as rods raises the CoV)."""
    from scipy.ndimage import distance_transform_edt

    sp = spacing_zyx
    areas = body.sum(axis=(1, 2))
    full = np.nonzero(areas >= 0.8 * np.median(areas[areas > 0]))[0]
    drop = max(1, int(round(end_fraction * full.size)))
    cand = full[drop:-drop] if full.size > 2 * drop + 2 else full
    keep, covs = [], []
    for k in cand:
        if any(abs(k - s["kf"]) * sp[0] <= s["diameter_mm"] / 2 + 10.0 for s in spheres):
            continue
        dist = distance_transform_edt(body[k], sampling=sp[1:])
        v = arr[k][dist > 0.25 * dist.max()]
        keep.append(int(k))
        covs.append(float(v.std() / v.mean()))
    if not keep:
        return []
    lim = 1.2 * min(covs)
    return [k for k, c in zip(keep, covs) if c <= lim]


def _check_ratio(ratio: float | None, polarity: str) -> None:
    if ratio is not None and ((polarity == "cold") != (ratio < 1.0) or ratio < 0 or ratio == 1.0):
        raise InputError(None, f"--ratio {ratio:g} does not fit {polarity} spheres (cold: 0 <= R < 1, hot: R > 1)")


def _estimated_or_given_ratio(cfg: ContrastSettings, polarity: str, largest_signal: float, bg: float) -> tuple[float, str]:
    if cfg.ratio is not None:
        return float(cfg.ratio), "given (--ratio)"
    if polarity == "cold":
        return 0.0, "cold solid spheres: true sphere activity 0 (R = 0)"
    return largest_signal / bg, "ESTIMATED: fitted signal of the largest sphere / background (give --ratio)"


def analyse_contrast(image: Image, settings: ContrastSettings | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sphere table (centre, fitted FWHM and diameter, ROI means, contrast, contrast recovery) and summary."""
    from .qc_iq import _xyz_axes
    from .qc_spect import tomo_uniformity

    cfg = settings or ContrastSettings()
    if len(cfg.diameters_mm) < 1 or any(not (2.0 <= d <= 80.0) for d in cfg.diameters_mm):
        raise InputError(None, f"--diameters must be 1 or more sphere diameters between 2 and 80 mm, got {list(cfg.diameters_mm)}")
    if cfg.polarity not in ("auto", "cold", "hot"):
        raise InputError(None, f"--spheres must be cold, hot or auto, got {cfg.polarity!r}")
    if cfg.polarity != "auto":
        _check_ratio(cfg.ratio, cfg.polarity)
    image, resliced = upright(image)
    arr = _volume(image)
    sp = np.asarray(image.spacing, float)[::-1]  # z, y, x
    body = phantom_body(arr)
    found, polarity = locate_spheres(arr, body, sp, cfg.diameters_mm, cfg.polarity, cfg.plane_tolerance_mm)
    _check_ratio(cfg.ratio, polarity)
    xs, ys, zs = _xyz_axes(image)
    for f in found:  # first background pass at the voxel centres
        f["kf"], f["jf"], f["if"] = float(f["k"]), float(f["j"]), float(f["i"])
    plane_k = float(np.median([f["k"] for f in found[:3]]))
    _, bg, _ = _background(arr, body, sp, plane_k, found, cfg.edge_mm, cfg.central_exclusion_mm)
    # the largest sphere: centre, blur and signal, then its diameter as imaged (blur and signal free); the others:
    # centre, then diameter, with the largest's blur and signal (small spheres trade size, blur and signal)
    fits: list[dict[str, float]] = []
    for n, f in enumerate(found):
        c = image.index_to_physical(np.array([f["i"], f["j"], f["k"]], float))
        fits.append(_fit(image, arr, c, f["diameter_mm"], bg, polarity, cfg.wall_mm,
                         fwhm_mm=None if n == 0 else fits[0]["fwhm_mm"], signal=None if n == 0 else fits[0]["signal"]))
    big = _fit(image, arr, _centre(fits[0]), found[0]["diameter_mm"], bg, polarity, cfg.wall_mm, fit_diameter=True,
               fix_centre=True)
    fwhm_ref = float(fits[0]["fwhm_mm"])
    for n, (f, g) in enumerate(zip(found, fits)):
        g["fitted_diameter_mm"] = big["diameter_mm"] if n == 0 else _fit(
            image, arr, _centre(g), f["diameter_mm"], bg, polarity, cfg.wall_mm, fwhm_mm=fwhm_ref, signal=big["signal"],
            fit_diameter=True, fix_centre=True)["diameter_mm"]
        f["if"], f["jf"], f["kf"] = (float(v) for v in image.physical_to_index(_centre(g)))
    _check_inside(found, arr.shape[0], sp[0])
    plane_k = float(np.median([f["kf"] for f in found[:3]]))
    region, bg, bg_cov = _background(arr, body, sp, plane_k, found, cfg.edge_mm, cfg.central_exclusion_mm)
    ratio, ratio_source = _estimated_or_given_ratio(cfg, polarity, fits[0]["signal"], bg)
    axis = _axis_at(body, plane_k, image)
    rows = []
    for f, g in zip(found, fits):
        c = (g["x_mm"], g["y_mm"], g["z_mm"])
        mean, (lo, hi), k = _disc_value(image, arr, c, f["diameter_mm"])
        extreme = lo if polarity == "cold" else hi
        q = mean / bg - 1.0
        rows.append({"diameter_mm": f["diameter_mm"], "x_mm": c[0], "y_mm": c[1], "z_mm": c[2], "roi_slice": k,
                     "ring_radius_mm": math.hypot(c[0] - axis[0], c[1] - axis[1]),
                     "angle_deg": math.degrees(math.atan2(c[1] - axis[1], c[0] - axis[0])),
                     "fitted_diameter_mm": g["fitted_diameter_mm"],
                     "detectability": f["detectability"], "c_sphere_roi": mean, "c_background": bg,
                     "c_extreme_voxel": extreme,
                     "contrast_percent": 100 * (-q if polarity == "cold" else q),
                     "extreme_contrast_percent": 100 * abs(extreme / bg - 1.0),
                     "contrast_recovery_percent": 100 * q / (ratio - 1.0)})
    table = pd.DataFrame(rows)
    summary = {"polarity": polarity, "spheres": len(table), "true_ratio": ratio, "ratio_source": ratio_source,
               "ratio_estimated": ratio_source.startswith("ESTIMATED"), "background_mean": bg,
               "background_cov_percent": bg_cov, "background_voxels": int(region.sum()),
               "sphere_plane_z_mm": float(np.median(table["z_mm"].iloc[:3])), "phantom_axis_x_mm": axis[0],
               "phantom_axis_y_mm": axis[1], "phantom_radius_mm": axis[2], "fwhm_largest_sphere_mm": fwhm_ref,
               "fitted_signal_largest_sphere": float(fits[0]["signal"])}
    if resliced:
        summary["resliced"] = resliced
    for _, r in table.iterrows():
        key = f"{r['diameter_mm']:g}".replace(".", "p")
        summary[f"contrast_{key}mm_percent"] = float(r["contrast_percent"])
        summary[f"contrast_recovery_{key}mm_percent"] = float(r["contrast_recovery_percent"])
    summary.update(_uniform_part(image, arr, body, sp, found, cfg, tomo_uniformity))
    return table, summary


def _check_inside(found: Sequence[dict[str, float]], nz: int, dz: float) -> None:
    """One-line error when a fitted sphere reaches past the first or last slice (a truncated series)."""
    for f in found:
        r = f["diameter_mm"] / 2 / dz
        if f["kf"] - r < -0.5 or f["kf"] + r > nz - 0.5:
            raise InputError(None, f"the {f['diameter_mm']:g} mm sphere reaches past the volume's first or last slice: "
                                   "a truncated series?")


def _axis_at(body: np.ndarray, plane_k: float, image: Image) -> tuple[float, float, float]:
    """Phantom axis (x, y mm) and radius (mm) from the body's cross-section on the sphere plane."""
    k = int(np.clip(round(plane_k), 0, body.shape[0] - 1))
    jj, ii = np.nonzero(body[k])
    c = image.index_to_physical(np.array([ii.mean(), jj.mean(), k], float))
    area = body[k].sum() * image.spacing[0] * image.spacing[1]
    return float(c[0]), float(c[1]), float(math.sqrt(area / math.pi))


def _uniform_part(image: Image, arr: np.ndarray, body: np.ndarray, sp: np.ndarray, found: Sequence[dict[str, float]],
                  cfg: ContrastSettings, tomo_uniformity: Any) -> dict[str, Any]:
    """Integral uniformity and noise (%) of the uniform slices (automatic or ``cfg.uniform_slices``)."""
    if cfg.uniform_slices is not None:
        a, b = cfg.uniform_slices
        slices = list(range(a, b))
    else:
        slices = uniform_slices(arr, body, sp, found)
    if len(slices) < 2:
        return {"uniform_slices": slices, "uniform_note": "no uniform section found (give --uniform-slices A:B)"}
    table, s = tomo_uniformity(image, slices=slices)
    return {"uniform_slices": [int(v) for v in table["slice"]],
            "integral_uniformity_percent_mean": s["integral_uniformity_percent_mean"],
            "integral_uniformity_percent_max": s["integral_uniformity_percent_max"],
            "noise_cov_percent_mean": s["noise_cov_percent_mean"], "uniform_mean_value": s["mean_value"]}


# ----- figure --------------------------------------------------------------------------------------
def contrast_figure(image: Image, table: pd.DataFrame, summary: dict[str, Any]):
    """Sphere slice with the ROIs, a profile through the largest sphere, and contrast vs diameter (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from .qc_iq import _xyz_axes

    arr = np.asarray(image.array, float)
    xs, ys, zs = _xyz_axes(image)
    k = int(np.argmin(np.abs(zs - summary["sphere_plane_z_mm"])))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    ax = axes[0]
    ax.imshow(arr[k], cmap="gray", extent=(xs[0], xs[-1], ys[-1], ys[0]), origin="upper")
    for _, r in table.iterrows():
        ax.add_patch(Circle((r["x_mm"], r["y_mm"]), r["diameter_mm"] / 2, fill=False, color="tab:red", lw=1.2))
        ax.annotate(f"{r['diameter_mm']:g}", (r["x_mm"], r["y_mm"] - r["diameter_mm"] / 2 - 2), color="tab:red",
                    fontsize=7, ha="center")
    cx, cy, rad = summary["phantom_axis_x_mm"], summary["phantom_axis_y_mm"], summary["phantom_radius_mm"]
    ax.add_patch(Circle((cx, cy), rad - 15.0, fill=False, color="tab:blue", lw=0.8, ls="--"))
    ax.set_xlim(cx - rad - 15, cx + rad + 15)
    ax.set_ylim(cy + rad + 15, cy - rad - 15)
    ax.set_xlabel("x (mm, LPS)")
    ax.set_ylabel("y (mm, LPS)")
    ax.set_title(f"sphere plane z = {zs[k]:.1f} mm (red: sphere ROIs; blue: background edge)", fontsize=9)
    big = table.iloc[0]
    j = int(np.argmin(np.abs(ys - big["y_mm"])))
    kk = int(big["roi_slice"])
    axes[1].plot(xs, arr[kk, j], "k-", lw=1)
    axes[1].axhline(summary["background_mean"], color="tab:blue", ls="--", lw=1, label="background C_B")
    axes[1].axvspan(big["x_mm"] - big["diameter_mm"] / 2, big["x_mm"] + big["diameter_mm"] / 2, color="tab:red",
                    alpha=0.15, label=f"{big['diameter_mm']:g} mm sphere")
    axes[1].set_xlim(cx - rad - 15, cx + rad + 15)
    axes[1].set_xlabel("x (mm)")
    axes[1].set_ylabel(f"value ({image.units or 'image units'})")
    axes[1].set_title("profile along x through the largest sphere", fontsize=9)
    axes[1].legend(fontsize=8)
    axes[2].plot(table["diameter_mm"], table["contrast_percent"], "ko-", label="contrast C (%)")
    axes[2].plot(table["diameter_mm"], table["contrast_recovery_percent"], "s--", color="tab:green", mfc="none",
                 label="contrast recovery (%)")
    axes[2].set_xlabel("sphere diameter (mm)")
    axes[2].set_ylabel("%")
    axes[2].set_ylim(bottom=0)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    axes[2].set_title(f"{summary['polarity']} spheres; R = {summary['true_ratio']:.3g} ({summary['ratio_source']})",
                      fontsize=8)
    fig.tight_layout()
    return fig
