"""A simple whole-body PET/CT digital phantom and a simulated cohort with a planted inter-organ structure.

Phantom: organ ellipsoids (LPS mm: x patient left, y posterior, z superior) with literature-typical FDG SUVs
(brain 8, myocardium 3, blood pool 1.8, liver 2.2, spleen 1.9, kidneys 3.5, bladder 25, lungs 0.5, marrow 1.2, other
soft tissue 0.7; e.g. Boellaard 2015 EANM guideline ranges, Zincirkeser 2007) and CT numbers (lung -800 HU, liver 55,
bone 500, air -1000), spherical lesions of known volume and SUV. The activity is sampled with 2 x 2 x 2 sub-voxels
(partial volume), blurred to the system resolution (Gaussian, FWHM 6 mm) and given Poisson-like noise (standard
deviation = ``noise`` x sqrt(SUV x 2.2): ``noise`` is the CoV at liver level). Truth: per lesion volume (ml, the
analytic sphere volume), SUV and centre (mm).

Cohort: ``n`` patients x ``k`` organs of SUVmean with a planted sparse precision (inverse covariance) matrix on the
log scale, an outcome driven by two organs, and the true edge set, for the metabolic-network tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..io.image import Image, Mask

#: name -> (label, SUV, HU, centre (x, y, z) mm, semi-axes (x, y, z) mm); drawn in this order (later wins)
ORGANS: dict[str, tuple[int, float, float, tuple[float, float, float], tuple[float, float, float]]] = {
    "lung_right": (2, 0.5, -800.0, (-80.0, 10.0, 400.0), (55.0, 70.0, 110.0)),
    "lung_left": (3, 0.5, -800.0, (80.0, 10.0, 400.0), (55.0, 70.0, 110.0)),
    "spine": (11, 1.2, 500.0, (0.0, 75.0, 300.0), (18.0, 18.0, 260.0)),
    "liver": (6, 2.2, 55.0, (-60.0, -10.0, 270.0), (90.0, 75.0, 60.0)),
    "spleen": (7, 1.9, 45.0, (85.0, 40.0, 280.0), (30.0, 30.0, 50.0)),
    "kidney_right": (8, 3.5, 30.0, (-60.0, 55.0, 200.0), (25.0, 25.0, 50.0)),
    "kidney_left": (9, 3.5, 30.0, (60.0, 55.0, 200.0), (25.0, 25.0, 50.0)),
    "heart": (4, 3.0, 40.0, (20.0, -30.0, 370.0), (50.0, 45.0, 50.0)),
    "aorta": (5, 1.8, 40.0, (0.0, 25.0, 420.0), (12.0, 12.0, 50.0)),
    "bladder": (10, 25.0, 10.0, (0.0, -30.0, 60.0), (35.0, 30.0, 30.0)),
    "brain": (1, 8.0, 35.0, (0.0, 0.0, 570.0), (65.0, 80.0, 55.0)),
}
BODY_SUV, BODY_HU = 0.7, 40.0
LIVER_SUV = 2.2


@dataclass
class Lesion:
    centre_mm: tuple[float, float, float]
    volume_ml: float
    suv: float

    @property
    def radius_mm(self) -> float:
        return float((3.0 * self.volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


#: default lesions: lung, liver (right lobe, away from the liver sphere), mediastinal node, pelvic bone, axillary node
DEFAULT_LESIONS = (
    Lesion((-90.0, 0.0, 440.0), 8.0, 8.0),
    Lesion((-20.0, -30.0, 250.0), 12.0, 9.0),
    Lesion((-25.0, -10.0, 470.0), 4.0, 6.0),
    Lesion((60.0, 40.0, 90.0), 6.0, 7.0),
    Lesion((120.0, -10.0, 480.0), 3.0, 5.0),
)


@dataclass
class WholeBodyPhantom:
    pet: Image
    ct: Image
    organs: Mask
    lesions: Mask
    truth: list[dict] = field(default_factory=list)


def _grid(voxel_mm: float, extent_mm=(400.0, 260.0, 640.0)) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    shape_xyz = tuple(int(round(e / voxel_mm)) for e in extent_mm)
    origin = (-extent_mm[0] / 2 + voxel_mm / 2, -extent_mm[1] / 2 + voxel_mm / 2, voxel_mm / 2)
    return shape_xyz[::-1], origin  # (z, y, x), (x, y, z)


def _coords(shape_zyx, origin, voxel_mm: float, sub: int):
    """Sub-voxel centre coordinates (x, y, z) mm as open grids of shape (Z*sub, Y*sub, X*sub)."""
    axes = []
    for ax in range(3):  # x, y, z
        n = shape_zyx[2 - ax] * sub
        axes.append(origin[ax] - voxel_mm / 2 + (np.arange(n) + 0.5) * voxel_mm / sub)
    return axes[2][:, None, None], axes[1][None, :, None], axes[0][None, None, :]


def _ellipsoid(z, y, x, centre, axes) -> np.ndarray:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1.0


def _box(z, y, x, centre, axes) -> tuple[slice, slice, slice]:
    """Index slices of the open grids that hold the ellipsoid's bounding box (a speed-up only)."""
    out = []
    for grid, c, a in ((z.ravel(), centre[2], axes[2]), (y.ravel(), centre[1], axes[1]), (x.ravel(), centre[0], axes[0])):
        lo, hi = np.searchsorted(grid, c - a - 1e-9), np.searchsorted(grid, c + a + 1e-9, side="right")
        out.append(slice(int(lo), int(hi)))
    return tuple(out)  # type: ignore[return-value]


