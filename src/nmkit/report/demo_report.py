"""The demo's HTML report: overlays, metrics, reader variability, learning curve, radiomics, image quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .html import Report

READER_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def overlay_figure(test_cases, predictions, readers_masks, readers: list[str], n: int = 6):
    """Image with each reader's contour and the model's contour, for the first ``n`` test cases."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = test_cases[:n]
    cols = min(3, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), shown):
        image = case.image.array.astype(float)
        ax.imshow(np.sqrt(image), cmap="gray_r", interpolation="nearest")
        for reader, colour in zip(readers, READER_COLOURS):
            ax.contour(readers_masks[reader][case.case_id].astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
        ax.contour(predictions[case.case_id].binary(1).astype(float), levels=[0.5], colors=["#d62728"], linewidths=2.0)
        ys, xs = np.nonzero(predictions[case.case_id].binary(1) | readers_masks[readers[0]][case.case_id])
        if len(ys):
            pad = 25
            ax.set_xlim(max(xs.min() - pad, 0), min(xs.max() + pad, image.shape[1] - 1))
            ax.set_ylim(min(ys.max() + pad, image.shape[0] - 1), max(ys.min() - pad, 0))
        ax.set_title(f"{case.case_id}  ({int(image.sum()):,} counts)", fontsize=9)
    handles = [Line2D([], [], color=c, label=f"reader {r}") for r, c in zip(readers, READER_COLOURS)]
    handles.append(Line2D([], [], color="#d62728", lw=2, label="model"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def dice_distribution_figure(metrics: pd.DataFrame):
    import matplotlib.pyplot as plt

    references = list(dict.fromkeys(metrics["reference"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in zip(axes, ("dice", "hd95_mm"), ("Dice", "HD95 (mm)")):
        data = [metrics.loc[metrics.reference == r, metric].replace([np.inf], np.nan).dropna() for r in references]
        ax.boxplot(data, showmeans=True)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(len(d), i) + np.random.default_rng(i).uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6)
        ax.set_xticks(range(1, len(references) + 1), [f"vs {r}" for r in references])
        ax.set_title(f"Model {label} on the test images")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def nema_figure(nema: dict[str, Any]):
    import matplotlib.pyplot as plt

    rc = nema["recovery"]
    study = nema["study"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(rc["diameter_mm"], rc["rc_osem"], "o-", label="classic OSEM")
    axes[0].plot(rc["diameter_mm"], rc["rc_ct_guided"], "s-", label="CT-guided (xSPECT-like)")
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set_xlabel("sphere diameter (mm)")
    axes[0].set_ylabel("recovery coefficient (mean)")
    axes[0].set_title("Recovery vs sphere size")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    masks = study.phantom.masks.array
    z = int(np.argmax(((masks >= 1) & (masks <= 6)).sum(axis=(1, 2))))
    vmax = float(np.percentile(study.phantom.activity.array, 99.9))
    for ax, image, title in ((axes[1], study.osem.array, "classic OSEM"), (axes[2], study.ct_guided.array, "CT-guided")):
        ax.imshow(image[z], cmap="gray_r", vmin=0, vmax=vmax)
        ax.set_title(f"{title}, slice through the spheres")
        ax.axis("off")
    fig.tight_layout()
    return fig


def build_demo_report(results: dict[str, Any], data: dict[str, Any], predictions, test_cases, readers: list[str],
                      record: dict[str, Any], bundle_dir: Path, out_dir: Path) -> Report:
    report = Report("nmkit demo: thyroid scintigraphy segmentation, reader variability, radiomics, SPECT image quality")
    metrics: pd.DataFrame = results["metrics"]
    study = results["reader_study"]
    cohort: pd.DataFrame = results["cohort"]
    manifest: pd.DataFrame = results["manifest"]
    summary = metrics.groupby("reference")[["dice", "hd95_mm", "assd_mm"]].mean().reset_index()
    overall = study.overall
    s = report.section("Summary")
    s.text(f"{len(cohort)} simulated thyroid scintigraphy studies (Tc-99m / I-123 / I-131, pinhole and parallel collimators, "
           f"six pathologies) were drawn by {len(readers)} simulated readers. Split by patient: "
           + ", ".join(f"{k} {v}" for k, v in manifest["split"].value_counts().items()) + ".")
    s.text(f"Model Dice against the readers (mean over readers and test images): {overall['model_dice_mean']:.3f}; "
           f"reader-vs-reader Dice: {overall['reader_dice_mean']:.3f} (5th percentile {overall['reader_dice_p5']:.3f}). "
           f"Model inside the experts' spread: {'YES' if study.model_inside else 'NO'} "
           f"(share of test images inside: {overall.get('cases_inside_share', float('nan')):.0%}).")
    s.table(summary, "Model vs each reference on the test split (means)")

    o = report.section("Overlays")
    o.text("Test images (square-root grey scale) with each reader's contour and the model's contour (red).")
    o.figure(overlay_figure(test_cases, predictions, data["readers"], readers), "reader contours and model contour on test images")

    m = report.section("Metrics")
    m.figure(dice_distribution_figure(metrics), "distribution of Dice and HD95 of the model against each reader and the consensus")
    m.table(metrics, "per test image and reference", max_rows=60)

    r = report.section("Reader variability")
    r.text("Is the model inside the experts' spread? Pairwise agreement between readers against agreement between the model and each reader.")
    r.figure(out_dir / "reader_variability.png", "reader-vs-reader and model-vs-reader agreement")
    if study.per_reader is not None:
        r.table(study.per_reader, "model vs each reader, and each reader vs the others")
    r.table(pd.DataFrame([{k: v for k, v in overall.items() if np.isscalar(v)}]), "overall")

    if results.get("heads") is not None:
        r.text("The model has one output head per reader, each trained on that reader's own masks (the summary above uses "
               "the default head). In each reader's column, the head trained on that reader should score highest:")
        r.table(results["heads"].round(4), "mean Dice of each head against each reader")
    lc = results["learning_curve"]
    c = report.section("Learning curve")
    c.text("How many labelled images are enough? Test Dice (with 95% bootstrap intervals) against the number of training images.")
    c.figure(out_dir / "learning_curve" / "learning_curve.png", "learning curve")
    if not lc.empty:
        c.table(lc[[col for col in lc.columns if col in ("n_train", "dice_mean", "dice_ci_low", "dice_ci_high", "hd95_mean", "train_seconds")]],
                "learning curve")
    t = report.section("Training")
    if (bundle_dir / "training_log.png").exists():
        t.figure(bundle_dir / "training_log.png", "training loss and validation Dice per epoch")
    t.code({k: record["model"].get(k) for k in ("name", "version", "validation")})

    rad: pd.DataFrame = results["radiomics"]
    q = report.section("Radiomics")
    if rad.empty:
        q.text("No radiomics features could be computed.", note=True)
    else:
        wanted = [col for col in rad.columns if col.startswith(("morph_area", "morph_vol", "stat_mean", "stat_cov", "stat_max", "ih_entropy",
                                                                 "cm_contrast_2D_avg", "cm_joint_entr_2D_avg", "rlm_sre_2D_avg", "szm_zs_entr_2D",
                                                                 "ngt_coarseness_2D"))]
        q.text(f"{rad.shape[1] - 1} IBSI features per test image (2D, FBN 32 bins) on the model's thyroid ROI; a selection is shown, "
               "all are in radiomics.csv.")
        q.table(rad[["case"] + wanted[:12]], "selected IBSI features")

    nema = results["nema"]
    n = report.section("Image quality: SPECT vs CT-guided reconstruction (NEMA IEC phantom)")
    n.text("Simulated Tc-99m NEMA IEC body phantom (sphere-to-background 4:1), projected with attenuation and depth-dependent "
           "collimator response and Poisson noise, reconstructed with classic OSEM and with a CT-guided resolution-recovered "
           "reconstruction standing in for xSPECT Bone.")
    n.figure(nema_figure(nema), "recovery per sphere and slices of both reconstructions")
    n.table(nema["recovery"], "recovery coefficients")

    conv: pd.DataFrame = results["conversion"]
    k = report.section("ROI conversion")
    k.text(f"{len(conv)} polygon ROIs converted to masks; mean pixel agreement with the simulator's own rasterisation: "
           f"{conv['agreement_with_cohort_mask'].mean():.4f}.")
    k.table(conv.groupby("reader")[["pixels", "area_mm2"]].mean().reset_index(), "mean ROI size per reader")

    p = report.section("Provenance")
    timings = pd.DataFrame([{"step": name, "seconds": round(sec, 1)} for name, sec in results.get("timings", {}).items()])
    if not timings.empty:
        p.table(timings, "time per step")
    p.code(record)
    return report
