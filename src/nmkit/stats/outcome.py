"""Outcome models from feature tables: classification (response) and survival (Cox), with nested cross-validation.

Everything data-dependent happens inside the training folds: scaling, feature selection (univariate filter:
ANOVA F for classes, null-model martingale residuals for survival) and hyper-parameter tuning (inner CV grid
search), so the outer-fold scores are honest estimates. Out-of-fold predictions give the AUC / C-index with
bootstrap confidence intervals, calibration (Brier score, calibration curve) and permutation importance
(computed on each outer test fold with the model fitted on its training folds).

``write_outcome_report`` answers the TRUE checklist (is it True, Reproducible, Useful, Explainable?) in an
HTML report with figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .survival import CoxPH, MartingaleSelector, as_survival, concordance_index, kaplan_meier


class BatchColumnComBat:
    """ComBat as a pipeline step, fitted on the training folds only: the LAST column of ``X`` holds each sample's batch
    code (appended by ``nested_cv`` when ``batch`` is given); it is used for the harmonisation and then dropped.

    Why a column: scikit-learn passes only ``X`` and ``y`` through a pipeline; carrying the batch in ``X`` keeps the
    fit inside each training fold (no leakage of test-fold batch statistics) without metadata routing."""

    def __init__(self, eb: bool = True, parametric: bool = True):
        self.eb = eb
        self.parametric = parametric

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"eb": self.eb, "parametric": self.parametric}

    def set_params(self, **params: Any) -> "BatchColumnComBat":
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, X: Any, y: Any = None) -> "BatchColumnComBat":
        from .combat import ComBat

        x = np.asarray(X, dtype=float)
        self.combat_ = ComBat(eb=self.eb, parametric=self.parametric).fit(x[:, :-1], batch=x[:, -1].astype(int))
        return self

    def transform(self, X: Any) -> np.ndarray:
        x = np.asarray(X, dtype=float)
        known = set(self.combat_.batches_.tolist())
        batch = x[:, -1].astype(int).astype(str)
        out = x[:, :-1].copy()
        seen = np.array([b in known for b in batch])
        if seen.any():  # a batch absent from the training folds cannot be harmonised: left as it is
            out[seen] = self.combat_.transform(x[seen, :-1], batch=x[seen, -1].astype(int))
        return out

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X, y).transform(X)


def _pipeline(task: str, model: str, seed: int, batch: bool = False):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if batch:
        steps.append(("combat", BatchColumnComBat()))
    steps.append(("scale", StandardScaler()))
    if task == "classification":
        steps.append(("select", SelectKBest(f_classif, k=10)))
        if model == "logistic":
            steps.append(("model", LogisticRegression(max_iter=2000)))
            grid = {"model__C": [0.01, 0.1, 1.0, 10.0]}
        elif model == "random_forest":
            steps.append(("model", RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)))
            grid = {"model__max_depth": [2, 4, None]}
        else:
            raise ValueError(f"classification model must be 'logistic' or 'random_forest', got {model!r}")
    elif task == "survival":
        if model != "cox":
            raise ValueError(f"survival model must be 'cox', got {model!r}")
        steps += [("select", MartingaleSelector(k=10)), ("model", CoxPH())]
        grid = {"model__l2": [0.1, 1.0, 10.0]}
    else:
        raise ValueError(f"task must be 'classification' or 'survival', got {task!r}")
    return Pipeline(steps), grid


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan


def _score(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    if task == "classification":
        return _auc(y, pred)
    time, event = as_survival(y)
    return concordance_index(time, pred, event)


def bootstrap_ci(task: str, y: np.ndarray, pred: np.ndarray, n_boot: int = 500, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC / C-index of out-of-fold predictions."""
    rng = np.random.default_rng(seed)
    n = len(pred)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = _score(task, y[idx], pred[idx])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return math.nan, math.nan
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class OutcomeResult:
    """Nested-CV result: fold scores, out-of-fold predictions and everything the report needs."""

    task: str
    model: str
    features: list[str]
    fold_scores: list[float]
    oof_prediction: np.ndarray
    y: np.ndarray
    score: float
    score_ci: tuple[float, float]
    best_params: list[dict[str, Any]]
    selected_counts: pd.Series
    importance: pd.DataFrame
    brier: float = math.nan
    calibration: pd.DataFrame | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        name = "auc" if self.task == "classification" else "c_index"
        return {"task": self.task, "model": self.model, name: self.score, f"{name}_ci_low": self.score_ci[0],
                f"{name}_ci_high": self.score_ci[1], "fold_mean": float(np.nanmean(self.fold_scores)),
                "fold_sd": float(np.nanstd(self.fold_scores, ddof=1)) if len(self.fold_scores) > 1 else math.nan,
                "brier": self.brier, "n_samples": int(len(self.y)), "n_features": len(self.features)}


