"""Planar thyroid scintigraphy simulator (Tc-99m pertechnetate, I-123, I-131) with known ground truth.

Why: real thyroid scans with expert ROIs cannot be shared, yet segmentation, reader-agreement and uptake
tools need realistic images *with truth*. This module draws an anterior neck view the way a gamma camera
sees it and returns the expected counts, a Poisson realisation and exact masks.

Model (all lengths in mm, image plane = coronal plane seen from the front):

* Image axes: column ``x`` increases towards the patient's **left** (anterior view: the patient's right lobe
  is on the viewer's left), row ``y`` increases towards the **feet**. The thyroid centre lies slightly below
  the image centre so that submandibular glands (and, for the larger parallel-hole field, parotids) show at
  the top, as on clinical pinhole images.
* Lobes: two superellipses (exponent 2-2.6, slightly pear-shaped: lower pole wider) of length 40-60 mm and
  width 15-25 mm, each scaled by an independent 0.85-1.15 asymmetry factor, tilted 5-20 deg so the upper poles
  diverge. Their antero-posterior depth (14-20 mm) gives the projected thickness ``depth * sqrt(1 - r^2)``,
  so edges fall off smoothly like a real ellipsoidal lobe. Isthmus: a thin (3-7 mm deep) band 4-12 mm high
  between the lower thirds of the lobes; absent in ~15 % of patients.
* Activity: projected soft-tissue background of 1 (arbitrary unit; neck profile ``sqrt(1-(x/65)^2)``), jugular
  /carotid blood pool stripes (x1.4-1.9), submandibular and parotid glands (pertechnetate and iodide are
  trapped by salivary tissue: peak 3-8 x background for Tc-99m, less for I-123 and much less for I-131 at 24 h),
  optional mediastinal blood pool at the bottom edge. Thyroid concentration is expressed as the peak
  gland-to-background ratio for an 18 mm deep lobe: normal 6-15, Graves 20-50 (gland enlarged 1.25-1.5x),
  multinodular goitre 6-15 with 2-5 mixed nodules and strong heterogeneity (enlarged 1.2-1.5x),
  toxic (autonomous) hot nodule 20-45 with the remaining gland suppressed to 0.2-1.2, cold nodules 1-3
  photopenic nodules of 12-22 mm (scintigraphy is done for nodules >= 1 cm; 0-30 % of gland uptake) in a
  normal gland, nodules never overlap, thyroiditis 0.8-2.0 (gland faint, about as
  bright as the neck vessels, while the salivary glands stay bright).
* Nodules are spheres inside the lobe: along each ray the nodule replaces gland tissue over its chord, so a
  cold nodule in a 15 mm deep lobe is strongly but not completely photopenic (tissue in front/behind remains),
  exactly the planar partial-volume effect seen clinically. Hot nodules may bulge out of the lobe.
* Camera: Gaussian collimator-detector response with FWHM at thyroid distance (object plane) of 5.0 mm
  (pinhole, 3 mm aperture, Tc-99m), 5.5 mm (I-123), 7.5 mm (I-131, tungsten insert) and 7.5 / 8.0 / 12.0 mm
  for parallel LEHR / LEHR / HEGP collimators at ~10 cm. High-energy photons add a broad septal
  penetration tail (a second Gaussian): I-123's 529 keV line (5 % pinhole, 10 % LEHR of detected counts,
  FWHM 40-60 mm) and I-131's 364 keV line (15 % pinhole, 8 % HEGP, FWHM 30-40 mm). 256x256 pixels over
  130 mm (pinhole-equivalent at the thyroid plane, 0.51 mm pixels) or 200 mm (parallel with zoom ~2.8,
  0.78 mm pixels). Attenuation (the thyroid is superficial) and scatter are not modelled separately.
* Counts: the blurred activity is scaled so that its sum equals ``total_counts`` (a preset-count acquisition,
  clinically 50k-500k), then each pixel is an independent Poisson draw; stored as uint16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

PATHOLOGIES = ("normal", "graves", "multinodular_goitre", "hot_nodule", "cold_nodules", "thyroiditis")
ISOTOPES = ("Tc99m", "I123", "I131")
COLLIMATORS = ("pinhole", "parallel")

#: field of view (mm, at the thyroid plane) of a 256-pixel matrix; scaled for other matrix sizes
FOV_MM = {"pinhole": 130.0, "parallel": 200.0}
#: collimator-detector response: (main FWHM mm, penetration-tail fraction, tail FWHM mm)
PSF = {
    ("pinhole", "Tc99m"): (5.0, 0.0, 0.0),
    ("pinhole", "I123"): (5.5, 0.05, 40.0),
    ("pinhole", "I131"): (7.5, 0.15, 30.0),
    ("parallel", "Tc99m"): (7.5, 0.0, 0.0),
    ("parallel", "I123"): (8.0, 0.10, 60.0),
    ("parallel", "I131"): (12.0, 0.08, 40.0),
}
#: salivary-gland uptake relative to Tc-99m pertechnetate
SALIVARY_FACTOR = {"Tc99m": 1.0, "I123": 0.6, "I131": 0.3}
REFERENCE_DEPTH_MM = 18.0
UINT16_MAX = 65535


@dataclass
class ThyroidCase:
    """One simulated acquisition.

    ``expected``: expected counts per pixel (float64, sums to ``total_counts``); ``counts``: Poisson counts
    (uint16); ``truth``: boolean masks keyed ``gland`` (lobes + isthmus + nodules), ``lobe_right``,
    ``lobe_left``, ``isthmus`` and ``nodule_<k>``; ``nodules``: one dict per nodule (``name``, ``kind`` hot/cold,
    centre and radius in mm, relative uptake); ``params``: JSON-serialisable description of everything drawn.
    ``spacing``: pixel size (x, y) in mm.
    """

    expected: np.ndarray
    counts: np.ndarray
    truth: dict[str, np.ndarray]
    nodules: list[dict[str, Any]]
    params: dict[str, Any]
    spacing: tuple[float, float]
    activity: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))


def as_rng(rng: np.random.Generator | np.random.SeedSequence | int | Sequence[int] | None) -> np.random.Generator:
    """A NumPy generator from a generator, seed sequence, integer seed or list of integers (e.g. (seed, case))."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if rng is None:
        raise ValueError("pass a seed or a numpy Generator: simulations must be reproducible")
    return np.random.default_rng(np.random.SeedSequence(rng))


