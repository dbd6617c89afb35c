"""IBSI texture feature formulas, evaluated on stacks of texture matrices at once.

Every function takes a stack of ``K`` matrices (one per slice, direction or merged combination) and returns
``{feature_name: array of K values}``; the caller averages or picks as the IBSI aggregation method demands.
Vectorising over the stack keeps the 2D (per-slice, per-direction) aggregations as fast as the 3D ones.

Definitions follow IBSI 1 (chapter 3, "Image features"); entropies use log2. Grey level ``i`` runs ``1..Ng``
where ``Ng`` is the number of grey levels of the discretisation (the matrix size), which is what the
normalised inverse difference features divide by.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["glcm_features", "runlike_features", "ngtdm_features", "glcm_table", "runlike_table", "ngtdm_table"]

GLCM_NAMES = ("joint_max", "joint_avg", "joint_var", "joint_entr", "diff_avg", "diff_var", "diff_entr", "sum_avg",
              "sum_var", "sum_entr", "energy", "contrast", "dissimilarity", "inv_diff", "inv_diff_norm",
              "inv_diff_mom", "inv_diff_mom_norm", "inv_var", "corr", "auto_corr", "clust_tend", "clust_shade",
              "clust_prom", "info_corr1", "info_corr2")


def _compiled(counts: np.ndarray):
    """The compiled formulas (``_ctexture``) when built and enabled and ``counts`` are integer counts, else None.

    They evaluate the same terms matrix by matrix, summed in index order rather than NumPy's pairwise order
    (results agree to ~1e-15 relative)."""
    if getattr(counts, "dtype", np.dtype(float)).kind not in "iu":
        return None
    from ._native import native

    return native("_ctexture")


def _xlog2x(p: np.ndarray) -> np.ndarray:
    """p * log2(p) with 0 log 0 = 0."""
    out = np.zeros_like(p)
    np.log2(p, out=out, where=p > 0)
    out *= p
    return out


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float = 0.0) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, fill, dtype=float)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _dot(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Contract the last axis with a vector without BLAS: for these tiny stacks a threaded BLAS call costs
    far more (and stalls on a busy machine) than a plain multiply-and-sum."""
    return (a * v).sum(-1)


