"""Lesion-wise metrics (autoPET style): detection precision/recall/F1, false-positive and false-negative volume.

Lesions are the connected components of the truth and of the prediction. Connectivity is the number of
neighbours: 6/18/26 in 3D, 4/8 in 2D (default 26 / 8: any touching voxels belong to one lesion). The autoPET
challenge evaluation uses 18-connectivity; pass ``connectivity=18`` to reproduce its numbers exactly.

Matching: a predicted component and a true component *match* when they overlap and their overlap score
(``match="overlap"``: any shared voxel; ``match="dice"`` or ``"iou"``: the pair's Dice/IoU >= ``threshold``)
passes. A true lesion is *detected* when at least one predicted component matches it; a predicted component is a
*true positive* when it matches at least one true lesion.

* detection recall = detected true lesions / true lesions; precision = TP predicted components / predicted
  components; F1 = their harmonic mean. Conventions: no true lesions -> recall NaN; no predicted lesions ->
  precision NaN; both empty -> precision = recall = F1 = 1 (nothing to find, nothing found); F1 is 0 when one of
  precision/recall is 0 or undefined while the other side has lesions.
* false-positive volume (ml) = volume of predicted components that share **no voxel** with the truth;
  false-negative volume (ml) = volume of true components that share no voxel with the prediction — exactly the
  autoPET definitions (they do not depend on ``match``).
* ``missed_share`` = share of true lesions not detected (1 - recall).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import GeometryError

MATCH_RULES = ("overlap", "dice", "iou")


def connectivity_structure(ndim: int, connectivity: int) -> np.ndarray:
    """Structuring element for ``connectivity`` neighbours (6/18/26 in 3D, 4/8 in 2D)."""
    from scipy import ndimage

    allowed = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}
    if ndim not in allowed or connectivity not in allowed[ndim]:
        raise ValueError(f"connectivity for {ndim}D must be one of {sorted(allowed.get(ndim, {}))}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, allowed[ndim][connectivity])


def label_components(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: ``(labels, count)`` with labels 1..count."""
    from scipy import ndimage

    mask = np.asarray(mask) != 0
    if connectivity is None:
        connectivity = 26 if mask.ndim == 3 else 8
    labels, n = ndimage.label(mask, structure=connectivity_structure(mask.ndim, connectivity))
    return labels, int(n)


@dataclass
class LesionResult:
    """Lesion-wise summary and per-lesion tables (lists of dicts, easy to turn into DataFrames)."""

    summary: dict[str, float]
    truth_lesions: list[dict[str, Any]] = field(default_factory=list)
    pred_lesions: list[dict[str, Any]] = field(default_factory=list)


def lesion_metrics(pred: Any, truth: Any, spacing: Sequence[float], connectivity: int | None = None,
                   match: str = "overlap", threshold: float = 0.1) -> LesionResult:
    """Lesion-wise detection metrics and FP/FN volumes between two binary masks (see module doc).

    ``spacing``: ``(x, y[, z])`` mm; only the voxel volume is used.
    """
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {MATCH_RULES}, got {match!r}")
    a = np.asarray(pred) != 0
    b = np.asarray(truth) != 0
    if a.shape != b.shape:
        raise GeometryError(f"prediction {a.shape} and truth {b.shape} have different shapes")
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    lab_p, n_p = label_components(a, connectivity)
    lab_t, n_t = label_components(b, connectivity)
    size_p = np.bincount(lab_p.ravel(), minlength=n_p + 1)
    size_t = np.bincount(lab_t.ravel(), minlength=n_t + 1)
    # overlap matrix (pred component x truth component), from the voxels where both are labelled
    both = (lab_p > 0) & (lab_t > 0)
    pair = lab_p[both].astype(np.int64) * (n_t + 1) + lab_t[both]
    inter = np.bincount(pair, minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)[1:, 1:].astype(float)
    sp, st = size_p[1:].astype(float)[:, None], size_t[1:].astype(float)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        pair_dice = np.where(inter > 0, 2 * inter / (sp + st), 0.0)
        pair_iou = np.where(inter > 0, inter / (sp + st - inter), 0.0)
    if match == "overlap":
        matched = inter > 0
    elif match == "dice":
        matched = (inter > 0) & (pair_dice >= threshold)
    else:
        matched = (inter > 0) & (pair_iou >= threshold)
    touches_truth = inter.sum(axis=1) > 0 if n_p else np.zeros(0, bool)
    touches_pred = inter.sum(axis=0) > 0 if n_t else np.zeros(0, bool)
    pred_tp = matched.any(axis=1) if n_t else np.zeros(n_p, bool)
    truth_found = matched.any(axis=0) if n_p else np.zeros(n_t, bool)

    recall = float(truth_found.mean()) if n_t else float("nan")
    precision = float(pred_tp.mean()) if n_p else float("nan")
    if n_t == 0 and n_p == 0:
        precision = recall = f1 = 1.0
    elif np.isnan(precision) or np.isnan(recall) or precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    fp_vox = int(size_p[1:][~touches_truth].sum()) if n_p else 0
    fn_vox = int(size_t[1:][~touches_pred].sum()) if n_t else 0
    summary = {
        "n_truth_lesions": n_t,
        "n_pred_lesions": n_p,
        "tp_lesions": int(truth_found.sum()),
        "fn_lesions": int(n_t - truth_found.sum()),
        "fp_lesions": int(n_p - pred_tp.sum()),
        "lesion_recall": recall,
        "lesion_precision": precision,
        "lesion_f1": f1,
        "missed_share": 1.0 - recall if n_t else float("nan"),
        "fp_volume_ml": fp_vox * voxel_ml,
        "fn_volume_ml": fn_vox * voxel_ml,
    }
    truth_rows = []
    for j in range(n_t):
        best = int(np.argmax(pair_dice[:, j])) if n_p else -1
        truth_rows.append({
            "lesion": j + 1, "volume_ml": float(size_t[j + 1] * voxel_ml), "detected": bool(truth_found[j]),
            "best_dice": float(pair_dice[best, j]) if n_p else 0.0,
            "best_iou": float(pair_iou[best, j]) if n_p else 0.0,
            "matched_pred": [int(i + 1) for i in np.flatnonzero(matched[:, j])] if n_p else [],
        })
    pred_rows = []
    for i in range(n_p):
        best = int(np.argmax(pair_dice[i, :])) if n_t else -1
        pred_rows.append({
            "lesion": i + 1, "volume_ml": float(size_p[i + 1] * voxel_ml), "true_positive": bool(pred_tp[i]),
            "best_dice": float(pair_dice[i, best]) if n_t else 0.0,
            "matched_truth": [int(j + 1) for j in np.flatnonzero(matched[i, :])] if n_t else [],
        })
    return LesionResult(summary=summary, truth_lesions=truth_rows, pred_lesions=pred_rows)