def _superellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float,
                  p: float = 2.0, taper: float = 0.0) -> np.ndarray:
    """Normalised radius r (<1 inside) of a rotated superellipse; ``a`` half-width, ``b`` half-length.

    ``taper`` > 0 widens the half along +y' (the lower pole) by ``1 + taper * y'/b``.
    """
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    xr = c * dx + s * dy
    yr = -s * dx + c * dy
    width = a * np.clip(1.0 + taper * yr / b, 0.5, 1.5)
    return (np.abs(xr / width) ** p + np.abs(yr / b) ** p) ** (1.0 / p)


def _shape_radius(coords: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float, p: float = 2.0,
                  taper: float = 0.0) -> np.ndarray:
    """:func:`_superellipse` on the square grid ``coords`` x ``coords``, evaluated only in the shape's bounding
    window (``inf`` elsewhere) - a few times faster for small organs on a 256x256 grid."""
    n = len(coords)
    r = np.full((n, n), np.inf)
    reach = 1.05 * math.hypot(1.5 * a, b)
    cols = np.nonzero(np.abs(coords - cx) <= reach)[0]
    rows = np.nonzero(np.abs(coords - cy) <= reach)[0]
    if len(cols) == 0 or len(rows) == 0:
        return r
    rs, cs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    yy, xx = np.meshgrid(coords[rs], coords[cs], indexing="ij")
    r[rs, cs] = _superellipse(xx, yy, cx, cy, a, b, angle, p, taper)
    return r


