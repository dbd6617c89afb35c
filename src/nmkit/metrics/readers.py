"""Reader variability: is a model inside the spread of expert readers?

Given the masks of several readers (and of a model) for the same cases, this module measures every
reader-vs-reader pair and the model against each reader (Dice, HD95, ASSD, NSD on real spacing, via
``nmkit.metrics.surface``), and gives a verdict:

* per case: the model's mean Dice against the readers is >= the *lowest* reader-vs-reader Dice of that case, and
  its mean HD95 is <= the *largest* reader-vs-reader HD95 (the model disagrees with experts no more than the two
  most different experts disagree with each other);
* overall: the model's mean Dice over cases and readers is >= the 5th percentile of all reader-vs-reader Dice
  values, and its mean HD95 <= their 95th percentile. The Williams index (mean model-reader Dice / mean
  reader-reader Dice, per case, averaged; Williams 1976, Chalana & Kim 1997) is reported with a bootstrap 95% CI
  over cases; a CI reaching 1 means the model agrees with the readers as well as they agree with each other.

``consensus`` builds a reference from the readers (STAPLE via SimpleITK, or strict majority vote) and
``plot_agreement`` draws the reader-reader vs model-reader distributions (box + points) to a PNG.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import GeometryError, InputError
from .overlap import dice
from .surface import surface_distances


def _array_and_spacing(item: Any, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    from ..io.image import Image

    if isinstance(item, Image):
        arr = item.binary() if hasattr(item, "binary") else item.array != 0
        return np.asarray(arr, bool), tuple(item.spacing)
    if spacing is None:
        raise GeometryError("reader masks given as arrays need spacing=(x, y[, z]) mm (or pass nmkit Mask objects)")
    return np.asarray(item) != 0, tuple(float(s) for s in spacing)


def _pair_row(case: str, kind: str, a_name: str, b_name: str, a: np.ndarray, b: np.ndarray, spacing: Sequence[float],
              tolerance_mm: float, method: str) -> dict[str, Any]:
    d = surface_distances(a, b, spacing, method=method)
    return {"case": case, "kind": kind, "a": a_name, "b": b_name, "dice": dice(a, b), "hd95": d.hd_percentile(95),
            "assd": d.assd(), "nsd": d.nsd(tolerance_mm)}


@dataclass
class ReaderStudy:
    """Pairwise agreement table, per-case and overall verdicts."""

    pairs: Any  # pandas.DataFrame: case, kind ("reader-reader" | "model-reader"), a, b, dice, hd95, assd, nsd
    per_case: Any  # pandas.DataFrame: one row per case with the case verdict
    overall: dict[str, Any] = field(default_factory=dict)
    per_reader: Any = None  # pandas.DataFrame: model vs each reader, and each reader vs the other readers

    @property
    def model_inside(self) -> bool:
        return bool(self.overall.get("model_inside", False))


def reader_study(readers: Mapping[str, Sequence[Any]], model: Sequence[Any] | None = None, spacing: Sequence[float] | None = None,
                 case_ids: Sequence[str] | None = None, tolerance_mm: float = 2.0, method: str = "surface-distance",
                 n_bootstrap: int = 2000, seed: int = 0) -> ReaderStudy:
    """Compare readers with each other and with a model (see module doc).

    ``readers``: ``{reader_name: [mask of case 1, mask of case 2, ...]}`` (Masks, or boolean arrays with ``spacing``
    in (x, y[, z]) mm); ``model``: the model's masks for the same cases, or None for readers only.
    """
    import pandas as pd

    names = list(readers)
    if len(names) < 2:
        raise InputError(None, f"reader variability needs at least 2 readers, got {len(names)}")
    n_cases = {len(v) for v in readers.values()} | ({len(model)} if model is not None else set())
    if len(n_cases) != 1:
        raise InputError(None, f"every reader (and the model) needs a mask for each case; got case counts {sorted(n_cases)}")
    n = n_cases.pop()
    case_ids = [str(c) for c in (case_ids or [f"case_{i + 1}" for i in range(n)])]
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(case_ids):
        masks = {}
        sp_case = None
        for r in names:
            masks[r], sp = _array_and_spacing(readers[r][i], spacing)
            if sp_case is not None and not np.allclose(sp, sp_case):
                raise GeometryError(f"{case}: readers' masks have different spacings {sp_case} and {sp}")
            sp_case = sp
            if masks[r].shape != masks[names[0]].shape:
                raise GeometryError(f"{case}: reader {r} mask shape {masks[r].shape} differs from {masks[names[0]].shape}")
        for a, b in itertools.combinations(names, 2):
            rows.append(_pair_row(case, "reader-reader", a, b, masks[a], masks[b], sp_case, tolerance_mm, method))
        if model is not None:
            m, sp = _array_and_spacing(model[i], spacing)
            if m.shape != masks[names[0]].shape or not np.allclose(sp, sp_case):
                raise GeometryError(f"{case}: model mask grid {m.shape}/{sp} differs from the readers' {masks[names[0]].shape}/{sp_case}")
            for r in names:
                rows.append(_pair_row(case, "model-reader", "model", r, m, masks[r], sp_case, tolerance_mm, method))
    pairs = pd.DataFrame(rows)
    rr = pairs[pairs.kind == "reader-reader"]
    mr = pairs[pairs.kind == "model-reader"]
    case_rows = []
    for case in case_ids:
        rrc = rr[rr.case == case]
        row: dict[str, Any] = {"case": case, "reader_dice_min": rrc.dice.min(), "reader_dice_mean": rrc.dice.mean(),
                               "reader_hd95_max": rrc.hd95.max(), "reader_hd95_mean": rrc.hd95.mean()}
        if model is not None:
            mrc = mr[mr.case == case]
            row.update(model_dice_mean=mrc.dice.mean(), model_hd95_mean=mrc.hd95.mean(),
                       williams_index_dice=mrc.dice.mean() / rrc.dice.mean() if rrc.dice.mean() > 0 else np.nan)
            row["model_inside"] = bool(row["model_dice_mean"] >= row["reader_dice_min"] and row["model_hd95_mean"] <= row["reader_hd95_max"])
        case_rows.append(row)
    per_case = pd.DataFrame(case_rows)
    overall: dict[str, Any] = {
        "n_cases": n, "n_readers": len(names), "method": method, "tolerance_mm": tolerance_mm,
        "reader_dice_mean": float(rr.dice.mean()), "reader_dice_p5": float(np.percentile(rr.dice, 5)),
        "reader_hd95_mean": float(_finite(rr.hd95).mean()), "reader_hd95_p95": float(np.percentile(_finite(rr.hd95), 95)) if np.isfinite(rr.hd95).any() else float("inf"),
    }
    per_reader = None
    if model is not None:
        overall.update(model_dice_mean=float(mr.dice.mean()), model_hd95_mean=float(mr.hd95.mean()))
        wi = per_case["williams_index_dice"].to_numpy(float)
        rng = np.random.default_rng(seed)
        boot = np.array([np.nanmean(wi[rng.integers(0, n, n)]) for _ in range(n_bootstrap)])
        overall.update(williams_index_dice=float(np.nanmean(wi)), williams_index_ci95=(float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))),
                       cases_inside_share=float(per_case["model_inside"].mean()))
        overall["model_inside"] = bool(overall["model_dice_mean"] >= overall["reader_dice_p5"] and overall["model_hd95_mean"] <= overall["reader_hd95_p95"])
        reader_rows = []
        for r in names:
            others = rr[(rr.a == r) | (rr.b == r)]
            mine = mr[mr.b == r]
            reader_rows.append({"reader": r, "model_vs_reader_dice": mine.dice.mean(), "reader_vs_others_dice": others.dice.mean(),
                                "model_vs_reader_hd95": mine.hd95.mean(), "reader_vs_others_hd95": others.hd95.mean()})
        per_reader = pd.DataFrame(reader_rows)
    return ReaderStudy(pairs=pairs, per_case=per_case, overall=overall, per_reader=per_reader)


def _finite(series):
    return series[np.isfinite(series)]


def consensus(masks: Sequence[Any], method: str = "staple", threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A consensus mask of several readers: ``(mask, probability)``.

    ``"staple"``: SimpleITK's STAPLE (Warfield 2004) foreground probability, thresholded at ``threshold``;
    ``"majority"``: share of readers marking the voxel, mask where *more than half* of them do (ties are
    background, so two disagreeing readers give their intersection).
    """
    arrays = [np.asarray(m.binary() if hasattr(m, "binary") else m) != 0 for m in masks]
    if len(arrays) < 2:
        raise InputError(None, "a consensus needs at least 2 masks")
    if len({a.shape for a in arrays}) != 1:
        raise GeometryError(f"consensus masks have different shapes {[a.shape for a in arrays]}")
    if method == "majority":
        share = np.mean(arrays, axis=0)
        return np.sum(arrays, axis=0) * 2 > len(arrays), share
    if method != "staple":
        raise ValueError(f"method must be 'staple' or 'majority', got {method!r}")
    import SimpleITK as sitk

    images = [sitk.GetImageFromArray(a.astype(np.uint8)) for a in arrays]
    # positional: confidence weight 1, foreground value 1, at most 200 EM iterations
    prob = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0, 1.0, 200))
    return prob >= threshold, prob


def plot_agreement(study: ReaderStudy, path: str | Path, title: str = "Model vs reader agreement") -> Path:
    """Box + strip plots of reader-reader and model-reader Dice and HD95, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in ("reader-reader", "model-reader") if (study.pairs.kind == k).any()]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    rng = np.random.default_rng(0)
    for ax, metric, label in zip(axes, ("dice", "hd95"), ("Dice", "HD95 (mm)")):
        data = [_finite(study.pairs.loc[study.pairs.kind == k, metric]).to_numpy() for k in kinds]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(kinds) + 1), kinds)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.7, color="C1" if kinds[i - 1] == "model-reader" else "C0")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    verdict = study.overall.get("model_inside")
    if verdict is not None:
        wi = study.overall.get("williams_index_dice", float("nan"))
        title = f"{title}\nmodel inside readers' spread: {'yes' if verdict else 'no'} (Williams index {wi:.3f})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
