"""NEMA / IEC body phantom (IEC 61675-1, NEMA NU 2) in a voxel grid, its Tc-99m SPECT and both reconstructions.

Geometry (inner surfaces, mm, phantom frame with the lung-insert axis at x = y = 0 and the sphere plane at z = 0;
"anterior" is -y in LPS):

* body: D-shaped cross-section 294 x 224 mm - a 294 x 147 mm box on the posterior side and, anteriorly, a
  140 x 77 mm box flanked by two quarter circles of radius 77 mm centred at x = +-70 mm; 180 mm long
  (z from -110 to +70 mm, the sphere centres are 70 mm from the lid); 3 mm PMMA wall (300 x 230 mm outside);
* six spheres of 10, 13, 17, 22, 28, 37 mm inner diameter on a ring of radius 57.2 mm around the lung insert;
* lung insert: cylinder of 50 mm diameter along the whole length, no activity, low-density filling (-700 HU).

Voxels hold partial-volume fractions (each voxel is supersampled), so the activity truth, the mu map and the CT are
physically consistent. The grid is centred on the phantom's outer bounding box (the scanner axis); the CT is given on
the SPECT grid (HU: water 0, lung insert -700, PMMA walls +120, air -1000, 8 HU noise), as a resampled CTAC would be. Activities: background concentration (default 8 kBq/ml Tc-99m) and sphere-to-background ratio
(4:1 or 8:1). Everything is deterministic by seed (only the CT noise and the Poisson counts are random).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import DEVICE_HELP, device_option
from ..io.image import Image, Mask
from .spect_sim import MU_LUNG_140, MU_PMMA_140, MU_WATER_140, CameraModel

log = logging.getLogger(__name__)

SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
SPHERE_ANGLES_DEG = (150.0, 90.0, 30.0, -30.0, -90.0, -150.0)  # counter-clockwise from +x, seen from the feet, anterior up
RING_RADIUS_MM = 57.2
LUNG_RADIUS_MM = 25.0
BODY_Z_MM = (-110.0, 70.0)
WALL_MM = 3.0
SPHERE_WALL_MM = 1.0
GRID_CENTRE_MM = (0.0, 35.0, -20.0)  # centre of the phantom's outer bounding box in the phantom frame
HU_WATER, HU_LUNG, HU_PMMA, HU_AIR = 0.0, -700.0, 120.0, -1000.0


@dataclass
class NemaConfig:
    """Grid, activity and acquisition settings of a simulated NEMA IEC SPECT study."""

    n: int = 128  # transaxial matrix (n x n)
    nz: int = 128  # slices
    voxel_mm: float = 4.42  # isotropic voxel size (= projection pixel size)
    background_kbq_ml: float = 8.0
    sphere_ratio: float = 4.0
    supersample: int = 3
    ct_noise_hu: float = 8.0
    seed: int = 0
    osem_iterations: int = 4
    osem_subsets: int = 10
    osem_post_filter_mm: float = 10.0
    ctg_iterations: int = 8
    ctg_beta: float = 0.01
    camera: CameraModel = field(default_factory=CameraModel)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["camera"] = self.camera.as_dict()
        return d


@dataclass
class NemaPhantom:
    """The truth: activity (Bq/ml), mu map (1/mm at 140 keV), CT (HU), labelled masks and the sphere table."""

    activity: Image
    mu: Image
    ct: Image
    masks: Mask  # 1..6 spheres (by diameter), 7 lung insert, 8 background VOI, 9 body
    spheres: list[dict[str, float]]
    background_bq_ml: float
    sphere_bq_ml: float

    @property
    def activity_bq_per_voxel(self) -> np.ndarray:
        return self.activity.array.astype(np.float64) * self.activity.voxel_volume / 1000.0


def _grid_axes(n: int, nz: int, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Voxel-centre coordinates (x, y, z) of a grid centred on the phantom's bounding box, and the grid origin.

    The scanner axis (grid centre) is at y = +35 mm, z = -20 mm of the phantom frame, the middle of the outer body.
    """
    c = (np.arange(n) - (n - 1) / 2.0) * voxel
    ys = c + GRID_CENTRE_MM[1]
    cz = (np.arange(nz) - (nz - 1) / 2.0) * voxel + GRID_CENTRE_MM[2]
    return c, ys, cz, (float(c[0]), float(ys[0]), float(cz[0]))


