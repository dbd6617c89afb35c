"""Volume-overlap metrics between a predicted and a true binary mask: Dice, IoU, volumes, sensitivity, precision.

Empty-mask conventions (explicit, so tables stay comparable):

* both masks empty -> ``dice = iou = 1`` (agreement that the structure is absent), volume differences 0,
  ``sensitivity`` and ``precision`` NaN (no true / no predicted voxels to take a share of);
* truth empty, prediction not -> ``dice = iou = 0``, ``sensitivity`` NaN, ``precision`` 0,
  ``relative_volume_difference`` NaN (division by a zero true volume);
* prediction empty, truth not -> ``dice = iou = 0``, ``sensitivity`` 0, ``precision`` NaN,
  ``relative_volume_difference`` -1.

Volumes are in millilitres (3D) computed from the voxel spacing in mm; for 2D masks "volume" is an area in
cm^2 (mm^2 / 100, the same scaling).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import GeometryError


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred)
    b = np.asarray(truth)
    a = a if a.dtype == bool else a != 0
    b = b if b.dtype == bool else b != 0
    if a.shape != b.shape:
        raise GeometryError(f"prediction {a.shape} and truth {b.shape} have different shapes")
    return a, b


def confusion_counts(pred: Any, truth: Any) -> dict[str, int]:
    """Voxel counts: true positives, false positives, false negatives, and the two mask sizes."""
    a, b = _pair(pred, truth)
    tp = int(np.count_nonzero(a & b))
    n_pred, n_truth = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    return {"tp": tp, "fp": n_pred - tp, "fn": n_truth - tp, "n_pred": n_pred, "n_truth": n_truth}


def dice(pred: Any, truth: Any) -> float:
    """Sørensen-Dice coefficient 2|A∩B|/(|A|+|B|); 1 when both are empty."""
    c = confusion_counts(pred, truth)
    total = c["n_pred"] + c["n_truth"]
    return 1.0 if total == 0 else 2.0 * c["tp"] / total


def iou(pred: Any, truth: Any) -> float:
    """Jaccard index |A∩B|/|A∪B|; 1 when both are empty."""
    c = confusion_counts(pred, truth)
    union = c["n_pred"] + c["n_truth"] - c["tp"]
    return 1.0 if union == 0 else c["tp"] / union


jaccard = iou


def dice_per_class(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> float:
    """Mean Dice over labels (both empty counts as 1)."""
    return float(np.mean([dice(pred == value, truth == value) for value in labels]))


def overlap_metrics(pred: Any, truth: Any, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, IoU, sensitivity, precision and sizes with their absolute/relative difference: volumes in ml for 3D
    masks (``volume_*_ml``), areas in mm^2 for 2D (planar, radiograph) masks (``area_*_mm2``).

    ``spacing`` is ``(x, y[, z])`` mm (any order works: only the voxel size is used).
    """
    c = confusion_counts(pred, truth)
    planar = len(spacing) == 2
    voxel = float(np.prod([float(s) for s in spacing])) / (1.0 if planar else 1000.0)
    kind, unit = ("area", "mm2") if planar else ("volume", "ml")
    total = c["n_pred"] + c["n_truth"]
    union = total - c["tp"]
    v_pred, v_truth = c["n_pred"] * voxel, c["n_truth"] * voxel
    if c["n_truth"]:
        rel = (v_pred - v_truth) / v_truth
    else:
        rel = 0.0 if c["n_pred"] == 0 else float("nan")
    return {
        "dice": 1.0 if total == 0 else 2.0 * c["tp"] / total,
        "iou": 1.0 if union == 0 else c["tp"] / union,
        "sensitivity": c["tp"] / c["n_truth"] if c["n_truth"] else float("nan"),
        "precision": c["tp"] / c["n_pred"] if c["n_pred"] else float("nan"),
        f"{kind}_pred_{unit}": v_pred,
        f"{kind}_truth_{unit}": v_truth,
        f"{kind}_difference_{unit}": v_pred - v_truth,
        f"abs_{kind}_difference_{unit}": abs(v_pred - v_truth),
        f"relative_{kind}_difference": rel,
        "tp_voxels": c["tp"],
        "fp_voxels": c["fp"],
        "fn_voxels": c["fn"],
    }
