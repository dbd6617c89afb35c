"""Patient-level tumour burden from a lesion label map (one label per lesion) on an SUV image.

Per lesion: volume_ml, SUVmax/mean/peak (g/ml; SUVpeak = 1 ml sphere mean, :func:`nmkit.radiomics.pet.suv_peak`),
TLG (g) = SUVmean x volume, centroid (x, y, z mm, LPS; unweighted mean of voxel centres), touches_edge.
Per patient: TMTV (ml) = sum of lesion volumes, total TLG (g), lesion count, patient SUVmax and SUVpeak (the highest
over lesions), Dmax (mm): the largest distance between two lesion centroids (0 for one lesion), SDmax (m^-1) = Dmax
(m) / body surface area (m^2), BSA from weight and height (Mosteller by default, or Du Bois).
"""

from __future__ import annotations

import logging
from itertools import combinations

import numpy as np
from scipy import ndimage

from ..errors import GeometryError, InputError
from ..io.image import Image, Mask
from ..radiomics.pet import suv_peak
from .delineate import CONNECTIVITY

log = logging.getLogger(__name__)


def body_surface_area(weight_kg: float, height_m: float, formula: str = "mosteller") -> float:
    """BSA in m^2: Mosteller sqrt(W x H_cm / 3600) or Du Bois 0.007184 x W^0.425 x H_cm^0.725."""
    if not (weight_kg > 0 and height_m > 0):
        raise InputError(None, f"weight ({weight_kg} kg) and height ({height_m} m) must be positive for the BSA")
    if height_m > 3.0:
        raise InputError(None, f"height {height_m} looks like centimetres; give metres")
    h_cm = height_m * 100.0
    if formula == "mosteller":
        return float(np.sqrt(weight_kg * h_cm / 3600.0))
    if formula == "dubois":
        return float(0.007184 * weight_kg ** 0.425 * h_cm ** 0.725)
    raise InputError(None, f"unknown BSA formula {formula!r} (mosteller, dubois)")


def split_components(mask: Mask) -> Mask:
    """Every connected component (26-connectivity) of the mask's foreground as its own label."""
    comps, n = ndimage.label(mask.binary(None), CONNECTIVITY)
    return Mask.like(mask, comps.astype(np.uint16), labels={k: f"lesion_{k}" for k in range(1, n + 1)})


def lesion_table(image: Image, lesions: Mask) -> list[dict]:
    """One row per non-empty lesion label (see the module docstring)."""
    if not image.same_grid(lesions):
        raise GeometryError("the lesion map is not on the PET grid (resample it first)")
    suv = np.asarray(image.array, np.float64)
    voxel_ml = image.voxel_volume / 1000.0
    rows = []
    for value, name in sorted(lesions.labels.items()):
        roi = lesions.binary(value)
        if not roi.any():
            continue
        vals = suv[roi]
        idx = np.argwhere(roi)
        centroid = image.index_to_physical(idx[:, ::-1].astype(float).mean(axis=0, keepdims=True))[0]
        edge = bool((idx.min(axis=0) == 0).any() or (idx.max(axis=0) == np.array(roi.shape) - 1).any())
        if edge:
            log.warning("lesion %s (label %d) touches the image edge; its volume and TLG may be truncated", name, value)
        peak, _ = suv_peak(image, roi)
        vol = vals.size * voxel_ml
        rows.append({"label": int(value), "structure": name, "volume_ml": vol, "suv_max": float(vals.max()),
                     "suv_mean": float(vals.mean()), "suv_peak": float(peak), "tlg_g": float(vals.mean()) * vol,
                     "centroid_x_mm": float(centroid[0]), "centroid_y_mm": float(centroid[1]),
                     "centroid_z_mm": float(centroid[2]), "touches_edge": edge})
    return rows


def dmax_mm(rows: list[dict]) -> float:
    """Largest distance (mm) between two lesion centroids; 0 with fewer than two lesions."""
    pts = np.array([[r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]] for r in rows], float)
    if len(pts) < 2:
        return 0.0
    return float(max(np.linalg.norm(a - b) for a, b in combinations(pts, 2)))


def patient_burden(image: Image, lesions: Mask, weight_kg: float | None = None, height_m: float | None = None,
                   bsa_formula: str = "mosteller") -> tuple[dict, list[dict]]:
    """(patient row, lesion rows). Weight/height default to the image's DICOM PatientWeight/PatientSize."""
    rows = lesion_table(image, lesions)
    weight = weight_kg if weight_kg is not None else image.meta.get("PatientWeight")
    height = height_m if height_m is not None else image.meta.get("PatientSize")
    dmax = dmax_mm(rows)
    bsa = body_surface_area(float(weight), float(height), bsa_formula) if weight and height else float("nan")
    if not (weight and height):
        log.warning("no patient weight/height (DICOM PatientWeight/PatientSize, or --weight-kg/--height-m): SDmax not computed")
    patient = {"lesion_count": len(rows), "tmtv_ml": float(sum(r["volume_ml"] for r in rows)),
               "tlg_total_g": float(sum(r["tlg_g"] for r in rows)),
               "suv_max": max((r["suv_max"] for r in rows), default=float("nan")),
               "suv_peak": max((r["suv_peak"] for r in rows), default=float("nan")),
               "dmax_mm": dmax, "weight_kg": float(weight) if weight else float("nan"),
               "height_m": float(height) if height else float("nan"), "bsa_m2": bsa, "bsa_formula": bsa_formula,
               "sdmax_per_m": (dmax / 1000.0) / bsa if bsa == bsa else float("nan"),
               "lesions_touching_edge": int(sum(r["touches_edge"] for r in rows))}
    return patient, rows
