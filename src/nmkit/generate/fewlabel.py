"""Few-label segmentation of 2D radiographs, cross-validated by patient: data, one training run, metrics, statistics.

Why: the issue-18 study asks whether a diffusion model pre-trained on unlabelled radiographs helps when only 2-20
images are labelled. The answer needs (1) patient-level folds (two images of one patient never sit on both sides),
(2) the same network and recipe with and without the diffusion encoder (``pretrain.init_from_diffusion``), and
(3) per-structure Dice and HD95 with confidence intervals and a paired comparison over folds and seeds.

* ``load_pairs`` reads an image/label-map folder pair (``images/<stem>.png`` + ``masks/<stem>.png``, e.g.
  ``cxr_lungs``) with the patient of each image (``manifest.csv`` column ``patientid``), keeping the original label
  map for evaluation and an anti-aliased ``size`` x ``size`` copy of the image and label for training.
* ``patient_folds`` assigns whole patients to k folds (deterministic for a seed).
* ``train_one`` builds the ``diffusion-unet`` segmentation net (optionally initialised from a diffusion checkpoint)
  and fine-tunes it (``pretrain.fine_tune``; no flips: label 1 and 2 are the right and left lung).
* ``evaluate`` scores each test image per class: **Dice at the original resolution** (probabilities upsampled
  bilinearly, then argmax) and **HD95 in model-grid pixels** (1 px = 1/size of the image side; the PNGs carry no
  pixel spacing, so no mm; an empty prediction scores the grid diagonal, not infinity, so means stay finite).
* ``mean_ci`` (bootstrap percentile CI) and ``paired_difference`` (mean of per-unit differences with a bootstrap CI
  and the sign-flip permutation p-value) summarise runs.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

LUNG_LABELS = {1: "right_lung", 2: "left_lung"}


@dataclass
class LabelledImage:
    """One labelled radiograph: resized copies for training and the original label map for evaluation."""

    name: str
    patient: str
    image: np.ndarray  # (size, size) float32, raw grey values (anti-aliased resize)
    label: np.ndarray  # (size, size) int64 (nearest)
    label_full: np.ndarray  # original label map (uint8)


def _patients(folder: Path) -> dict[str, str]:
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        return {}
    with manifest.open(newline="") as fh:
        return {row["id"]: str(row.get("patientid") or row["id"]) for row in csv.DictReader(fh)}


def load_pairs(folder: str | Path, size: int = 128, limit: int | None = None) -> list[LabelledImage]:
    """``folder/images/*.png`` with ``folder/masks/<same name>``; patients from ``folder/manifest.csv`` (else one per image)."""
    from ..io.radiograph import read_radiograph
    from .audit import antialias
    from .data import resize

    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise InputError(folder, "expected images/ and masks/ sub-folders (label maps with the images' names)")
    patients = _patients(folder)
    out: list[LabelledImage] = []
    for path in sorted(images_dir.iterdir()):
        if limit is not None and len(out) >= limit:
            break
        mask_path = masks_dir / path.name
        if not mask_path.exists():
            continue
        image = np.asarray(read_radiograph(path).array, np.float32)
        label = np.asarray(read_radiograph(mask_path).array).astype(np.uint8)
        if label.shape != image.shape:
            raise InputError(mask_path, f"label map {label.shape} does not match its image {image.shape}")
        small = resize(antialias(image, size), size, 1).astype(np.float32)
        out.append(LabelledImage(path.stem, patients.get(path.stem, path.stem), small, resize(label.astype(np.int64), size, 0), label))
    if not out:
        raise InputError(folder, "no image/label-map pairs found")
    return out


def patient_folds(patients: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per item; every patient's items share one fold; folds balanced by item count."""
    unique = sorted(set(patients))
    if k < 2 or k > len(unique):
        raise ValueError(f"{k} folds need 2..{len(unique)} patients")
    order = np.random.default_rng(seed).permutation(len(unique))
    counts = {p: list(patients).count(p) for p in unique}
    load = np.zeros(k)
    fold_of: dict[str, int] = {}
    for i in sorted(order, key=lambda j: -counts[unique[j]]):  # largest patients first, then fill the lightest fold
        f = int(np.argmin(load))
        fold_of[unique[i]] = f
        load[f] += counts[unique[i]]
    return np.array([fold_of[p] for p in patients])


def fold_unit(items: Sequence[LabelledImage], folds: np.ndarray, fold: int, seed: int
              ) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """One (seed, patient fold) unit of the few-label studies: the fold's training pool in the unit's seeded order,
    and its test images. The first n of the pool are the unit's n labelled images (nested: the 5 include the 2), so
    every study that takes n images of a unit takes the same ones."""
    pool = [i for i, f in zip(items, folds) if f != fold]
    test = [i for i, f in zip(items, folds) if f == fold]
    order = np.random.default_rng((seed, fold)).permutation(len(pool))
    return [pool[j] for j in order], test


def append_run(path: str | Path, record: dict[str, Any]) -> None:
    """Add one finished run (a row) to the CSV at ``path``. When the run brings columns the table lacks (a metric
    added later), the table is rewritten with them, so earlier rows keep their values and the CSV stays rectangular."""
    import pandas as pd

    path = Path(path)
    row = pd.DataFrame([record])
    if path.exists():
        old = pd.read_csv(path)
        if set(row.columns) - set(old.columns):
            pd.concat([old, row], ignore_index=True).to_csv(path, index=False)
            return
        row = row.reindex(columns=old.columns)
    row.to_csv(path, mode="a", header=not path.exists(), index=False)


def build_net(channels: Sequence[int], n_classes: int, checkpoint: str | Path | None = None, seed: int = 1):
    """The ``diffusion-unet`` segmentation net; from a diffusion checkpoint's layout and encoder when one is given."""
    import torch

    from .pretrain import build_segnet, init_from_diffusion
    from ..segment.nets import DiffusionSegNet

    torch.manual_seed(seed)
    if checkpoint is None:
        return DiffusionSegNet(2, 1, n_classes, channels=tuple(channels))
    model = build_segnet(checkpoint, n_classes)
    init_from_diffusion(model, checkpoint)
    return model


def train_one(train: Sequence[LabelledImage], size: int, n_classes: int, iterations: int, seed: int, channels: Sequence[int] = (16, 32, 64, 64),
              checkpoint: str | Path | None = None, batch_size: int = 8, learning_rate: float = 1e-3,
              extra: Sequence[tuple[np.ndarray, np.ndarray]] = ()):
    """One segmentation model trained on ``train`` (+ ``extra`` (image, label) pairs, e.g. synthetic); returns (model, seconds)."""
    from .pretrain import fine_tune

    model = build_net(channels, n_classes, checkpoint, seed)
    images = [t.image for t in train] + [np.asarray(e[0], np.float32) for e in extra]
    labels = [t.label for t in train] + [np.asarray(e[1], np.int64) for e in extra]
    t0 = time.perf_counter()
    fine_tune(model, images, labels, size, iterations, batch_size, learning_rate, seed, flip=False, normalisation="percentile",
              affine=True, schedule="cosine")
    return model, time.perf_counter() - t0


def upsampled_prediction(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class probabilities (C, h, w) -> label map of ``shape`` (bilinear upsampling, then argmax)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(probabilities))[None]
    return torch.nn.functional.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0].argmax(0).numpy().astype(np.uint8)


def evaluate(model, test: Sequence[LabelledImage], size: int, labels: dict[int, str] = LUNG_LABELS) -> list[dict[str, Any]]:
    """Per test image and class: Dice at the original resolution, HD95 in model-grid pixels; ``dice_pp_*``: the same
    Dice after ``nmkit predict --largest --fill-holes`` (largest component of each lung, holes filled)."""
    from ..metrics.overlap import dice
    from ..metrics.surface import surface_metrics
    from ..segment.infer import fill_holes, largest_component
    from .pretrain import predict_probabilities

    probs = predict_probabilities(model, [t.image for t in test], size, "percentile")
    rows = []
    for item, p in zip(test, probs):
        full = upsampled_prediction(p, item.label_full.shape)
        small = p.argmax(0)
        row: dict[str, Any] = {"case": item.name, "patient": item.patient}
        for value, name in labels.items():
            row[f"dice_{name}"] = dice(full == value, item.label_full == value)
            hd = float(surface_metrics(small == value, item.label == value, spacing=(1.0, 1.0), tolerance_mm=None)["hd95"])
            row[f"hd95_px{size}_{name}"] = hd if np.isfinite(hd) else float(np.hypot(*small.shape))  # empty: the diagonal
        post = fill_holes(largest_component(full, list(labels)), list(labels))
        for value, name in labels.items():
            row[f"dice_pp_{name}"] = dice(post == value, item.label_full == value)
        row["dice_mean"] = float(np.mean([row[f"dice_{n}"] for n in labels.values()]))
        row["dice_pp_mean"] = float(np.mean([row[f"dice_pp_{n}"] for n in labels.values()]))
        row[f"hd95_px{size}_mean"] = float(np.mean([row[f"hd95_px{size}_{n}"] for n in labels.values()]))
        rows.append(row)
    return rows


def mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and bootstrap percentile CI (resampling the given units)."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    boot = np.random.default_rng(seed).choice(v, (n_boot, len(v))).mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of (a - b) over paired units, its bootstrap 95 % CI, and the two-sided sign-flip permutation p-value."""
    d = np.asarray(a, float) - np.asarray(b, float)
    mean, lo, hi = mean_ci(d, n_boot, seed)
    rng = np.random.default_rng(seed + 1)
    flips = rng.choice([-1.0, 1.0], (n_boot, len(d)))
    null = np.abs((flips * d).mean(1))
    p = float((np.sum(null >= abs(d.mean()) - 1e-12) + 1) / (n_boot + 1))
    return {"mean_difference": mean, "ci_low": lo, "ci_high": hi, "p_value": p, "n_pairs": int(len(d)),
            "n_positive": int((d > 0).sum())}
