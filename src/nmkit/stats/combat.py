"""ComBat harmonisation of feature tables across batches (scanners, sites, reconstructions).

The location/scale model of Johnson, Li & Rabinovic (2007), as used for radiomics (Orlhac et al. 2018) and
neuroimaging (Fortin et al. 2017): for feature ``f`` of sample ``i`` in batch ``b``

    y_if = alpha_f + X_i beta_f + gamma_bf + delta_bf * eps_if

where ``X`` holds biological covariates to preserve. ``gamma``/``delta`` are shrunk towards batch-wide priors
by empirical Bayes (parametric: normal / inverse-gamma priors solved iteratively; non-parametric: a
likelihood-weighted average over the other features).

``ComBat`` is a scikit-learn transformer: ``fit`` stores every estimate, ``transform`` applies them to new
samples of known batches, so harmonisation can sit *inside* a cross-validation pipeline (no leakage of test
samples into the estimates). Batch and covariates come either as keyword arguments or as columns of a
DataFrame ``X`` (``batch_col``, ``categorical``, ``continuous``); the remaining columns are the features.

Robustness: a batch with a single sample has no variance estimate; it gets a location-only adjustment
(scale 1, location shrunk to the prior as in ComBat's mean-only mode) instead of NaN. A feature with zero
pooled variance keeps its values.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


def _postmean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _postvar(sum2, n, a, b):
    return (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)


def _inverse_gamma_prior(delta_hat: np.ndarray) -> tuple[float, float]:
    """Method-of-moments hyper-parameters (a, b) of the inverse-gamma prior of the batch variances."""
    m = float(np.mean(delta_hat))
    s2 = float(np.var(delta_hat, ddof=1))
    if not np.isfinite(s2) or s2 <= 0:
        return math.inf, math.inf
    return (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2


def _parametric_eb(s: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, g_bar: float, t2: float, a: float, b: float,
                   conv: float = 1e-4, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Iterate the posterior means of gamma and delta until the relative change is below ``conv``."""
    n = s.shape[0]
    g_old, d_old = g_hat.copy(), d_hat.copy()
    for _ in range(max_iter):
        g_new = _postmean(g_hat, g_bar, n, d_old, t2)
        sum2 = ((s - g_new[None, :]) ** 2).sum(axis=0)
        d_new = _postvar(sum2, n, a, b)
        # the stopping rule of the reference implementation (R sva::it.sol): relative change against the
        # signed previous value, so the results agree with sva / neuroCombat to far below the tolerance
        with np.errstate(divide="ignore", invalid="ignore"):
            change = max(float(np.max(np.abs(g_new - g_old) / g_old)), float(np.max(np.abs(d_new - d_old) / d_old)))
        g_old, d_old = g_new, d_new
        if not change > conv:
            break
    return g_old, d_old


