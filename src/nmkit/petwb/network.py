"""Inter-organ metabolic networks across a cohort, from the organ table (one value per patient x organ).

* ``spearman``: Spearman correlation per organ pair; p-values from the t approximation; BH-FDR over all pairs.
* ``partial``: partial correlation (from the inverse of the Spearman matrix, i.e. on ranks) controlling for all
  other organs; p-values from the t distribution with n - k degrees of freedom; BH-FDR.
* ``glasso``: graphical lasso (scikit-learn GraphicalLassoCV on rank-based normal scores, standardised);
  edge weight = the partial correlation of the sparse precision matrix.

Bootstrap stability: the fraction of ``n_boot`` patient resamples in which an edge is selected (FDR q < alpha for
spearman/partial, non-zero for glasso). Optional ComBat by centre (``batch``): the log organ values are harmonised
(nmkit.stats.combat) before the network, and ComBat is fitted again inside every bootstrap resample, so the stability
never borrows estimates from patients outside the resample (the same rule as ComBat inside cross-validation). Export: edges CSV, GraphML (nodes with their mean value and degree, edges
with weight, q-value, stability), a figure, and per-patient node scores (z-scored organ values) usable as features
of the nested-CV outcome models (``nmkit model-outcome``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import InputError

METHODS = ("spearman", "partial", "glasso")


def wide_matrix(table, feature: str = "suv_mean", patient_col: str = "patient_id", organ_col: str = "organ"):
    """Patients x organs DataFrame of ``feature`` (rows with any missing organ dropped, with a count)."""
    for col in (patient_col, organ_col, feature):
        if col not in table.columns:
            raise InputError(None, f"the organ table has no column {col!r} (columns: {', '.join(map(str, table.columns))})")
    if table.duplicated([patient_col, organ_col]).any():
        raise InputError(None, f"some {patient_col} x {organ_col} pairs appear more than once (several time points?); "
                               f"keep one row per pair or choose another id column")
    wide = table.pivot_table(index=patient_col, columns=organ_col, values=feature, aggfunc="mean")
    complete = wide.dropna()
    if len(complete) < 10 or complete.shape[1] < 3:
        raise InputError(None, f"a network needs >= 10 patients with all organs and >= 3 organs; have "
                               f"{len(complete)} patients x {complete.shape[1]} organs")
    return complete


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


def _normal_scores(x: np.ndarray) -> np.ndarray:
    ranks = np.apply_along_axis(stats.rankdata, 0, x)
    return stats.norm.ppf((ranks - 0.5) / x.shape[0])


def edge_weights(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(k x k weights, k x k p-values; NaN for glasso) of one method on an n x k matrix."""
    n, k = x.shape
    if method == "spearman":
        r = stats.spearmanr(x).statistic
        r = np.atleast_2d(r)
        dof = n - 2
    elif method in ("partial", "glasso"):
        z = _normal_scores(x)
        if method == "glasso":
            from sklearn.covariance import GraphicalLassoCV

            z = (z - z.mean(0)) / z.std(0)
            prec = GraphicalLassoCV(cv=3).fit(z).precision_
        else:
            prec = np.linalg.pinv(np.corrcoef(z, rowvar=False))
        d = np.sqrt(np.diag(prec))
        r = -prec / np.outer(d, d)
        dof = n - k
    else:
        raise InputError(None, f"unknown network method {method!r} ({', '.join(METHODS)})")
    np.fill_diagonal(r, 0.0)
    if method == "glasso":
        return r, np.full((k, k), np.nan)
    rc = np.clip(r, -0.999999, 0.999999)
    t = rc * np.sqrt(max(dof, 1) / (1 - rc ** 2))
    p = 2 * stats.t.sf(np.abs(t), max(dof, 1))
    np.fill_diagonal(p, 1.0)
    return r, p


@dataclass
class Network:
    organs: list[str]
    method: str
    weights: np.ndarray
    pvalues: np.ndarray
    qvalues: np.ndarray
    stability: np.ndarray
    alpha: float

    def selected(self) -> np.ndarray:
        if self.method == "glasso":
            return np.abs(self.weights) > 1e-8
        return self.qvalues < self.alpha

    def edges(self):
        import pandas as pd

        rows = []
        sel = self.selected()
        for i in range(len(self.organs)):
            for j in range(i + 1, len(self.organs)):
                rows.append({"organ_a": self.organs[i], "organ_b": self.organs[j], "weight": float(self.weights[i, j]),
                             "p_value": float(self.pvalues[i, j]), "q_value": float(self.qvalues[i, j]),
                             "stability": float(self.stability[i, j]), "selected": bool(sel[i, j])})
        return pd.DataFrame(rows)


