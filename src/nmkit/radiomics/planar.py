"""Radiomics of planar (2D) images: scintigraphy, radiographs.

Why: the thyroid project's images are planar scintigraphies; the IBSI-1 chain is written for volumes. IBSI-1
computes texture of 2D images slice by slice ("2D" aggregation), and its morphology and local-intensity
(1 cm^3 peak) families are defined for volumes only. So a planar image is lifted to a one-slice volume and
extracted with:

* texture in the "2D" aggregation only (2.5D and 3D need several slices);
* no IBSI morphology and no local intensity (their 3D definitions have no meaning on a projection); instead
  the planar shape and count features below, whose names say their units;
* in-plane resampling only (a requested z spacing is dropped);
* a 2D filter only (an IBSI-2 3D filter on one slice would invent a z neighbourhood).

Planar features (not IBSI; the ``planar_`` prefix says so): ROI area (mm^2), perimeter (mm, the
length of the pixel-edge boundary corrected by the 4-connected Crofton estimate of scikit-image), equivalent
circle diameter (mm), maximum Feret diameter (mm) and the ROI's summed intensity (``planar_integrated``, in the
image's units times pixels, e.g. counts for a count image).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from ..io.image import Image, Mask
from .config import RadiomicsConfig

#: families that are defined for volumes only
VOLUME_ONLY = ("morphology", "local_intensity")


def is_planar(image: Image) -> bool:
    """A 2D image, or a volume of one slice."""
    return image.ndim_spatial == 2 or (image.ndim_spatial == 3 and image.spatial_shape[0] == 1)


def lift(image: Image, mask: Mask | None = None) -> tuple[Image, Mask | None]:
    """A 2D image (and its mask) as one-slice volumes with the same in-plane geometry.

    The slice thickness is the larger in-plane spacing (it enters no planar feature: texture is in-plane)."""
    if image.ndim_spatial == 3:
        return image, mask
    if image.array.ndim != 2:
        raise InputError(image.meta.get("source_files", [None])[0] if image.meta else None,
                         f"radiomics needs one planar frame, got array shape {image.array.shape} (split multi-frame "
                         "planar images into one file per view)")
    sx, sy = image.spacing
    d = np.asarray(image.direction, dtype=float).reshape(2, 2)
    direction = np.eye(3)
    direction[:2, :2] = d
    geometry = dict(spacing=(sx, sy, max(sx, sy)), origin=(*image.origin, 0.0), direction=tuple(direction.ravel()))
    lifted = Image(array=image.array[None], modality=image.modality, units=image.units, meta=dict(image.meta), **geometry)
    lifted.meta["planar"] = True
    lifted_mask = None
    if mask is not None:
        lifted_mask = Mask(array=mask.array[:, None] if mask.overlapping else mask.array[None], labels=dict(mask.labels),
                           overlapping=mask.overlapping, modality=mask.modality, meta=dict(mask.meta), **geometry)
    return lifted, lifted_mask


def planar_config(config: RadiomicsConfig) -> RadiomicsConfig:
    """``config`` adapted to a one-slice volume (see the module docstring); raises for a 3D filter."""
    if config.filter is not None and getattr(config.filter, "dims", "3D") == "3D":
        raise InputError(None, f"config {config.name!r} applies a 3D filter, which a planar image cannot take: "
                               "use a 2D filter (e.g. the ibsi2-2d preset)")
    spacing = None
    if config.new_spacing is not None:
        spacing = (config.new_spacing[0], config.new_spacing[1], None)
    families = tuple(f for f in config.families if f not in VOLUME_ONLY)
    return dataclasses.replace(config, dims="2D", texture_dims=("2D",), new_spacing=spacing, families=families)


def planar_features(image: Image, roi: np.ndarray) -> dict[str, float]:
    """Area, perimeter, equivalent and Feret diameters (mm) and summed intensity of a planar ROI."""
    from scipy.spatial import ConvexHull
    from skimage.measure import perimeter

    roi2 = np.asarray(roi, dtype=bool).reshape(image.spatial_shape[-2:])
    values = np.asarray(image.array, dtype=float).reshape(roi2.shape)[roi2]
    sx, sy = float(image.spacing[0]), float(image.spacing[1])
    n = int(roi2.sum())
    area = n * sx * sy
    out = {"planar_area_mm2": area, "planar_pixels": float(n), "planar_integrated": float(values.sum()),
           "planar_equivalent_diameter_mm": float(2.0 * np.sqrt(area / np.pi))}
    if abs(sx - sy) < 1e-6 * max(sx, sy):
        out["planar_perimeter_mm"] = float(perimeter(roi2, neighborhood=4) * sx)
    else:  # scikit-image's estimate assumes square pixels: count exposed pixel edges in mm instead
        padded = np.pad(roi2, 1)
        vertical_edges = np.count_nonzero(padded[:, 1:] != padded[:, :-1])  # edges between columns: length sy each
        horizontal_edges = np.count_nonzero(padded[1:, :] != padded[:-1, :])
        out["planar_perimeter_mm"] = float(vertical_edges * sy + horizontal_edges * sx)
    j, i = np.nonzero(roi2)
    corners = np.concatenate([np.stack([(i + di) * sx, (j + dj) * sy], axis=1) for di in (-0.5, 0.5) for dj in (-0.5, 0.5)])
    try:
        pts = corners[ConvexHull(corners).vertices]
    except Exception:  # a degenerate ROI (one row of pixels): all corners are on the hull
        pts = corners
    diff = pts[:, None, :] - pts[None, :, :]
    out["planar_feret_max_mm"] = float(np.sqrt((diff ** 2).sum(-1)).max()) if n else 0.0
    return out

