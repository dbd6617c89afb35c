"""Studies: learning curves (how many labelled images are enough) and network/loss comparisons.

Both train several models on subsets/variants of one manifest, evaluate them on the test split with
Dice, HD95 and ASSD on the images' real spacing, and write a tidy CSV, a summary table and figures.
Confidence intervals are bootstrap 95% intervals over test cases (percentile method).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..provenance import provenance
from .data import Case
from .preprocess import Preprocessing
from .train import TrainConfig, train

log = logging.getLogger(__name__)


def evaluate_model(bundle_dir: Path, cases: list[Case], labels: Sequence[int]) -> pd.DataFrame:
    """Per-case Dice, HD95, ASSD of a bundle on cases (foreground = union of ``labels``)."""
    from ..metrics.overlap import dice as overlap_dice
    from ..metrics.surface import surface_metrics
    from .bundle import load_bundle
    from .infer import predict_image

    bundle = load_bundle(bundle_dir, device="cpu")
    rows = []
    for case in cases:
        pred = predict_image(bundle, case.image).array
        p, t = np.isin(pred, labels), np.isin(case.label, labels)
        dice = overlap_dice(p, t)
        surf = surface_metrics(p, t, spacing=case.image.spacing)
        rows.append({"case_id": case.case_id, "dice": float(dice), "hd95": float(surf["hd95"]), "assd": float(surf["assd"])})
    return pd.DataFrame(rows)


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def learning_curve(train_cases: list[Case], val_cases: list[Case], test_cases: list[Case], sizes: Sequence[int], prep: Preprocessing,
                   config: TrainConfig, out_dir: str | Path, repeats: int = 1) -> pd.DataFrame:
    """Train on the first/random N training cases for each N (and each repeat), evaluate on the test cases."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = sorted(config.labels)
    per_case = []
    rng = np.random.default_rng(config.seed)
    for n in sizes:
        if n > len(train_cases):
            log.warning("skipping N=%d: only %d training cases", n, len(train_cases))
            continue
        for r in range(repeats):
            subset = [train_cases[i] for i in rng.permutation(len(train_cases))[:n]]
            t0 = time.perf_counter()
            bundle_dir = train(subset, val_cases, prep, replace(config, seed=config.seed + r), out_dir / f"n{n}_r{r}", progress=False)
            seconds = time.perf_counter() - t0
            table = evaluate_model(bundle_dir, test_cases, labels)
            table["n_train"], table["repeat"], table["train_seconds"] = n, r, seconds
            per_case.append(table)
            print(f"N={n:5d} repeat {r}: test Dice {table['dice'].mean():.4f}  ({seconds:.0f} s)", flush=True)
    results = pd.concat(per_case, ignore_index=True) if per_case else pd.DataFrame()
    results.to_csv(out_dir / "learning_curve_cases.csv", index=False)
    summary = summarise(results, "n_train")
    summary.to_csv(out_dir / "learning_curve.csv", index=False)
    plot_learning_curve(summary, out_dir / "learning_curve.png")
    (out_dir / "provenance.json").write_text(json.dumps(provenance(config=config.to_dict(), sizes=list(sizes), repeats=repeats,
                                                                    preprocessing=prep.to_dict()), indent=2, default=str))
    return summary