def _sub_offsets(voxel: float, ss: int) -> np.ndarray:
    return ((np.arange(ss) + 0.5) / ss - 0.5) * voxel


def _inside_d_shape(x: np.ndarray, y_lps: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """Points inside the body cross-section, optionally grown by ``grow`` mm (the outer wall surface)."""
    ya = -y_lps  # anterior positive
    ax = np.abs(x)
    r = 77.0 + grow
    post = (ya < 0) & (ax <= 147.0 + grow) & (ya >= -147.0 - grow)
    ant_mid = (ya >= 0) & (ax <= 70.0) & (ya <= r)
    ant_arc = (ya >= 0) & (ax > 70.0) & ((ax - 70.0) ** 2 + ya**2 <= r**2)
    return post | ant_mid | ant_arc


def _fraction_2d(inside, xs: np.ndarray, ys: np.ndarray, voxel: float, ss: int) -> np.ndarray:
    """Area fraction of each (y, x) pixel inside a 2D shape, by ss x ss supersampling."""
    off = _sub_offsets(voxel, ss)
    acc = np.zeros((len(ys), len(xs)))
    for oy in off:
        for ox in off:
            acc += inside(xs[None, :] + ox, ys[:, None] + oy)
    return acc / ss**2


def _fraction_1d(lo: float, hi: float, zs: np.ndarray, voxel: float) -> np.ndarray:
    """Length fraction of each slice inside [lo, hi] (exact)."""
    a = np.clip(zs - voxel / 2, lo, hi)
    b = np.clip(zs + voxel / 2, lo, hi)
    return (b - a) / voxel


def _sphere_fraction(center: tuple[float, float, float], radius: float, xs, ys, zs, voxel: float, ss: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """Volume fraction of a sphere in the voxels of its bounding box (returns the box slices and the fractions)."""
    cx, cy, cz = center
    box = []
    for coords, c in ((zs, cz), (ys, cy), (xs, cx)):
        lo = int(np.searchsorted(coords, c - radius - voxel))
        hi = int(np.searchsorted(coords, c + radius + voxel))
        box.append(slice(max(lo, 0), min(hi, len(coords))))
    z, y, x = zs[box[0]], ys[box[1]], xs[box[2]]
    off = _sub_offsets(voxel, ss)
    acc = np.zeros((len(z), len(y), len(x)))
    for oz in off:
        dz2 = (z[:, None, None] + oz - cz) ** 2
        for oy in off:
            dy2 = (y[None, :, None] + oy - cy) ** 2
            for ox in off:
                acc += (dz2 + dy2 + (x[None, None, :] + ox - cx) ** 2) <= radius**2
    return tuple(box), acc / ss**3


def sphere_centres_mm() -> list[tuple[float, float, float]]:
    """Sphere centres (x, y, z) in the phantom frame (LPS; anterior spheres have negative y)."""
    out = []
    for a in SPHERE_ANGLES_DEG:
        t = math.radians(a)
        out.append((RING_RADIUS_MM * math.cos(t), -RING_RADIUS_MM * math.sin(t), 0.0))
    return out


def make_nema_phantom(config: NemaConfig | None = None) -> NemaPhantom:
    """Voxelise the NEMA IEC body phantom on the configured grid (partial-volume fractions)."""
    from scipy.ndimage import distance_transform_edt

    cfg = config or NemaConfig()
    n, nz, v, ss = cfg.n, cfg.nz, float(cfg.voxel_mm), max(1, int(cfg.supersample))
    if n * v < 300.0 or nz * v < 186.0:
        from ..errors import InputError

        raise InputError(None, f"grid {n}x{n}x{nz} at {v} mm is too small for the phantom (300 x 230 x 186 mm): "
                               "raise --matrix/--slices or --voxel-mm")
    if cfg.camera.radius_mm < 200.0:  # the outer body reaches ~190 mm from the scanner axis
        raise ValueError(f"camera orbit radius {cfg.camera.radius_mm} mm would cut through the phantom (needs >= 200 mm)")
    xs, ys, zs, origin = _grid_axes(n, nz, v)
    body2 = _fraction_2d(_inside_d_shape, xs, ys, v, ss)
    outer2 = _fraction_2d(lambda x, y: _inside_d_shape(x, y, WALL_MM), xs, ys, v, ss)
    lung2 = _fraction_2d(lambda x, y: x**2 + y**2 <= LUNG_RADIUS_MM**2, xs, ys, v, ss)
    bz = _fraction_1d(*BODY_Z_MM, zs, v)
    oz = _fraction_1d(BODY_Z_MM[0] - WALL_MM, BODY_Z_MM[1] + WALL_MM, zs, v)
    body = bz[:, None, None] * body2[None]
    outer = oz[:, None, None] * outer2[None]
    lung = bz[:, None, None] * lung2[None]
    water = body - lung
    sphere_frac = np.zeros_like(body)
    sphere_wall = np.zeros_like(body)
    labels = np.zeros(body.shape, np.uint8)
    spheres = []
    for i, (d, c) in enumerate(zip(SPHERE_DIAMETERS_MM, sphere_centres_mm()), start=1):
        box, frac = _sphere_fraction(c, d / 2, xs, ys, zs, v, ss)
        box_w, frac_w = _sphere_fraction(c, d / 2 + SPHERE_WALL_MM, xs, ys, zs, v, ss)
        sphere_frac[box] += frac
        sphere_wall[box_w] += frac_w
        sphere_wall[box] -= frac
        zz, yy, xx = np.meshgrid(zs[box[0]], ys[box[1]], xs[box[2]], indexing="ij")
        inside = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 <= (d / 2) ** 2
        labels[box][inside] = i
        spheres.append({"label": i, "diameter_mm": d, "x_mm": c[0], "y_mm": c[1], "z_mm": c[2],
                        "volume_ml": 4 / 3 * math.pi * (d / 2) ** 3 / 1000.0})
    background = np.clip(water - sphere_frac - sphere_wall, 0, None)
    bg = cfg.background_kbq_ml * 1000.0
    act = (bg * background + bg * cfg.sphere_ratio * sphere_frac).astype(np.float32)
    mu = (MU_WATER_140 * (background + sphere_frac) + MU_LUNG_140 * lung + MU_PMMA_140 * (sphere_wall + np.clip(outer - body, 0, None)))
    air = np.clip(1.0 - outer, 0, None)
    hu = HU_WATER * (background + sphere_frac) + HU_LUNG * lung + HU_PMMA * (sphere_wall + np.clip(outer - body, 0, None)) + HU_AIR * air
    rng = np.random.default_rng(cfg.seed + 7919)
    hu = hu + rng.normal(0.0, cfg.ct_noise_hu, hu.shape) * (outer > 0.5)
    # masks: lung insert, a background VOI (pure water > 15 mm from spheres and lung, within 30 mm of the sphere plane), body
    zz = zs[:, None, None]
    yy = ys[None, :, None]
    xx = xs[None, None, :]
    lung_mask = (xx**2 + yy**2 <= LUNG_RADIUS_MM**2) & (zz >= BODY_Z_MM[0]) & (zz <= BODY_Z_MM[1])
    body_mask = body >= 0.5
    labels[lung_mask & (labels == 0)] = 7
    dist_to_edge = distance_transform_edt(body_mask, sampling=(v, v, v))
    near = np.zeros_like(body_mask)
    for s in spheres:
        near |= (xx - s["x_mm"]) ** 2 + (yy - s["y_mm"]) ** 2 + (zz - s["z_mm"]) ** 2 <= (s["diameter_mm"] / 2 + 15.0) ** 2
    near |= xx**2 + yy**2 <= (LUNG_RADIUS_MM + 15.0) ** 2
    bkg = body_mask & (dist_to_edge > 20.0) & ~near & (np.abs(zz) <= 30.0) & (labels == 0)
    labels[bkg] = 8
    labels[body_mask & (labels == 0)] = 9
    names = {i: f"sphere_{int(d)}mm" for i, d in enumerate(SPHERE_DIAMETERS_MM, start=1)}
    names.update({7: "lung_insert", 8: "background", 9: "body"})
    geo = dict(spacing=(v, v, v), origin=origin)
    meta = {"phantom": "NEMA IEC body", "radionuclide": "Tc-99m", "sphere_ratio": cfg.sphere_ratio}
    activity = Image(act, modality="NM", units="BQML", meta=dict(meta), **geo)
    return NemaPhantom(
        activity=activity,
        mu=Image(mu.astype(np.float32), modality="MU", units="1/mm", meta=dict(meta), **geo),
        ct=Image(np.round(hu).astype(np.int16), modality="CT", units="HU", meta=dict(meta), **geo),
        masks=Mask(labels, modality="SEG", labels=names, meta=dict(meta), **geo),
        spheres=spheres, background_bq_ml=bg, sphere_bq_ml=bg * cfg.sphere_ratio,
    )


# ----- analysis ---------------------------------------------------------------------------------------
def recovery_coefficients(recon_bq_ml: np.ndarray, phantom: NemaPhantom) -> dict[float, float]:
    """Mean-based recovery coefficient per sphere: mean in the sphere VOI / true sphere concentration."""
    out = {}
    for s in phantom.spheres:
        sel = phantom.masks.array == s["label"]
        out[s["diameter_mm"]] = float(np.mean(recon_bq_ml[sel]) / phantom.sphere_bq_ml)
    return out


def contrast_recovery(recon_bq_ml: np.ndarray, phantom: NemaPhantom) -> dict[float, float]:
    """NEMA-style hot contrast recovery ((C_s/C_b - 1) / (ratio - 1)) with the background VOI."""
    cb = float(np.mean(recon_bq_ml[phantom.masks.array == 8]))
    ratio = phantom.sphere_bq_ml / phantom.background_bq_ml
    return {d: (rc * phantom.sphere_bq_ml / cb - 1) / (ratio - 1) for d, rc in recovery_coefficients(recon_bq_ml, phantom).items()}


# ----- end to end -------------------------------------------------------------------------------------
@dataclass
class NemaStudy:
    """A simulated acquisition and its two reconstructions (Bq/ml images on the phantom grid)."""

    config: NemaConfig
    phantom: NemaPhantom
    counts: np.ndarray  # (views, z, x) Poisson counts
    expected: np.ndarray  # noise-free expected counts
    osem: Image
    ct_guided: Image
    timings_s: dict[str, float]


def simulate_nema(config: NemaConfig | None = None, device: str | None = None) -> NemaStudy:
    """Phantom -> projections (attenuation, depth-dependent CDR, Poisson) -> classic OSEM and CT-guided MAP-EM."""
    import time

    from .spect_sim import reconstruct_ct_guided, reconstruct_osem, simulate_projections

    cfg = config or NemaConfig()
    t0 = time.perf_counter()
    ph = make_nema_phantom(cfg)
    t1 = time.perf_counter()
    spacing = ph.activity.spacing
    expected, counts = simulate_projections(ph.activity_bq_per_voxel, ph.mu.array, spacing, cfg.camera, seed=cfg.seed, device=device)
    t2 = time.perf_counter()
    to_bq_ml = 1000.0 / ph.activity.voxel_volume
    osem_img = reconstruct_osem(counts, ph.mu.array, spacing, cfg.camera, cfg.osem_iterations, cfg.osem_subsets,
                                cfg.osem_post_filter_mm, device=device) * to_bq_ml
    t3 = time.perf_counter()
    ctg = reconstruct_ct_guided(counts, ph.mu.array, ph.ct.array, spacing, cfg.camera, cfg.ctg_iterations, cfg.osem_subsets,
                                cfg.ctg_beta, device=device) * to_bq_ml
    t4 = time.perf_counter()
    meta = {"radionuclide": "Tc-99m", "phantom": "NEMA IEC body"}
    return NemaStudy(
        config=cfg, phantom=ph, counts=counts, expected=expected,
        osem=ph.activity.with_array(osem_img.astype(np.float32), meta=dict(meta, reconstruction="OSEM AC",
                                    iterations=cfg.osem_iterations, subsets=cfg.osem_subsets, post_filter_mm=cfg.osem_post_filter_mm)),
        ct_guided=ph.activity.with_array(ctg.astype(np.float32), meta=dict(meta, reconstruction="CT-guided PSF MAP-EM (zone RDP)",
                                         iterations=cfg.ctg_iterations, subsets=cfg.osem_subsets, beta=cfg.ctg_beta)),
        timings_s={"phantom": t1 - t0, "projection": t2 - t1, "osem": t3 - t2, "ct_guided": t4 - t3},
    )


def write_nema_study(study: NemaStudy, out_dir: str | Path) -> dict[str, Any]:
    """DICOM (CT, NM RECON TOMO and PT-style slices for both reconstructions) + NIfTI truth + provenance JSON."""
    from .spect_dicom import write_spect_ct_study

    ph = study.phantom
    return write_spect_ct_study(
        out_dir, ct=ph.ct, recons={"OSEM": study.osem, "CTGUIDED": study.ct_guided},
        truth={"activity_bqml": ph.activity, "masks": ph.masks, "mu_per_mm": ph.mu},
        patient_id=f"NEMA_IEC_R{int(study.config.sphere_ratio)}_S{study.config.seed}", patient_name="NEMA^IEC",
        study_description="NEMA IEC body phantom SPECT/CT (simulated)",
        config=study.config.as_dict(), extra={"spheres": ph.spheres, "timings_s": study.timings_s,
                                              "rc_osem": recovery_coefficients(study.osem.array, ph),
                                              "rc_ct_guided": recovery_coefficients(study.ct_guided.array, ph)},
        seed=study.config.seed)


# ----- CLI --------------------------------------------------------------------------------------------
def register_phantom(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nema`` to the ``nmkit phantom`` sub-commands."""
    p = subparsers.add_parser("nema", help="NEMA IEC body phantom Tc-99m SPECT/CT with classic OSEM and CT-guided reconstructions")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ratio", type=float, nargs="+", default=[4.0, 8.0], help="sphere-to-background ratios (one study each)")
    p.add_argument("--background-kbq-ml", type=float, default=8.0)
    p.add_argument("--matrix", type=int, default=128, help="transaxial matrix and projection size")
    p.add_argument("--slices", type=int, default=128)
    p.add_argument("--voxel-mm", type=float, default=4.42)
    p.add_argument("--views", type=int, default=120)
    p.add_argument("--time-per-view", type=float, default=20.0, help="seconds per view")
    p.add_argument("--iterations", type=int, default=4, help="classic OSEM iterations")
    p.add_argument("--subsets", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, type=device_option, help=DEVICE_HELP)
    p.set_defaults(func=run_nema)


def run_nema(args: argparse.Namespace) -> int:
    import json

    out = Path(args.out)
    for ratio in args.ratio:
        cam = CameraModel(n_views=args.views, time_per_view_s=args.time_per_view)
        cfg = NemaConfig(n=args.matrix, nz=args.slices, voxel_mm=args.voxel_mm, background_kbq_ml=args.background_kbq_ml,
                         sphere_ratio=ratio, seed=args.seed, osem_iterations=args.iterations, osem_subsets=args.subsets, camera=cam)
        study = simulate_nema(cfg, device=args.device)
        written = write_nema_study(study, out / f"nema_ratio{ratio:g}")
        rc = {"osem": recovery_coefficients(study.osem.array, study.phantom),
              "ct_guided": recovery_coefficients(study.ct_guided.array, study.phantom)}
        print(json.dumps({"ratio": ratio, "folder": str(written["folder"]), "recovery": rc, "timings_s": study.timings_s}, default=str))
    return 0
