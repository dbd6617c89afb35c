"""Radiomics extraction settings: one typed object built from a preset or a YAML/dict.

Keys mirror the IBSI-1 processing steps (ibsi1_configs.md): resampling, intensity rounding, ROI partial-volume
threshold, re-segmentation (range / outlier), discretisation for texture + intensity histogram, and a separate
discretisation for the intensity-volume histogram.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..errors import InputError

_DISC_METHODS = ("FBS", "FBN", "none")
_IVH_METHODS = ("FBS", "FBN", "none")


@dataclass
class Discretisation:
    """Fixed bin size (``bin_width``, bins start at ``min`` or the re-segmentation lower bound), fixed bin number
    (``n_bins`` between ROI min and max) or ``none`` (intensities are already integer grey levels)."""

    method: str = "FBN"
    n_bins: int | None = 32
    bin_width: float | None = None
    min: float | None = None

    def __post_init__(self) -> None:
        if self.method not in _DISC_METHODS:
            raise InputError(None, f"discretisation method must be one of {_DISC_METHODS}, got {self.method!r}")
        if self.method == "FBS" and not (self.bin_width and self.bin_width > 0):
            raise InputError(None, "FBS discretisation needs a positive bin_width")
        if self.method == "FBN" and not (self.n_bins and self.n_bins >= 1):
            raise InputError(None, "FBN discretisation needs n_bins >= 1")


@dataclass
class RadiomicsConfig:
    """All settings of one extraction. ``new_spacing`` is (x, y, z) mm; a ``None`` z means in-plane resampling."""

    name: str = "custom"
    dims: str = "3D"  # texture aggregation: "2D" (by slice, 2D + 2.5D) or "3D"
    new_spacing: tuple[float | None, ...] | None = None
    image_interpolation: str = "linear"  # "linear" (tri/bilinear) or "cubic" (tricubic spline)
    round_intensities: bool = False  # round to nearest integer after interpolation (CT)
    mask_threshold: float = 0.5
    reseg_range: tuple[float | None, float | None] | None = None
    outlier_sigma: float | None = None
    discretisation: Discretisation = field(default_factory=Discretisation)
    ivh: Discretisation = field(default_factory=lambda: Discretisation(method="none", n_bins=None))
    ivh_use_reseg_range: bool = True  # IVH range G from the re-segmentation range (IBSI); False for arbitrary units
    families: tuple[str, ...] = ("morphology", "local_intensity", "intensity_statistics", "intensity_histogram",
                                 "intensity_volume_histogram", "texture")
    round_input: bool = False  # NIfTI CT input: round intensities to integers before processing (IBSI note)
    texture_dims: tuple[str, ...] | None = None  # texture aggregations; default ("2D", "2.5D") for 2D, ("3D",) for 3D
    # PET numbers on the image's own grid before any resampling (radiomics.pet.native_pet_features): native_suv_max/
    # mean/peak/min/std, native_voxels, mtv_ml, tlg_g. The IBSI stat_* features stay those of the processed grid.
    native_pet: bool = False
    # IBSI-2 convolutional filter applied after interpolation and re-segmentation (radiomics.filters.FilterSpec
    # keys: kind, dims, boundary, rotation, sigma_mm, ...); features are then those of the filtered image inside
    # the intensity mask (re-segmented on the unfiltered intensities). None: no filter. The filter's dims default
    # to the config's dims.
    filter: Any = None

    def __post_init__(self) -> None:
        if self.dims not in ("2D", "3D"):
            raise InputError(None, f"dims must be '2D' or '3D', got {self.dims!r}")
        if self.image_interpolation not in ("linear", "cubic"):
            raise InputError(None, f"image_interpolation must be 'linear' or 'cubic', got {self.image_interpolation!r}")
        if isinstance(self.discretisation, Mapping):
            self.discretisation = Discretisation(**self.discretisation)
        if isinstance(self.ivh, Mapping):
            self.ivh = Discretisation(**self.ivh)
        if self.new_spacing is not None:
            sp = tuple(None if s is None else float(s) for s in self.new_spacing)
            if len(sp) != 3 or any(s is not None and s <= 0 for s in sp):
                raise InputError(None, f"new_spacing must be 3 positive values (x, y, z; z may be null), got {self.new_spacing}")
            self.new_spacing = sp
        if self.reseg_range is not None:
            lo, hi = self.reseg_range
            self.reseg_range = (None if lo is None else float(lo), None if hi is None else float(hi))
        self.families = tuple(self.families)
        if self.filter is not None:
            from .filters import FilterSpec

            if isinstance(self.filter, Mapping):
                # a filter without dims filters as the config aggregates: slice by slice for a 2D config
                self.filter = FilterSpec.from_dict({"dims": self.dims, **self.filter})
            elif not isinstance(self.filter, FilterSpec):
                raise InputError(None, f"filter must be a mapping of filter settings, got {self.filter!r}")
            if self.filter.kind == "none":
                self.filter = None
        if self.texture_dims is not None:
            self.texture_dims = tuple(self.texture_dims)
            bad = set(self.texture_dims) - {"2D", "2.5D", "3D"}
            if bad:
                raise InputError(None, f"texture_dims must be among 2D, 2.5D, 3D; got {sorted(bad)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RadiomicsConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(None, f"unknown radiomics config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["families"] = list(self.families)
        if self.texture_dims is not None:
            out["texture_dims"] = list(self.texture_dims)
        if self.new_spacing is not None:
            out["new_spacing"] = list(self.new_spacing)
        if self.reseg_range is not None:
            out["reseg_range"] = list(self.reseg_range)
        if out.get("filter") and out["filter"].get("riesz_order") is not None:
            out["filter"]["riesz_order"] = list(out["filter"]["riesz_order"])
        return out
