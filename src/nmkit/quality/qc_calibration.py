"""SPECT sensitivity / calibration factor from a uniform phantom of known activity, and its use on other SPECT images.

A reconstruction in counts is first normalised to counts per second with the acquisition time: the time per view
(DICOM ActualFrameDuration, in the NM RotationInformationSequence or at the top level, or ``--frame-duration-s``)
times the number of views (``--views``, else ScanArc / AngularStep, else NumberOfFramesInRotation). An image already
in counts/s is used as it is. The same normalisation is applied to the calibration phantom and to every image the
factor is later applied to, so the two stay consistent.

Two factors are written:

- sensitivity (cps/MBq) = total counts per second in the phantom region (dilated by ``margin_mm`` to hold the counts
  the blur spills out) / the activity at acquisition start;
- volumetric factor (Bq/ml per cps/ml) = (A / V) / mean cps density in the phantom interior (the region eroded by
  ``erode_mm``, away from the partial-volume edge); divided by the voxel volume this is the usual Bq/ml per
  count/s/voxel, which is also written. Stored per ml so that images on another voxel grid convert correctly.

"Per second" is per view-second (frame duration x views), not wall-clock time: for a multi-head camera both are
consistent as long as the phantom and the patient are acquired with the same protocol. The activity is the one at
acquisition start, so the factor includes the decay during the phantom acquisition; images of another isotope or a
very different acquisition length need their own calibration.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.image import Image

SCHEME = "nmkit-spect-calibration/1"


def _seq_item(meta: dict[str, Any], raw: Any, keyword: str) -> Any:
    """``keyword`` from the first item of the raw dataset's RotationInformationSequence (None when absent)."""
    seq = getattr(raw, "RotationInformationSequence", None) if raw is not None else None
    if seq:
        value = getattr(seq[0], keyword, None)
        if value not in (None, ""):
            return value
    return meta.get(keyword)


