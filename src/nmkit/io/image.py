"""The image and mask model shared by every nmkit module.

Conventions (the same as SimpleITK's, so conversion is loss-free):

* ``array`` is stored in NumPy order: ``(z, y, x)`` for 3D, ``(y, x)`` for 2D, optionally with leading
  frame/channel axes kept out of the geometry (see ``Image.ndim_spatial``).
* ``spacing``, ``origin`` are in physical order ``(x, y, z)`` in millimetres, LPS patient coordinates
  (DICOM convention). ``direction`` is the row-major flattened direction-cosine matrix whose *columns*
  are the physical directions of the x, y, z index axes.

A voxel at NumPy index ``(k, j, i)`` has physical position ``origin + D @ (spacing * (i, j, k))``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import GeometryError

GEOMETRY_TOLERANCE = 1e-4  # mm / cosine units


def _identity(n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.eye(n).ravel())


@dataclass
class Image:
    """An image array with explicit geometry, modality, units and key DICOM attributes."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    modality: str = ""
    units: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        n = len(self.spacing)
        if n not in (2, 3):
            raise GeometryError(f"spacing must have 2 or 3 values, got {self.spacing!r}")
        if self.array.ndim < n:
            raise GeometryError(f"array of shape {self.array.shape} has fewer axes than spacing {self.spacing}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise GeometryError(f"spacing must be positive and finite, got {self.spacing}")
        self.origin = tuple(float(o) for o in (self.origin if self.origin is not None else (0.0,) * n))
        self.direction = tuple(float(d) for d in (self.direction if self.direction is not None else _identity(n)))
        if len(self.origin) != n or len(self.direction) != n * n:
            raise GeometryError(f"origin/direction sizes do not match {n}D spacing")

    # ----- geometry -------------------------------------------------------------------------------
    @property
    def ndim_spatial(self) -> int:
        return len(self.spacing)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes in NumPy order."""
        return tuple(self.array.shape[-self.ndim_spatial :])

    @property
    def size(self) -> tuple[int, ...]:
        """Number of voxels per axis in physical order (x, y[, z]), like SimpleITK's GetSize()."""
        return tuple(reversed(self.spatial_shape))

    @property
    def direction_matrix(self) -> np.ndarray:
        n = self.ndim_spatial
        return np.asarray(self.direction, dtype=float).reshape(n, n)

    @property
    def voxel_volume(self) -> float:
        """Voxel volume in mm^3 (area in mm^2 for 2D)."""
        return float(np.prod(self.spacing))

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous index (..., n) in (i, j, k) order to physical points (..., n)."""
        idx = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Physical points (..., n) to continuous index in (i, j, k) order."""
        pts = np.asarray(points, dtype=float) - np.asarray(self.origin)
        return (pts @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def same_grid(self, other: "Image", tol: float = GEOMETRY_TOLERANCE) -> bool:
        """True when ``other`` samples exactly the same voxels in space."""
        return (
            self.spatial_shape == other.spatial_shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=max(tol, 1e-3))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def geometry(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    def with_array(self, array: np.ndarray, **changes: Any) -> "Image":
        """A new image on the same grid with another array (and optionally other fields)."""
        array = np.asarray(array)
        if tuple(array.shape[-self.ndim_spatial :]) != self.spatial_shape:
            raise GeometryError(f"array shape {array.shape} does not fit grid {self.spatial_shape}")
        fields = dict(spacing=self.spacing, origin=self.origin, direction=self.direction, modality=self.modality, units=self.units, meta=copy.deepcopy(self.meta))
        fields.update(changes)
        return Image(array=array, **fields)

    def copy(self) -> "Image":
        return self.with_array(self.array.copy())

    # ----- SimpleITK ------------------------------------------------------------------------------
    def to_sitk(self):
        """SimpleITK image with the same geometry (only the spatial axes; extra leading axes become vector pixels)."""
        import SimpleITK as sitk

        arr = self.array
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        extra = arr.ndim - self.ndim_spatial
        if extra == 0:
            img = sitk.GetImageFromArray(arr)
        elif extra == 1:
            img = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1), isVector=True)
        else:
            raise GeometryError(f"cannot convert an array with {extra} non-spatial axes to SimpleITK")
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img, modality: str = "", units: str = "", meta: Mapping[str, Any] | None = None) -> "Image":
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr = np.moveaxis(arr, -1, 0)
        return cls(array=arr, spacing=img.GetSpacing(), origin=img.GetOrigin(), direction=img.GetDirection(), modality=modality, units=units, meta=dict(meta or {}))

    def __repr__(self) -> str:  # arrays are large: show only the essentials
        return (
            f"Image(shape={self.array.shape}, dtype={self.array.dtype}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(o, 3) for o in self.origin)}, modality={self.modality!r}, units={self.units!r})"
        )


