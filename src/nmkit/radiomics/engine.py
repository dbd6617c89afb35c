"""Radiomics orchestration: one ROI in, one flat ``{mirp_tag: value}`` dict out, plus tidy tables.

``extract(image, mask, config)`` runs the IBSI-1 processing chain (``preprocess``) once and then each requested
feature family. Texture families come from ``nmkit.radiomics.texture.compute_texture`` (2D / 2.5D / 3D
aggregations as the config's ``dims`` asks). Feature keys are the mirp-style tags used by the IBSI reference
table; ``names.describe(tag)`` gives the IBSI name, code and the PyRadiomics equivalent.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from ..io.image import Image, Mask
from .config import RadiomicsConfig
from .preprocess import ProcessedROI, discretise, process

log = logging.getLogger(__name__)


def as_config(config: RadiomicsConfig | Mapping[str, Any] | str) -> RadiomicsConfig:
    """A ``RadiomicsConfig`` from an object, a dict, a preset name or a YAML path."""
    if isinstance(config, RadiomicsConfig):
        return config
    if isinstance(config, str):
        from .presets import load_config

        return load_config(config)
    return RadiomicsConfig.from_dict(config)


def texture_levels(roi: ProcessedROI, config: RadiomicsConfig) -> tuple[np.ndarray, int]:
    """Grey-level image (int32, 0 outside the intensity mask) and Ng for texture and intensity histogram."""
    lv, ng = discretise(roi.values, config.discretisation, config.reseg_range)
    levels = np.zeros(roi.image.shape, dtype=np.int32)
    levels[roi.int_mask] = lv
    return levels, ng


def features_from_roi(roi: ProcessedROI, config: RadiomicsConfig) -> dict[str, float]:
    """Every requested family on an already processed ROI.

    The intensities inside the intensity mask are gathered once and sorted once: the statistics, intensity
    histogram and IVH only depend on their distribution, and discretisation is monotone, so the sorted grey
    levels are the discretised sorted intensities."""
    from . import intensity

    fams = set(config.families)
    out: dict[str, float] = {}
    values = roi.values
    need_sorted = fams & {"intensity_statistics", "intensity_histogram", "intensity_volume_histogram"}
    sorted_values = np.sort(values) if need_sorted else None
    if "morphology" in fams:
        from .morphology import morphology_features

        out.update(morphology_features(roi, values=values))
    if "local_intensity" in fams:
        from .local_intensity import local_intensity_features

        out.update(local_intensity_features(roi, values=values))
    if "intensity_statistics" in fams:
        out.update(intensity.statistics_features(values, sorted_values))
    levels = ng = None
    if fams & {"intensity_histogram", "texture"}:
        lv, ng = discretise(values, config.discretisation, config.reseg_range)
        if "intensity_histogram" in fams:
            lv_sorted, _ = discretise(sorted_values, config.discretisation, config.reseg_range, roi_values=values)
            out.update(intensity.histogram_features(lv, ng, lv_sorted))
        if "texture" in fams:
            levels = np.zeros(roi.image.shape, dtype=np.int32)
            levels[roi.int_mask] = lv
    if "intensity_volume_histogram" in fams:
        out.update(intensity.ivh_features(values, config.ivh, config.reseg_range, config.ivh_use_reseg_range,
                                          sorted_values=sorted_values))
    if "texture" in fams:
        try:
            from .texture import compute_texture
        except ImportError:  # the texture module is developed separately; the rest still works without it
            log.warning("nmkit.radiomics.texture is not available: texture features skipped")
        else:
            dims = config.texture_dims or (("2D", "2.5D") if config.dims == "2D" else ("3D",))
            out.update(compute_texture(levels, roi.morph_mask, ng, roi.spacing, dims=dims))
    return out


def filtered_roi(image: Image, mask: Mask | np.ndarray, config: RadiomicsConfig,
                 label: int | str | None = None) -> tuple[ProcessedROI, RadiomicsConfig]:
    """The processed ROI with its image replaced by the IBSI-2 response map, and the config for its features.

    Order (IBSI-2 phase 2): interpolation, rounding and re-segmentation on the unfiltered intensities, then the
    filter. The crop around the ROI is widened by the filter's reach so that ROI voxels see the same neighbourhood
    as when the whole image is filtered (where the crop meets the image edge, the boundary condition applies as
    for the whole image). The re-segmentation range is in unfiltered units, so discretisation and IVH of the
    response map do not use it."""
    import dataclasses

    from .filters import WHOLE_IMAGE, apply_filter, margin_voxels

    spec = config.filter
    sp = [s for s in (config.new_spacing or (None, None, None))]
    spacing = [float(s) if s is not None else float(o) for s, o in zip(sp, image.spacing)]
    reach = margin_voxels(spec, tuple(spacing))
    in_plane = spec.dims == "2D" and not spec.orthogonal_planes  # slice-by-slice filters never look along z
    reach_mm = float("inf") if reach >= WHOLE_IMAGE else (reach + 2) * max(spacing[:2] if in_plane else spacing)
    roi = process(image, mask, config, label=label, margin_mm=_margin_mm(config) + reach_mm)
    roi.image = apply_filter(roi.image, roi.spacing, spec, region=_read_region(roi, config))
    roi.diagnostics["filter"] = spec.kind
    return roi, dataclasses.replace(config, reseg_range=None, outlier_sigma=None, ivh_use_reseg_range=False)


def _margin_mm(config: RadiomicsConfig) -> float:
    """Crop margin around the ROI (mm): 2 mm (the interpolated mask may reach beyond the ROI's box), plus the
    local-intensity sphere's radius when the config asks for local intensity (the only family that reads
    intensities outside the masks)."""
    from .preprocess import PEAK_RADIUS_MM

    return (PEAK_RADIUS_MM if "local_intensity" in config.families else 0.0) + 2.0


def _read_region(roi: ProcessedROI, config: RadiomicsConfig) -> tuple[slice, slice, slice]:
    """The voxels of the crop that features read: the masks' bounding box plus, for local intensity, the
    peak sphere's radius (and one voxel), per axis."""
    import math

    from .preprocess import PEAK_RADIUS_MM

    either = roi.morph_mask | roi.int_mask
    sp_zyx = (roi.spacing[2], roi.spacing[1], roi.spacing[0])
    radius = PEAK_RADIUS_MM if "local_intensity" in config.families else 0.0
    out = []
    for axis, n in enumerate(either.shape):
        idx = np.flatnonzero(either.any(axis=tuple(a for a in range(3) if a != axis)))
        m = int(math.ceil(radius / float(sp_zyx[axis]))) + 1
        out.append(slice(max(0, int(idx[0]) - m), min(n, int(idx[-1]) + 1 + m)))
    return tuple(out)


