"""IBSI-1 image processing: interpolation, ROI partial-volume thresholding, re-segmentation, discretisation.

Why these exact rules: IBSI reference values depend on them to the last voxel. The interpolation grid has
``ceil(extent / new_spacing)`` voxels per axis and its centre is aligned with the centre of the original grid;
outside the image the nearest boundary value is used (``mode='nearest'``). The ROI mask is interpolated
(trilinear) at full precision and then thresholded at 0.5. Re-segmentation only changes the *intensity* mask;
morphology uses the *morphological* mask.

Work is done on a crop around the ROI (plus a margin large enough for the 1 cm^3 peak sphere), computed on the
full interpolation grid so values are identical to interpolating the whole image, only faster. Trilinear and
tricubic (B-spline) interpolation are evaluated separably, one axis at a time; they equal
``scipy.ndimage.map_coordinates`` (order 1 / order 3 with its prefilter, mode 'nearest') up to round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.image import Image, Mask
from ._native import native
from .config import Discretisation, RadiomicsConfig

MASK_EPS = 1e-6  # tolerance on the ROI partial-volume threshold (floating-point round-off of interpolation weights)
PEAK_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0  # radius of a 1 cm^3 sphere (6.2035 mm)


@dataclass
class ProcessedROI:
    """Image and masks after interpolation and re-segmentation, cropped around the ROI.

    ``image`` (z, y, x) float64; ``morph_mask`` / ``int_mask`` bool; ``spacing`` (x, y, z) mm; ``origin`` is the
    physical position of voxel (0, 0, 0) of the crop and ``direction`` the original direction (geometry kept).
    """

    image: np.ndarray
    morph_mask: np.ndarray
    int_mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        """Intensities inside the intensity mask (1D)."""
        return self.image[self.int_mask]


def _axis_grid(n_old: int, s_old: float, s_new: float | None) -> np.ndarray:
    """Continuous old-grid indices of the new grid's voxel centres along one axis (IBSI centre alignment)."""
    if s_new is None or abs(s_new - s_old) < 1e-9:
        return np.arange(n_old, dtype=float)
    n_new = int(math.ceil(round(n_old * s_old / s_new, 6)))
    return (n_old - 1) / 2.0 + (np.arange(n_new) - (n_new - 1) / 2.0) * (s_new / s_old)


