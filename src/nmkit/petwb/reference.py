"""Reference regions and response criteria: liver 3 cm sphere, mediastinal blood pool, PERCIST 1.0, Deauville-type.

* Liver VOI: a 3 cm diameter sphere in the right lobe, fully inside the liver mask (distance map >= 15 mm), placed
  at the allowed point closest to the centroid of the liver's right half (patient right = low LPS x); or given
  by its centre (mm, LPS). Blood pool: a 1 cm diameter sphere inside the aorta/blood-pool mask at its deepest
  point, or given by its centre.
* PERCIST 1.0 (Wahl 2009) on the hottest lesion's SULpeak (1 ml sphere) of each time point:
  CMR: the hottest follow-up SULpeak at or below the liver mean; PMR: decrease >= 30 % and >= 0.8 SUL units;
  PMD: increase >= 30 % and >= 0.8 units, or a new lesion; SMD otherwise. Liver stability: the liver mean
  changes by < 20 % and < 0.3 units between the scans (else the comparison is flagged, as PERCIST asks).
* Deauville-type 5-point score of a lesion's SUVmax against the blood-pool and liver means: 1 no uptake above
  background (SUVmax <= background), 2 <= blood pool, 3 > blood pool and <= liver, 4 > liver and <= 2 x liver,
  5 > 2 x liver (the "markedly higher than liver" of Lugano, made numeric; a published convention, not the only one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.image import Image
from .delineate import ball

LIVER_SPHERE_MM = 30.0
BLOOD_POOL_SPHERE_MM = 10.0


@dataclass
class Reference:
    """A reference VOI and its statistics in the image's units."""
    name: str
    mask: np.ndarray
    centre_mm: tuple[float, float, float]
    mean: float
    sd: float
    max: float
    volume_ml: float

    def row(self) -> dict:
        return {"reference": self.name, "centre_x_mm": self.centre_mm[0], "centre_y_mm": self.centre_mm[1],
                "centre_z_mm": self.centre_mm[2], "mean": self.mean, "sd": self.sd, "max": self.max,
                "volume_ml": self.volume_ml}


