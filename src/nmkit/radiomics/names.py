"""Feature naming: mirp-style tag -> IBSI name, IBSI code, family, aggregation and the PyRadiomics equivalent.

PyRadiomics names are given only where the definition matches IBSI (same formula; PyRadiomics' own
discretisation/resampling defaults differ, so values match only under identical processing). Texture features
map per base tag (e.g. ``cm_contrast`` -> ``original_glcm_Contrast``) whatever the aggregation suffix.
"""

from __future__ import annotations

import re

from ._ibsi_names import IBSI_NAMES

_EXTRA = {"ivh_auc": ("Area under the IVH curve", "9CMM", "intensity_volume_histogram", "")}

PYRADIOMICS = {
    "morph_volume": "original_shape_MeshVolume", "morph_vol_approx": "original_shape_VoxelVolume",
    "morph_area_mesh": "original_shape_SurfaceArea", "morph_av": "original_shape_SurfaceVolumeRatio",
    "morph_sphericity": "original_shape_Sphericity", "morph_diam": "original_shape_Maximum3DDiameter",
    "morph_pca_maj_axis": "original_shape_MajorAxisLength", "morph_pca_min_axis": "original_shape_MinorAxisLength",
    "morph_pca_least_axis": "original_shape_LeastAxisLength", "morph_pca_elongation": "original_shape_Elongation",
    "morph_pca_flatness": "original_shape_Flatness",
    "stat_mean": "original_firstorder_Mean", "stat_var": "original_firstorder_Variance",
    "stat_skew": "original_firstorder_Skewness", "stat_median": "original_firstorder_Median",
    "stat_min": "original_firstorder_Minimum", "stat_p10": "original_firstorder_10Percentile",
    "stat_p90": "original_firstorder_90Percentile", "stat_max": "original_firstorder_Maximum",
    "stat_iqr": "original_firstorder_InterquartileRange", "stat_range": "original_firstorder_Range",
    "stat_mad": "original_firstorder_MeanAbsoluteDeviation", "stat_rmad": "original_firstorder_RobustMeanAbsoluteDeviation",
    "stat_energy": "original_firstorder_Energy", "stat_rms": "original_firstorder_RootMeanSquared",
    "ih_entropy": "original_firstorder_Entropy", "ih_uniformity": "original_firstorder_Uniformity",
    # PyRadiomics kurtosis is not excess kurtosis (IBSI stat_kurt + 3)
    "cm_joint_max": "original_glcm_MaximumProbability", "cm_joint_avg": "original_glcm_JointAverage",
    "cm_joint_entr": "original_glcm_JointEntropy", "cm_diff_avg": "original_glcm_DifferenceAverage",
    "cm_diff_var": "original_glcm_DifferenceVariance", "cm_diff_entr": "original_glcm_DifferenceEntropy",
    "cm_sum_avg": "original_glcm_SumAverage", "cm_sum_entr": "original_glcm_SumEntropy",
    "cm_energy": "original_glcm_JointEnergy", "cm_contrast": "original_glcm_Contrast",
    "cm_inv_diff": "original_glcm_Id", "cm_inv_diff_norm": "original_glcm_Idn", "cm_inv_diff_mom": "original_glcm_Idm",
    "cm_inv_diff_mom_norm": "original_glcm_Idmn", "cm_inv_var": "original_glcm_InverseVariance",
    "cm_corr": "original_glcm_Correlation", "cm_auto_corr": "original_glcm_Autocorrelation",
    "cm_clust_tend": "original_glcm_ClusterTendency", "cm_clust_shade": "original_glcm_ClusterShade",
    "cm_clust_prom": "original_glcm_ClusterProminence", "cm_info_corr1": "original_glcm_Imc1",
    "cm_info_corr2": "original_glcm_Imc2",
    "rlm_sre": "original_glrlm_ShortRunEmphasis", "rlm_lre": "original_glrlm_LongRunEmphasis",
    "rlm_lgre": "original_glrlm_LowGrayLevelRunEmphasis", "rlm_hgre": "original_glrlm_HighGrayLevelRunEmphasis",
    "rlm_srlge": "original_glrlm_ShortRunLowGrayLevelEmphasis", "rlm_srhge": "original_glrlm_ShortRunHighGrayLevelEmphasis",
    "rlm_lrlge": "original_glrlm_LongRunLowGrayLevelEmphasis", "rlm_lrhge": "original_glrlm_LongRunHighGrayLevelEmphasis",
    "rlm_glnu": "original_glrlm_GrayLevelNonUniformity", "rlm_glnu_norm": "original_glrlm_GrayLevelNonUniformityNormalized",
    "rlm_rlnu": "original_glrlm_RunLengthNonUniformity", "rlm_rlnu_norm": "original_glrlm_RunLengthNonUniformityNormalized",
    "rlm_r_perc": "original_glrlm_RunPercentage", "rlm_gl_var": "original_glrlm_GrayLevelVariance",
    "rlm_rl_var": "original_glrlm_RunVariance", "rlm_rl_entr": "original_glrlm_RunEntropy",
    "szm_sze": "original_glszm_SmallAreaEmphasis", "szm_lze": "original_glszm_LargeAreaEmphasis",
    "szm_lgze": "original_glszm_LowGrayLevelZoneEmphasis", "szm_hgze": "original_glszm_HighGrayLevelZoneEmphasis",
    "szm_szlge": "original_glszm_SmallAreaLowGrayLevelEmphasis", "szm_szhge": "original_glszm_SmallAreaHighGrayLevelEmphasis",
    "szm_lzlge": "original_glszm_LargeAreaLowGrayLevelEmphasis", "szm_lzhge": "original_glszm_LargeAreaHighGrayLevelEmphasis",
    "szm_glnu": "original_glszm_GrayLevelNonUniformity", "szm_glnu_norm": "original_glszm_GrayLevelNonUniformityNormalized",
    "szm_zsnu": "original_glszm_SizeZoneNonUniformity", "szm_zsnu_norm": "original_glszm_SizeZoneNonUniformityNormalized",
    "szm_z_perc": "original_glszm_ZonePercentage", "szm_gl_var": "original_glszm_GrayLevelVariance",
    "szm_zs_var": "original_glszm_ZoneVariance", "szm_zs_entr": "original_glszm_ZoneEntropy",
    "ngt_coarseness": "original_ngtdm_Coarseness", "ngt_contrast": "original_ngtdm_Contrast",
    "ngt_busyness": "original_ngtdm_Busyness", "ngt_complexity": "original_ngtdm_Complexity",
    "ngt_strength": "original_ngtdm_Strength",
    "ngl_lde": "original_gldm_SmallDependenceEmphasis", "ngl_hde": "original_gldm_LargeDependenceEmphasis",
    "ngl_lgce": "original_gldm_LowGrayLevelEmphasis", "ngl_hgce": "original_gldm_HighGrayLevelEmphasis",
    "ngl_ldlge": "original_gldm_SmallDependenceLowGrayLevelEmphasis", "ngl_ldhge": "original_gldm_SmallDependenceHighGrayLevelEmphasis",
    "ngl_hdlge": "original_gldm_LargeDependenceLowGrayLevelEmphasis", "ngl_hdhge": "original_gldm_LargeDependenceHighGrayLevelEmphasis",
    "ngl_glnu": "original_gldm_GrayLevelNonUniformity", "ngl_dcnu": "original_gldm_DependenceNonUniformity",
    "ngl_dcnu_norm": "original_gldm_DependenceNonUniformityNormalized", "ngl_gl_var": "original_gldm_GrayLevelVariance",
    "ngl_dc_var": "original_gldm_DependenceVariance", "ngl_dc_entr": "original_gldm_DependenceEntropy",
}