def _header(image: Image) -> Any:
    """The first source file's DICOM header (None for NIfTI or unreadable files)."""
    files = (image.meta or {}).get("source_files") or []
    if not files:
        return None
    try:
        import pydicom

        return pydicom.dcmread(files[0], stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a NIfTI or odd file: no header times
        return None


def per_second(units: str | None) -> bool:
    """True when the image unit is already a rate (counts/s)."""
    from ..units import image_unit

    return image_unit(units) == "counts/s"


def acquisition_seconds(image: Image, frame_duration_s: float | None = None, views: int | None = None
                        ) -> tuple[float, dict[str, Any]]:
    """Seconds that turn the image's counts into counts/s, and a record of where they came from (see module doc)."""
    from ..units import image_unit

    unit = image_unit(image.units, image.modality)
    if unit not in ("counts", "counts/s", "unknown"):
        raise InputError(None, f"the image is in {unit}, not counts: the SPECT calibration applies to reconstructions "
                               "in counts or counts/s")
    if per_second(image.units):
        return 1.0, {"image_units": "counts/s", "normalisation": "none (image already in counts/s)"}
    raw = _header(image)
    meta = image.meta or {}
    rec: dict[str, Any] = {"image_units": "counts" if unit == "counts" else
                           "counts (assumed: the file states no unit; --units says it)"}
    if frame_duration_s is not None:
        t_view, rec["frame_duration_source"] = float(frame_duration_s), "--frame-duration-s"
    else:
        ms = _seq_item(meta, raw, "ActualFrameDuration")
        if ms is None and raw is not None:
            ms = getattr(raw, "ActualFrameDuration", None)
        if ms is None:
            raise InputError(None, "the image has no ActualFrameDuration (DICOM) to turn counts into counts/s: give "
                                   "--frame-duration-s and --views (or --units counts/s for an image in counts/s)")
        t_view, rec["frame_duration_source"] = float(ms) / 1000.0, "DICOM ActualFrameDuration (ms)"
    if views is not None:
        n, rec["views_source"] = int(views), "--views"
    else:
        arc, step = _seq_item(meta, raw, "ScanArc"), _seq_item(meta, raw, "AngularStep")
        n_rot = _seq_item(meta, raw, "NumberOfFramesInRotation")
        if arc is not None and step is not None and float(step) > 0:
            n, rec["views_source"] = int(round(float(arc) / float(step))), "DICOM ScanArc / AngularStep"
            if n_rot is not None and int(n_rot) != n:
                rec["note"] = f"NumberOfFramesInRotation {int(n_rot)} differs from ScanArc/AngularStep {n}; used the latter"
        elif n_rot is not None:
            n, rec["views_source"] = int(n_rot), "DICOM NumberOfFramesInRotation"
        elif frame_duration_s is not None:
            n, rec["views_source"] = 1, "1 (no view information: --frame-duration-s is the whole acquisition)"
        else:
            raise InputError(None, "the image has no number of views (ScanArc/AngularStep or NumberOfFramesInRotation): "
                                   "give --views")
    if not (math.isfinite(t_view) and t_view > 0 and n > 0):
        raise InputError(None, f"the acquisition time must be positive (frame duration {t_view} s x {n} views)")
    rec.update({"frame_duration_s": t_view, "views": n, "acquisition_s": t_view * n,
                "normalisation": f"counts / ({t_view:g} s x {n} views)"})
    return t_view * n, rec


def phantom_region(array: np.ndarray, spacing_xyz: tuple[float, ...], threshold: float = 0.5) -> np.ndarray:
    """The phantom: voxels of the smoothed image above ``threshold`` x its 99th-percentile plateau, largest component."""
    from scipy import ndimage

    sigma = [max(4.0 / s, 0.5) for s in spacing_xyz[::-1]]  # ~4 mm smoothing, array order z, y, x
    smooth = ndimage.gaussian_filter(np.nan_to_num(array.astype(np.float64)), sigma)
    positive = smooth[smooth > 0]
    if positive.size == 0:
        raise InputError(None, "the image is empty (no positive counts): no phantom to calibrate on")
    level = threshold * float(np.percentile(positive, 99))
    labels, n = ndimage.label(smooth > level)
    if n == 0:
        raise InputError(None, "no phantom region found above the threshold")
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    region = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    return region


def _grow(region: np.ndarray, spacing_xyz: tuple[float, ...], mm: float) -> np.ndarray:
    """``region`` dilated (mm > 0) or eroded (mm < 0) by an ellipsoid of ``|mm|``."""
    from scipy import ndimage

    if mm == 0:
        return region
    r = [int(math.ceil(abs(mm) / s)) for s in spacing_xyz[::-1]]
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    sz, sy, sx = spacing_xyz[::-1]
    ball = (zz * sz) ** 2 + (yy * sy) ** 2 + (xx * sx) ** 2 <= mm ** 2
    op = ndimage.binary_dilation if mm > 0 else ndimage.binary_erosion
    return op(region, structure=ball)


def calibrate(image: Image, activity_mbq: float, acquisition_s: float, volume_ml: float | None = None,
              mask: np.ndarray | None = None, margin_mm: float = 20.0, erode_mm: float = 10.0) -> dict[str, Any]:
    """Sensitivity (cps/MBq) and volumetric factor (Bq/ml per cps/ml) of a uniform phantom (see module doc)."""
    if not (math.isfinite(activity_mbq) and activity_mbq > 0):
        raise InputError(None, f"--activity-mbq must be a positive activity in MBq, got {activity_mbq}")
    arr = np.nan_to_num(np.asarray(image.array, dtype=np.float64))
    if image.ndim_spatial != 3 or arr.ndim != 3:
        raise InputError(None, f"calibration needs a 3D SPECT reconstruction, got an array of shape {arr.shape}")
    sp = tuple(float(s) for s in image.spacing)
    voxel_ml = image.voxel_volume / 1000.0
    if mask is not None:
        region = total_region = inner = mask.astype(bool)
        how = "given mask"
        if not region.any():
            raise InputError(None, "the phantom mask is empty")
    else:
        region = phantom_region(arr, sp)
        total_region, inner = _grow(region, sp, margin_mm), _grow(region, sp, -erode_mm)
        how = f"50 % threshold of the ~4 mm smoothed image, largest component; total in it dilated by {margin_mm:g} mm, " \
              f"mean in it eroded by {erode_mm:g} mm"
        if inner.sum() < 8:
            inner = region
            how += " (too small to erode: mean over the whole region)"
    if float(arr[region].sum()) <= 0:
        raise InputError(None, "the phantom region holds no counts")
    region_ml = float(region.sum()) * voxel_ml
    vol = float(volume_ml) if volume_ml is not None else region_ml
    if not (math.isfinite(vol) and vol > 0):
        raise InputError(None, f"--volume-ml must be a positive volume in ml, got {volume_ml}")
    total_cps = float(arr[total_region].sum()) / acquisition_s
    mean_cps_voxel = float(arr[inner].mean()) / acquisition_s
    conc = activity_mbq * 1e6 / vol  # Bq/ml
    factor_ml = conc / (mean_cps_voxel / voxel_ml)
    return {
        "sensitivity_cps_per_mbq": total_cps / activity_mbq,
        "bq_per_ml_per_cps_per_ml": factor_ml,
        "bq_per_ml_per_cps_per_voxel": conc / mean_cps_voxel,
        "activity_mbq": activity_mbq, "volume_ml": vol,
        "volume_source": "--volume-ml" if volume_ml is not None else "phantom region (50 % threshold)",
        "region_volume_ml": region_ml, "concentration_bq_per_ml": conc, "total_cps": total_cps,
        "image_total_cps": float(arr.sum()) / acquisition_s,  # everything, background artefacts included: a check
        "mean_cps_per_voxel": mean_cps_voxel, "voxel_volume_ml": voxel_ml, "region": how,
        "interior_voxels": int(inner.sum()), "total_voxels": int(total_region.sum()),
    }


def apply_calibration(image: Image, calibration: dict[str, Any], acquisition_s: float) -> Image:
    """``image`` in counts -> Bq/ml: counts / acquisition_s / voxel ml x the volumetric factor (Bq/ml per cps/ml)."""
    if calibration.get("scheme") != SCHEME or "bq_per_ml_per_cps_per_ml" not in calibration:
        raise InputError(None, f"--calibration is not a `nmkit qc calibrate` result (scheme {SCHEME})")
    factor = float(calibration["bq_per_ml_per_cps_per_ml"])
    voxel_ml = image.voxel_volume / 1000.0
    arr = np.asarray(image.array, dtype=np.float64) / acquisition_s / voxel_ml * factor
    out = image.with_array(arr.astype(np.float32), units="Bq/ml")
    return out