def extract(image: Image, mask: Mask | np.ndarray, config: RadiomicsConfig | Mapping[str, Any] | str,
            label: int | str | None = None, diagnostics: bool = False) -> dict[str, float]:
    """IBSI-1 features of one ROI (``label`` of ``mask``; any foreground when None) as ``{mirp_tag: value}``.

    ``diagnostics`` adds the IBSI diagnostic features (``radiomics.diagnostics``: image/ROI dimensions, voxel
    counts and intensities before and after interpolation and re-segmentation)."""
    cfg = as_config(config)
    if cfg.filter is not None:
        roi, feat_cfg = filtered_roi(image, mask, cfg, label=label)
    else:
        roi, feat_cfg = process(image, mask, cfg, label=label, margin_mm=_margin_mm(cfg)), cfg
    out = features_from_roi(roi, feat_cfg)
    if diagnostics:
        from .diagnostics import ibsi_diagnostics

        binary = mask.binary(label) if isinstance(mask, Mask) else np.asarray(mask).astype(bool)
        out.update(ibsi_diagnostics(image, binary, roi, cfg))
    return out


def long_table(features: Mapping[str, float], **ids: Any):
    """Tidy long table: one row per feature with its IBSI name/code, family and the ids given (e.g. patient_id)."""
    import pandas as pd

    from .names import describe

    rows = []
    for tag, value in features.items():
        d = describe(tag)
        rows.append({**ids, "feature": tag, "ibsi_name": d["name"], "ibsi_code": d["code"], "family": d["family"],
                     "aggregation": d["aggregation"], "pyradiomics": d["pyradiomics"], "value": value})
    return pd.DataFrame(rows)


def wide_table(records: list[Mapping[str, Any]]):
    """Wide table: one row per ROI, one column per feature (ids first)."""
    import pandas as pd

    return pd.DataFrame(list(records))