def _bbox(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Inclusive (first, last) index of the non-zero voxels per axis of a 3D mask, from two projections (no index
    list of every voxel; the second pass only reads the slices that hold the ROI); None for an empty mask."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if not z.size:
        return None
    plane = mask[z[0]:z[-1] + 1].any(axis=0)
    y = np.flatnonzero(plane.any(axis=1))
    x = np.flatnonzero(plane.any(axis=0))
    return [(int(z[0]), int(z[-1])), (int(y[0]), int(y[-1])), (int(x[0]), int(x[-1]))]


PLANE_LOOP_MIN = 8192  # voxels per plane from which interpolating plane by plane beats gathering whole arrays


def _linear_along(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` at continuous indices ``coords`` along one axis, edge values beyond the ends.

    Trilinear interpolation on a regular grid is separable, so three of these passes equal
    ``ndimage.map_coordinates(order=1, mode='nearest')`` on the full coordinate mesh (up to round-off) while
    touching each voxel a few times instead of computing eight weights per output voxel.
    ``lo + (hi - lo) w`` keeps constant regions exactly constant.
    """
    n = a.shape[axis]
    c = np.clip(coords, 0.0, n - 1.0)
    if np.array_equal(c, np.round(c)):
        return np.take(a, c.astype(np.intp), axis=axis)
    i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
    w = c - i0
    i1 = np.minimum(i0 + 1, n - 1)
    cm = native("_cmorph")
    if cm is not None and a.dtype == np.float64:  # one C pass, the same arithmetic
        src = np.ascontiguousarray(a)
        outer, inner = int(np.prod(a.shape[:axis])), int(np.prod(a.shape[axis + 1:]))
        out = np.empty(a.shape[:axis] + (w.size,) + a.shape[axis + 1:])
        cm.linear_along(src, (outer, n, inner), i0.astype(np.int64), i1.astype(np.int64), w, out)
        return out
    if axis < a.ndim - 1 and a.size >= PLANE_LOOP_MIN * n:  # plane by plane: no gathered copies (same arithmetic)
        out = np.empty(a.shape[:axis] + (w.size,) + a.shape[axis + 1:], dtype=np.result_type(a, w))
        lead = (slice(None),) * axis
        for i in range(w.size):
            o = out[lead + (i,)]
            lo = a[lead + (int(i0[i]),)]
            np.subtract(a[lead + (int(i1[i]),)], lo, out=o)
            o *= w[i]
            o += lo
        return out
    shape = [1] * a.ndim
    shape[axis] = w.size
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i1, axis=axis)
    hi -= lo
    hi *= w.reshape(shape)
    hi += lo
    return hi


def _trilinear(a: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """``a`` (float64) sampled on the grid ``coords[0] x coords[1] x coords[2]`` (continuous indices per axis)."""
    out = a
    # shrinking axes first keeps the intermediate arrays small
    for ax in sorted(range(3), key=lambda k: len(coords[k]) / a.shape[k]):
        out = _linear_along(out, coords[ax], ax)
    return out


def _interpolated_mask(roi: np.ndarray, bb: list[tuple[int, int]], coords: list[np.ndarray],
                       threshold: float) -> np.ndarray:
    """The ROI mask interpolated (trilinear) on the crop grid ``coords`` and thresholded.

    A grid point further than one old voxel from the ROI's bounding box along some axis gets no weight from any
    ROI voxel (exactly 0), so only the part of the grid near the ROI is interpolated (from a matching small box
    of the old mask) and the rest stays outside. Where the ROI touches the image edge, points beyond the edge
    take the edge value (``mode='nearest'``) and stay in the interpolated part.
    """
    out = np.zeros(tuple(len(c) for c in coords), dtype=bool)
    near = [np.flatnonzero((c > (lo - 1.0 if lo > 0 else -np.inf)) & (c < (hi + 1.0 if hi < n - 1 else np.inf)))
            for c, (lo, hi), n in zip(coords, bb, roi.shape)]
    if any(not k.size for k in near):
        return out
    part = tuple(slice(int(k[0]), int(k[-1]) + 1) for k in near)
    sub_coords = [c[p] for c, p in zip(coords, part)]
    lo_old = [max(0, int(math.floor(c[0])) - 1) for c in sub_coords]
    hi_old = [min(roi.shape[a], int(math.ceil(c[-1])) + 2) for a, c in enumerate(sub_coords)]
    sub = roi[tuple(slice(a, b) for a, b in zip(lo_old, hi_old))]
    sub = (sub if sub.dtype == bool else sub != 0).astype(np.float64)
    values = _trilinear(sub, [c - lo for c, lo in zip(sub_coords, lo_old)])
    # weights like 1/2 + 1/2 come out as 0.49999999999: compare with a tolerance so that a voxel exactly at
    # the partial-volume threshold is kept, as IBSI's reference implementations do
    out[part] = values >= threshold - MASK_EPS
    return out


SPLINE_PREPAD = 12  # what scipy.ndimage.map_coordinates pads (edge values) before its spline prefilter


def _cubic_bspline_along(coef: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Cubic B-spline interpolant with coefficients ``coef`` evaluated at continuous indices along one axis."""
    n = coef.shape[axis]
    i0 = np.floor(coords).astype(np.intp)
    t = coords - i0
    t2, t3 = t * t, t * t * t
    weights = ((1.0 - t) ** 3 / 6.0, (4.0 - 6.0 * t2 + 3.0 * t3) / 6.0, (1.0 + 3.0 * t + 3.0 * t2 - 3.0 * t3) / 6.0,
               t3 / 6.0)
    if axis < coef.ndim - 1 and coef.size >= PLANE_LOOP_MIN * n:  # plane by plane: no gathered copies (same arithmetic)
        lead = (slice(None),) * axis
        out = np.empty(coef.shape[:axis] + (coords.size,) + coef.shape[axis + 1:])
        tmp = np.empty(coef.shape[:axis] + coef.shape[axis + 1:])
        taps = [np.clip(i0 + offset, 0, n - 1) for offset in (-1, 0, 1, 2)]
        for i in range(coords.size):
            o = out[lead + (i,)]
            np.multiply(coef[lead + (int(taps[0][i]),)], weights[0][i], out=o)
            for j, w in zip(taps[1:], weights[1:]):
                np.multiply(coef[lead + (int(j[i]),)], w[i], out=tmp)
                o += tmp
        return out
    if axis == 2 and coef.ndim == 3 and coef.size >= PLANE_LOOP_MIN * coef.shape[0]:  # last axis: one outer plane,
        taps = [np.clip(i0 + offset, 0, n - 1) for offset in (-1, 0, 1, 2)]  # at a time: gathers stay in cache
        out = np.empty(coef.shape[:2] + (coords.size,))
        tmp = np.empty((coef.shape[1], coords.size))
        for z in range(coef.shape[0]):
            c, o = coef[z], out[z]
            np.take(c, taps[0], axis=1, out=o)
            o *= weights[0]
            for j, w in zip(taps[1:], weights[1:]):
                np.take(c, j, axis=1, out=tmp)
                tmp *= w
                o += tmp
        return out
    shape = [1] * coef.ndim
    shape[axis] = coords.size
    out = None
    for offset, w in zip((-1, 0, 1, 2), weights):
        term = np.take(coef, np.clip(i0 + offset, 0, n - 1), axis=axis)
        term *= w.reshape(shape)
        out = term if out is None else np.add(out, term, out=out)
    return out


def _tricubic(a: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """Tricubic B-spline interpolation of ``a`` on the grid ``coords[0] x coords[1] x coords[2]``.

    Exactly ``ndimage.map_coordinates(a, mesh, order=3, mode='nearest', prefilter=True)`` (same edge pre-padding
    and spline prefilter) but separable: the prefilter and the 4-tap evaluation along one axis commute with
    those along the others, so each axis is filtered and then immediately shrunk to the output grid, and later
    axes are filtered on smaller arrays. Edge padding along one axis also commutes with work along the others
    (it copies whole planes), so each axis is padded only when its turn comes: the same values, fewer lines."""
    from scipy import ndimage

    out = np.asarray(a, dtype=np.float64)
    for ax in sorted(range(3), key=lambda k: len(coords[k]) / a.shape[k]):
        widths = [(0, 0)] * out.ndim
        widths[ax] = (SPLINE_PREPAD, SPLINE_PREPAD)
        out = np.pad(out, widths, mode="edge")
        out = ndimage.spline_filter1d(out, order=3, axis=ax, output=np.float64, mode="nearest")
        out = _cubic_bspline_along(out, coords[ax] + SPLINE_PREPAD, ax)
    return out


def process(image: Image, mask: Mask | np.ndarray, config: RadiomicsConfig, label: int | str | None = None,
            margin_mm: float = PEAK_RADIUS_MM + 2.0) -> ProcessedROI:
    """Interpolate, threshold and re-segment one ROI following ``config`` (IBSI-1 processing chain)."""
    src = image.meta.get("source_files", [None])[0] if isinstance(image.meta, dict) else None
    if image.ndim_spatial != 3 or image.array.ndim != 3:
        raise InputError(src, f"radiomics needs a single 3D image, got array shape {image.array.shape}")
    if isinstance(mask, Mask) and label is None and not mask.overlapping and mask.array.dtype.kind in "biu":
        roi = mask.array  # any foreground: binarised only where read (its crop), not the whole label map
    else:
        roi = mask.binary(label) if isinstance(mask, Mask) else np.asarray(mask).astype(bool)
    if isinstance(mask, Mask) and not image.same_grid(mask):
        raise InputError(src, "mask and image grids differ (resample the mask onto the image first)")
    if roi.shape != image.array.shape:
        raise InputError(src, f"mask shape {roi.shape} differs from image shape {image.array.shape}")
    bb = _bbox(roi)
    if bb is None:
        raise InputError(src, "the ROI mask is empty")
    arr = image.array  # converted (and rounded, with round_input) only on the crop below
    spacing = np.asarray(image.spacing, dtype=float)  # x, y, z
    new_sp = list(config.new_spacing) if config.new_spacing is not None else [None, None, None]
    grids = []  # per numpy axis (z, y, x)
    for ax in range(3):
        phys = 2 - ax
        grids.append(_axis_grid(arr.shape[ax], float(spacing[phys]), new_sp[phys]))
    out_spacing = tuple(float(new_sp[p]) if new_sp[p] is not None else float(spacing[p]) for p in range(3))
    # crop: new-grid indices whose position lies within the ROI bounding box (+ margin) of the old grid
    sel = []
    for ax in range(3):
        phys = 2 - ax
        m_old = margin_mm / spacing[phys] + 1.0
        lo, hi = bb[ax][0] - m_old, bb[ax][1] + m_old
        keep = np.nonzero((grids[ax] >= lo) & (grids[ax] <= hi))[0]
        sel.append((int(keep[0]), int(keep[-1]) + 1))
    coords = [grids[ax][sel[ax][0]:sel[ax][1]] for ax in range(3)]
    resampled = any(not np.array_equal(c, np.round(c)) or (len(g) != arr.shape[ax]) for ax, (c, g) in enumerate(zip(coords, grids)))

    def as_float(a: np.ndarray) -> np.ndarray:
        # rounding before the float64 conversion gives the same integers (any float is exact in float64)
        return np.asarray(np.round(a) if config.round_input else a, dtype=np.float64)

    if not resampled:
        sl = tuple(slice(int(c[0]), int(c[-1]) + 1) for c in coords)
        img = as_float(arr[sl]).copy()
        morph = roi[sl] != 0
    else:
        # old-grid crop big enough for the spline support / prefilter, coordinates shifted into it
        pad = 12 if config.image_interpolation == "cubic" else 2
        lo_old = [max(0, int(math.floor(c[0])) - pad) for c in coords]
        hi_old = [min(arr.shape[ax], int(math.ceil(c[-1])) + pad + 1) for ax, c in enumerate(coords)]
        box = tuple(slice(lo_old[a], hi_old[a]) for a in range(3))
        sub = as_float(arr[box])
        local = [c - lo_old[a] for a, c in enumerate(coords)]
        if config.image_interpolation == "cubic":
            img = _tricubic(sub, local)
        else:
            img = _trilinear(sub, local)
        morph = _interpolated_mask(roi, bb, coords, config.mask_threshold)
    if config.round_intensities:
        img = np.round(img)
    if not morph.any():
        raise InputError(src, "the ROI vanished after interpolation (ROI smaller than the new voxel size?)")
    first = np.array([coords[2][0], coords[1][0], coords[0][0]])  # old continuous index (i, j, k) of crop voxel 0
    origin = tuple(float(v) for v in image.index_to_physical(first))
    int_mask = resegment(img, morph, config.reseg_range, config.outlier_sigma)
    if not int_mask.any():
        raise InputError(src, "no ROI voxel is left after re-segmentation")
    diag = {"int_mask_vox_count": int(np.count_nonzero(int_mask)), "morph_mask_vox_count": int(np.count_nonzero(morph)),
            "interp_grid_shape_zyx": [len(g) for g in grids]}
    return ProcessedROI(image=img, morph_mask=morph, int_mask=int_mask, spacing=out_spacing, origin=origin,
                        direction=tuple(image.direction), diagnostics=diag)


def resegment(img: np.ndarray, morph: np.ndarray, reseg_range: tuple[float | None, float | None] | None,
              outlier_sigma: float | None) -> np.ndarray:
    """Intensity mask: the morphological mask restricted to a range, then to mean +/- ``outlier_sigma`` SD."""
    int_mask = morph.copy()
    if reseg_range is not None:
        lo, hi = reseg_range
        if lo is not None:
            int_mask &= img >= lo
        if hi is not None:
            int_mask &= img <= hi
    if outlier_sigma is not None and int_mask.any():
        vals = img[int_mask]
        mu, sd = vals.mean(), vals.std()
        int_mask &= (img >= mu - outlier_sigma * sd) & (img <= mu + outlier_sigma * sd)
    return int_mask


def discretise(values: np.ndarray, disc: Discretisation, reseg_range: tuple[float | None, float | None] | None = None,
               roi_values: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Grey levels 1..Ng of ``values`` and Ng.

    FBS: ``floor((x - x_min) / w) + 1`` with ``x_min`` the explicit ``disc.min``, else the re-segmentation lower
    bound, else the ROI minimum. FBN: ``floor(Ng (x - min) / (max - min)) + 1`` over the ROI, the maximum mapped to Ng.
    ``none``: the intensities are taken as grey levels (rounded). ``roi_values`` gives min/max (default ``values``).
    """
    ref = values if roi_values is None else roi_values
    if disc.method == "none":
        levels = np.round(values).astype(np.int64)
        return levels, int(levels.max()) if levels.size else 0
    if disc.method == "FBS":
        x_min = disc.min
        if x_min is None and reseg_range is not None and reseg_range[0] is not None:
            x_min = reseg_range[0]
        if x_min is None:
            x_min = float(ref.min())
        levels = np.floor((values - x_min) / disc.bin_width).astype(np.int64) + 1
        return levels, int(levels.max()) if levels.size else 0
    n = int(disc.n_bins)
    lo, hi = float(ref.min()), float(ref.max())
    if hi == lo:
        return np.ones(values.shape, dtype=np.int64), n
    levels = np.floor(n * (values - lo) / (hi - lo)).astype(np.int64) + 1
    levels = np.clip(levels, 1, n)
    return levels, n


def level_image(roi: ProcessedROI, disc: Discretisation, reseg_range=None) -> tuple[np.ndarray, int]:
    """int32 (z, y, x) array of grey levels inside the intensity mask (0 outside) and Ng."""
    vals = roi.values
    lv, ng = discretise(vals, disc, reseg_range)
    out = np.zeros(roi.image.shape, dtype=np.int32)
    out[roi.int_mask] = lv
    return out, ng