_AGG = re.compile(r"_(2D_avg|2D_comb|2_5D_avg|2_5D_comb|3D_avg|3D_comb|2D|2_5D|3D)$")


def base_tag(tag: str) -> str:
    """The tag without its texture aggregation suffix (``cm_contrast_3D_avg`` -> ``cm_contrast``)."""
    return _AGG.sub("", tag)


def describe(tag: str) -> dict[str, str]:
    """IBSI name, code, family, aggregation and PyRadiomics name of a feature tag (empty strings when unknown)."""
    name, code, family, agg = IBSI_NAMES.get(tag) or _EXTRA.get(tag) or ("", "", "", "")
    if not name:
        base = base_tag(tag)
        for other, entry in IBSI_NAMES.items():
            if base_tag(other) == base:
                name, code, family = entry[0], entry[1], entry[2]
                break
    return {"tag": tag, "name": name, "code": code, "family": family, "aggregation": agg,
            "pyradiomics": PYRADIOMICS.get(tag) or PYRADIOMICS.get(base_tag(tag), "")}


# ----- units ----------------------------------------------------------------------------------------------
#: intensity-valued tags (in the image's units); ``stat_var``/``stat_energy`` are squared units
_INTENSITY_STATS = {"stat_mean", "stat_median", "stat_min", "stat_p10", "stat_p90", "stat_max", "stat_iqr", "stat_range",
                    "stat_mad", "stat_rmad", "stat_medad", "stat_rms", "loc_peak_loc", "loc_peak_glob"}