def _dome(r: np.ndarray) -> np.ndarray:
    """Projected thickness profile of an ellipsoid, 1 at the centre, 0 at and beyond r = 1."""
    return np.sqrt(np.clip(1.0 - r * r, 0.0, None))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field (tissue heterogeneity): white noise low-passed by a Gaussian of
    ``sigma_px`` in the Fourier domain (periodic, two FFTs - far cheaper than a wide kernel)."""
    noise = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (kx * kx + ky * ky))
    f = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=shape)
    f = f - f.mean()
    sd = f.std()
    return f / sd if sd > 0 else f


def psf_parameters(collimator: str, isotope: str) -> tuple[float, float, float]:
    """(main FWHM mm, tail fraction, tail FWHM mm) of the collimator-detector response."""
    try:
        return PSF[(collimator, isotope)]
    except KeyError:
        raise ValueError(f"unknown collimator/isotope {collimator!r}/{isotope!r}; use {COLLIMATORS} and {ISOTOPES}") from None


def blur(activity: np.ndarray, spacing_mm: float, collimator: str, isotope: str) -> np.ndarray:
    """Apply the collimator-detector response (Gaussian core + optional broad penetration tail).

    Photons blurred outside the field of view are lost (``mode='constant'``), as on a real detector edge.
    """
    from scipy.ndimage import gaussian_filter

    fwhm, tail, tail_fwhm = psf_parameters(collimator, isotope)
    to_sigma = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)) * spacing_mm)
    out = (1.0 - tail) * gaussian_filter(activity, fwhm * to_sigma, mode="constant", truncate=4.0)
    if tail > 0:  # the broad tail is computed on a 4x coarser grid (it has no fine detail) and upsampled
        from scipy.ndimage import zoom

        rows, cols = activity.shape
        if rows % 4 == 0 and cols % 4 == 0:
            small = activity.reshape(rows // 4, 4, cols // 4, 4).mean(axis=(1, 3))
            small = gaussian_filter(small, tail_fwhm * to_sigma / 4, mode="constant", truncate=3.0)
            wide = zoom(small, 4, order=1, grid_mode=True, mode="grid-constant")
        else:
            wide = gaussian_filter(activity, tail_fwhm * to_sigma, mode="constant", truncate=3.0)
        out += tail * wide
    return out


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Independent Poisson counts per pixel, as uint16 (raises if a pixel would overflow 65535)."""
    counts = rng.poisson(expected)
    if counts.size and counts.max() > UINT16_MAX:
        raise ValueError(f"a pixel holds {counts.max()} counts, more than uint16 can store; lower total_counts")
    return counts.astype(np.uint16)


def _pathology_plan(rng: np.random.Generator, pathology: str) -> dict[str, Any]:
    """Uptake levels, enlargement and nodule plan for one pathology (numbers: see the module docstring)."""
    plan: dict[str, Any] = {"enlarge": 1.0, "heterogeneity": 0.08, "nodules": []}
    if pathology == "normal":
        plan["gland_to_background"] = rng.uniform(6, 15)
    elif pathology == "graves":
        plan.update(gland_to_background=rng.uniform(20, 50), enlarge=rng.uniform(1.25, 1.5), heterogeneity=0.05)
    elif pathology == "multinodular_goitre":
        plan.update(gland_to_background=rng.uniform(6, 15), enlarge=rng.uniform(1.2, 1.5), heterogeneity=0.2)
        for _ in range(int(rng.integers(2, 6))):
            if rng.random() < 0.5:
                plan["nodules"].append(("cold", rng.uniform(4, 9), rng.uniform(0.0, 0.3)))
            else:
                plan["nodules"].append(("hot", rng.uniform(4, 9), rng.uniform(1.8, 3.0)))
    elif pathology == "hot_nodule":
        rest = rng.uniform(0.2, 1.2)
        nodule = rng.uniform(20, 45)
        plan.update(gland_to_background=rest, heterogeneity=0.1)
        plan["nodules"].append(("hot", rng.uniform(7, 13), nodule / rest))
    elif pathology == "cold_nodules":
        plan["gland_to_background"] = rng.uniform(6, 15)
        for _ in range(int(rng.integers(1, 4))):
            plan["nodules"].append(("cold", rng.uniform(6, 11), rng.uniform(0.0, 0.3)))
    elif pathology == "thyroiditis":
        plan.update(gland_to_background=rng.uniform(0.8, 2.0), heterogeneity=0.25)
    else:
        raise ValueError(f"unknown pathology {pathology!r}; use one of {PATHOLOGIES}")
    return plan


