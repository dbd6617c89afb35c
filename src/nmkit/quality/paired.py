"""Paired comparison of two reconstructions (A, B) of the same patients on the same ROIs.

For each case: B and the ROI mask are brought onto A's grid (``resample_to``: linear for images, nearest for
masks) when the grids differ, then the same metrics are measured on both (``quality.patient``), optionally
IBSI radiomic features (``nmkit.radiomics.engine.extract``) and the agreement of a segmentation computed on
each (Dice). ``paired_statistics`` then gives, per metric/feature, Wilcoxon signed-rank with Holm and BH
correction, Bland-Altman, ICC and Lin's CCC (``nmkit.stats.paired``); ``write_report`` renders an HTML report.
"""

from __future__ import annotations

import logging
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
                rec: dict[str, Any] = {"case": case.case_id, "recon": recon}
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
    for fam in stats["family"].unique():
        sel = stats["family"] == fam
        stats.loc[sel, "p_holm"] = holm(stats.loc[sel, "p_wilcoxon"])
        stats.loc[sel, "p_bh"] = benjamini_hochberg(stats.loc[sel, "p_wilcoxon"])
    return stats


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
    show = ["metric", "family", "n", "mean_a", "mean_b", "mean_rel_diff_pct", "p_wilcoxon", "p_holm", "p_bh",
            "ba_bias", "ba_loa_low", "ba_loa_high", "icc3_1", "icc2_1", "ccc"]
    if len(stats):
        rep.section("Paired statistics").table(stats[[c for c in show if c in stats]].sort_values("p_wilcoxon"),
                                               caption="per metric / feature, sorted by p-value")
        sec = rep.section("Bland-Altman plots")
        top = quality.sort_values("p_wilcoxon").head(max_plots) if len(quality) else quality
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