def _paint(z, y, x, centre, axes, where: np.ndarray | None = None) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """(box, inside-the-ellipsoid boolean within the box)."""
    sl = _box(z, y, x, centre, axes)
    inside = _ellipsoid(z[sl[0]], y[:, sl[1]], x[:, :, sl[2]], centre, axes)
    if where is not None:
        inside = inside & where[sl]
    return sl, inside


def _body(z, y, x) -> np.ndarray:
    trunk = (((x / 170.0) ** 2 + (y / 115.0) ** 2) <= 1.0) & (z >= 0) & (z <= 500)
    head = _ellipsoid(z, y, x, (0.0, 0.0, 565.0), (80.0, 100.0, 75.0))
    neck = ((x / 55.0) ** 2 + (y / 55.0) ** 2 <= 1.0) & (z > 480) & (z < 520)
    return trunk | head | neck


def _downsample(a: np.ndarray, sub: int) -> np.ndarray:
    z, y, x = (s // sub for s in a.shape)
    return a.reshape(z, sub, y, sub, x, sub).mean(axis=(1, 3, 5))


def make_phantom(lesions: Sequence[Lesion] = DEFAULT_LESIONS, voxel_mm: float = 4.0, fwhm_mm: float = 6.0,
                 noise: float = 0.10, seed: int = 0, organ_suv: Mapping[str, float] | None = None,
                 weight_kg: float = 75.0, height_m: float = 1.75) -> WholeBodyPhantom:
    """The phantom (see the module docstring); ``organ_suv`` overrides organ SUVs (e.g. a follow-up scan's liver)."""
    shape, origin = _grid(voxel_mm)
    sub = 2
    z, y, x = _coords(shape, origin, voxel_mm, sub)
    body = _body(z, y, x)
    suv = np.where(body, BODY_SUV, 0.0)
    hu = np.where(body, BODY_HU, -1000.0)
    label = np.zeros(body.shape, np.uint8)
    for name, (value, s, h, centre, axes) in ORGANS.items():
        sl, inside = _paint(z, y, x, centre, axes, body)
        suv[sl][inside] = (organ_suv or {}).get(name, s)
        hu[sl][inside] = h
        label[sl][inside] = value
    lesion_label = np.zeros(body.shape, np.uint8)
    for k, les in enumerate(lesions, start=1):
        sl, inside = _paint(z, y, x, les.centre_mm, (les.radius_mm,) * 3)
        suv[sl][inside] = les.suv
        hu[sl][inside] = 45.0
        lesion_label[sl][inside] = k
    activity = _downsample(suv, sub)
    ct = _downsample(hu, sub)
    organs_vox = label[sub // 2::sub, sub // 2::sub, sub // 2::sub]  # nearest sub-voxel to the centre
    lesions_vox = _downsample((lesion_label > 0).astype(float), sub) >= 0.5
    lesion_ids = ndimage.maximum_filter(lesion_label, size=1)[sub // 2::sub, sub // 2::sub, sub // 2::sub]
    lesion_map = np.where(lesions_vox, np.maximum(lesion_ids, _nearest_label(lesion_label, sub)), 0).astype(np.uint8)
    sigma = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel_mm
    blurred = ndimage.gaussian_filter(activity, sigma)
    rng = np.random.default_rng(seed)
    pet = np.clip(blurred + rng.standard_normal(blurred.shape) * noise * np.sqrt(np.maximum(blurred, 0) * LIVER_SUV), 0, None)
    ct = ct + rng.standard_normal(ct.shape) * 10.0
    spacing = (voxel_mm,) * 3
    meta = {"PatientWeight": weight_kg, "PatientSize": height_m, "PatientID": f"phantom_{seed}"}
    pet_img = Image(array=pet.astype(np.float32), spacing=spacing, origin=origin, modality="PT", units="g/ml", meta=dict(meta))
    ct_img = Image(array=ct.astype(np.float32), spacing=spacing, origin=origin, modality="CT", units="HU", meta=dict(meta))
    organ_mask = Mask.like(pet_img, organs_vox, labels={v[0]: n for n, v in ORGANS.items()})
    lesion_mask = Mask.like(pet_img, lesion_map, labels={k: f"lesion_{k}" for k in range(1, len(lesions) + 1)})
    truth = [{"label": k, "centre_x_mm": l.centre_mm[0], "centre_y_mm": l.centre_mm[1], "centre_z_mm": l.centre_mm[2],
              "volume_ml": l.volume_ml, "suv": l.suv, "radius_mm": l.radius_mm} for k, l in enumerate(lesions, start=1)]
    return WholeBodyPhantom(pet_img, ct_img, organ_mask, lesion_mask, truth)


def _nearest_label(label: np.ndarray, sub: int) -> np.ndarray:
    """The largest lesion label among each voxel's sub-voxels (voxels at a lesion edge keep its number)."""
    z, y, x = (s // sub for s in label.shape)
    return label.reshape(z, sub, y, sub, x, sub).max(axis=(1, 3, 5))


def simulate_cohort(n: int = 200, k: int = 10, n_edges: int = 12, seed: int = 0, strength: float = 0.5,
                    centres: int = 1, centre_effect: float = 0.0):
    """(organ table, true adjacency, outcome): ``n`` x ``k`` organ SUVmeans with a planted sparse precision matrix.

    The organ table is long (patient_id, organ, suv_mean); log SUVmean = log(base) + 0.15 x a multivariate normal
    whose precision matrix has ``n_edges`` random off-diagonal entries of size ``strength`` (diagonally dominant).
    The outcome (0/1) is a logistic function of the first two organs. With ``centres`` > 1 each patient gets a
    centre (column ``centre``) whose scanner scales every organ's SUV by exp(centre_effect x a centre-wide shift
    + 0.3 x centre_effect x an organ-specific one): a batch effect that induces spurious positive correlations."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    chosen = [pairs[i] for i in rng.choice(len(pairs), n_edges, replace=False)]
    precision = np.eye(k)
    truth = np.zeros((k, k), bool)
    for i, j in chosen:
        sign = rng.choice([-1.0, 1.0])
        precision[i, j] = precision[j, i] = sign * strength
        truth[i, j] = truth[j, i] = True
    np.fill_diagonal(precision, np.abs(precision).sum(axis=1) - np.diag(np.abs(precision)) + 1.0)
    cov = np.linalg.inv(precision)
    latent = rng.multivariate_normal(np.zeros(k), cov, size=n)
    names = [f"organ_{i:02d}" for i in range(k)]
    base = np.linspace(1.0, 4.0, k)
    suv = base * np.exp(0.15 * latent / np.sqrt(np.diag(cov)))
    centre = rng.integers(0, centres, n)
    if centres > 1 and centre_effect:
        shift = rng.standard_normal(centres)[:, None] + 0.3 * rng.standard_normal((centres, k))
        suv = suv * np.exp(centre_effect * shift[centre])
    risk = 1.2 * latent[:, 0] - 1.0 * latent[:, 1]
    outcome = (rng.random(n) < 1.0 / (1.0 + np.exp(-risk))).astype(int)
    rows = [{"patient_id": f"sim_{p:03d}", "centre": f"centre_{centre[p]}", "organ": names[o], "suv_mean": float(suv[p, o])}
            for p in range(n) for o in range(k)]
    return pd.DataFrame(rows), pd.DataFrame(truth, index=names, columns=names), \
        pd.DataFrame({"patient_id": [f"sim_{p:03d}" for p in range(n)], "event": outcome})