def nested_cv(X: pd.DataFrame, y: Any, task: str = "classification", model: str = "logistic", k_features: Sequence[int] = (5, 10),
              outer_folds: int = 5, inner_folds: int = 3, seed: int = 0, n_boot: int = 500, n_permutations: int = 5,
              param_grid: Mapping[str, Sequence[Any]] | None = None, batch: Sequence[Any] | None = None) -> OutcomeResult:
    """Nested cross-validation of a scaling -> univariate selection -> model pipeline.

    ``batch`` (one label per sample, e.g. the centre or scanner): ComBat harmonisation as the first step of the
    pipeline, fitted within every training fold (outer and inner), never on the samples it is scored on.

    ``y``: binary labels (classification) or an (n, 2) (time, event) array (survival). The inner CV tunes the
    number of selected features (``k_features``) and the model's regularisation (``param_grid`` replaces the
    default grid of the model step, e.g. ``{"model__C": [0.1, 1]}``); the outer CV scores it.
    """
    from sklearn.base import clone
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    X = pd.DataFrame(X)
    features = [str(c) for c in X.columns]
    x = X.to_numpy(dtype=float)
    if batch is not None:
        labels = np.asarray(batch).astype(str)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{labels.shape[0]} batch labels for {x.shape[0]} samples")
        codes = {b: i for i, b in enumerate(sorted(set(labels)))}
        x = np.column_stack([x, [codes[b] for b in labels]])  # the ComBat step reads and drops this column
    y_arr = np.asarray(y)
    if task == "classification":
        classes = np.unique(y_arr)
        if classes.size != 2:
            raise ValueError(f"binary classification needs two classes, got {classes.tolist()}")
        y_arr = (y_arr == classes[1]).astype(int)
        strat = y_arr
        outer = StratifiedKFold(outer_folds, shuffle=True, random_state=seed)
        inner = StratifiedKFold(inner_folds, shuffle=True, random_state=seed + 1)
        scoring = "roc_auc"
    else:
        time, event = as_survival(y_arr)
        y_arr = np.column_stack([time, event.astype(float)])
        strat = event.astype(int)
        outer = StratifiedKFold(outer_folds, shuffle=True, random_state=seed)
        inner = KFold(inner_folds, shuffle=True, random_state=seed + 1)
        scoring = None  # CoxPH.score = C-index
    pipe, grid = _pipeline(task, model, seed, batch=batch is not None)
    grid = dict(param_grid) if param_grid is not None else dict(grid)
    n_features = len(features)
    grid["select__k"] = [k for k in k_features if k <= n_features] or [n_features]
    oof = np.full(len(x), np.nan)
    fold_scores, best_params, importances = [], [], []
    selected = pd.Series(0, index=features, dtype=int)
    for train, test in outer.split(x, strat):
        search = GridSearchCV(clone(pipe), grid, cv=inner, scoring=scoring, refit=True, n_jobs=1)
        search.fit(x[train], y_arr[train])
        fitted = search.best_estimator_
        pred = fitted.predict_proba(x[test])[:, 1] if task == "classification" else fitted.predict(x[test])
        oof[test] = pred
        fold_scores.append(_score(task, y_arr[test], pred))
        best_params.append({k: (v if v is None or isinstance(v, (int, float, str)) else str(v)) for k, v in search.best_params_.items()})
        support = fitted.named_steps["select"].get_support()
        selected[np.asarray(features)[support]] += 1
        if n_permutations:
            scorer = "roc_auc" if task == "classification" else None
            imp = permutation_importance(fitted, x[test], y_arr[test], scoring=scorer, n_repeats=n_permutations,
                                         random_state=seed)
            importances.append(imp.importances_mean[:n_features])  # the batch column is not a feature
    score = _score(task, y_arr, oof)
    ci = bootstrap_ci(task, y_arr, oof, n_boot=n_boot, seed=seed)
    imp_df = pd.DataFrame({"feature": features,
                           "importance_mean": np.mean(importances, axis=0) if importances else np.nan,
                           "importance_sd": np.std(importances, axis=0, ddof=1) if len(importances) > 1 else np.nan,
                           "times_selected": selected.to_numpy()}).sort_values("importance_mean", ascending=False)
    brier, calib = math.nan, None
    if task == "classification":
        from sklearn.calibration import calibration_curve
        from sklearn.metrics import brier_score_loss

        brier = float(brier_score_loss(y_arr, oof))
        frac_pos, mean_pred = calibration_curve(y_arr, oof, n_bins=5, strategy="quantile")
        calib = pd.DataFrame({"mean_predicted": mean_pred, "observed_fraction": frac_pos})
    config = {"task": task, "model": model, "k_features": list(k_features), "outer_folds": outer_folds,
              "combat_within_folds": batch is not None,
              "inner_folds": inner_folds, "seed": seed, "n_boot": n_boot, "n_permutations": n_permutations, "grid": {k: [str(v) for v in vs] for k, vs in grid.items()}}
    return OutcomeResult(task, model, features, fold_scores, oof, y_arr, score, ci, best_params, selected, imp_df,
                         brier, calib, config)


