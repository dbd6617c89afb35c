"""Lesion delineation on SUV images: named, parameterised methods that all end in a label map (one label per lesion).

Methods (``METHODS``):

* ``suv2.5``, ``suv4.0`` (any ``suv<X>``): fixed SUV threshold over the whole search VOI.
* ``rel41``, ``rel50`` (any ``rel<P>``): P % of each lesion's own SUVmax; the threshold is applied inside the lesion's
  seed region and only the connected component holding the SUVmax voxel is kept.
* ``percist``: 1.5 x liver mean + 2 x liver SD (PERCIST 1.0 threshold for measurable disease; the liver VOI is the
  3 cm sphere of :mod:`nmkit.petwb.reference`), over the whole search VOI. PERCIST defines it on SUL: the
  threshold is applied in the image's own units and the table says which.
* ``adaptive``: background-adaptive, per lesion: BG + 0.5 x (SUVmax - BG), BG the median SUV of a 10-20 mm shell
  around the lesion's 50 % core (Nestle/Daisne style contrast-oriented threshold).
* ``grow``: region growing (SimpleITK ConfidenceConnected: mean +- 1.5 SD of the growing region, 4 iterations;
  1.5 was chosen among 1.0, 1.5, 2.0 on the 3 pet_sts patients, so its bench figures are optimistic)
  from the SUVmax voxel of every seed region (or given seed points), confined to the seed region.

Seeds of the per-lesion methods: an existing ROI (each connected component, its bounding box dilated by
``margin_mm``), seed points (mm, LPS; a sphere of ``margin_mm`` radius), or, with neither, the components of at
least ``min_volume_ml`` of the SUV >= ``candidate_suv`` map (the command uses the PERCIST liver threshold when a liver
reference is given, else SUV 2.5). Everything is confined to the search VOI (a body/user VOI; whole image by default) minus the
dilated physiological-uptake organs. Components smaller than ``min_volume_ml`` are dropped; labels are numbered by
decreasing SUVmax.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.image import Image, Mask

log = logging.getLogger(__name__)

METHODS = ("suv2.5", "suv4.0", "rel41", "rel50", "percist", "adaptive", "grow")
_METHOD = re.compile(r"^(suv(?P<suv>\d+(\.\d+)?)|rel(?P<rel>\d+(\.\d+)?)|percist|adaptive|grow)$")
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


def check_method(name: str) -> str:
    """The method name if valid (``suv<X>``, ``rel<P>``, ``percist``, ``adaptive``, ``grow``), else an InputError."""
    if not _METHOD.match(name):
        raise InputError(None, f"unknown delineation method {name!r}; use one of {', '.join(METHODS)} "
                               "(suv<X> and rel<P> take any number)")
    return name


def is_per_lesion(method: str) -> bool:
    return method.startswith("rel") or method in ("adaptive", "grow")


@dataclass
class Delineation:
    """The result: a label map (one label per lesion, by decreasing SUVmax) and one row per lesion."""
    method: str
    labels: Mask
    lesions: list[dict] = field(default_factory=list)
    threshold_note: str = ""


def ball(spacing_xyz: Sequence[float], radius_mm: float) -> np.ndarray:
    """A (z, y, x) boolean ball of ``radius_mm`` on the voxel spacing (at least the centre voxel)."""
    r = [int(np.floor(radius_mm / s)) for s in spacing_xyz[::-1]]
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    sz, sy, sx = spacing_xyz[::-1]
    return (zz * sz) ** 2 + (yy * sy) ** 2 + (xx * sx) ** 2 <= radius_mm ** 2 + 1e-9


def dilate_mm(mask: np.ndarray, spacing_xyz: Sequence[float], radius_mm: float) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (Euclidean distance transform on the real spacing)."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    dist = ndimage.distance_transform_edt(~mask, sampling=tuple(spacing_xyz[::-1]))
    return dist <= radius_mm


def search_region(image: Image, voi: np.ndarray | None = None, exclude: np.ndarray | None = None,
                  exclude_margin_mm: float = 0.0) -> np.ndarray:
    """Voxels a lesion may occupy: the VOI (whole image by default) minus the organs dilated by the margin."""
    region = np.ones(image.array.shape, bool) if voi is None else np.asarray(voi, bool).copy()
    if exclude is not None and exclude.any():
        region &= ~dilate_mm(np.asarray(exclude, bool), image.spacing, exclude_margin_mm)
    return region


def seed_regions(image: Image, region: np.ndarray, seed_mask: np.ndarray | None = None,
                 seed_points_mm: Sequence[Sequence[float]] | None = None, margin_mm: float = 10.0,
                 candidate_suv: float = 2.5, min_volume_ml: float = 0.0) -> list[np.ndarray]:
    """One boolean region per lesion seed (see the module docstring), each within ``region``."""
    shape = image.array.shape
    regions: list[np.ndarray] = []
    if seed_mask is not None:
        comps, n = ndimage.label(np.asarray(seed_mask, bool), CONNECTIVITY)
        for sl in ndimage.find_objects(comps):
            box = np.zeros(shape, bool)
            box[sl] = True
            regions.append(dilate_mm(box, image.spacing, margin_mm) & region)
    for point in seed_points_mm or ():
        idx = np.rint(image.physical_to_index(np.asarray([point], float))[0]).astype(int)  # (x, y, z)
        zyx = tuple(int(v) for v in idx[::-1])
        if any(v < 0 or v >= s for v, s in zip(zyx, shape)):
            raise InputError(None, f"seed point {tuple(point)} mm lies outside the image")
        dot = np.zeros(shape, bool)
        dot[zyx] = True
        regions.append(dilate_mm(dot, image.spacing, margin_mm) & region)
    if seed_mask is None and not seed_points_mm:
        comps, n = ndimage.label(region & (image.array >= candidate_suv), CONNECTIVITY)
        sizes = np.bincount(comps.ravel(), minlength=n + 1) * image.voxel_volume / 1000.0
        regions += [comps == k for k in range(1, n + 1) if sizes[k] >= min_volume_ml]
    return [r for r in regions if r.any()]


def _peak_component(mask: np.ndarray, peak: tuple[int, ...]) -> np.ndarray:
    comps, _ = ndimage.label(mask, CONNECTIVITY)
    return comps == comps[peak] if comps[peak] else np.zeros_like(mask)


def _argmax_in(values: np.ndarray, where: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(np.where(where, values, -np.inf)), values.shape))


def adaptive_threshold(suv: np.ndarray, spacing_xyz, within: np.ndarray, peak: tuple[int, ...], fraction: float = 0.5,
                       inner_mm: float = 10.0, outer_mm: float = 20.0) -> tuple[float, float]:
    """(threshold, background): BG + fraction x (SUVmax - BG), BG the median of the 10-20 mm shell around the 50 % core."""
    smax = float(suv[peak])
    core = _peak_component(within & (suv >= 0.5 * smax), peak)
    shell = dilate_mm(core, spacing_xyz, outer_mm) & ~dilate_mm(core, spacing_xyz, inner_mm)
    bg = float(np.median(suv[shell])) if shell.any() else 0.0
    return bg + fraction * (smax - bg), bg


def region_grow(image: Image, within: np.ndarray, peak: tuple[int, ...], multiplier: float = 1.5,
                iterations: int = 4) -> np.ndarray:
    """Confidence-connected region growing from ``peak`` (z, y, x), confined to ``within``."""
    import SimpleITK as sitk

    sl = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in np.nonzero(within))
    sub = np.where(within[sl], image.array[sl], 0.0).astype(np.float32)
    simg = sitk.GetImageFromArray(sub)
    simg.SetSpacing(tuple(float(s) for s in image.spacing))
    seed = tuple(int(peak[a] - sl[a].start) for a in (2, 1, 0))
    grown = sitk.ConfidenceConnected(simg, seedList=[seed], numberOfIterations=iterations, multiplier=multiplier,
                                     initialNeighborhoodRadius=1, replaceValue=1)
    out = np.zeros(within.shape, bool)
    out[sl] = sitk.GetArrayFromImage(grown).astype(bool)
    return _peak_component(out & within, peak)


def _threshold_value(method: str, reference: tuple[float, float] | None) -> tuple[float, str]:
    m = _METHOD.match(method)
    if m and m.group("suv"):
        t = float(m.group("suv"))
        return t, f"SUV >= {t:g}"
    if method == "percist":
        if reference is None:
            raise InputError(None, "the percist method needs a liver reference (--liver MASK, --liver-centre X,Y,Z "
                                   "or --liver-stats MEAN,SD)")
        mean, sd = reference
        t = 1.5 * mean + 2.0 * sd
        return t, f"1.5 x liver mean {mean:.3f} + 2 x SD {sd:.3f} = {t:.3f}"
    raise AssertionError(method)


def delineate(image: Image, method: str, region: np.ndarray | None = None, seeds: list[np.ndarray] | None = None,
              min_volume_ml: float = 0.5, liver_reference: tuple[float, float] | None = None) -> Delineation:
    """Delineate lesions with one method; ``image`` in SUV (or SUL), ``region`` the search VOI, ``seeds`` the seed
    regions of the per-lesion methods (from :func:`seed_regions`)."""
    check_method(method)
    suv = np.asarray(image.array, dtype=np.float64)
    region = np.ones(suv.shape, bool) if region is None else np.asarray(region, bool)
    if not region.any():
        raise InputError(None, "the search region is empty (VOI empty or entirely covered by the excluded organs)")
    binary_parts: list[tuple[np.ndarray, dict]] = []
    note = ""
    if is_per_lesion(method):
        if seeds is None:
            seeds = seed_regions(image, region)
        if not seeds:
            log.warning("%s: no seed region (no voxel reaches the candidate SUV); no lesion delineated", method)
        frac = float(method[3:]) / 100.0 if method.startswith("rel") else None
        for k, seed in enumerate(seeds, start=1):
            within = seed & region
            if not within.any():
                continue
            peak = _argmax_in(suv, within)
            smax = float(suv[peak])
            info: dict = {"seed": k}
            if frac is not None:
                t = frac * smax
                part = _peak_component(within & (suv >= t), peak)
                info["threshold"] = t
            elif method == "adaptive":
                t, bg = adaptive_threshold(suv, image.spacing, within, peak)
                part = _peak_component(within & (suv >= t), peak)
                info.update(threshold=t, background=bg)
            else:
                part = region_grow(image, within, peak)
                info["threshold"] = float(suv[part].min()) if part.any() else float("nan")
            binary_parts.append((part, info))
        note = {"adaptive": "BG + 0.5 x (SUVmax - BG) per lesion", "grow": "confidence-connected growth per lesion"}.get(
            method, f"{method[3:]} % of each lesion's SUVmax")
    else:
        t, note = _threshold_value(method, liver_reference)
        comps, n = ndimage.label(region & (suv >= t), CONNECTIVITY)
        for k in range(1, n + 1):
            binary_parts.append((comps == k, {"threshold": t}))
    return _label_lesions(image, method, binary_parts, min_volume_ml, note)


def _label_lesions(image: Image, method: str, parts: list[tuple[np.ndarray, dict]], min_volume_ml: float,
                   note: str) -> Delineation:
    """Merge the parts (overlaps go to the earlier, hotter one), drop small ones, number by decreasing SUVmax."""
    suv = np.asarray(image.array, dtype=np.float64)
    voxel_ml = image.voxel_volume / 1000.0
    kept = [(p, i) for p, i in parts if p.sum() * voxel_ml >= min_volume_ml and p.any()]
    kept.sort(key=lambda pi: -float(suv[pi[0]].max()))
    out = np.zeros(suv.shape, np.uint16)
    rows: list[dict] = []
    shape = np.array(suv.shape)
    for part, info in kept:
        free = part & (out == 0)
        if free.sum() * voxel_ml < min_volume_ml:
            continue
        value = len(rows) + 1
        out[free] = value
        idx = np.nonzero(free)
        edge = any(int(i.min()) == 0 or int(i.max()) == s - 1 for i, s in zip(idx, shape))
        vals = suv[free]
        rows.append({"label": value, "structure": f"lesion_{value}", "method": method,
                     "threshold_suv": float(info.get("threshold", np.nan)),
                     "background_suv": float(info.get("background", np.nan)), "voxels": int(free.sum()),
                     "volume_ml": float(free.sum() * voxel_ml), "suv_max": float(vals.max()),
                     "suv_mean": float(vals.mean()), "touches_edge": bool(edge)})
        if edge:
            log.warning("%s: lesion %d touches the image edge; its volume may be truncated", method, value)
    labels = Mask.like(image, out, labels={r["label"]: r["structure"] for r in rows})
    return Delineation(method, labels, rows, note)