@functools.lru_cache(maxsize=64)
def _grouping(ng: int, by_sum: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How to group the ``ng x ng`` cells of a flattened GLCM by ``|i - j|`` (or ``i + j``): cell order, start of
    each present group in that order, and which groups are present (read-only; depends on ``ng`` only)."""
    g = np.arange(1, ng + 1)
    key = (np.add.outer(g, g) if by_sum else np.abs(np.subtract.outer(g, g))).ravel()
    n_keys = 2 * ng + 1 if by_sum else ng
    order = np.argsort(key, kind="stable")
    starts = np.searchsorted(key[order], np.arange(n_keys))
    present = np.bincount(key, minlength=n_keys) > 0
    out = (order, starts[present], present)
    for a in out:
        a.flags.writeable = False
    return out


def _group_sum(flat: np.ndarray, ng: int, by_sum: bool) -> np.ndarray:
    """``out[k, c] = sum(flat[k, cells with |i - j| == c])`` (or ``i + j == c``) for a stack ``(K, Ng * Ng)``,
    via one sorted ``reduceat``."""
    order, starts, present = _grouping(ng, by_sum)
    out = np.zeros((flat.shape[0], present.size))
    out[:, present] = np.add.reduceat(flat[:, order], starts, axis=1)
    return out


def glcm_table(counts: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """``glcm_features`` as (names, values ``(25, K)``)."""
    mod = _compiled(counts)
    if mod is not None:
        c = np.ascontiguousarray(counts, dtype=np.int64)
        out = np.empty((len(GLCM_NAMES), c.shape[0]))
        mod.glcm_features(c, c.shape[0], c.shape[1], out)
        return GLCM_NAMES, out
    feats = glcm_features(counts, compiled=False)
    return tuple(feats), np.stack(list(feats.values()))


def glcm_features(counts: np.ndarray, compiled: bool = True) -> dict[str, np.ndarray]:
    """The 25 IBSI GLCM features of a stack of symmetric co-occurrence matrices ``(K, Ng, Ng)``.

    Matrices must be non-empty (the caller drops empty ones before averaging). Symmetry is used: the marginal
    entropies HXY1 and HXY2 of the information correlations both equal 2 HX, and the cluster features depend
    on ``i + j`` only, so they are evaluated on the sum distribution.
    """
    if compiled and _compiled(counts) is not None:
        return dict(zip(*glcm_table(counts)))
    counts = np.asarray(counts, dtype=float)
    k, ng, _ = counts.shape
    flat = counts.reshape(k, ng * ng)
    flat = flat / flat.sum(1, keepdims=True)
    g = np.arange(1, ng + 1, dtype=float)
    gi = np.repeat(g, ng)
    gj = np.tile(g, ng)
    pi = flat.reshape(k, ng, ng).sum(2)  # row marginal == column marginal (symmetric)
    mu = _dot(pi, g)
    var = np.maximum(_dot(pi, g**2) - mu**2, 0.0)

    pd = _group_sum(flat, ng, by_sum=False)  # p_{i-j}, k = 0..Ng-1
    ps = _group_sum(flat, ng, by_sum=True)  # p_{i+j}, k = 0..2Ng (0, 1 empty)
    kd = np.arange(ng, dtype=float)
    ks = np.arange(2 * ng + 1, dtype=float)

    diff_avg = _dot(pd, kd)
    diff_var = _dot(pd, (kd[None, :] - diff_avg[:, None]) ** 2)
    sum_avg = _dot(ps, ks)
    sum_var = _dot(ps, (ks[None, :] - sum_avg[:, None]) ** 2)
    dev = ks[None, :] - 2.0 * mu[:, None]  # i + j - 2 mu
    dev2 = dev * dev

    hxy = -_xlog2x(flat).sum(1)
    hx = -_xlog2x(pi).sum(1)
    auto_corr = _dot(flat, gi * gj)
    inv_var_w = np.zeros(ng)
    inv_var_w[1:] = 1.0 / kd[1:] ** 2

    return {
        "joint_max": flat.max(1),
        "joint_avg": mu,
        "joint_var": var,
        "joint_entr": hxy,
        "diff_avg": diff_avg,
        "diff_var": diff_var,
        "diff_entr": -_xlog2x(pd).sum(1),
        "sum_avg": sum_avg,
        "sum_var": sum_var,
        "sum_entr": -_xlog2x(ps).sum(1),
        "energy": (flat * flat).sum(1),
        "contrast": _dot(pd, kd**2),
        "dissimilarity": diff_avg,
        "inv_diff": _dot(pd, 1.0 / (1.0 + kd)),
        "inv_diff_norm": _dot(pd, 1.0 / (1.0 + kd / ng)),
        "inv_diff_mom": _dot(pd, 1.0 / (1.0 + kd**2)),
        "inv_diff_mom_norm": _dot(pd, 1.0 / (1.0 + (kd / ng) ** 2)),
        "inv_var": _dot(pd, inv_var_w),
        # a single grey level has no spread: correlation is undefined, reported as 0 (documented choice)
        "corr": _safe_div(auto_corr - mu**2, var),
        "auto_corr": auto_corr,
        "clust_tend": (ps * dev2).sum(1),
        "clust_shade": (ps * dev2 * dev).sum(1),
        "clust_prom": (ps * dev2 * dev2).sum(1),
        # HXY1 = HXY2 = 2 HX for a symmetric joint distribution
        "info_corr1": _safe_div(hxy - 2.0 * hx, hx),
        "info_corr2": np.sqrt(np.maximum(0.0, 1.0 - np.exp(-2.0 * (2.0 * hx - hxy)))),
    }


# names of the 16 shared run/zone/dependence features in IBSI order, per family prefix
RUNLIKE_NAMES: dict[str, tuple[str, ...]] = {
    "rlm": ("sre", "lre", "lgre", "hgre", "srlge", "srhge", "lrlge", "lrhge",
            "glnu", "glnu_norm", "rlnu", "rlnu_norm", "r_perc", "gl_var", "rl_var", "rl_entr"),
    "szm": ("sze", "lze", "lgze", "hgze", "szlge", "szhge", "lzlge", "lzhge",
            "glnu", "glnu_norm", "zsnu", "zsnu_norm", "z_perc", "gl_var", "zs_var", "zs_entr"),
    "dzm": ("sde", "lde", "lgze", "hgze", "sdlge", "sdhge", "ldlge", "ldhge",
            "glnu", "glnu_norm", "zdnu", "zdnu_norm", "z_perc", "gl_var", "zd_var", "zd_entr"),
    "ngl": ("lde", "hde", "lgce", "hgce", "ldlge", "ldhge", "hdlge", "hdhge",
            "glnu", "glnu_norm", "dcnu", "dcnu_norm", "dc_perc", "gl_var", "dc_var", "dc_entr"),
}


def runlike_table(counts: np.ndarray, n_voxels: np.ndarray, family: str, j_values: np.ndarray | None = None
                  ) -> tuple[tuple[str, ...], np.ndarray]:
    """``runlike_features`` as (names, values ``(16 or 17, K)``)."""
    mod = _compiled(counts)
    if mod is not None:
        c = np.ascontiguousarray(counts, dtype=np.int64)
        k, ng, nj = c.shape
        jv = np.arange(1.0, nj + 1) if j_values is None else np.asarray(j_values, dtype=float).reshape(nj)
        out = np.empty((17, k))
        mod.runlike_features(c, k, ng, nj, np.asarray(n_voxels, dtype=float).reshape(k), jv, out)
        if family == "ngl":
            return RUNLIKE_NAMES[family] + ("dc_energy",), out
        return RUNLIKE_NAMES[family], out[:16]
    feats = runlike_features(counts, n_voxels, family, j_values, compiled=False)
    return tuple(feats), np.stack(list(feats.values()))


def runlike_features(counts: np.ndarray, n_voxels: np.ndarray, family: str,
                     j_values: np.ndarray | None = None, compiled: bool = True) -> dict[str, np.ndarray]:
    """The 16 GLRLM-style features shared by GLRLM, GLSZM, GLDZM and NGLDM (plus NGLDM's energy).

    ``counts``: ``(K, Ng, Nj)`` with column ``c`` holding run length / zone size / distance / dependence
    ``j_values[c]`` (default ``c + 1``). ``n_voxels``: ``(K,)`` voxel counts N_v of the (merged) matrices.
    """
    counts = np.asarray(counts)
    if compiled and _compiled(counts) is not None:
        return dict(zip(*runlike_table(counts, n_voxels, family, j_values)))
    if j_values is None:
        j_values = np.arange(1, counts.shape[2] + 1)
    used = np.flatnonzero(counts.any(axis=(0, 1)))  # keep only occurring columns
    counts = counts[:, :, used].astype(float)
    k, ng, _ = counts.shape
    ns = counts.sum(axis=(1, 2))
    g = np.arange(1, ng + 1, dtype=float)
    i2 = g**2
    j = np.asarray(j_values, dtype=float)[used]
    j2 = j**2
    ri = counts.sum(2)  # per grey level
    rj = counts.sum(1)  # per run length / size / distance / dependence
    inv_i2 = 1.0 / i2
    inv_j2 = 1.0 / j2
    low_j = _dot(counts, inv_j2)  # (K, Ng)
    high_j = _dot(counts, j2)
    pi = ri / ns[:, None]
    pj = rj / ns[:, None]
    mu_i = _dot(pi, g)
    mu_j = _dot(pj, j)
    flat_p = counts.reshape(k, -1) / ns[:, None]
    values = (
        _dot(rj, inv_j2) / ns,
        _dot(rj, j2) / ns,
        _dot(ri, inv_i2) / ns,
        _dot(ri, i2) / ns,
        _dot(low_j, inv_i2) / ns,
        _dot(low_j, i2) / ns,
        _dot(high_j, inv_i2) / ns,
        _dot(high_j, i2) / ns,
        (ri**2).sum(1) / ns,
        (ri**2).sum(1) / ns**2,
        (rj**2).sum(1) / ns,
        (rj**2).sum(1) / ns**2,
        ns / np.asarray(n_voxels, dtype=float),
        (pi * (g[None, :] - mu_i[:, None]) ** 2).sum(1),
        (pj * (j[None, :] - mu_j[:, None]) ** 2).sum(1),
        -_xlog2x(flat_p).sum(1),
    )
    out = dict(zip(RUNLIKE_NAMES[family], values))
    if family == "ngl":
        out["dc_energy"] = (flat_p**2).sum(1)
    return out


NGTDM_NAMES = ("coarseness", "contrast", "busyness", "complexity", "strength")


def ngtdm_table(s: np.ndarray, n: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """``ngtdm_features`` as (names, values ``(5, K)``)."""
    mod = _compiled(n)
    if mod is not None:
        sv = np.ascontiguousarray(s, dtype=float)
        nv = np.ascontiguousarray(n, dtype=np.int64)
        out = np.empty((len(NGTDM_NAMES), sv.shape[0]))
        mod.ngtdm_features(sv, nv, sv.shape[0], sv.shape[1], out)
        return NGTDM_NAMES, out
    feats = ngtdm_features(s, n, compiled=False)
    return tuple(feats), np.stack(list(feats.values()))


def ngtdm_features(s: np.ndarray, n: np.ndarray, compiled: bool = True) -> dict[str, np.ndarray]:
    """The 5 IBSI NGTDM features of a stack of NGTDMs.

    ``s``: ``(K, Ng)`` summed absolute grey tone differences; ``n``: ``(K, Ng)`` voxel counts with a valid
    neighbourhood. Degenerate cases follow IBSI: coarseness capped at 1e6, busyness 0 when a single grey level
    is present, strength 0 when all differences are 0; contrast is 0 for a single grey level.
    """
    if compiled and _compiled(n) is not None:
        return dict(zip(*ngtdm_table(s, n)))
    s = np.asarray(s, dtype=float)
    n = np.asarray(n, dtype=float)
    k, ng = s.shape
    nvc = n.sum(1)
    p = n / nvc[:, None]
    present = p > 0
    ngp = present.sum(1)
    g = np.arange(1, ng + 1, dtype=float)
    ps = (p * s).sum(1)
    s_sum = s.sum(1)

    pair = present[:, :, None] & present[:, None, :]
    dg = g[:, None] - g[None, :]
    coarseness = np.where(ps > 0, 1.0 / np.where(ps > 0, ps, 1.0), 1e6)
    contrast = _safe_div((p[:, :, None] * p[:, None, :] * dg**2).sum((1, 2)), ngp * (ngp - 1)) * (s_sum / nvc)
    ip = p * g
    busy_den = (np.abs(ip[:, :, None] - ip[:, None, :]) * pair).sum((1, 2))
    busyness = np.where(ngp > 1, _safe_div(ps, busy_den), 0.0)
    psum = p[:, :, None] + p[:, None, :]
    pss = p * s
    cplx_terms = _safe_div(np.abs(dg) * (pss[:, :, None] + pss[:, None, :]), psum) * pair
    complexity = cplx_terms.sum((1, 2)) / nvc
    strength = _safe_div((psum * dg**2 * pair).sum((1, 2)), s_sum)
    return dict(zip(NGTDM_NAMES, (coarseness, contrast, busyness, complexity, strength)))