def chance_level(result: OutcomeResult, n_shuffles: int = 200, seed: int = 0) -> dict[str, float]:
    """Score of the out-of-fold predictions against shuffled outcomes: the null distribution's mean and the
    share of shuffles that reach the observed score (a permutation p-value of the predictions)."""
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_shuffles):
        perm = rng.permutation(len(result.y))
        null.append(_score(result.task, result.y[perm], result.oof_prediction))
    null = np.asarray(null)
    return {"null_mean": float(np.nanmean(null)), "p_value": float((1 + np.sum(null >= result.score)) / (1 + n_shuffles))}


def write_outcome_report(result: OutcomeResult, path: str | Path, baseline: OutcomeResult | None = None,
                         provenance_record: Mapping[str, Any] | None = None, title: str = "Outcome model") -> Path:
    """HTML report organised by the TRUE checklist, with ROC/KM, calibration and importance figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.html import Report

    rep = Report(title)
    s = result.summary()
    name = "AUC" if result.task == "classification" else "C-index"
    chance = chance_level(result)
    sec = rep.section("True: is the performance real?")
    sec.text(f"Nested {result.config['outer_folds']}-fold cross-validation ({result.config['inner_folds']}-fold inner tuning); "
             f"scaling, feature selection and tuning inside the training folds only. Out-of-fold {name} "
             f"{result.score:.3f} (95% bootstrap CI {result.score_ci[0]:.3f}-{result.score_ci[1]:.3f}); per fold "
             f"{s['fold_mean']:.3f} ± {s['fold_sd']:.3f}. Shuffled outcomes give {chance['null_mean']:.3f} "
             f"(permutation p = {chance['p_value']:.3g}).")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if result.task == "classification":
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(result.y, result.oof_prediction)
        ax.plot(fpr, tpr, label=f"AUC {result.score:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.7)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(loc="lower right")
        sec.figure(fig, caption="ROC curve of the out-of-fold predictions")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        cal = result.calibration
        ax.plot([0, 1], [0, 1], color="grey", lw=0.7)
        ax.plot(cal["mean_predicted"], cal["observed_fraction"], marker="o")
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed fraction")
        sec.figure(fig, caption=f"calibration (quantile bins); Brier score {result.brier:.3f}")
    else:
        time, event = as_survival(result.y)
        high = result.oof_prediction > np.median(result.oof_prediction)
        for grp, label in ((~high, "low risk"), (high, "high risk")):
            t, sv = kaplan_meier(time[grp], event[grp])
            ax.step(np.r_[0, t], np.r_[1, sv], where="post", label=f"{label} (n={grp.sum()})")
        ax.set_xlabel("time")
        ax.set_ylabel("survival")
        ax.legend()
        sec.figure(fig, caption="Kaplan-Meier curves of the groups split at the median out-of-fold risk")
    sec.table(pd.DataFrame([s]), caption="summary")
    rep.section("Reproducible: can it be redone?").text(
        f"Fixed seed {result.config['seed']}; the configuration, inputs and library versions are recorded below. "
        "Re-running the same command on the same tables gives the same folds, models and numbers.").code(
        {"config": result.config, "provenance": dict(provenance_record or {})})
    useful = rep.section("Useful: does it add to what we know?")
    if baseline is not None:
        useful.text(f"Clinical-only baseline {name}: {baseline.score:.3f} (95% CI {baseline.score_ci[0]:.3f}-"
                    f"{baseline.score_ci[1]:.3f}) vs {result.score:.3f} with the image features.")
    else:
        useful.text("No clinical baseline was given; compare with the standard clinical model before claiming added value.", note=True)
    exp = rep.section("Explainable: what drives the predictions?")
    top = result.importance.head(15)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1.2))
    ax.barh(top["feature"][::-1], top["importance_mean"][::-1], xerr=top["importance_sd"][::-1].fillna(0))
    ax.set_xlabel(f"permutation importance (drop in {name})")
    exp.figure(fig, caption="permutation importance on the outer test folds (mean ± SD over folds)")
    exp.table(top, caption="top features (times_selected = outer folds whose training data selected it)")
    exp.table(pd.DataFrame(result.best_params), caption="hyper-parameters chosen in each outer fold")
    return rep.write(path)
