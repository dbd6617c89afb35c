"""Compact survival analysis: Cox proportional hazards (Breslow ties), Harrell's C-index, Kaplan-Meier.

Written on NumPy/SciPy so outcome models need no extra dependency. ``CoxPH`` is a scikit-learn estimator:
``y`` is an (n, 2) array of (time, event) so it fits in pipelines, grid searches and cross-validation;
``predict`` returns the linear predictor (higher = higher risk) and ``score`` Harrell's C-index.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator


def as_survival(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) float/bool vectors from an (n, 2) array or a DataFrame with two columns."""
    arr = np.asarray(y, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError("survival targets must be an (n, 2) array of (time, event)")
    time, event = arr[:, 0], arr[:, 1].astype(bool)
    if np.any(~np.isfinite(time)) or np.any(time < 0):
        raise ValueError("survival times must be finite and non-negative")
    return time, event


def _breslow_terms(x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray):
    """Negative log partial likelihood (Breslow), gradient and Hessian."""
    order = np.argsort(-time, kind="mergesort")  # descending: risk sets are prefixes
    xs, ts, es = x[order], time[order], event[order]
    eta = xs @ beta
    shift = eta.max() if eta.size else 0.0
    w = np.exp(eta - shift)
    cw = np.cumsum(w)
    cwx = np.cumsum(w[:, None] * xs, axis=0)
    cwxx = np.cumsum(w[:, None, None] * xs[:, :, None] * xs[:, None, :], axis=0)
    # the risk set of time t is every sample with time >= t: the last index of each tied block
    uniq_last = np.r_[np.flatnonzero(ts[1:] != ts[:-1]), ts.size - 1]
    block_end = np.empty(ts.size, int)
    start = 0
    for end in uniq_last:
        block_end[start:end + 1] = end
        start = end + 1
    idx = block_end[es]
    s0 = cw[idx]
    s1 = cwx[idx]
    s2 = cwxx[idx]
    loglik = float(np.sum(eta[es] - shift - np.log(s0)))
    mean = s1 / s0[:, None]
    grad = np.sum(xs[es] - mean, axis=0)
    hess = -np.sum(s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :], axis=0)
    return -loglik, -grad, -hess


def cox_fit(x: np.ndarray, time: np.ndarray, event: np.ndarray, l2: float = 0.0, max_iter: int = 50,
            tol: float = 1e-9) -> dict[str, Any]:
    """Maximum partial-likelihood Cox coefficients by Newton-Raphson with step halving.

    ``l2`` adds a ridge penalty ``l2/2 * ||beta||^2`` (as lifelines' ``penalizer`` with l1_ratio 0 up to the
    factor 1/2 convention). Returns coef, standard errors (inverse observed information), log-likelihood,
    iterations.
    """
    x = np.asarray(x, float)
    n, p = x.shape
    beta = np.zeros(p)

    def objective(b):
        f, g, h = _breslow_terms(x, time, event, b)
        return f + 0.5 * l2 * b @ b, g + l2 * b, h + l2 * np.eye(p)

    f, g, h = objective(beta)
    it = 0
    for it in range(1, max_iter + 1):
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(h, g, rcond=None)[0]
        t = 1.0
        while True:
            cand = beta - t * step
            fc, gc, hc = objective(cand)
            if fc <= f + 1e-12 or t < 1e-8:
                break
            t /= 2
        done = abs(f - fc) < tol * (1 + abs(f))
        beta, f, g, h = cand, fc, gc, hc
        if done:
            break
    try:
        cov = np.linalg.inv(h)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        se = np.full(p, math.nan)
    return {"coef": beta, "se": se, "neg_log_partial_likelihood": f, "log_likelihood": -(f - 0.5 * l2 * beta @ beta), "iterations": it}


def concordance_index(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C: among comparable pairs (the shorter time is an event), the share where the shorter time has
    the higher risk; risk ties count one half. Pairs with tied times are not comparable unless only one is an event
    (as lifelines / Harrell)."""
    time = np.asarray(time, float)
    risk = np.asarray(risk, float)
    event = np.asarray(event, bool)
    num = den = 0.0
    for i in np.flatnonzero(event):
        comparable = (time > time[i]) | ((time == time[i]) & ~event)
        if not comparable.any():
            continue
        r = risk[comparable]
        num += np.sum(risk[i] > r) + 0.5 * np.sum(risk[i] == r)
        den += comparable.sum()
    return num / den if den else math.nan


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Event times and the Kaplan-Meier survival just after each."""
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    t = np.unique(time[event])
    s, surv = 1.0, []
    for ti in t:
        at_risk = np.sum(time >= ti)
        d = np.sum((time == ti) & event)
        s *= 1 - d / at_risk
        surv.append(s)
    return t, np.asarray(surv)


def martingale_residuals_null(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Martingale residuals of the null model, event - Nelson-Aalen cumulative hazard at the own time."""
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    t = np.unique(time[event])
    hazard = np.array([np.sum((time == ti) & event) / np.sum(time >= ti) for ti in t])
    cum = np.cumsum(hazard)
    idx = np.searchsorted(t, time, side="right") - 1
    h = np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0.0)
    return event.astype(float) - h


class CoxPH(BaseEstimator):
    """Ridge-penalised Cox PH estimator for scikit-learn pipelines; ``y`` = (n, 2) of (time, event)."""

    def __init__(self, l2: float = 0.1):
        self.l2 = l2

    def fit(self, X: Any, y: Any) -> "CoxPH":
        time, event = as_survival(y)
        res = cox_fit(np.asarray(X, float), time, event, l2=self.l2)
        self.coef_, self.se_ = res["coef"], res["se"]
        self.n_features_in_ = self.coef_.size
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(X, float) @ self.coef_

    def score(self, X: Any, y: Any) -> float:
        time, event = as_survival(y)
        return concordance_index(time, self.predict(X), event)


class MartingaleSelector(BaseEstimator):
    """Keep the ``k`` features most correlated (|Pearson|) with the null-model martingale residuals: a fast
    univariate survival filter for use inside cross-validation folds."""

    def __init__(self, k: int = 10):
        self.k = k

    def fit(self, X: Any, y: Any) -> "MartingaleSelector":
        x = np.asarray(X, float)
        time, event = as_survival(y)
        r = martingale_residuals_null(time, event)
        xc = x - x.mean(axis=0)
        rc = r - r.mean()
        den = np.sqrt((xc**2).sum(axis=0) * (rc**2).sum())
        corr = np.where(den > 0, xc.T @ rc / np.where(den > 0, den, 1), 0.0)
        self.scores_ = np.abs(corr)
        self.support_ = np.zeros(x.shape[1], bool)
        self.support_[np.argsort(-self.scores_, kind="mergesort")[: min(self.k, x.shape[1])]] = True
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.asarray(X, float)[:, self.support_]

    def fit_transform(self, X: Any, y: Any = None, **_: Any) -> np.ndarray:
        return self.fit(X, y).transform(X)

    def get_support(self) -> np.ndarray:
        return self.support_
