"""Image-quality metrics measured on patient images with ROIs (no phantom needed).

* noise: coefficient of variation (SD / mean) in a uniform region (L4 vertebral body, liver);
* lesion contrast ``C / C_bg - 1`` and contrast-to-noise ratio ``(C - C_bg) / SD_bg`` against a background ROI;
* recovery against a known truth (simulations, phantoms): mean and max recovery coefficients;
* counts / activity in ROIs: mean, max, sum, total activity (MBq when the image is in Bq/ml);
* edge sharpness: FWHM of the line-spread function of an edge profile (``quality.resolution``).

All functions take an ``Image`` and a ``Mask`` on the same grid (``GeometryError`` otherwise) and return plain
dicts, so tables of many patients and reconstructions are easy to build.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..errors import GeometryError
from ..io.image import Image, Mask


def _check_grid(image: Image, mask: Mask) -> None:
    if not image.same_grid(mask):
        raise GeometryError(f"mask grid {mask.spatial_shape} @ {mask.spacing} does not match image grid "
                            f"{image.spatial_shape} @ {image.spacing}; resample one onto the other first (nmkit.io.image.resample_to)")


def roi_values(image: Image, mask: Mask, label: int | str | None = None) -> np.ndarray:
    """Voxel values of one ROI (any foreground when ``label`` is None) as float64."""
    _check_grid(image, mask)
    sel = mask.binary(label)
    return np.asarray(image.array, dtype=float)[sel]


def roi_statistics(image: Image, mask: Mask, label: int | str | None = None) -> dict[str, float]:
    """Mean, SD, CoV, max, sum, voxels, volume (ml) and total activity (MBq, when the image is in Bq/ml)."""
    v = roi_values(image, mask, label)
    n = v.size
    if n == 0:
        return {"voxels": 0, "volume_ml": 0.0, "mean": math.nan, "sd": math.nan, "cov": math.nan, "max": math.nan,
                "sum": 0.0, "activity_mbq": math.nan}
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else 0.0
    out = {"voxels": int(n), "volume_ml": n * image.voxel_volume / 1000.0, "mean": mean, "sd": sd,
           "cov": sd / mean if mean != 0 else math.nan, "max": float(v.max()), "sum": float(v.sum()),
           "activity_mbq": math.nan}
    from ..units import is_activity_concentration

    if is_activity_concentration(image.units):
        out["activity_mbq"] = float(v.sum()) * image.voxel_volume / 1000.0 / 1e6
    return out


def noise_cov(image: Image, mask: Mask, label: int | str | None = None, erode_mm: float = 0.0) -> float:
    """Noise as coefficient of variation SD/mean in a uniform region, optionally eroded by ``erode_mm``
    (to keep partial-volume edges out of the noise estimate)."""
    _check_grid(image, mask)
    sel = mask.binary(label)
    if erode_mm > 0:
        from scipy.ndimage import binary_erosion, distance_transform_edt

        dist = distance_transform_edt(sel, sampling=tuple(reversed(image.spacing)))
        eroded = dist > erode_mm
        sel = eroded if eroded.any() else binary_erosion(sel)
    v = np.asarray(image.array, dtype=float)[sel]
    if v.size < 2 or v.mean() == 0:
        return math.nan
    return float(v.std(ddof=1) / v.mean())


def lesion_contrast(image: Image, mask: Mask, lesion: int | str, background: int | str) -> dict[str, float]:
    """Lesion-to-background contrast ``mean_L / mean_B - 1``, ratio and CNR ``(mean_L - mean_B) / SD_B``."""
    les = roi_values(image, mask, lesion)
    bg = roi_values(image, mask, background)
    if les.size == 0 or bg.size < 2:
        raise ValueError(f"empty lesion ({les.size} voxels) or background ({bg.size} voxels) ROI")
    ml, mb, sb = float(les.mean()), float(bg.mean()), float(bg.std(ddof=1))
    return {"lesion_mean": ml, "lesion_max": float(les.max()), "background_mean": mb, "background_sd": sb,
            "ratio": ml / mb if mb else math.nan, "contrast": ml / mb - 1 if mb else math.nan,
            "cnr": (ml - mb) / sb if sb > 0 else math.nan}


def recovery(image: Image, mask: Mask, label: int | str, true_value: float) -> dict[str, float]:
    """Recovery coefficients against a known concentration: RCmean, RCmax and RCpeak-free ``RC_mean``."""
    v = roi_values(image, mask, label)
    if v.size == 0 or true_value == 0:
        return {"rc_mean": math.nan, "rc_max": math.nan}
    return {"rc_mean": float(v.mean() / true_value), "rc_max": float(v.max() / true_value)}


def patient_quality(image: Image, mask: Mask, background: int | str | None = None,
                    uniform: tuple[int | str, ...] = (), truth: Mapping[str, float] | None = None,
                    lesions: tuple[int | str, ...] | None = None) -> dict[str, float]:
    """A flat dict of metrics for one reconstruction: ``<roi>:<metric>`` keys.

    ``uniform`` ROIs give noise CoV; ``lesions`` (default: every label except background/uniform) give mean, max,
    contrast and CNR against ``background``; ``truth`` maps ROI names to true concentrations for recovery.
    """
    _check_grid(image, mask)
    names = dict(mask.labels)
    out: dict[str, float] = {}
    skip = {names.get(mask.label_value(u)) for u in uniform}
    if background is not None:
        skip.add(names[mask.label_value(background)])
    for u in uniform:
        out[f"{names[mask.label_value(u)]}:cov"] = noise_cov(image, mask, u)
        out[f"{names[mask.label_value(u)]}:mean"] = float(roi_values(image, mask, u).mean())
    lesion_labels = lesions if lesions is not None else tuple(v for v, n in sorted(names.items()) if n not in skip)
    for les in lesion_labels:
        value = mask.label_value(les)
        name = names[value]
        if mask.voxel_count(value) == 0:
            continue
        st = roi_statistics(image, mask, value)
        out[f"{name}:mean"], out[f"{name}:max"] = st["mean"], st["max"]
        if background is not None:
            c = lesion_contrast(image, mask, value, background)
            out[f"{name}:contrast"], out[f"{name}:cnr"] = c["contrast"], c["cnr"]
        if truth and name in truth:
            rc = recovery(image, mask, value, float(truth[name]))
            out[f"{name}:rc_mean"], out[f"{name}:rc_max"] = rc["rc_mean"], rc["rc_max"]
    return out


#: unit of each per-ROI statistic: "image" stands for the image's own unit
ROI_STAT_UNITS = {"voxels": "voxels", "volume_ml": "ml", "mean": "image", "sd": "image", "cov": "1", "max": "image",
                  "sum": "image x voxels", "activity_mbq": "MBq", "contrast": "1", "cnr": "1"}


def roi_table(image: Image, mask: Mask, background: int | None = None,
              only: Any = None) -> list[dict[str, Any]]:
    """One long-format row per (structure, statistic) with its unit: ``segment_number, structure, metric, value, unit``.

    Structures are taken by label value (the ROI/segment number), so structures that share a name stay apart.
    Statistics: voxels, volume (ml), mean, SD, CoV, max, total activity (MBq, images in Bq/ml), and contrast and CNR
    against ``background`` (a label value) when given. ``only``: the label values to measure (default all)."""
    from ..units import image_unit

    _check_grid(image, mask)
    unit = image_unit(image.units, image.modality)
    rows: list[dict[str, Any]] = []
    for value, name in sorted(mask.labels.items()):
        if value == background or (only is not None and value not in only):
            continue
        stats = roi_statistics(image, mask, value)
        if background is not None and stats["voxels"]:
            c = lesion_contrast(image, mask, value, background)
            stats.update(contrast=c["contrast"], cnr=c["cnr"])
        for metric, number in stats.items():
            if metric == "sum":
                continue
            u = ROI_STAT_UNITS[metric]
            rows.append({"segment_number": int(value), "structure": name, "metric": metric, "value": number,
                         "unit": unit if u == "image" else u})
    return rows


def metrics_frame(records: list[dict[str, Any]]):
    """A tidy DataFrame (case, recon, roi, metric, value) from ``patient_quality`` outputs tagged with ids."""
    import pandas as pd

    rows = []
    for rec in records:
        ids = {k: v for k, v in rec.items() if ":" not in k}
        for key, value in rec.items():
            if ":" in key:
                roi, metric = key.rsplit(":", 1)
                rows.append({**ids, "roi": roi, "metric": metric, "value": value})
    return pd.DataFrame(rows)
