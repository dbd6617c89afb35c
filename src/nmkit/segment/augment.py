"""3D training augmentation with MONAI transforms, applied jointly to the image channels, the label map(s) and the
boundary-loss distance maps of one patch.

Kinds (``AUGMENTATIONS``): ``flip`` (mirror along ``flip_axes``, probability 0.5 each), ``rotate`` (up to
``rotation_deg`` about every axis), ``scale`` (zoom by 1 +- ``scale``), ``elastic`` (smooth random deformation), ``gamma``
(contrast: intensity ** gamma on the min-max range), ``noise`` (Gaussian, std up to ``noise_std`` of the normalised
input). Each of rotate/scale (one affine), elastic, gamma and noise fires with ``probability``. Spatial transforms
work on a patch cropped larger (``crop_size``) and centre-cropped back to the patch size, so rotated corners hold
image, not padding. Labels are resampled nearest-neighbour, images and distance maps linearly (rotation and flips
keep distances exact; scaling and elastic change them by at most the zoom, an accepted approximation). Seeded:
the same seed gives the same augmented patches.

This module imports MONAI/torch only when an :class:`Augmenter` is built, so the CLI can list the kinds cheaply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

AUGMENTATIONS = ("flip", "rotate", "scale", "elastic", "gamma", "noise")
DEFAULT_AUGMENTATIONS = ("flip", "rotate", "scale", "gamma", "noise")


@dataclass
class AugmentConfig:
    """Which augmentations, how often and how strong (recorded in the bundle's training configuration)."""

    kinds: tuple[str, ...] = DEFAULT_AUGMENTATIONS
    probability: float = 0.2
    flip_axes: tuple[int, ...] = (-1,)
    rotation_deg: float = 15.0
    scale: float = 0.15
    elastic_sigma: tuple[float, float] = (5.0, 8.0)
    elastic_magnitude: tuple[float, float] = (20.0, 60.0)
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"augmentation probability must be in [0, 1]; got {self.probability}")
        self.kinds = tuple(dict.fromkeys(self.kinds))

    @property
    def spatial(self) -> bool:
        """True when a transform moves voxels other than by flipping (needs a larger crop)."""
        return any(k in self.kinds for k in ("rotate", "scale", "elastic"))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def crop_size(config: AugmentConfig | None, patch: Sequence[int]) -> tuple[int, ...]:
    """Size of the region to crop before spatial augmentation: large enough that a rotation by ``rotation_deg`` and a
    zoom-out by ``scale`` of the patch stay inside it."""
    if config is None or not config.spatial:
        return tuple(int(p) for p in patch)
    angle = math.radians(config.rotation_deg) if "rotate" in config.kinds else 0.0
    zoom = 1.0 + (config.scale if "scale" in config.kinds else 0.0)
    factor = min(1.6, (abs(math.cos(angle)) + abs(math.sin(angle))) * zoom)
    return tuple(int(math.ceil(p * factor)) for p in patch)


@dataclass
class Augmenter:
    """Applies an :class:`AugmentConfig` to (image (C, ...), label (L, ...), maps (M, ...) or None) patches."""

    config: AugmentConfig
    patch_size: tuple[int, ...]
    seed: int = 0
    _transform: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from monai import transforms as T

        c, dims = self.config, len(self.patch_size)
        keys, spatial_modes = ["image", "label", "maps"], ("bilinear", "nearest", "bilinear")
        chain: list[Any] = []
        if "rotate" in c.kinds or "scale" in c.kinds:
            angle = math.radians(c.rotation_deg) if "rotate" in c.kinds else 0.0
            zoom = c.scale if "scale" in c.kinds else 0.0
            rotate = (angle,) * (3 if dims == 3 else 1) if angle else None
            chain.append(T.RandAffined(keys, prob=c.probability, rotate_range=rotate, scale_range=(zoom,) * dims if zoom else None,
                                       mode=spatial_modes, padding_mode="border", allow_missing_keys=True))
        if "elastic" in c.kinds:
            elastic = T.Rand3DElasticd if dims == 3 else T.Rand2DElasticd
            kwargs = {"sigma_range": c.elastic_sigma, "magnitude_range": c.elastic_magnitude} if dims == 3 else \
                {"spacing": (20, 20), "magnitude_range": (1, 2)}
            chain.append(elastic(keys, prob=c.probability, mode=spatial_modes, padding_mode="border", allow_missing_keys=True, **kwargs))
        chain.append(T.CenterSpatialCropd(keys, roi_size=tuple(self.patch_size), allow_missing_keys=True))
        if "flip" in c.kinds:
            chain += [T.RandFlipd(keys, prob=0.5, spatial_axis=axis % dims, allow_missing_keys=True) for axis in c.flip_axes]
        if "gamma" in c.kinds:
            chain.append(T.RandAdjustContrastd("image", prob=c.probability, gamma=c.gamma))
        if "noise" in c.kinds:
            chain.append(T.RandGaussianNoised("image", prob=c.probability, std=c.noise_std))
        self._transform = T.Compose(chain)
        self._transform.set_random_state(seed=int(self.seed) % 2**32)

    def __call__(self, image: np.ndarray, label: np.ndarray, maps: np.ndarray | None = None):
        """Augmented ``(image, label, maps)`` as torch tensors cropped to the patch size (label int64)."""
        import torch

        data = {"image": torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32),
                "label": torch.as_tensor(np.ascontiguousarray(label), dtype=torch.float32)}
        if maps is not None:
            data["maps"] = torch.as_tensor(np.ascontiguousarray(maps), dtype=torch.float32)
        out = self._transform(data)

        def plain(t: Any) -> torch.Tensor:
            t = t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)
            return t.contiguous()

        return (plain(out["image"]).float(), torch.round(plain(out["label"])).long(),
                plain(out["maps"]).float() if maps is not None else None)