_GREY_LEVEL_STATS = {"ih_mean", "ih_median", "ih_min", "ih_p10", "ih_p90", "ih_max", "ih_mode", "ih_iqr", "ih_range",
                     "ih_mad", "ih_rmad", "ih_medad"}
_MORPH_UNITS = {"morph_volume": "mm^3", "morph_vol_approx": "mm^3", "morph_area_mesh": "mm^2", "morph_av": "1/mm",
                "morph_com": "mm", "morph_diam": "mm", "morph_pca_maj_axis": "mm", "morph_pca_min_axis": "mm",
                "morph_pca_least_axis": "mm", "morph_volume_ml": "ml", "morph_vol_approx_ml": "ml"}
#: columns nmkit adds next to the IBSI tags, with fixed units ("{u}": the image's units)
_FIXED = {"native_voxels": "voxels", "native_voxel_volume_ml": "ml", "mtv_ml": "ml", "tlg_g": "g", "tla": "{u} x ml",
          "label_value": "1", "segment_number": "1",
          # planar images (radiomics.planar): shape in mm, the summed intensity in image units x pixels
          "planar_area_mm2": "mm^2", "planar_pixels": "pixels", "planar_perimeter_mm": "mm",
          "planar_equivalent_diameter_mm": "mm", "planar_feret_max_mm": "mm", "planar_integrated": "{u} x pixels"}


def feature_unit(tag: str, image_unit: str = "image units") -> str:
    """The unit of a feature column: from the IBSI family and the image's units (``"1"`` = dimensionless).

    Morphology lengths/areas/volumes are in mm/mm^2/mm^3 (IBSI); ``*_ml`` columns in ml; intensity statistics and
    local peaks in the image's units (``stat_var`` and ``stat_energy`` squared); intensity-histogram statistics in
    grey levels (bin numbers after discretisation); IVH ``ivh_i*`` in the image's units, ``ivh_v*`` volume fractions;
    texture matrices' features are dimensionless functions of grey levels and counts. Diagnostics: dimensions in
    voxels, ``vox_dim_*`` in mm, intensities in the image's units."""
    u = image_unit or "image units"
    base = base_tag(tag)
    if base in _FIXED:
        return _FIXED[base].replace("{u}", u)
    if base.startswith(("native_suv_",)):
        return "g/ml (SUVbw)" if u in ("g/ml", "image units") else u
    if base.startswith("native_"):
        return u
    if base in _MORPH_UNITS:
        return _MORPH_UNITS[base]
    if base == "morph_integ_int":
        return f"{u} x mm^3"
    if base in _INTENSITY_STATS or base in ("ivh_i10", "ivh_i90", "ivh_diff_i10_i90"):
        return u
    if base in ("stat_var", "stat_energy"):
        return f"({u})^2"
    if base in _GREY_LEVEL_STATS:
        return "grey level"
    if base == "ih_var":
        return "grey level^2"
    if base.endswith(("_int_init_img", "_int_interp_img", "_int_init_roi", "_int_interp_roi", "_int_reseg_roi")):
        return u
    if base.startswith("vox_dim_"):
        return "mm"
    if "_dim_" in base or "_vox_count_" in base:
        return "voxels"
    return "1"


def units_for(columns, image_unit: str = "image units") -> dict[str, str]:
    """``{column: unit}`` for every feature-like column among ``columns`` (ID and text columns are left out)."""
    return {c: feature_unit(c, image_unit) for c in columns}