@dataclass(repr=False)
class Mask(Image):
    """A label map on an image grid: 0 is background, each positive label has a name.

    Binary masks have ``labels == {1: name}``. Overlapping ROIs are kept as a stack with a leading
    axis (one binary layer per label, ``overlapping=True``).
    """

    labels: dict[int, str] = field(default_factory=lambda: {1: "roi"})
    overlapping: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlapping:
            if self.array.ndim != self.ndim_spatial + 1 or self.array.shape[0] != len(self.labels):
                raise GeometryError("an overlapping mask needs one layer per label on a leading axis")
            self.array = self.array.astype(bool)
        elif self.array.dtype == bool:
            pass
        elif not np.issubdtype(self.array.dtype, np.integer):
            raise GeometryError(f"mask arrays must be boolean or integer label maps, got {self.array.dtype}")

    def binary(self, label: int | str | None = None) -> np.ndarray:
        """Boolean array of one label (by value or name); ``None`` means any foreground."""
        if label is None:
            return self.array.any(axis=0) if self.overlapping else self.array.astype(bool)
        value = self.label_value(label)
        if self.overlapping:
            return self.array[sorted(self.labels).index(value)]
        if self.array.dtype == bool:
            return self.array.copy()
        return self.array == value

    def label_value(self, label: int | str) -> int:
        if isinstance(label, str):
            for value, name in self.labels.items():
                if name == label:
                    return value
            raise KeyError(f"no label named {label!r}; labels are {self.labels}")
        if label not in self.labels:
            raise KeyError(f"no label {label}; labels are {self.labels}")
        return int(label)

    def split(self) -> dict[str, "Mask"]:
        """One binary mask per label, keyed by name."""
        return {name: self.binary_mask(value) for value, name in sorted(self.labels.items())}

    def binary_mask(self, label: int | str) -> "Mask":
        value = self.label_value(label)
        return Mask(array=self.binary(value), spacing=self.spacing, origin=self.origin, direction=self.direction,
                    modality="SEG", meta=copy.deepcopy(self.meta), labels={1: self.labels[value]})

    def voxel_count(self, label: int | str | None = None) -> int:
        return int(np.count_nonzero(self.binary(label)))

    def volume_ml(self, label: int | str | None = None) -> float:
        return self.voxel_count(label) * self.voxel_volume / 1000.0

    @classmethod
    def like(cls, image: Image, array: np.ndarray, labels: Mapping[int, str] | None = None, **kw: Any) -> "Mask":
        """A mask on the grid of ``image``."""
        array = np.asarray(array)
        if tuple(array.shape[-image.ndim_spatial :]) != image.spatial_shape:
            raise GeometryError(f"mask shape {array.shape} does not fit image grid {image.spatial_shape}")
        return cls(array=array, spacing=image.spacing, origin=image.origin, direction=image.direction, modality="SEG",
                   labels=dict(labels or {1: "roi"}), **kw)


def resample_to(image: Image, reference: Image, interpolation: str = "linear", default_value: float = 0.0) -> Image:
    """Resample ``image`` onto the grid of ``reference`` (physical space is respected).

    ``interpolation``: "nearest", "linear", "bspline" (cubic). Masks are always resampled with nearest
    neighbour per label and keep their label names.
    """
    import SimpleITK as sitk

    if image.ndim_spatial != reference.ndim_spatial:
        raise GeometryError(f"cannot resample {image.ndim_spatial}D onto {reference.ndim_spatial}D grid")
    interpolators = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
    if interpolation not in interpolators:
        raise ValueError(f"interpolation must be one of {sorted(interpolators)}")
    if isinstance(image, Mask):
        interpolation = "nearest"
    ref = sitk.Image([int(s) for s in reference.size], sitk.sitkUInt8)
    ref.SetSpacing(reference.spacing)
    ref.SetOrigin(reference.origin)
    ref.SetDirection(reference.direction)
    if isinstance(image, Mask) and image.overlapping:
        layers = [resample_to(image.binary_mask(v), reference).array for v in sorted(image.labels)]
        return Mask.like(reference, np.stack(layers), labels=image.labels, overlapping=True)
    src = image.to_sitk()
    if image.array.dtype == bool:
        src = sitk.Cast(src, sitk.sitkUInt8)
    elif interpolation != "nearest" and not np.issubdtype(image.array.dtype, np.floating):
        src = sitk.Cast(src, sitk.sitkFloat32)
    out = sitk.Resample(src, ref, sitk.Transform(), interpolators[interpolation], float(default_value))
    arr = sitk.GetArrayFromImage(out)
    if isinstance(image, Mask):
        if image.array.dtype == bool:
            arr = arr.astype(bool)
        return Mask.like(reference, arr, labels=image.labels)
    return reference.with_array(arr, modality=image.modality, units=image.units, meta=copy.deepcopy(image.meta))