def _nonparametric_eb(s: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's gamma/delta = the other features' estimates weighted by their likelihood of its data."""
    n = s.shape[0]
    sx = s.sum(axis=0)
    sxx = (s**2).sum(axis=0)
    # sum over samples of (x_if - g_j)^2 for feature f (rows) and candidate j (columns)
    sum2 = sxx[:, None] - 2 * sx[:, None] * g_hat[None, :] + n * g_hat[None, :] ** 2
    loglik = -0.5 * n * np.log(2 * math.pi * d_hat)[None, :] - sum2 / (2 * d_hat[None, :])
    np.fill_diagonal(loglik, -np.inf)
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return w @ g_hat, w @ d_hat


class ComBat(TransformerMixin, BaseEstimator):
    """ComBat with covariates, empirical Bayes (parametric or not), fit on training data, applied to new data.

    Parameters
    ----------
    batch_col, categorical, continuous:
        column names in a DataFrame ``X`` holding the batch and the covariates to preserve (used when
        ``batch``/``covariates`` are not passed to ``fit``/``transform``).
    eb: empirical Bayes shrinkage (False: plain location/scale per batch).
    parametric: parametric priors (True) or the non-parametric likelihood-weighted estimate.
    mean_only: adjust only the location, not the scale.

    Fitted attributes: ``batches_``, ``features_``, ``beta_`` (covariate coefficients), ``grand_mean_``,
    ``var_pooled_``, ``gamma_hat_``, ``delta_hat_``, ``gamma_star_``, ``delta_star_``, ``levels_``
    (categorical levels seen in training).
    """

    def __init__(self, batch_col: str = "batch", categorical: Sequence[str] = (), continuous: Sequence[str] = (),
                 eb: bool = True, parametric: bool = True, mean_only: bool = False):
        self.batch_col = batch_col
        self.categorical = categorical
        self.continuous = continuous
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only

    # ----- inputs ---------------------------------------------------------------------------------
    def _split(self, X: Any, batch: Any, covariates: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, list[str]]:
        cov_cols = list(self.categorical) + list(self.continuous)
        if isinstance(X, pd.DataFrame):
            frame = X
            if batch is None:
                if self.batch_col not in frame:
                    raise ValueError(f"no batch given and no column {self.batch_col!r} in the table")
                batch = frame[self.batch_col].to_numpy()
            if covariates is None:
                missing = [c for c in cov_cols if c not in frame]
                if missing:
                    raise ValueError(f"covariate column(s) {missing} not in the table")
                covariates = frame[cov_cols]
            feature_cols = [c for c in frame.columns if c != self.batch_col and c not in cov_cols]
            data = frame[feature_cols].to_numpy(dtype=float)
            names = [str(c) for c in feature_cols]
        else:
            data = np.asarray(X, dtype=float)
            if data.ndim != 2:
                raise ValueError("X must be a (samples x features) table")
            names = [f"f{i}" for i in range(data.shape[1])]
            if batch is None:
                raise ValueError("batch labels are needed (pass batch=... or a DataFrame with a batch column)")
        batch = np.asarray(batch).astype(str)
        if batch.shape[0] != data.shape[0]:
            raise ValueError(f"{batch.shape[0]} batch labels for {data.shape[0]} samples")
        if covariates is None:
            covariates = pd.DataFrame(index=range(data.shape[0]))
        covariates = pd.DataFrame(covariates).reset_index(drop=True)
        if len(covariates) != data.shape[0]:
            raise ValueError(f"{len(covariates)} covariate rows for {data.shape[0]} samples")
        if not np.all(np.isfinite(data)):
            bad = [names[j] for j in np.flatnonzero(~np.all(np.isfinite(data), axis=0))]
            raise ValueError(f"non-finite values in feature(s) {bad[:10]}; impute or drop them before ComBat")
        return data, batch, covariates, names

    def _covariate_design(self, covariates: pd.DataFrame, fitting: bool) -> np.ndarray:
        cols = []
        if fitting:
            self.levels_ = {c: sorted(pd.unique(covariates[c].astype(str))) for c in self.categorical}
        for c in self.categorical:
            values = covariates[c].astype(str).to_numpy()
            levels = self.levels_[c]
            unseen = sorted(set(values) - set(levels))
            if unseen:
                raise ValueError(f"covariate {c!r} has level(s) {unseen} not seen when ComBat was fitted")
            for level in levels[1:]:  # first level is the reference
                cols.append((values == level).astype(float))
        for c in self.continuous:
            cols.append(pd.to_numeric(covariates[c], errors="raise").to_numpy(dtype=float))
        return np.column_stack(cols) if cols else np.zeros((len(covariates), 0))

    # ----- fit / transform ------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, batch: Any = None, covariates: pd.DataFrame | None = None) -> "ComBat":
        data, batch, cov, names = self._split(X, batch, covariates)
        n, p = data.shape
        self.features_ = names
        self.batches_ = np.array(sorted(set(batch)))
        nb = len(self.batches_)
        onehot = (batch[:, None] == self.batches_[None, :]).astype(float)
        design = np.hstack([onehot, self._covariate_design(cov, fitting=True)])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValueError("the covariates are confounded with the batches (design matrix not of full rank)")
        coef = np.linalg.lstsq(design, data, rcond=None)[0]
        counts = onehot.sum(axis=0)
        self.batch_counts_ = counts.astype(int)
        self.grand_mean_ = (counts / n) @ coef[:nb]
        self.beta_ = coef[nb:]
        var = ((data - design @ coef) ** 2).mean(axis=0)
        positive = var[var > 0]
        self.constant_features_ = var <= 0
        var[var <= 0] = np.median(positive) if positive.size else 1.0
        self.var_pooled_ = var
        s = (data - self.grand_mean_ - design[:, nb:] @ self.beta_) / np.sqrt(var)

        g_hat = np.vstack([s[onehot[:, j] > 0].mean(axis=0) for j in range(nb)])
        d_hat = np.ones((nb, p))
        if not self.mean_only:
            for j in range(nb):
                if counts[j] > 1:
                    d_hat[j] = s[onehot[:, j] > 0].var(axis=0, ddof=1)
            d_hat[d_hat == 0] = 1.0
        self.gamma_hat_, self.delta_hat_ = g_hat, d_hat
        g_star, d_star = g_hat.copy(), d_hat.copy()
        if self.eb and p > 1:
            for j in range(nb):
                sj = s[onehot[:, j] > 0]
                g_bar = float(g_hat[j].mean())
                t2 = float(g_hat[j].var(ddof=1))
                single = counts[j] < 2
                if self.mean_only or single:
                    # no scale estimate: location-only shrinkage (ComBat mean-only rule), scale 1
                    if self.parametric or single:
                        g_star[j] = _postmean(g_hat[j], g_bar, 1, 1, t2)
                    else:
                        g_star[j], _ = _nonparametric_eb(sj, g_hat[j], np.ones(p))
                    d_star[j] = 1.0
                elif self.parametric:
                    a, b = _inverse_gamma_prior(d_hat[j])
                    if math.isinf(a):  # identical variances across features: no shrinkage of the scale
                        g_star[j] = _postmean(g_hat[j], g_bar, sj.shape[0], d_hat[j], t2)
                    else:
                        g_star[j], d_star[j] = _parametric_eb(sj, g_hat[j], d_hat[j], g_bar, t2, a, b)
                else:
                    g_star[j], d_star[j] = _nonparametric_eb(sj, g_hat[j], d_hat[j])
        self.gamma_star_, self.delta_star_ = g_star, d_star
        self.n_features_in_ = p
        return self

    def transform(self, X: Any, batch: Any = None, covariates: pd.DataFrame | None = None) -> np.ndarray:
        """Harmonised features (samples x features) using the estimates stored by ``fit``."""
        if not hasattr(self, "gamma_star_"):
            raise RuntimeError("ComBat is not fitted")
        data, batch, cov, _ = self._split(X, batch, covariates)
        if data.shape[1] != self.n_features_in_:
            raise ValueError(f"ComBat was fitted on {self.n_features_in_} features, got {data.shape[1]}")
        unknown = sorted(set(batch) - set(self.batches_))
        if unknown:
            raise ValueError(f"batch(es) {unknown} were not in the training data; ComBat cannot harmonise them")
        idx = np.searchsorted(self.batches_, batch)
        mod = self._covariate_design(cov, fitting=False) @ self.beta_
        sd = np.sqrt(self.var_pooled_)
        s = (data - self.grand_mean_ - mod) / sd
        s = (s - self.gamma_star_[idx]) / np.sqrt(self.delta_star_[idx])
        out = s * sd + self.grand_mean_ + mod
        if np.any(self.constant_features_):
            out[:, self.constant_features_] = data[:, self.constant_features_]
        return out

    def fit_transform(self, X: Any, y: Any = None, batch: Any = None, covariates: pd.DataFrame | None = None, **_: Any) -> np.ndarray:
        return self.fit(X, batch=batch, covariates=covariates).transform(X, batch=batch, covariates=covariates)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.features_, dtype=object)

    def estimates(self) -> dict[str, Any]:
        """The fitted estimates as plain lists (JSON-serialisable) for provenance and re-use."""
        return {"batches": self.batches_.tolist(), "features": list(self.features_), "batch_counts": self.batch_counts_.tolist(),
                "grand_mean": self.grand_mean_.tolist(), "var_pooled": self.var_pooled_.tolist(), "beta": self.beta_.tolist(),
                "gamma_star": self.gamma_star_.tolist(), "delta_star": self.delta_star_.tolist(),
                "categorical_levels": getattr(self, "levels_", {}), "categorical": list(self.categorical),
                "constant_features": self.constant_features_.tolist(),
                "continuous": list(self.continuous), "eb": self.eb, "parametric": self.parametric, "mean_only": self.mean_only}

    @classmethod
    def from_estimates(cls, est: dict[str, Any], batch_col: str = "batch") -> "ComBat":
        """A fitted ComBat rebuilt from ``estimates()`` (e.g. read back from JSON) to harmonise new data."""
        model = cls(batch_col=batch_col, categorical=tuple(est["categorical"]), continuous=tuple(est["continuous"]),
                    eb=est["eb"], parametric=est["parametric"], mean_only=est["mean_only"])
        model.batches_ = np.asarray(est["batches"], dtype=str)
        model.features_ = list(est["features"])
        model.batch_counts_ = np.asarray(est["batch_counts"], int)
        model.grand_mean_ = np.asarray(est["grand_mean"], float)
        model.var_pooled_ = np.asarray(est["var_pooled"], float)
        p = model.grand_mean_.size
        model.beta_ = np.asarray(est["beta"], float).reshape(-1, p)
        model.gamma_star_ = np.asarray(est["gamma_star"], float)
        model.delta_star_ = np.asarray(est["delta_star"], float)
        model.levels_ = {k: list(v) for k, v in est.get("categorical_levels", {}).items()}
        model.constant_features_ = np.asarray(est.get("constant_features", [False] * p), bool)
        model.n_features_in_ = p
        return model


def harmonize_table(table: pd.DataFrame, batch_col: str, features: Sequence[str] | None = None,
                    categorical: Sequence[str] = (), continuous: Sequence[str] = (), **options: Any) -> tuple[pd.DataFrame, ComBat]:
    """Harmonise the feature columns of ``table`` (all numeric columns except batch/covariates by default)."""
    cov_cols = list(categorical) + list(continuous)
    if features is None:
        features = [c for c in table.columns if c != batch_col and c not in cov_cols and pd.api.types.is_numeric_dtype(table[c])]
    model = ComBat(batch_col=batch_col, categorical=categorical, continuous=continuous, **options)
    frame = table[[batch_col, *cov_cols, *features]]
    out = table.copy()
    out[list(features)] = model.fit_transform(frame)
    return out, model


def cv_leakage_check(X: pd.DataFrame, y: Sequence[Any], estimator: Any, cv: Any = 5, scoring: str = "roc_auc",
                     **combat_options: Any) -> dict[str, float]:
    """Cross-validated score with ComBat fitted inside each training fold vs fitted once on all data.

    ``X`` is a DataFrame with the batch (and covariate) columns named in ``combat_options``. A difference
    between the two scores is the optimism that harmonising on all data (test folds included) would report.
    """
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    inside = cross_val_score(make_pipeline(ComBat(**combat_options), clone(estimator)), X, y, cv=cv, scoring=scoring)
    harmonised_all = ComBat(**combat_options).fit_transform(X)
    leaky = cross_val_score(clone(estimator), harmonised_all, y, cv=cv, scoring=scoring)
    return {"score_inside_folds": float(inside.mean()), "score_fit_on_all": float(leaky.mean()),
            "optimism": float(leaky.mean() - inside.mean()), "scores_inside_folds": inside.tolist(), "scores_fit_on_all": leaky.tolist()}