def simulate_thyroid(
    rng: np.random.Generator | np.random.SeedSequence | int | Sequence[int] | None,
    pathology: str = "normal",
    isotope: str = "Tc99m",
    collimator: str = "pinhole",
    total_counts: float = 200_000,
    matrix: int = 256,
    mediastinum: bool | None = None,
) -> ThyroidCase:
    """Simulate one anterior planar thyroid scan; see the module docstring for the model and its numbers.

    ``rng``: a Generator, SeedSequence or seed (e.g. ``(cohort_seed, case_index)``) - the same seed gives the
    same bytes. ``total_counts``: preset counts of the acquisition (the expected image sums to it).
    ``mediastinum``: show mediastinal blood pool at the bottom edge (``None``: random, 40 %).
    """
    if pathology not in PATHOLOGIES:
        raise ValueError(f"unknown pathology {pathology!r}; use one of {PATHOLOGIES}")
    if isotope not in ISOTOPES:
        raise ValueError(f"unknown isotope {isotope!r}; use one of {ISOTOPES}")
    if collimator not in COLLIMATORS:
        raise ValueError(f"unknown collimator {collimator!r}; use one of {COLLIMATORS}")
    if not (total_counts > 0 and math.isfinite(total_counts)):
        raise ValueError(f"total_counts must be positive, got {total_counts}")
    if matrix < 32:
        raise ValueError(f"matrix must be at least 32 pixels, got {matrix}")
    rng = as_rng(rng)

    pix = FOV_MM[collimator] / matrix  # the field of view is fixed; the matrix sets the pixel size
    n = matrix
    coords = (np.arange(n) - (n - 1) / 2.0) * pix
    y, x = np.meshgrid(coords, coords, indexing="ij")  # x: to patient's left, y: to the feet

    plan = _pathology_plan(rng, pathology)
    enlarge = plan["enlarge"]
    cy = rng.uniform(0.08, 0.14) * n * pix if collimator == "pinhole" else rng.uniform(0.02, 0.08) * n * pix
    cx0 = rng.uniform(-3, 3)  # midline offset (patient positioning)

    # ----- lobes and isthmus ------------------------------------------------------------------------
    lobes = {}
    thickness = np.zeros((n, n))
    region = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        asym = rng.uniform(0.85, 1.15)
        length = rng.uniform(40, 60) * asym * enlarge
        width = rng.uniform(15, 25) * asym * enlarge
        depth = rng.uniform(14, 20) * asym * min(enlarge, 1.3)
        tilt = math.radians(rng.uniform(5, 20))
        gap = rng.uniform(4, 10) * enlarge  # half-distance between the lobes' medial edges
        lx = cx0 + sign * (gap + width / 2)
        ly = cy + rng.uniform(-4, 4)
        angle = -sign * tilt  # upper poles diverge laterally
        p = rng.uniform(2.0, 2.6)
        taper = rng.uniform(0.05, 0.25)
        r = _shape_radius(coords, lx, ly, width / 2, length / 2, angle, p, taper)
        region[side] = r < 1.0
        thickness = np.maximum(thickness, depth * _dome(r))
        lobes[side] = dict(centre_mm=[lx, ly], length_mm=length, width_mm=width, depth_mm=depth,
                           tilt_deg=math.degrees(angle), exponent=p, taper=taper)
    has_isthmus = rng.random() > 0.15
    isthmus_info: dict[str, Any] = {"present": bool(has_isthmus)}
    if has_isthmus:
        half_span = abs(lobes["left"]["centre_mm"][0] - lobes["right"]["centre_mm"][0]) / 2
        iy = cy + rng.uniform(0.05, 0.25) * 0.5 * (lobes["left"]["length_mm"] + lobes["right"]["length_mm"]) / 2
        height = rng.uniform(4, 12) * enlarge
        idepth = rng.uniform(3, 7)
        r_i = _shape_radius(coords, cx0, iy, half_span, height / 2, 0.0, 4.0)
        region["isthmus"] = (r_i < 1.0) & ~region["right"] & ~region["left"]
        thickness = np.maximum(thickness, idepth * _dome(r_i))
        isthmus_info.update(centre_mm=[cx0, iy], height_mm=height, depth_mm=idepth)
    else:
        region["isthmus"] = np.zeros((n, n), dtype=bool)

    # ----- nodules ---------------------------------------------------------------------------------
    g2b = plan["gland_to_background"]
    conc_gland = g2b / REFERENCE_DEPTH_MM  # activity per mm of gland depth (background units)
    hetero = 1.0 + plan["heterogeneity"] * _smooth_field(rng, (n, n), 4.0 / pix)
    gland_activity = conc_gland * np.clip(hetero, 0.2, None) * thickness
    nodules: list[dict[str, Any]] = []
    nodule_masks: dict[str, np.ndarray] = {}
    gland_mask = region["right"] | region["left"] | region["isthmus"]
    for kind, radius, rel_uptake in plan["nodules"]:
        for _attempt in range(20):  # nodules do not overlap each other
            side = ("right", "left")[int(rng.integers(0, 2))]
            lobe = lobes[side]
            r_try = min(radius * min(enlarge, 1.2), 0.45 * lobe["width_mm"])
            along = rng.uniform(-0.3, 0.3) * lobe["length_mm"]
            across = rng.uniform(-0.15, 0.15) * lobe["width_mm"]
            ang = math.radians(lobe["tilt_deg"])
            ncx = lobe["centre_mm"][0] + across * math.cos(ang) - along * math.sin(ang)
            ncy = lobe["centre_mm"][1] + across * math.sin(ang) + along * math.cos(ang)
            if all(math.hypot(ncx - o["centre_mm"][0], ncy - o["centre_mm"][1]) > r_try + o["radius_mm"] + 1.0 for o in nodules):
                break
        else:
            continue  # no room left in the lobes for this nodule
        radius = r_try
        rr = np.hypot(x - ncx, y - ncy)
        chord = 2.0 * np.sqrt(np.clip(radius * radius - rr * rr, 0.0, None))
        inside = rr < radius
        if kind == "cold":
            replaced = np.minimum(chord, thickness)
            gland_activity = gland_activity - conc_gland * replaced * hetero.clip(0.2) * (1.0 - rel_uptake)
        else:
            replaced = np.minimum(chord, thickness)
            gland_activity = gland_activity - conc_gland * replaced * hetero.clip(0.2) + conc_gland * rel_uptake * chord
        name = f"nodule_{len(nodules) + 1}"
        nodule_masks[name] = inside
        gland_mask = gland_mask | inside
        nodules.append(dict(name=name, kind=kind, lobe=side, centre_mm=[ncx, ncy], radius_mm=radius,
                            relative_uptake=rel_uptake))
    gland_activity = np.clip(gland_activity, 0.0, None)

    # ----- background, blood pool, salivary glands, mediastinum -------------------------------------
    neck_half = rng.uniform(55, 70)
    background = np.sqrt(np.clip(1.0 - ((x - cx0) / neck_half) ** 2, 0.05, None))
    background *= 1.0 + 0.05 * _smooth_field(rng, (n, n), 15.0 / pix)
    vessels = np.zeros((n, n))
    vessel_gain = rng.uniform(0.4, 0.9)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        lobe = lobes[side]
        vx = lobe["centre_mm"][0] + sign * (lobe["width_mm"] / 2 + rng.uniform(4, 10))
        vessels += vessel_gain * np.exp(-0.5 * ((x - vx) / rng.uniform(3, 5)) ** 2)
    salivary = np.zeros((n, n))
    sal_peak = rng.uniform(3, 8) * SALIVARY_FACTOR[isotope]
    salivary_info = []
    for sign in (-1.0, 1.0):
        for gland, (dx, dy, a, b, rel) in {"submandibular": (rng.uniform(30, 40), rng.uniform(-60, -50), 14, 9, 1.0),
                                           "parotid": (rng.uniform(50, 60), rng.uniform(-95, -85), 15, 24, 0.9)}.items():
            gx, gy = cx0 + sign * dx, cy + dy
            r = _shape_radius(coords, gx, gy, a, b, 0.0, 2.0)
            salivary += sal_peak * rel * rng.uniform(0.85, 1.15) * _dome(r) ** 0.5
            salivary_info.append(dict(gland=gland, side="right" if sign < 0 else "left", centre_mm=[gx, gy]))
    show_mediastinum = bool(rng.random() < 0.4) if mediastinum is None else bool(mediastinum)
    medi = np.zeros((n, n))
    if show_mediastinum:
        r = _shape_radius(coords, cx0 + rng.uniform(-5, 5), cy + rng.uniform(75, 95), rng.uniform(30, 45), rng.uniform(25, 35), 0.0)
        medi = rng.uniform(1.0, 2.0) * _dome(r)

    activity = background + vessels + salivary + medi + gland_activity
    blurred = blur(activity, pix, collimator, isotope)
    expected = blurred * (float(total_counts) / blurred.sum())
    counts = poisson_counts(expected, rng)

    truth = {"gland": gland_mask, "lobe_right": region["right"], "lobe_left": region["left"], "isthmus": region["isthmus"]}
    truth.update(nodule_masks)
    fwhm, tail, tail_fwhm = psf_parameters(collimator, isotope)
    params: dict[str, Any] = dict(
        pathology=pathology, isotope=isotope, collimator=collimator, matrix=n, pixel_spacing_mm=pix,
        total_counts_requested=float(total_counts), total_counts_recorded=int(counts.sum(dtype=np.int64)),
        gland_to_background=g2b, enlargement=enlarge, heterogeneity=plan["heterogeneity"],
        psf_fwhm_mm=fwhm, penetration_tail_fraction=tail, penetration_tail_fwhm_mm=tail_fwhm,
        lobes=lobes, isthmus=isthmus_info, nodules=nodules, salivary=salivary_info, salivary_peak=sal_peak,
        mediastinum=show_mediastinum, midline_mm=cx0, thyroid_centre_mm=[cx0, cy],
        gland_count_fraction=float(expected[gland_mask].sum() / expected.sum()),
    )
    params = _jsonable(params)
    return ThyroidCase(expected=expected, counts=counts, truth=truth, nodules=params["nodules"], params=params,
                       spacing=(pix, pix), activity=activity)


def mm_to_pixel(point_mm: Sequence[float], matrix: int, spacing: float) -> tuple[float, float]:
    """Phantom mm coordinates (x to patient's left, y to feet, 0 at the image centre) to pixel (col, row)."""
    return (point_mm[0] / spacing + (matrix - 1) / 2.0, point_mm[1] / spacing + (matrix - 1) / 2.0)


def _jsonable(obj: Any) -> Any:
    """Plain Python numbers/lists (rounded to 6 significant digits) so params serialise stably."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(f"{float(obj):.6g}")
    return obj
