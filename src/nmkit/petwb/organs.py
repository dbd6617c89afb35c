"""Organ uptake: one row per organ of a multi-organ label map (e.g. a TotalSegmentator-style map) on an SUV image.

Columns: organ (name), label, voxels, volume_ml, suv_mean, suv_median, suv_sd, suv_cov (SD / mean, 1), suv_max,
suv_peak (1 ml sphere; the sphere may reach outside the organ, as PERCIST's SULpeak), lesion_voxels_excluded.
With ``exclude`` (a lesion mask) the lesion voxels are removed from every organ first ("non-tumoural" statistics);
an organ left empty gets NaN values and a warning rather than an error. ``radiomics`` (a preset name or YAML, see
``nmkit.radiomics.presets``) adds the IBSI features of every non-empty organ as ``ibsi_<feature>`` columns.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import GeometryError, InputError
from ..io.image import Image, Mask
from ..radiomics.pet import suv_peak

log = logging.getLogger(__name__)


def organ_table(image: Image, organs: Mask, exclude: np.ndarray | None = None, radiomics: str | None = None) -> list[dict]:
    """One row per organ label (see the module docstring)."""
    if not image.same_grid(organs):
        raise GeometryError("the organ map is not on the PET grid (resample it first)")
    if organs.overlapping:
        layers = {v: organs.binary(v) for v in organs.labels}
    else:
        layers = {v: np.asarray(organs.array) == v for v in organs.labels}
    if not any(m.any() for m in layers.values()):
        raise InputError((organs.meta.get("source_files") or [None])[0], "the organ map is empty (no labelled voxel)")
    suv = np.asarray(image.array, np.float64)
    voxel_ml = image.voxel_volume / 1000.0
    rows = []
    for value, name in sorted(organs.labels.items()):
        roi = layers[value]
        removed = 0
        if exclude is not None:
            removed = int((roi & exclude).sum())
            roi = roi & ~exclude
        row = {"organ": name, "label": int(value), "voxels": int(roi.sum()), "volume_ml": float(roi.sum() * voxel_ml),
               "lesion_voxels_excluded": removed}
        if roi.any():
            vals = suv[roi]
            mean = float(vals.mean())
            row.update(suv_mean=mean, suv_median=float(np.median(vals)), suv_sd=float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                       suv_max=float(vals.max()), suv_peak=float(suv_peak(image, roi)[0]))
            row["suv_cov"] = row["suv_sd"] / mean if mean else float("nan")
            if radiomics:
                from ..radiomics.engine import extract

                row.update({f"ibsi_{k}": v for k, v in extract(image, roi, radiomics).items()})
        else:
            log.warning("organ %s (label %d) has no voxel%s", name, value, " left after removing lesions" if removed else "")
            row.update(suv_mean=np.nan, suv_median=np.nan, suv_sd=np.nan, suv_max=np.nan, suv_peak=np.nan, suv_cov=np.nan)
        rows.append(row)
    return rows
