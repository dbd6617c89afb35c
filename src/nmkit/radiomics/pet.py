"""PET / nuclear-medicine ROI metrics: SUVmax, SUVmean, SUVpeak, MTV, TLG, and per-label statistics.

* SUVpeak: the highest mean uptake in a 1 cm^3 sphere (radius 6.2035 mm, built on the real voxel spacing) centred
  on a voxel of the ROI; the sphere averages every image voxel it covers (also those outside the ROI), as in
  PERCIST/IBSI local intensity peak. One FFT convolution gives the sphere mean at every voxel.
* MTV: volume (ml) of ROI voxels at or above an absolute SUV threshold (default 2.5) or a fraction of the ROI
  SUVmax (default 41% and 50%); TLG = SUVmean x MTV of the same voxels.
* ``native_pet_features``: the numbers the PET presets (``native_pet: true``) add to every radiomics row, on the
  image's own grid before any resampling: SUVmax/mean/min/std/peak, voxel count, MTV (ml) and TLG (g).
* ``label_statistics``: count, volume, mean, SD, min, max, median, p95, sum and total (sum x voxel volume, e.g.
  Bq/ml -> Bq) for every label of a whole-body label map in a few vectorised passes (bincount + one sort).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import GeometryError, InputError
from ..io.image import Image, Mask
from .local_intensity import local_mean
from .preprocess import PEAK_RADIUS_MM


def _crop_around(mask: np.ndarray, spacing_xyz, margin_mm: float) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    sl = []
    for ax, i in enumerate(idx):
        m = int(np.ceil(margin_mm / spacing_xyz[2 - ax])) + 1
        sl.append(slice(max(0, int(i.min()) - m), min(mask.shape[ax], int(i.max()) + m + 1)))
    return tuple(sl)


def suv_peak(image: Image, roi: np.ndarray, radius_mm: float = PEAK_RADIUS_MM) -> tuple[float, tuple[int, int, int]]:
    """SUVpeak and the (z, y, x) index of the sphere centre."""
    sl = _crop_around(roi, image.spacing, radius_mm)
    sub = np.asarray(image.array[sl], dtype=np.float64)
    means = local_mean(sub, image.spacing, radius_mm)
    means_roi = np.where(roi[sl], means, -np.inf)
    flat = int(np.argmax(means_roi))
    loc = np.unravel_index(flat, sub.shape)
    centre = tuple(int(loc[a] + sl[a].start) for a in range(3))
    return float(means_roi.ravel()[flat]), centre


def suv_features(image: Image, mask: Mask | np.ndarray, label: int | str | None = None, abs_threshold: float = 2.5,
                 rel_thresholds: Iterable[float] = (0.41, 0.50)) -> dict[str, float]:
    """SUVmax/mean/peak, MTV (ml) and TLG of one ROI, plus thresholded MTV/TLG. ``image`` must be in SUV."""
    roi = mask.binary(label) if isinstance(mask, Mask) else np.asarray(mask).astype(bool)
    if isinstance(mask, Mask) and not image.same_grid(mask):
        raise GeometryError("PET image and ROI mask are on different grids (resample the mask first)")
    if roi.shape != image.array.shape:
        raise GeometryError(f"mask shape {roi.shape} differs from image shape {image.array.shape}")
    if not roi.any():
        src = (image.meta.get("source_files") or [None])[0]
        raise InputError(src, "the ROI mask is empty")
    voxel_ml = image.voxel_volume / 1000.0
    vals = np.asarray(image.array, dtype=np.float64)[roi]
    peak, _ = suv_peak(image, roi)
    out = {"suv_max": float(vals.max()), "suv_mean": float(vals.mean()), "suv_peak": peak,
           "suv_std": float(vals.std()), "mtv_ml": vals.size * voxel_ml, "tlg": float(vals.mean()) * vals.size * voxel_ml}
    sel = vals >= abs_threshold
    tag = f"{abs_threshold:g}".replace(".", "p")
    out[f"mtv_suv{tag}_ml"] = float(sel.sum() * voxel_ml)
    out[f"tlg_suv{tag}"] = float(vals[sel].sum() * voxel_ml)
    for frac in rel_thresholds:
        sel = vals >= frac * vals.max()
        pct = int(round(frac * 100))
        out[f"mtv_{pct}pct_ml"] = float(sel.sum() * voxel_ml)
        out[f"tlg_{pct}pct"] = float(vals[sel].sum() * voxel_ml)
    return out


def label_statistics(image: Image, labels: Mask, include_background: bool = False):
    """One row per label of ``labels`` (a label map on the image grid) with intensity statistics.

    Columns: label, name, count, volume_ml, mean, std, min, max, median, p95, sum, total (sum x voxel volume in ml,
    e.g. Bq for a Bq/ml image). Labels named in ``labels.labels`` but absent from the map get count 0."""
    import pandas as pd

    if not image.same_grid(labels):
        raise GeometryError("image and label map are on different grids (resample the labels first)")
    if labels.overlapping:
        raise InputError(None, "label_statistics needs a non-overlapping label map")
    lab = np.asarray(labels.array).astype(np.int64).ravel()
    val = np.asarray(image.array, dtype=np.float64).ravel()
    if not include_background:
        keep = lab > 0
        lab, val = lab[keep], val[keep]
    n_lab = int(lab.max(initial=0)) + 1
    count = np.bincount(lab, minlength=n_lab)
    s1 = np.bincount(lab, weights=val, minlength=n_lab)
    s2 = np.bincount(lab, weights=val * val, minlength=n_lab)
    order = np.lexsort((val, lab))  # by label, then value: every label's values are one sorted run
    lab_s, val_s = lab[order], val[order]
    starts = np.searchsorted(lab_s, np.arange(n_lab), side="left")
    voxel_ml = image.voxel_volume / 1000.0
    names = dict(labels.labels)
    present = [v for v in range(n_lab) if count[v] > 0]
    wanted = sorted(set(present) | {v for v in names if v > 0 or include_background})
    rows = []
    for v in wanted:
        n = int(count[v]) if v < n_lab else 0
        row = {"label": v, "name": names.get(v, f"label_{v}"), "count": n, "volume_ml": n * voxel_ml}
        if n:
            run = val_s[starts[v]:starts[v] + n]
            mean = s1[v] / n
            row.update(mean=mean, std=float(np.sqrt(max(s2[v] / n - mean * mean, 0.0))), min=float(run[0]),
                       max=float(run[-1]), median=float(np.percentile(run, 50)), p95=float(np.percentile(run, 95)),
                       sum=float(s1[v]), total=float(s1[v]) * voxel_ml)
        else:
            row.update(mean=np.nan, std=np.nan, min=np.nan, max=np.nan, median=np.nan, p95=np.nan, sum=0.0, total=0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def is_suv(image: Image) -> bool:
    """True when the image is in SUV (nmkit's SUV readers set ``units="g/ml"``; SUL images say ``SUL``)."""
    return str(image.units or "").strip().lower() in ("g/ml", "suv", "suvbw", "gml")


def native_pet_features(image: Image, roi: np.ndarray) -> dict[str, float]:
    """Clinical PET numbers of one ROI on the image's own (acquisition) grid, before any radiomics resampling.

    ``native_suv_max/mean/min/std/peak`` (``native_*`` when the image is not in SUV: same numbers in the image's
    units), ``native_voxels`` (ROI voxel count), ``native_voxel_volume_ml``, ``mtv_ml`` (ROI volume: voxels x voxel
    volume / 1000; the ROI as delineated, no threshold) and ``tlg_g`` = SUVmean x MTV (SUV g/ml x ml = g; ``tla``,
    the mean x volume in image units x ml, when the image is not in SUV).

    SUVpeak is the voxel-centred variant: the highest mean over the voxels whose centres lie within a 1 cm^3
    sphere (radius 6.2035 mm) centred on a voxel of the ROI, every image voxel in the sphere counted (also those
    outside the ROI), as PERCIST and the IBSI local intensity peak define it (:func:`suv_peak`)."""
    roi = np.asarray(roi, dtype=bool)
    if roi.shape != image.array.shape:
        raise GeometryError(f"mask shape {roi.shape} differs from image shape {image.array.shape}")
    if not roi.any():
        raise InputError((image.meta.get("source_files") or [None])[0], "the ROI mask is empty")
    vals = np.asarray(image.array, dtype=np.float64)[roi]
    voxel_ml = float(image.voxel_volume) / 1000.0
    peak, _ = suv_peak(image, roi)
    prefix = "native_suv_" if is_suv(image) else "native_"
    mtv = vals.size * voxel_ml
    mean = float(vals.mean())
    return {f"{prefix}max": float(vals.max()), f"{prefix}mean": mean, f"{prefix}peak": float(peak),
            f"{prefix}min": float(vals.min()), f"{prefix}std": float(vals.std()), "native_voxels": int(vals.size),
            "native_voxel_volume_ml": voxel_ml, "mtv_ml": mtv, ("tlg_g" if is_suv(image) else "tla"): mean * mtv}