def sphere_at(image: Image, centre_zyx: Sequence[int], diameter_mm: float) -> np.ndarray:
    """Boolean sphere of ``diameter_mm`` centred on voxel ``centre_zyx`` (clipped to the image)."""
    b = ball(image.spacing, diameter_mm / 2.0)
    out = np.zeros(image.array.shape, bool)
    half = [s // 2 for s in b.shape]
    dst, src = [], []
    for c, h, n, s in zip(centre_zyx, half, image.array.shape, b.shape):
        lo, hi = int(c) - h, int(c) - h + s
        dst.append(slice(max(lo, 0), min(hi, n)))
        src.append(slice(max(lo, 0) - lo, s - (hi - min(hi, n))))
    out[tuple(dst)] = b[tuple(src)]
    return out


def _stats(image: Image, name: str, mask: np.ndarray, centre_zyx: Sequence[int]) -> Reference:
    vals = np.asarray(image.array, np.float64)[mask]
    if vals.size == 0:
        raise InputError(None, f"the {name} reference VOI is empty")
    centre = image.index_to_physical(np.asarray([list(centre_zyx)[::-1]], float))[0]
    return Reference(name, mask, tuple(float(c) for c in centre), float(vals.mean()), float(vals.std(ddof=1) if vals.size > 1 else 0.0),
                     float(vals.max()), float(vals.size * image.voxel_volume / 1000.0))


def _centre_from_mm(image: Image, centre_mm: Sequence[float], name: str) -> tuple[int, int, int]:
    idx = np.rint(image.physical_to_index(np.asarray([list(centre_mm)], float))[0]).astype(int)[::-1]
    if any(v < 0 or v >= s for v, s in zip(idx, image.array.shape)):
        raise InputError(None, f"the {name} centre {tuple(centre_mm)} mm lies outside the image")
    return tuple(int(v) for v in idx)


def liver_reference(image: Image, liver_mask: np.ndarray | None = None, centre_mm: Sequence[float] | None = None,
                    diameter_mm: float = LIVER_SPHERE_MM) -> Reference:
    """The PERCIST liver VOI (3 cm sphere, right lobe) from a liver mask or a given centre."""
    if centre_mm is not None:
        return _stats(image, "liver", sphere_at(image, _centre_from_mm(image, centre_mm, "liver"), diameter_mm),
                      _centre_from_mm(image, centre_mm, "liver"))
    if liver_mask is None or not np.asarray(liver_mask).any():
        raise InputError(None, "the liver mask is empty; give a liver label map or the sphere centre")
    liver = np.asarray(liver_mask, bool)
    dist = ndimage.distance_transform_edt(liver, sampling=tuple(image.spacing[::-1]))
    allowed = dist >= diameter_mm / 2.0
    if not allowed.any():
        raise InputError(None, f"the liver mask holds no {diameter_mm:g} mm sphere (deepest point "
                               f"{dist.max():.1f} mm from its edge)")
    zyx = np.argwhere(liver)
    xyz_mm = image.index_to_physical(zyx[:, ::-1].astype(float))
    right = xyz_mm[:, 0] <= np.median(xyz_mm[:, 0])  # LPS: patient right has the lower x
    target = xyz_mm[right].mean(axis=0)
    cand = np.argwhere(allowed)
    cand_mm = image.index_to_physical(cand[:, ::-1].astype(float))
    best = tuple(int(v) for v in cand[int(np.argmin(((cand_mm - target) ** 2).sum(axis=1)))])
    return _stats(image, "liver", sphere_at(image, best, diameter_mm) & liver, best)


def blood_pool_reference(image: Image, pool_mask: np.ndarray | None = None, centre_mm: Sequence[float] | None = None,
                         diameter_mm: float = BLOOD_POOL_SPHERE_MM) -> Reference:
    """Mediastinal blood pool: a 1 cm sphere at the deepest point of the aorta/blood-pool mask, or at a given centre."""
    if centre_mm is not None:
        c = _centre_from_mm(image, centre_mm, "blood pool")
        return _stats(image, "blood_pool", sphere_at(image, c, diameter_mm), c)
    if pool_mask is None or not np.asarray(pool_mask).any():
        raise InputError(None, "the blood-pool mask is empty; give an aorta label or the sphere centre")
    pool = np.asarray(pool_mask, bool)
    dist = ndimage.distance_transform_edt(pool, sampling=tuple(image.spacing[::-1]))
    best = tuple(int(v) for v in np.unravel_index(np.argmax(dist), dist.shape))
    return _stats(image, "blood_pool", sphere_at(image, best, diameter_mm) & pool, best)


def percist_response(peak_base: float, peak_follow: float, liver_base: Reference | tuple[float, float],
                     liver_follow: Reference | tuple[float, float], new_lesion: bool = False) -> dict:
    """PERCIST 1.0 category from the hottest lesion's SULpeak at baseline and follow-up (see the module docstring)."""
    lb = (liver_base.mean, liver_base.sd) if isinstance(liver_base, Reference) else tuple(liver_base)
    lf = (liver_follow.mean, liver_follow.sd) if isinstance(liver_follow, Reference) else tuple(liver_follow)
    if peak_base <= 0:
        raise InputError(None, "baseline SULpeak must be positive")
    change = peak_follow - peak_base
    pct = 100.0 * change / peak_base
    threshold_base = 1.5 * lb[0] + 2.0 * lb[1]
    threshold_follow = 1.5 * lf[0] + 2.0 * lf[1]
    liver_change = lf[0] - lb[0]
    liver_stable = abs(liver_change) < 0.3 and abs(liver_change) < 0.2 * lb[0]
    if new_lesion or (pct >= 30.0 and change >= 0.8):
        category = "PMD"
    elif peak_follow <= lf[0]:
        category = "CMR"
    elif pct <= -30.0 and change <= -0.8:
        category = "PMR"
    else:
        category = "SMD"
    return {"sulpeak_baseline": peak_base, "sulpeak_followup": peak_follow, "sulpeak_change": change,
            "sulpeak_change_pct": pct, "liver_mean_baseline": lb[0], "liver_mean_followup": lf[0],
            "liver_threshold_baseline": threshold_base, "liver_threshold_followup": threshold_follow,
            "baseline_measurable": peak_base >= threshold_base, "liver_stable": bool(liver_stable),
            "new_lesion": bool(new_lesion), "category": category}


def deauville_score(lesion_suv_max: float, blood_pool_mean: float, liver_mean: float, background: float = 0.0) -> int:
    """Deauville-type 5-point score (see the module docstring for the numeric convention)."""
    if lesion_suv_max <= background:
        return 1
    if lesion_suv_max <= blood_pool_mean:
        return 2
    if lesion_suv_max <= liver_mean:
        return 3
    if lesion_suv_max <= 2.0 * liver_mean:
        return 4
    return 5


def new_lesions(base_rows: list[dict], follow_rows: list[dict], distance_mm: float = 30.0) -> list[int]:
    """Labels of follow-up lesions whose centroid is farther than ``distance_mm`` from every baseline lesion
    (images in one frame of reference, i.e. registered or same couch position)."""
    base = np.array([[r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]] for r in base_rows], float).reshape(-1, 3)
    out = []
    for r in follow_rows:
        c = np.array([r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]])
        if len(base) == 0 or np.linalg.norm(base - c, axis=1).min() > distance_mm:
            out.append(int(r["label"]))
    return out
