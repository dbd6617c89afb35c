"""Paired comparison of two reconstructions (A, B) of the same patients on the same ROIs.

For each case: B and the ROI mask are brought onto A's grid (``resample_to``: linear for images, nearest for
masks) when the grids differ, then the same metrics are measured on both (``quality.patient``), optionally
IBSI radiomic features (``nmkit.radiomics.engine.extract``) and the agreement of a segmentation computed on
each (Dice). ``paired_statistics`` then gives, per metric/feature, Wilcoxon signed-rank with Holm and BH
correction, Bland-Altman, ICC and Lin's CCC (``nmkit.stats.paired``); ``write_report`` renders an HTML report.
With a single case there is no cohort: ``per_roi_table`` lists every ROI's value on A and B with the difference
and unit, and ``write_case_report`` renders it without any cohort statistic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import GeometryError
from ..io.image import Image, Mask, resample_to
from .patient import patient_quality

log = logging.getLogger(__name__)

Segmenter = Callable[[Image, Mask], np.ndarray]

#: unit of each quality metric; "image" means the unit of the voxel values (e.g. Bq/ml)
METRIC_UNITS = {"mean": "image", "max": "image", "cov": "1 (SD/mean)", "contrast": "1 (mean/background - 1)",
                "cnr": "1 ((mean - background mean)/background SD)", "rc_mean": "1 (measured/true)",
                "rc_max": "1 (measured/true)", "seg_dice": "1"}
#: DICOM Units (0054,1001) codes and reader spellings -> readable unit
IMAGE_UNITS = {"BQML": "Bq/ml", "BQ/ML": "Bq/ml", "GML": "g/ml", "CNTS": "counts", "SUV": "g/ml (SUV)"}


def threshold_segmenter(fraction: float = 0.4, dilate_mm: float = 10.0) -> Segmenter:
    """A simple lesion segmentation: voxels above ``fraction`` x the local max, within the ROIs dilated by ``dilate_mm``."""

    def segment(image: Image, mask: Mask) -> np.ndarray:
        from scipy.ndimage import distance_transform_edt

        out = np.zeros(image.spatial_shape, bool)
        arr = np.asarray(image.array, float)
        for value in sorted(mask.labels):
            sel = mask.binary(value)
            if not sel.any():
                continue
            near = distance_transform_edt(~sel, sampling=tuple(reversed(image.spacing))) <= dilate_mm
            out |= near & (arr >= fraction * arr[sel].max())
        return out

    return segment


@dataclass
class PairedCase:
    """One patient: two reconstructions and the ROIs (on either grid), with optional true concentrations."""

    case_id: str
    image_a: Image
    image_b: Image
    mask: Mask
    truth: Mapping[str, float] = field(default_factory=dict)


def align_case(case: PairedCase) -> tuple[Image, Image, Mask]:
    """A, B and the mask on A's grid (B and the mask resampled only when their grids differ)."""
    a = case.image_a
    b = case.image_b if case.image_b.same_grid(a) else resample_to(case.image_b, a, "linear")
    m = case.mask if case.mask.same_grid(a) else resample_to(case.mask, a)
    return a, b, m