def summarise(results: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Mean and bootstrap CI of Dice/HD95/ASSD per group."""
    rows = []
    if results.empty:
        return pd.DataFrame()
    for key, group in results.groupby(by):
        row: dict[str, Any] = dict(zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,)))
        for metric in ("dice", "hd95", "assd"):
            lo, hi = bootstrap_ci(group[metric].to_numpy())
            row[f"{metric}_mean"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = float(group[metric].mean()), lo, hi
        row["n_test_evaluations"] = len(group)
        if "train_seconds" in group:
            row["train_seconds"] = float(group.groupby("repeat")["train_seconds"].first().mean()) if "repeat" in group else float(group["train_seconds"].mean())
        for extra in ("parameters",):
            if extra in group:
                row[extra] = int(group[extra].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_learning_curve(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if not summary.empty:
        n = summary["n_train"].to_numpy()
        ax.plot(n, summary["dice_mean"], "o-", color="tab:blue", label="test Dice (mean)")
        ax.fill_between(n, summary["dice_ci_low"], summary["dice_ci_high"], alpha=0.25, color="tab:blue", label="95% bootstrap CI")
        ax.set_xscale("log")
    ax.set_xlabel("number of labelled training images")
    ax.set_ylabel("Dice on held-out test cases")
    ax.set_title("Learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(variants: list[dict[str, Any]], train_cases: list[Case], val_cases: list[Case], test_cases: list[Case],
            prep: Preprocessing, config: TrainConfig, out_dir: str | Path) -> pd.DataFrame:
    """Train one model per variant (dict of TrainConfig overrides, e.g. network/loss) and compare them."""
    from .nets import build_network, parameter_count

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = sorted(config.labels)
    tables = []
    seen: dict[str, int] = {}
    for variant in variants:
        cfg = replace(config, **{k: v for k, v in variant.items() if k != "name"})
        name = str(variant.get("name") or f"{cfg.network}_{cfg.loss}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}_{seen[name]}"
        t0 = time.perf_counter()
        bundle_dir = train(train_cases, val_cases, prep, cfg, out_dir / name, progress=False)
        seconds = time.perf_counter() - t0
        table = evaluate_model(bundle_dir, test_cases, labels)
        size = prep.target_size if prep.spatial_dims == 2 else prep.patch_size
        table["variant"], table["network"], table["loss"] = name, cfg.network, cfg.loss
        table["train_seconds"] = seconds
        table["parameters"] = parameter_count(build_network(cfg.network, prep.spatial_dims, 1, 1 + max(cfg.labels), img_size=size, **dict(cfg.network_options)))
        tables.append(table)
        print(f"{name}: Dice {table['dice'].mean():.4f} HD95 {table['hd95'].mean():.2f} mm ({seconds:.0f} s)", flush=True)
    results = pd.concat(tables, ignore_index=True)
    results.to_csv(out_dir / "compare_cases.csv", index=False)
    summary = summarise(results, "variant")
    summary.to_csv(out_dir / "compare.csv", index=False)
    plot_compare(results, out_dir / "compare.png")
    (out_dir / "provenance.json").write_text(json.dumps(provenance(config=config.to_dict(), variants=variants), indent=2, default=str))
    return summary


def plot_compare(results: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(results["variant"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, metric, unit in zip(axes, ("dice", "hd95", "assd"), ("", " (mm)", " (mm)")):
        data = [results.loc[results["variant"] == v, metric].replace([np.inf], np.nan).dropna().to_numpy() for v in variants]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(variants) + 1), variants, rotation=30, ha="right")
        ax.set_title(metric.upper() + unit)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: metrics compared by ``compare_evaluations`` when present in the tables, with their units
EVALUATION_METRICS = {"dice": "1", "hd95_mm": "mm", "assd_mm": "mm", "nsd": "1", "lesion_f1": "1", "lesion_recall": "1",
                      "lesion_precision": "1", "abs_volume_difference_ml": "ml",
                      "abs_area_difference_mm2": "mm2"}


def compare_evaluations(tables: dict[str, pd.DataFrame], metrics: Sequence[str] | None = None,
                        reference: str | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """Compare models of any engine from their ``nmkit evaluate`` per-case tables (``{name: table}``).

    Per model and metric: mean of the finite values and a 95 % percentile-bootstrap CI over cases (the bootstrap of
    ``study compare``), how many values were not finite (an empty prediction or truth); then, against ``reference``
    (default: the last model), the paired difference model - reference over the cases both evaluated, with its CI.
    Rows are matched by case and structure."""
    from ..errors import InputError

    if len(tables) < 1:
        raise InputError(None, "give at least one evaluation table")
    names = list(tables)
    reference = reference or names[-1]
    if reference not in tables:
        raise InputError(None, f"reference {reference!r} is not among the models {names}")
    keyed = {}
    for name, df in tables.items():
        if "case" not in df.columns:
            raise InputError(None, f"{name}: not an `nmkit evaluate` table (no 'case' column)")
        keys = ["case"] + (["structure"] if "structure" in df.columns else [])
        keyed[name] = df.set_index(keys)
    chosen = list(metrics) if metrics else [m for m in EVALUATION_METRICS if all(m in df.columns for df in tables.values())]
    missing = [m for m in chosen if not all(m in df.columns for df in tables.values())]
    if missing:
        raise InputError(None, f"metric(s) {missing} not in every table (run `nmkit evaluate --lesions` for lesion_f1)")
    units = {m: _metric_unit(m, tables.values()) for m in chosen}
    rows = []
    for name in names:
        for metric in chosen:
            values = keyed[name][metric].to_numpy(float)
            finite = values[np.isfinite(values)]
            lo, hi = bootstrap_ci(finite, n_boot=n_boot) if len(finite) else (float("nan"), float("nan"))
            rows.append({"model": name, "comparison": "", "metric": metric, "unit": units[metric],
                         "mean": float(finite.mean()) if len(finite) else float("nan"), "ci_low": lo, "ci_high": hi,
                         "n_cases": int(len(finite)), "n_not_finite": int(len(values) - len(finite))})
    for name in names:
        if name == reference:
            continue
        both = keyed[name].index.intersection(keyed[reference].index)
        for metric in chosen:
            diff = (keyed[name].loc[both, metric].to_numpy(float) - keyed[reference].loc[both, metric].to_numpy(float))
            finite = diff[np.isfinite(diff)]
            lo, hi = bootstrap_ci(finite, n_boot=n_boot) if len(finite) else (float("nan"), float("nan"))
            rows.append({"model": name, "comparison": f"{name} - {reference}", "metric": metric,
                         "unit": units[metric], "mean": float(finite.mean()) if len(finite) else float("nan"),
                         "ci_low": lo, "ci_high": hi, "n_cases": int(len(finite)), "n_not_finite": int(len(diff) - len(finite))})
    return pd.DataFrame(rows)


def _metric_unit(metric: str, tables) -> str:
    """The unit of ``metric`` in these evaluate tables: distances (and areas) follow their ``distance_unit`` column -
    pixels for PNG masks without pixel spacing - the rest ``EVALUATION_METRICS``."""
    from ..metrics.evaluate import DISTANCE_COLUMNS, distance_unit

    unit = EVALUATION_METRICS.get(metric, "")
    if metric in DISTANCE_COLUMNS or metric == "abs_area_difference_mm2":
        length = distance_unit(*tables)
        if length != "mm":
            unit = length if metric in DISTANCE_COLUMNS else ("px2" if length == "px" else length)
    return unit


def plot_evaluations(summary: pd.DataFrame, path: Path) -> None:
    """One panel per metric: each model's mean with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_model = summary[summary["comparison"] == ""]
    metrics = list(dict.fromkeys(per_model["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = per_model[per_model["metric"] == metric]
        x = np.arange(len(part))
        ax.errorbar(x, part["mean"], yerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]], fmt="o", capsize=4)
        ax.set_xticks(x, part["model"], rotation=30)
        unit = part["unit"].iloc[0]
        ax.set_title(f"{metric} ({unit})" if unit and unit != "1" else metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
