"""Intensity normalisation and augmentation that respect how NM/PET/CT/MR images are made.

Count images (planar scintigraphy, SPECT projections) carry Poisson noise whose variance equals the
mean, so the same organ looks different at 50k and 500k counts. ``counts`` normalisation applies the
Anscombe transform (variance-stabilising: 2*sqrt(x + 3/8) has unit variance whatever the count level)
and then scales by a high percentile inside the image, so the network sees comparable contrast at any
count level. ``thin_counts`` simulates a shorter acquisition by binomial thinning of every pixel's counts,
which is exactly what counting fewer photons does (the result is again Poisson with a lower mean).

3D models may work at a target voxel spacing (``Preprocessing.target_spacing_mm``, physical x y z order like
``Image.spacing``): :func:`resample_to_spacing` brings a case onto it (images linear or B-spline, label maps label-aware:
one-hot linear + argmax, so thin structures neither vanish nor shift), :func:`resample_array` brings predictions back to
the original grid. The target grid keeps the direction and is centred on the original field of view.
Several input channels (e.g. PET+CT of one study on one grid) carry one normalisation each
(``channel_normalisations``, applied by :func:`normalise_channels`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .names import NORMALISATIONS

if TYPE_CHECKING:
    from ..io.image import Image

INTERPOLATIONS = ("linear", "bspline")


@dataclass
class Preprocessing:
    """How images are turned into network input; saved in model bundles so inference matches training."""

    normalisation: str = "counts"
    spatial_dims: int = 2
    target_size: tuple[int, ...] | None = (128, 128)  # 2D: images are resized to this (NumPy order)
    patch_size: tuple[int, ...] | None = None  # 3D: training patches and sliding-window size
    suv_max: float = 20.0
    window: tuple[float, float] = (-1000.0, 1000.0)
    percentile: float = 99.5
    extra: dict[str, Any] = field(default_factory=dict)
    target_spacing_mm: tuple[float, ...] | None = None  # 3D: cases resampled to this spacing (x, y, z); None = native grid
    interpolation: str = "linear"  # image interpolation when resampling: linear | bspline (label maps: label-aware)
    channels: tuple[str, ...] | None = None  # input channel names (modalities) when there are several, e.g. ("PT", "CT")
    channel_normalisations: tuple[str, ...] | None = None  # one normalisation per channel (default: ``normalisation``)

    @property
    def n_channels(self) -> int:
        return len(self.channels) if self.channels else 1

    def channel_preprocessing(self, index: int) -> "Preprocessing":
        """This preprocessing with channel ``index``'s normalisation (single-channel view)."""
        from dataclasses import replace

        kinds = self.channel_normalisations
        kind = kinds[index] if kinds else self.normalisation
        return replace(self, normalisation=kind, channels=None, channel_normalisations=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_size", "patch_size", "window", "target_spacing_mm", "channels", "channel_normalisations"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        d = dict(d)
        for key in ("target_size", "patch_size", "window", "target_spacing_mm", "channels", "channel_normalisations"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def default_normalisation(channel: str) -> str:
    """The usual normalisation of a modality: SUV for PET, a soft-tissue window for CT, z-score for MR, counts for NM."""
    key = str(channel).strip().upper()
    return {"PT": "suv", "PET": "suv", "SUV": "suv", "CT": "window", "NM": "counts", "SPECT": "counts"}.get(key, "zscore")


def normalise_channels(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Network input (C, ...) float32: each channel normalised with its own kind. A spatial array without a channel
    axis (one channel) gets one: (1, ...)."""
    array = np.asarray(array)
    if prep.n_channels == 1 and array.ndim == prep.spatial_dims:
        return normalise(array, prep)[None]
    if array.ndim != prep.spatial_dims + 1 or array.shape[0] != prep.n_channels:
        names = ", ".join(prep.channels or ("image",))
        raise ValueError(f"expected {prep.n_channels} channel(s) ({names}) before {prep.spatial_dims} spatial axes; got array shape {array.shape}")
    return np.stack([normalise(array[c], prep.channel_preprocessing(c)) for c in range(array.shape[0])])


def normalise(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Map raw image values to network input (float32 always: NumPy 2 promotes a float32 array combined with a
    float64 scalar such as a percentile to float64, which a float32 network refuses)."""
    return np.asarray(_normalised(array, prep), dtype=np.float32)


def _normalised(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    x = np.asarray(array, dtype=np.float32)
    kind = prep.normalisation
    if kind == "counts":
        x = 2.0 * np.sqrt(np.clip(x, 0, None) + 0.375)
        scale = np.percentile(x, prep.percentile)
        return x / max(float(scale), 1e-6)
    if kind == "peak":
        # planar NM read as readers do: relative to the hottest (lightly smoothed) spot, so an iso-contour at
        # 20-30 % of the maximum is one fixed input level whatever the count level
        from scipy.ndimage import gaussian_filter

        x = np.clip(x, 0, None)
        peak = float(gaussian_filter(x, float(prep.extra.get("peak_sigma_px", 2.0))).max())
        return x / max(peak, 1e-6)
    if kind == "zscore":
        return (x - x.mean()) / max(float(x.std()), 1e-6)
    if kind == "suv":
        return np.clip(x, 0, prep.suv_max) / prep.suv_max
    if kind == "window":
        lo, hi = prep.window
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    if kind == "percentile":
        lo, hi = np.percentile(x, [100 - prep.percentile, prep.percentile])
        return np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1)
    raise ValueError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMALISATIONS)}")


def thin_counts(counts: np.ndarray, keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning: the image a ``keep_fraction`` shorter acquisition would have recorded."""
    if not 0 < keep_fraction <= 1:
        raise ValueError("keep_fraction must be in (0, 1]")
    n = np.clip(np.rint(counts), 0, None).astype(np.int64)
    return rng.binomial(n, keep_fraction).astype(np.float32)


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prep: Preprocessing,
            count_reduction: tuple[float, float] | None = (0.25, 1.0), flip_axes: tuple[int, ...] = (-1,),
            extra: np.ndarray | None = None):
    """Random augmentation of one (raw) image/label pair: count reduction for count images, flips.

    ``extra``: arrays with leading axes on the same grid (e.g. boundary-loss distance maps) flipped with the image and
    returned third."""
    if prep.normalisation == "counts" and count_reduction is not None:
        image = thin_counts(image, float(rng.uniform(*count_reduction)), rng)
    n = prep.spatial_dims
    for axis in flip_axes:
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
            if extra is not None:
                extra = np.flip(extra, extra.ndim - n + axis % n)
    if extra is None:
        return np.ascontiguousarray(image), np.ascontiguousarray(label)
    return np.ascontiguousarray(image), np.ascontiguousarray(label), np.ascontiguousarray(extra)


def spacing_grid(image: "Image", spacing_mm: Sequence[float]) -> "Image":
    """An empty image (zeros, uint8) on the grid of ``image`` at ``spacing_mm``: same direction, shape
    ``round(n * s / s')`` (at least 1), centred on the same field of view (the centre of the volume stays put)."""
    from ..io.image import Image

    spacing = np.asarray([float(s) for s in spacing_mm])
    if spacing.shape != (image.ndim_spatial,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"target spacing must be {image.ndim_spatial} positive values in mm; got {list(spacing_mm)}")
    old = np.asarray(image.spacing)
    size_xyz = np.asarray(image.spatial_shape[::-1], float)
    new_size = np.maximum(1, np.round(size_xyz * old / spacing)).astype(int)
    shift = (size_xyz - 1) * old / 2 - (new_size - 1) * spacing / 2  # along the image axes, mm
    origin = np.asarray(image.origin) + image.direction_matrix @ shift
    return Image(array=np.zeros(tuple(new_size[::-1]), np.uint8), spacing=tuple(spacing), origin=tuple(origin),
                 direction=image.direction)


def resample_array(array: np.ndarray, source: "Image", target: "Image", order: int = 1) -> np.ndarray:
    """``array`` on ``source``'s grid (optionally with a leading channel axis) on ``target``'s grid, float32.

    Both grids must share the direction (as :func:`spacing_grid` makes them); physical positions are respected. Points
    outside the source take the nearest edge value. ``order``: 0 nearest, 1 linear, 3 B-spline."""
    from scipy import ndimage

    if not np.allclose(source.direction_matrix, target.direction_matrix, atol=1e-4):
        raise ValueError("resample_array needs grids with the same direction")
    array = np.asarray(array)
    n = source.ndim_spatial
    channels = array.ndim > n
    stack = array if channels else array[None]
    if stack.shape[1:] != tuple(source.spatial_shape):
        raise ValueError(f"array shape {array.shape} does not fit the source grid {source.spatial_shape}")
    offset_xyz = source.direction_matrix.T @ (np.asarray(target.origin) - np.asarray(source.origin))  # mm along axes
    scale = (np.asarray(target.spacing) / np.asarray(source.spacing))[::-1]  # NumPy axis order
    offset = (offset_xyz / np.asarray(source.spacing))[::-1]
    out_shape = tuple(target.spatial_shape)
    out = np.stack([ndimage.affine_transform(np.asarray(c, np.float32), scale, offset=offset, output_shape=out_shape,
                                             order=order, mode="nearest", prefilter=order > 1) for c in stack])
    return out if channels else out[0]


def resample_labels(labels: np.ndarray, source: "Image", target: "Image") -> np.ndarray:
    """Integer label map(s) (optionally one layer per head) on ``target``'s grid, label-aware: each label's one-hot
    layer is interpolated linearly and every voxel takes the label of the largest value (nnU-Net resamples masks the
    same way), so a structure keeps its position and thin parts survive better than with nearest neighbour."""
    labels = np.asarray(labels)
    n = source.ndim_spatial
    if labels.ndim > n:
        return np.stack([resample_labels(layer, source, target) for layer in labels])
    values = np.unique(labels)
    if len(values) == 1:
        return np.full(tuple(target.spatial_shape), values[0], labels.dtype)
    best = np.full(tuple(target.spatial_shape), -1.0, np.float32)
    out = np.zeros(tuple(target.spatial_shape), labels.dtype)
    for value in values:
        layer = resample_array((labels == value).astype(np.float32), source, target, order=1)
        better = layer > best
        out[better], best[better] = value, layer[better]
    return out


def resample_to_spacing(image: "Image", spacing_mm: Sequence[float], kind: str = "linear") -> "Image":
    """``image`` resampled to ``spacing_mm`` (x, y, z) on :func:`spacing_grid`. ``kind``: ``linear`` or ``bspline``
    (images; the array may have a leading channel axis), ``nearest``, or ``label`` (label-aware, integer maps)."""
    orders = {"linear": 1, "bspline": 3, "nearest": 0}
    if kind not in (*orders, "label"):
        raise ValueError(f"interpolation must be one of {', '.join((*orders, 'label'))}; got {kind!r}")
    grid = spacing_grid(image, spacing_mm)
    if grid.same_grid(image):
        return image
    if kind == "label":
        array = resample_labels(image.array, image, grid)
    else:
        array = resample_array(image.array, image, grid, orders[kind])
        if kind == "nearest":
            array = array.astype(np.asarray(image.array).dtype)
    return grid.with_array(array, modality=image.modality, units=getattr(image, "units", ""), meta=dict(image.meta))


def median_spacing(spacings: Sequence[Sequence[float]], anisotropy: float = 3.0) -> tuple[float, ...]:
    """Target spacing of a dataset (nnU-Net's fingerprint rule): the median spacing per axis; when the coarsest axis
    is over ``anisotropy`` times the finest (thick slices), that axis takes the 10th percentile instead, so thin-slice
    cases are not thrown away for the thick-slice majority."""
    table = np.asarray([[float(v) for v in s] for s in spacings], float)
    if table.ndim != 2 or not len(table):
        raise ValueError("no spacings to take the median of")
    target = np.median(table, axis=0)
    worst = int(np.argmax(target))
    if target[worst] > anisotropy * float(np.min(target)):
        target[worst] = float(np.percentile(table[:, worst], 10))
    return tuple(round(float(v), 4) for v in target)