def measure_cases(cases: Sequence[PairedCase], background: int | str | None = None, uniform: Sequence[int | str] = (),
                  lesions: Sequence[int | str] | None = None, radiomics: Any = None, segmenter: Segmenter | None = None,
                  labels: tuple[str, str] = ("A", "B")) -> tuple[pd.DataFrame, dict[str, str]]:
    """Wide table: one row per (case, recon) with ``<roi>:<metric>`` columns (+ ``<roi>:rad:<feature>``), and
    a ``{case: error}`` dict of cases that failed (logged and skipped). Segmentation agreement goes to the
    ``seg_dice`` column of both rows of a case."""
    from ..metrics.overlap import dice

    rows, skipped = [], {}
    for case in cases:
        try:
            a, b, m = align_case(case)
            if not m.binary().any():
                raise GeometryError(f"the ROI mask does not overlap reconstruction A's field of view "
                                    f"(mask origin {case.mask.origin}, image origin {a.origin})")
            seg_dice = None
            if segmenter is not None:
                seg_dice = dice(segmenter(a, m), segmenter(b, m))
            for recon, img in zip(labels, (a, b)):
                rec: dict[str, Any] = {"case": case.case_id, "recon": recon, "image_units": image_unit(img.units)}
                rec.update(patient_quality(img, m, background=background, uniform=tuple(uniform), truth=case.truth,
                                           lesions=tuple(lesions) if lesions is not None else None))
                if radiomics is not None:
                    from ..radiomics.engine import extract

                    roi_labels = lesions if lesions is not None else [v for v in sorted(m.labels)]
                    for lab in roi_labels:
                        value = m.label_value(lab)
                        if m.voxel_count(value) < 2:
                            continue
                        feats = extract(img, m.binary_mask(value), radiomics)
                        rec.update({f"{m.labels[value]}:rad:{k}": v for k, v in feats.items()})
                if seg_dice is not None:
                    rec["seg_dice"] = seg_dice
                rows.append(rec)
        except Exception as exc:  # batch job: log and skip the case
            log.error("paired comparison: case %s skipped: %s", case.case_id, exc)
            skipped[case.case_id] = str(exc)
    return pd.DataFrame(rows), skipped