def _upper_q(p: np.ndarray) -> np.ndarray:
    k = p.shape[0]
    iu = np.triu_indices(k, 1)
    q = np.full((k, k), np.nan)
    if np.isnan(p[iu]).all():
        return q
    q[iu] = bh_fdr(p[iu])
    q.T[iu] = q[iu]
    return q


def _harmonise(x: np.ndarray, batch: np.ndarray | None) -> np.ndarray:
    """ComBat (location/scale, empirical Bayes) of the log values by batch; unchanged without a batch."""
    if batch is None or len(np.unique(batch)) < 2:
        return x
    import pandas as pd

    from ..stats.combat import ComBat

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame.insert(0, "batch", batch)
    return np.asarray(ComBat(batch_col="batch").fit_transform(frame), float)


def batch_of(table, wide, batch_col: str, patient_col: str = "patient_id") -> np.ndarray:
    """Each patient's batch (one value per patient of ``wide``; an error when a patient has several)."""
    if batch_col not in table.columns:
        raise InputError(None, f"the organ table has no batch column {batch_col!r}")
    per = table.groupby(patient_col)[batch_col].nunique()
    if (per > 1).any():
        raise InputError(None, f"patient(s) {list(per[per > 1].index[:3])} have more than one {batch_col!r} value")
    return table.groupby(patient_col)[batch_col].first().reindex(wide.index).to_numpy()


def build_network(wide, method: str = "partial", n_boot: int = 100, alpha: float = 0.05, seed: int = 0,
                  batch: np.ndarray | None = None) -> Network:
    """The network of a patients x organs DataFrame with bootstrap edge stability (optionally ComBat by ``batch``)."""
    raw = np.log(np.clip(wide.to_numpy(float), 1e-6, None))
    x = _harmonise(raw, batch)
    w, p = edge_weights(x, method)
    q = _upper_q(p)
    rng = np.random.default_rng(seed)
    counts = np.zeros_like(w)
    for _ in range(n_boot):
        pick = rng.integers(0, len(x), len(x))
        xb = _harmonise(raw[pick], None if batch is None else batch[pick])
        wb, pb = edge_weights(xb, method)
        counts += (np.abs(wb) > 1e-8) if method == "glasso" else (_upper_q(pb) < alpha)
    stability = counts / max(n_boot, 1)
    return Network([str(c) for c in wide.columns], method, w, p, q, stability, alpha)


def node_scores(wide):
    """Per-patient z-scores of each organ's value (columns ``node_<organ>``), inputs for the outcome models."""
    z = (wide - wide.mean()) / wide.std(ddof=1)
    return z.add_prefix("node_").reset_index()


def edge_recovery_auc(net: Network, truth: np.ndarray, score: str = "weight") -> float:
    """ROC AUC of |weight| (or stability) for telling the true edges from the others."""
    from sklearn.metrics import roc_auc_score

    iu = np.triu_indices(len(net.organs), 1)
    s = np.abs(net.weights[iu]) if score == "weight" else net.stability[iu]
    return float(roc_auc_score(np.asarray(truth, bool)[iu], s))


def write_graphml(net: Network, wide, path) -> None:
    import networkx as nx

    g = nx.Graph()
    sel = net.selected()
    for i, organ in enumerate(net.organs):
        g.add_node(organ, mean_value=float(wide[organ].mean()), degree_selected=int(sel[i].sum()))
    for r in net.edges().itertuples():
        if r.selected:
            g.add_edge(r.organ_a, r.organ_b, weight=r.weight, q_value=float(np.nan_to_num(r.q_value, nan=-1.0)),
                       stability=r.stability)
    nx.write_graphml(g, str(path))


def plot_network(net: Network, path) -> None:
    """A circular layout: selected edges, width by |weight|, red positive / blue negative."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(net.organs)
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
    xy = np.c_[np.cos(ang), np.sin(ang)]
    fig, ax = plt.subplots(figsize=(6, 6))
    sel = net.selected()
    for i in range(k):
        for j in range(i + 1, k):
            if sel[i, j]:
                ax.plot(*xy[[i, j]].T, color="tab:red" if net.weights[i, j] > 0 else "tab:blue",
                        lw=0.5 + 6 * abs(net.weights[i, j]), alpha=0.3 + 0.7 * net.stability[i, j])
    ax.scatter(*xy.T, s=300, color="white", edgecolor="black", zorder=3)
    for (x, y), name in zip(xy, net.organs):
        ax.text(1.15 * x, 1.15 * y, name, ha="center", va="center", fontsize=8)
    ax.set_title(f"metabolic network ({net.method}; width |weight|, opacity bootstrap stability)")
    ax.set_axis_off()
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
