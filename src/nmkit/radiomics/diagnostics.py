"""IBSI-1 diagnostic features: image and ROI dimensions, voxel counts and intensities at each processing step.

Tags follow the IBSI compliance sheet (mirp names): ``*_init_img`` (the image as read), ``*_interp_img`` (the
image on the interpolated grid), ``*_init_roi`` (the ROI as read), ``*_interp_roi`` (after interpolation and the
partial-volume threshold) and ``*_reseg_roi`` (after re-segmentation). ``x, y, z`` are the image axes; dimensions
are voxel counts, ``vox_dim_*`` in mm, intensities in the image's units. The intensities of the whole interpolated
image (``mean/min/max_int_interp_img``) need the whole image interpolated: they are computed only up to
``MAX_INTERP_VOXELS`` voxels (NaN above, to keep a whole-body CT from taking minutes).
"""

from __future__ import annotations

import numpy as np

from ..io.image import Image
from .config import RadiomicsConfig
from .preprocess import ProcessedROI, _axis_grid, _bbox, _trilinear, _tricubic

MAX_INTERP_VOXELS = 64_000_000


def _xyz(prefix: str, suffix: str, shape_zyx) -> dict[str, float]:
    return {f"{prefix}_x_{suffix}": float(shape_zyx[2]), f"{prefix}_y_{suffix}": float(shape_zyx[1]),
            f"{prefix}_z_{suffix}": float(shape_zyx[0])}


def _bb_dims(mask: np.ndarray) -> tuple[int, int, int]:
    bb = _bbox(mask)
    return (0, 0, 0) if bb is None else tuple(hi - lo + 1 for lo, hi in bb)


def _stats(prefix: str, suffix: str, values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {f"{prefix}mean_int_{suffix}": np.nan, f"{prefix}min_int_{suffix}": np.nan, f"{prefix}max_int_{suffix}": np.nan}
    return {f"{prefix}mean_int_{suffix}": float(values.mean()), f"{prefix}min_int_{suffix}": float(values.min()),
            f"{prefix}max_int_{suffix}": float(values.max())}


def _interpolated_image(arr: np.ndarray, grids: list[np.ndarray], config: RadiomicsConfig) -> np.ndarray | None:
    if int(np.prod([len(g) for g in grids])) > MAX_INTERP_VOXELS:
        return None
    if all(len(g) == n and np.array_equal(g, np.arange(n)) for g, n in zip(grids, arr.shape)):
        img = arr
    else:
        img = (_tricubic if config.image_interpolation == "cubic" else _trilinear)(arr, grids)
    return np.round(img) if config.round_intensities else img


def ibsi_diagnostics(image: Image, roi: np.ndarray, processed: ProcessedROI, config: RadiomicsConfig) -> dict[str, float]:
    """The IBSI diagnostic features of one ROI (``roi``: the boolean mask on the image grid; ``processed``: the
    same ROI after ``preprocess.process`` with ``config``)."""
    arr = np.asarray(np.round(image.array) if config.round_input else image.array, dtype=np.float64)
    spacing = [float(s) for s in image.spacing]  # x, y, z
    new_sp = list(config.new_spacing) if config.new_spacing is not None else [None, None, None]
    grids = [_axis_grid(arr.shape[ax], spacing[2 - ax], new_sp[2 - ax]) for ax in range(3)]
    interp_shape = tuple(len(g) for g in grids)
    out: dict[str, float] = {}
    out.update(_xyz("img_dim", "init_img", arr.shape))
    out.update({"vox_dim_x_init_img": spacing[0], "vox_dim_y_init_img": spacing[1], "vox_dim_z_init_img": spacing[2]})
    out.update(_stats("", "init_img", arr.ravel()))
    out.update(_xyz("img_dim", "interp_img", interp_shape))
    out.update({"vox_dim_x_interp_img": processed.spacing[0], "vox_dim_y_interp_img": processed.spacing[1],
                "vox_dim_z_interp_img": processed.spacing[2]})
    interp = _interpolated_image(arr, grids, config)
    out.update(_stats("", "interp_img", np.empty(0) if interp is None else interp.ravel()))
    roi_values = arr[roi]
    for step, shape in (("init_roi", arr.shape), ("interp_roi", interp_shape), ("reseg_roi", interp_shape)):
        out.update(_xyz("int_mask_dim", step, shape))
    out.update(_xyz("int_mask_bb_dim", "init_roi", _bb_dims(roi)))
    out.update(_xyz("morph_mask_bb_dim", "init_roi", _bb_dims(roi)))
    out.update({"int_mask_vox_count_init_roi": float(roi.sum()), "morph_mask_vox_count_init_roi": float(roi.sum())})
    out.update(_stats("int_mask_", "init_roi", roi_values))
    morph, intm = processed.morph_mask, processed.int_mask
    out.update(_xyz("int_mask_bb_dim", "interp_roi", _bb_dims(morph)))
    out.update(_xyz("morph_mask_bb_dim", "interp_roi", _bb_dims(morph)))
    out.update({"int_mask_vox_count_interp_roi": float(morph.sum()), "morph_mask_vox_count_interp_roi": float(morph.sum())})
    out.update(_stats("int_mask_", "interp_roi", processed.image[morph]))
    out.update(_xyz("int_mask_bb_dim", "reseg_roi", _bb_dims(intm)))
    out.update(_xyz("morph_mask_bb_dim", "reseg_roi", _bb_dims(morph)))
    out.update({"int_mask_vox_count_reseg_roi": float(intm.sum()), "morph_mask_vox_count_reseg_roi": float(morph.sum())})
    out.update(_stats("int_mask_", "reseg_roi", processed.image[intm]))
    return out