def paired_statistics(table: pd.DataFrame, labels: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Per-column paired statistics of recon B vs recon A (rows matched by case), with corrected p-values.

    Radiomic features and image-quality metrics form separate correction families (column ``family``)."""
    from ..stats.paired import benjamini_hochberg, holm, paired_table

    a = table[table["recon"] == labels[0]].drop(columns="recon")
    b = table[table["recon"] == labels[1]].drop(columns="recon")
    cols = [c for c in a.columns if c not in ("case", "seg_dice") and pd.api.types.is_numeric_dtype(a[c])]
    stats = paired_table(a, b, columns=cols, key="case")
    if stats.empty:
        return stats
    stats.insert(1, "family", np.where(stats["metric"].str.contains(":rad:"), "radiomics", "quality"))
    units = _table_units(table, labels[0])
    stats.insert(2, "unit", [metric_unit(m, units) for m in stats["metric"]])
    for fam in stats["family"].unique():
        sel = stats["family"] == fam
        stats.loc[sel, "p_holm"] = holm(stats.loc[sel, "p_wilcoxon"])
        stats.loc[sel, "p_bh"] = benjamini_hochberg(stats.loc[sel, "p_wilcoxon"])
    return stats


def image_unit(units: str) -> str:
    """A readable unit for an image's ``units`` field ("BQML" -> "Bq/ml"; unknown when empty)."""
    text = (units or "").strip()
    if not text:
        return "unknown (image units not stated)"
    return IMAGE_UNITS.get(text.upper(), text)


def metric_unit(column: str, image_units: str) -> str:
    """Unit of one ``<roi>:<metric>`` column (radiomic features: "IBSI feature unit", see the preset)."""
    if ":rad:" in column:
        return "IBSI feature unit"
    unit = METRIC_UNITS.get(column.rsplit(":", 1)[-1], "")
    return image_units if unit == "image" else unit


def _table_units(table: pd.DataFrame, recon: str) -> str:
    """The image unit of reconstruction ``recon`` in a ``measure_cases`` table (all cases' units joined)."""
    if "image_units" not in table:
        return "unknown (image units not stated)"
    found = sorted(set(table.loc[table["recon"] == recon, "image_units"].dropna().astype(str)))
    return " / ".join(found) if found else "unknown (image units not stated)"


def per_roi_table(table: pd.DataFrame, labels: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Long table, one row per (case, ROI, metric): value on A and on B, ``B - A``, ``100 (B - A) / |A|`` and the unit.

    Why: with one case there is no cohort to test, yet the physicist wants every ROI's numbers side by side."""
    a_name, b_name = labels
    cols = [c for c in table.columns if ":" in c and pd.api.types.is_numeric_dtype(table[c])]
    if "seg_dice" in table:
        cols.append("seg_dice")
    rows = []
    for case, grp in table.groupby("case", sort=True):
        ra, rb = grp[grp["recon"] == a_name], grp[grp["recon"] == b_name]
        if ra.empty or rb.empty:
            continue
        units_a = str(ra["image_units"].iloc[0]) if "image_units" in ra else "unknown (image units not stated)"
        units_b = str(rb["image_units"].iloc[0]) if "image_units" in rb else units_a
        for col in cols:
            va, vb = float(ra[col].iloc[0]), float(rb[col].iloc[0])
            if not (np.isfinite(va) or np.isfinite(vb)):
                continue
            roi, metric = (col.split(":", 1) if ":" in col else ("", col))
            unit = metric_unit(col, units_a)
            if METRIC_UNITS.get(metric) == "image" and units_b != units_a:
                unit = f"{units_a} ({a_name}) / {units_b} ({b_name})"
            rows.append({"case": case, "roi": roi, "metric": metric, "unit": unit, a_name: va, b_name: vb,
                         "diff_b_minus_a": vb - va, "rel_diff_pct": 100.0 * (vb - va) / abs(va) if va else math.nan})
    return pd.DataFrame(rows, columns=["case", "roi", "metric", "unit", a_name, b_name, "diff_b_minus_a", "rel_diff_pct"])


def write_case_report(per_roi: pd.DataFrame, path: str | Path, labels: tuple[str, str] = ("A", "B"),
                      title: str = "Paired reconstruction comparison (single case)",
                      provenance_record: Mapping[str, Any] | None = None) -> Path:
    """HTML report of a single case: per-ROI values of A and B, B - A and units; no cohort statistics (said so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.html import Report

    rep = Report(title)
    cases = sorted(per_roi["case"].unique()) if len(per_roi) else []
    rep.section("Summary").text(
        f"Single case ({', '.join(map(str, cases)) or 'none'}) measured on both reconstructions ({labels[0]} vs "
        f"{labels[1]}). No cohort statistics: Wilcoxon, Bland-Altman, ICC and Lin's CCC need at least two cases, so "
        f"none is computed. The table gives each ROI's value on {labels[0]} and {labels[1]}, the difference "
        f"{labels[1]} - {labels[0]} and the relative difference in % of {labels[0]}, with units.")
    if len(per_roi):
        rep.section("Per-ROI values").table(per_roi, caption=f"differences are {labels[1]} - {labels[0]}")
        means = per_roi[per_roi["metric"] == "mean"]
        if len(means):
            fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(means) + 2), 4))
            x = np.arange(len(means))
            ax.bar(x - 0.2, means[labels[0]], 0.4, label=labels[0])
            ax.bar(x + 0.2, means[labels[1]], 0.4, label=labels[1])
            ax.set_xticks(x, means["roi"], rotation=45, ha="right", fontsize=8)
            ax.set_ylabel(f"ROI mean ({means['unit'].iloc[0]})")
            ax.legend()
            fig.tight_layout()
            rep.section("ROI means").figure(fig, caption=f"mean of every ROI on {labels[0]} and {labels[1]}")
    if provenance_record:
        rep.section("Provenance").code(dict(provenance_record))
    return rep.write(path)


def pooled_lesion_table(table: pd.DataFrame, metric: str, labels: tuple[str, str] = ("A", "B"),
                        exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Long table (case, roi, A, B) of one metric over every ROI that has it (e.g. all lesions' rc_mean)."""
    cols = [c for c in table.columns if c.endswith(f":{metric}") and ":rad:" not in c and c.split(":")[0] not in exclude]
    long = table.melt(id_vars=["case", "recon"], value_vars=cols, var_name="roi", value_name="value").dropna()
    long["roi"] = long["roi"].str.rsplit(":", n=1).str[0]
    wide = long.pivot_table(index=["case", "roi"], columns="recon", values="value").reset_index()
    return wide.dropna(subset=[c for c in labels if c in wide])


def write_report(table: pd.DataFrame, stats: pd.DataFrame, path: str | Path, labels: tuple[str, str] = ("A", "B"),
                 title: str = "Paired reconstruction comparison", provenance_record: Mapping[str, Any] | None = None,
                 max_plots: int = 6) -> Path:
    """HTML report: summary, paired statistics, Bland-Altman plots of the most different metrics, Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.html import Report
    from ..stats.paired import bland_altman_plot

    rep = Report(title)
    n_cases = table["case"].nunique() if len(table) else 0
    quality = stats[stats["family"] == "quality"] if len(stats) else stats
    sig = int((quality["p_holm"] < 0.05).sum()) if len(quality) else 0
    rep.section("Summary").text(
        f"{n_cases} case(s) measured on both reconstructions ({labels[0]} vs {labels[1]}); {len(stats)} paired "
        f"quantities; {sig} image-quality metric(s) differ at Holm-corrected p < 0.05 (Wilcoxon signed-rank). "
        "Differences are B - A. ICC(3,1) measures consistency, ICC(2,1) and Lin's CCC absolute agreement.")
    show = ["metric", "family", "unit", "n", "mean_a", "mean_b", "mean_rel_diff_pct", "p_wilcoxon", "p_holm", "p_bh",
            "ba_bias", "ba_loa_low", "ba_loa_high", "icc3_1", "icc2_1", "ccc"]
    if len(stats):
        rep.section("Paired statistics").table(stats[[c for c in show if c in stats]].sort_values("p_wilcoxon"),
                                               caption="per metric / feature, sorted by p-value")
        sec = rep.section("Bland-Altman plots")
        plottable = quality[quality["n"] >= 2] if len(quality) else quality  # Bland-Altman needs two pairs
        top = plottable.sort_values("p_wilcoxon").head(max_plots) if len(plottable) else plottable
        for metric in top["metric"]:
            a = table[table["recon"] == labels[0]].set_index("case")[metric]
            b = table[table["recon"] == labels[1]].set_index("case")[metric].reindex(a.index)
            fig = bland_altman_plot(a.to_numpy(), b.to_numpy(), label_a=labels[0], label_b=labels[1])
            fig.axes[0].set_title(metric, fontsize=9)
            sec.figure(fig, caption=f"{metric}: {labels[1]} - {labels[0]}")
    rc = pooled_lesion_table(table, "rc_mean", labels) if len(table) else pd.DataFrame()
    if len(rc) and all(l in rc for l in labels):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([0, rc[list(labels)].to_numpy().max() * 1.05], [0, rc[list(labels)].to_numpy().max() * 1.05], color="grey", lw=0.7)
        ax.scatter(rc[labels[0]], rc[labels[1]], s=16)
        ax.set_xlabel(f"RC mean {labels[0]}")
        ax.set_ylabel(f"RC mean {labels[1]}")
        rep.section("Recovery of every lesion").figure(fig, caption="mean recovery coefficient per lesion, B vs A (identity line)")
    if "seg_dice" in table:
        d = table.drop_duplicates("case")[["case", "seg_dice"]]
        rep.section("Segmentation agreement").text(
            f"Dice of the segmentation computed on {labels[0]} vs on {labels[1]}: median {d['seg_dice'].median():.3f} "
            f"(range {d['seg_dice'].min():.3f}-{d['seg_dice'].max():.3f}).").table(d)
    if provenance_record:
        rep.section("Provenance").code(dict(provenance_record))
    return rep.write(path)
