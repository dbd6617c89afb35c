"""Training a segmentation network from a manifest: seeds, checkpoints, early stopping, logs, bundle.

2D (planar images, slices) images are resized to ``Preprocessing.target_size``; 3D volumes are trained
on random patches (half of them centred on foreground) and validated with sliding-window inference.
Runs on CPU, uses CUDA when available. Progress bar per epoch; the log (loss, validation Dice,
boundary-loss weight, time per epoch) is written as CSV and PNG next to the bundle.

2D labels are brought to the network grid as class fractions (area-averaged one-hot), never by nearest
neighbour, so targets stay aligned with the resized image to sub-pixel precision.

Mimicking several experts at once: with ``TrainConfig.heads`` (e.g. ``("R1", "R2", "R3", "consensus")``) the
network has one output head (a group of ``n_classes`` channels) per reader, sharing everything else; each case
carries one label layer per head (``Case.label[k]``) and the loss is the mean of the heads' losses. A
reader's habits (threshold, margin, isthmus) become that head's, while all heads learn the anatomy together.

The boundary loss's signed distance maps (2D and 3D) are computed once per case on the whole case with its voxel
spacing (``losses.case_distance_maps``), flipped/cropped/resized with the image (values in mm survive resizing).
3D specifics: cases come already resampled to ``Preprocessing.target_spacing_mm`` (``data.resample_case``); each case
is normalised once as a whole (as inference does; ``counts`` images stay per patch, after count thinning);
augmentation (``TrainConfig.augmentation``, :mod:`nmkit.segment.augment`, MONAI) moves
image channels, labels and distance maps together. Several input channels (``Preprocessing.channels``) arrive as a
leading axis of ``Case.image.array``. K-fold training (:func:`train_folds`) writes one model per fold into the bundle,
whose ``ensemble`` entry lists them (inference averages their softmax).
"""

from __future__ import annotations

import csv
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..devices import torch_device
from ..metrics.overlap import dice_per_class  # lives with the metrics; still importable from here
from .data import Case
from .losses import MultiHeadLoss, SegmentationLoss, WeightSchedule
from .nets import build_network, parameter_count, required_divisor
from .preprocess import Preprocessing, augment, normalise, normalise_channels

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    network: str = "unet"
    network_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "dice-ce"
    boundary_schedule: str = "increase"
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 10
    seed: int = 1
    iterations_per_epoch: int | None = None  # default: one pass over the training cases
    count_reduction: tuple[float, float] | None = (0.25, 1.0)
    flip_axes: tuple[int, ...] = (-1,)
    labels: dict[int, str] = field(default_factory=lambda: {1: "roi"})
    device: str | None = None
    num_threads: int | None = None
    pretrained_diffusion: str | None = None  # diffusion checkpoint folder whose encoder initialises the network
    init_weights: str | None = None  # safetensors weights (e.g. a bundle's model.safetensors) to fine-tune from
    heads: tuple[str, ...] | None = None  # one output head per reader/target (masks from manifest columns mask_<head>)
    default_head: str | None = None  # head used when a caller names none (default: 'consensus' if present, else the first)
    augmentation: dict[str, Any] | None = None  # 3D: AugmentConfig fields (kinds, probability...); None = flips only
    width: int | None = None  # base channel count of the network (network_options derived with nets.width_options)

    def resolved_default_head(self) -> str | None:
        if not self.heads:
            return None
        if self.default_head is not None:
            if self.default_head not in self.heads:
                raise ValueError(f"default head {self.default_head!r} is not one of the heads {self.heads}")
            return self.default_head
        return "consensus" if "consensus" in self.heads else self.heads[0]

    @property
    def n_heads(self) -> int:
        return len(self.heads) if self.heads else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        d["heads"] = list(self.heads) if self.heads else None
        return d


def select_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    return torch_device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resize_2d(array: np.ndarray, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize a 2D array to ``size`` (bilinear for images, nearest for labels) as a (1, H, W) tensor."""
    t = torch.as_tensor(np.ascontiguousarray(array))[None, None].float()
    if tuple(t.shape[2:]) != tuple(size):
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        t = nn.functional.interpolate(t, size=tuple(size), mode=mode, **kwargs)
    return t[0]


def label_fractions_2d(label: np.ndarray, size: Sequence[int], n_classes: int) -> torch.Tensor:
    """A 2D label map as class fractions (C, *size) on the network grid.

    Why not nearest-neighbour resizing: at a 2x reduction it keeps the top-left pixel of each 2x2 block, so the
    target moves half a native pixel against the (bilinearly, centre-aligned) resized image and every edge is
    quantised to two pixels; a model trained on it loses about 0.03 Dice at the native grid. Area averaging of the
    one-hot label keeps the edge position to sub-pixel precision (0.996 Dice after bilinear upsampling back).
    """
    onehot = nn.functional.one_hot(torch.as_tensor(np.ascontiguousarray(label)).long(), n_classes).movedim(-1, 0)[None].float()
    size = tuple(int(s) for s in size)
    if tuple(onehot.shape[2:]) != size:
        shrink = all(s <= n for s, n in zip(size, onehot.shape[2:]))
        onehot = nn.functional.interpolate(onehot, size=size, mode="area") if shrink else \
            nn.functional.interpolate(onehot, size=size, mode="bilinear", align_corners=False)
    return onehot[0]


def random_patch(image: np.ndarray, label: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                 extra: np.ndarray | None = None, channel_axis: bool = False):
    """A random patch (padded when the volume is smaller), centred on foreground half of the time.

    ``channel_axis``: ``image`` has a leading channel axis. ``extra``: arrays with leading axes (e.g. distance maps)
    cropped with the same window, returned third (zero-padded)."""
    n = len(patch)
    lead = [(0, 0)] * (image.ndim - n)
    layers = label.ndim - n  # 1 when the label holds one layer per head
    grid = image.shape[image.ndim - n:]
    pad = [(0, max(0, p - s)) for p, s in zip(patch, grid)]
    if any(p[1] for p in pad):
        image, label = np.pad(image, lead + pad, mode="edge"), np.pad(label, [(0, 0)] * layers + pad)
        if extra is not None:
            extra = np.pad(extra, [(0, 0)] * (extra.ndim - n) + pad, mode="edge")
        grid = image.shape[image.ndim - n:]
    fg = np.argwhere((label > 0).any(0) if layers else label > 0)
    if len(fg) and rng.random() < 0.5:
        centre = fg[rng.integers(len(fg))]
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, grid)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, grid)]
    sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
    out = image[(slice(None),) * (image.ndim - n) + sl], label[(slice(None),) * layers + sl]
    if extra is None and not channel_axis:
        return out
    return out + (None if extra is None else extra[(slice(None),) * (extra.ndim - n) + sl],)


class _Sampler:
    """Produces augmented, normalised training batches from cases (and, for the boundary loss in 3D, the distance maps
    of each case, computed once on the whole case with its voxel spacing and cropped with the patch)."""

    def __init__(self, cases: list[Case], prep: Preprocessing, config: TrainConfig, rng: np.random.Generator):
        self.cases, self.prep, self.config, self.rng = cases, prep, config, rng
        self.n_classes = 1 + max(config.labels)
        self.maps_wanted = config.loss == "dice-boundary"
        self.per_patch = prep.n_channels == 1 and prep.normalisation == "counts"  # count thinning needs raw counts
        self._inputs: dict[int, np.ndarray] = {}
        self._maps: dict[int, np.ndarray] = {}
        self.augmenter = None
        if prep.spatial_dims == 3:
            from .augment import AugmentConfig, Augmenter

            settings = dict(config.augmentation) if config.augmentation is not None else {"kinds": ("flip",)}
            settings.setdefault("flip_axes", tuple(config.flip_axes))
            for key in ("kinds", "flip_axes", "elastic_sigma", "elastic_magnitude", "gamma"):
                if key in settings:
                    settings[key] = tuple(settings[key])
            self.aug_config = AugmentConfig(**settings)
            self.augmenter = Augmenter(self.aug_config, tuple(prep.patch_size), seed=int(rng.integers(2**31)))

    def case_input(self, index: int) -> np.ndarray:
        """The whole case normalised once (C, *grid), as inference normalises it."""
        if index not in self._inputs:
            self._inputs[index] = normalise_channels(self.cases[index].image.array, self.prep)
        return self._inputs[index]

    def case_maps(self, index: int) -> np.ndarray:
        """Signed distance maps (layers * (C-1), *grid) in mm of the whole case, computed once."""
        if index not in self._maps:
            from .losses import case_distance_maps

            case = self.cases[index]
            self._maps[index] = case_distance_maps(case.label, self.n_classes, tuple(case.image.spacing[::-1]))
        return self._maps[index]

    def sample(self, index: int) -> tuple[torch.Tensor, ...]:
        case = self.cases[index]
        if self.prep.spatial_dims == 2:
            maps = self.case_maps(index) if self.maps_wanted else None
            image, label, *rest = augment(case.image.array, case.label, self.rng, self.prep, self.config.count_reduction,
                                          self.config.flip_axes, extra=maps)
            x = normalise(image, self.prep)
            layers = label if label.ndim > x.ndim else label[None]  # (heads, *grid)
            target = torch.cat([label_fractions_2d(layer, self.prep.target_size, self.n_classes) for layer in layers])
            if not rest:
                return resize_2d(x, self.prep.target_size, "bilinear"), target
            # distance maps are in mm: resizing the grid keeps their values (bilinear, like the image)
            maps_t = nn.functional.interpolate(torch.from_numpy(rest[0])[None], size=tuple(self.prep.target_size), mode="bilinear",
                                               align_corners=False)[0]
            return resize_2d(x, self.prep.target_size, "bilinear"), target, maps_t
        from .augment import crop_size

        size = crop_size(self.aug_config, self.prep.patch_size)
        maps = self.case_maps(index) if self.maps_wanted else None
        if self.per_patch:
            image, label, maps = random_patch(case.image.array, case.label, size, self.rng, maps, channel_axis=True)
            if self.config.count_reduction is not None:
                image = thin_counts_patch(image, self.config.count_reduction, self.rng)
            x = normalise(image, self.prep)[None]
        else:
            x, label, maps = random_patch(self.case_input(index), case.label, size, self.rng, maps, channel_axis=True)
        layers = label if label.ndim > x.ndim - 1 else label[None]  # (heads, *grid)
        x_t, y_t, m_t = self.augmenter(x, layers, maps)
        return (x_t, y_t) if m_t is None else (x_t, y_t, m_t)

    def batches(self, n_iterations: int, batch_size: int):
        for _ in range(n_iterations):
            idx = self.rng.integers(0, len(self.cases), size=batch_size)
            parts = [self.sample(int(i)) for i in idx]
            yield tuple(torch.stack([p[k] for p in parts]) for k in range(len(parts[0])))


def thin_counts_patch(image: np.ndarray, reduction: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A count image patch as a shorter acquisition would have recorded it (binomial thinning)."""
    from .preprocess import thin_counts

    return thin_counts(image, float(rng.uniform(*reduction)), rng)


@torch.no_grad()
def predict_labels_3d(model: nn.Module, array: np.ndarray, prep: Preprocessing, device: torch.device, n_classes: int,
                      n_heads: int = 1) -> np.ndarray:
    """Label maps (heads, *grid) of a whole (resampled) 3D case by sliding window: the validation predictor of training,
    with the channels normalised as in training."""
    from monai.inferers import sliding_window_inference

    from .infer import grouped_softmax

    x = torch.from_numpy(normalise_channels(array, prep))[None].to(device)
    logits = sliding_window_inference(x, roi_size=tuple(prep.patch_size), sw_batch_size=2, predictor=model, overlap=0.25, mode="gaussian")
    probs = grouped_softmax(logits, n_heads)[0]
    return probs.reshape(n_heads, n_classes, *probs.shape[1:]).argmax(1).cpu().numpy().astype(np.uint8)


def check_heads(cases: Sequence[Case], heads: Sequence[str] | None, what: str) -> None:
    """Every case must carry exactly one label layer per head, in the configured order."""
    for case in cases:
        if heads:
            if tuple(case.heads or ()) != tuple(heads):
                raise ValueError(f"{what} case {case.case_id}: label layers {case.heads} do not match the heads {tuple(heads)}; "
                                 "load the split with load_split(..., heads=...)")
        elif case.heads:
            raise ValueError(f"{what} case {case.case_id} has one label per head {case.heads} but the config has no heads")


def without_side_flips(config: TrainConfig, spatial_dims: int, progress: bool = False) -> TrainConfig:
    """``config`` without flips along the left-right (last) axis when a label names a side (``segment.names.sided_names``):
    a flipped right lung is still labelled right lung and would teach the network to mix the sides."""
    import dataclasses

    from .names import side_safe_axes

    axes, sided = side_safe_axes(config.labels.values(), config.flip_axes, spatial_dims)
    if not sided:
        return config
    message = f"left-right flips off: the labels {', '.join(sided)} name a body side"
    if progress:
        print(message, flush=True)
    log.info(message)
    return dataclasses.replace(config, flip_axes=axes)


def train(train_cases: list[Case], val_cases: list[Case], prep: Preprocessing, config: TrainConfig, out_dir: str | Path,
          progress: bool = True, data_summary: dict[str, Any] | None = None) -> Path:
    """Train, keep the best checkpoint by validation Dice, and write a model bundle in ``out_dir``."""
    from . import bundle as bundle_mod

    if not train_cases:
        raise ValueError("no training cases")
    check_heads(train_cases, config.heads, "training")
    check_heads(val_cases, config.heads, "validation")
    config = without_side_flips(config, prep.spatial_dims, progress)
    heads = list(config.heads) if config.heads else None
    n_heads = config.n_heads
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = select_device(config.device)
    rng = np.random.default_rng(config.seed)
    n_classes = 1 + max(config.labels)
    img_size = prep.target_size if prep.spatial_dims == 2 else prep.patch_size
    divisor = required_divisor(config.network, config.network_options)
    if img_size is None or any(s % divisor for s in img_size):
        raise ValueError(f"{config.network} needs input sizes divisible by {divisor}; got {img_size}")
    model = build_network(config.network, prep.spatial_dims, prep.n_channels, n_classes * n_heads, img_size=img_size,
                          **dict(config.network_options)).to(device)
    pretrained: dict[str, Any] | None = None
    if config.init_weights:
        from .bundle import load_weights

        model.load_state_dict(load_weights(config.init_weights))
        pretrained = {"init_weights": str(config.init_weights)}
    if config.pretrained_diffusion:
        from ..generate.pretrain import init_from_diffusion

        report = init_from_diffusion(model, config.pretrained_diffusion)
        pretrained = dict(pretrained or {}, **{k: report.get(k) for k in ("checkpoint", "n_copied", "parameters_initialised", "adapted", "skipped")})
        log.info("initialised from diffusion model %s: %s", config.pretrained_diffusion, pretrained)
    schedule = WeightSchedule(config.boundary_schedule) if config.loss == "dice-boundary" else None
    loss_fn = MultiHeadLoss(SegmentationLoss(config.loss, n_classes, schedule), n_heads)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, config.epochs))
    sampler = _Sampler(train_cases, prep, config, rng)
    iterations = config.iterations_per_epoch or max(1, int(np.ceil(len(train_cases) / config.batch_size)))
    labels = sorted(config.labels)
    history: list[dict[str, Any]] = []
    best_dice, best_epoch, best_state = -1.0, -1, None
    start_time = time.perf_counter()
    from tqdm.auto import tqdm

    for epoch in range(config.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(sampler.batches(iterations, config.batch_size), total=iterations, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=None if progress else True, leave=False)
        for batch in bar:
            x, y = batch[0].to(device), batch[1].to(device)
            maps = batch[2].to(device) if len(batch) > 2 else None
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y, maps)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        scheduler.step()
        model.eval()
        per_head = np.array([[dice_per_class(p, t, labels) for p, t in
                              zip(validation_labels(model, c, prep, device, n_classes, n_heads),
                                  c.label if heads else c.label[None])] for c in val_cases]).reshape(-1, n_heads)
        val_scores = list(per_head.mean(1))
        val_dice = float(np.mean(val_scores)) if val_scores else float("nan")
        weight = schedule.value if schedule else None
        loss_fn.end_epoch(epoch, val_dice if val_scores else None)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
                        "boundary_weight": weight, "seconds": time.perf_counter() - t0, "lr": optimiser.param_groups[0]["lr"]})
        if heads:  # each head's validation Dice against its own reader's masks
            history[-1].update({f"val_dice_{h}": float(per_head[:, k].mean()) if len(per_head) else float("nan") for k, h in enumerate(heads)})
        if progress:
            print(f"epoch {epoch + 1:3d}/{config.epochs}  loss {history[-1]['train_loss']:.4f}  val Dice {val_dice:.4f}", flush=True)
        score = val_dice if val_scores else -history[-1]["train_loss"]
        if score > best_dice:
            best_dice, best_epoch = score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            bundle_mod.save_weights(best_state, out_dir / "checkpoint_best.safetensors")
        bundle_mod.save_weights(model.state_dict(), out_dir / "checkpoint_last.safetensors")
        if epoch + 1 - best_epoch >= config.patience:
            log.info("early stopping at epoch %d (best %d)", epoch + 1, best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    write_history(history, out_dir)
    summary = dict(data_summary or {})
    summary.update({"n_train": len(train_cases), "n_val": len(val_cases), "train_cases": [c.case_id for c in train_cases][:1000]})
    if pretrained is not None:
        summary["initialisation"] = pretrained
        if config.pretrained_diffusion:
            summary["pretrained_diffusion"] = pretrained
    validation = {"val_dice_mean": best_dice if val_cases else None, "best_epoch": best_epoch, "epochs_run": len(history),
                  **({"val_dice_per_head": {h: history[best_epoch - 1][f"val_dice_{h}"] for h in heads}} if heads and val_cases else {}),
                  "training_seconds": time.perf_counter() - start_time, "parameters": parameter_count(model), "device": str(device)}
    bundle_mod.write_bundle(out_dir, model, config, prep, validation=validation, data_summary=summary)
    return out_dir


def validation_labels(model: nn.Module, case: Case, prep: Preprocessing, device: torch.device, n_classes: int,
                      n_heads: int) -> np.ndarray:
    """Predicted label maps (heads, *grid) of a validation case."""
    from .infer import predict_array

    was_training = model.training
    model.eval()
    try:
        if prep.spatial_dims == 3:
            return predict_labels_3d(model, case.image.array, prep, device, n_classes, n_heads)
        return predict_array(model, case.image.array, prep, device, n_classes, n_heads=n_heads, head=None)
    finally:
        model.train(was_training)


def assign_folds(cases: Sequence[Case], k: int | None, seed: int = 1) -> list[int]:
    """The fold (0..K-1) of every case: the case table's fold column when every case has one, else a patient-level
    split into ``k`` folds (a patient's cases stay together; patients shuffled with ``seed``, largest first into the
    smallest fold). Raises ``ValueError`` with the reason when that cannot be done."""
    texts = [c.fold for c in cases]
    if any(texts) and not all(texts):
        blank = next(c.case_id for c in cases if not c.fold)
        raise ValueError(f"the fold column is blank for case {blank!r}: fill it for every train/val row, or clear it and use --kfold")
    if all(texts):
        try:
            folds = [int(t) for t in texts]
        except ValueError as exc:
            raise ValueError(f"the fold column must hold integers; got {sorted(set(texts))}") from exc
        found = sorted(set(folds))
        if min(found) < 0 or (k is not None and max(found) >= k):
            raise ValueError(f"the fold column holds {found}; --kfold {k} needs values 0..{(k or 1) - 1}")
        return folds
    if k is None:
        raise ValueError("no fold column in the case table: give --kfold K for a patient-level split")
    if k < 2:
        raise ValueError(f"k-fold training needs at least 2 folds; got {k}")
    by_patient: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        by_patient.setdefault(case.patient_id or case.case_id, []).append(i)
    if len(by_patient) < k:
        raise ValueError(f"{k} folds need at least {k} patients; the training cases come from {len(by_patient)}")
    patients = sorted(by_patient)
    np.random.default_rng(seed).shuffle(patients)
    patients.sort(key=lambda p: -len(by_patient[p]))  # stable: equal sizes keep the shuffled order
    sizes, out = [0] * k, [0] * len(cases)
    for patient in patients:
        fold = int(np.argmin(sizes))
        sizes[fold] += len(by_patient[patient])
        for i in by_patient[patient]:
            out[i] = fold
    return out


def train_folds(cases: list[Case], fold_of: Sequence[int], folds: Sequence[int], prep: Preprocessing, config: TrainConfig,
                out_dir: str | Path, progress: bool = True, data_summary: dict[str, Any] | None = None) -> Path:
    """K-fold training: fold k validates on the cases of fold k and trains on the others; one model per fold in
    ``out_dir/fold_k`` and a bundle whose ``ensemble`` lists them (inference averages their softmax). The top-level
    ``model.safetensors`` is the first fold's, so a reader that knows no ensembles still gets a working model."""
    import json
    import shutil

    from . import bundle as bundle_mod

    out_dir = Path(out_dir)
    folds = list(dict.fromkeys(int(f) for f in folds))
    if not folds:
        raise ValueError("no folds to train")
    per_fold: dict[str, Any] = {}
    for fold in folds:
        train_cases = [c for c, f in zip(cases, fold_of) if f != fold]
        val_cases = [c for c, f in zip(cases, fold_of) if f == fold]
        if not train_cases or not val_cases:
            raise ValueError(f"fold {fold}: needs training and validation cases (it has {len(train_cases)} and {len(val_cases)})")
        if progress:
            print(f"fold {fold}: training on {len(train_cases)} cases, validating on {len(val_cases)}", flush=True)
        summary = dict(data_summary or {}, fold=fold, val_cases=[c.case_id for c in val_cases][:1000])
        train(train_cases, val_cases, prep, config, out_dir / f"fold_{fold}", progress=progress, data_summary=summary)
        desc = json.loads((out_dir / f"fold_{fold}" / bundle_mod.DESCRIPTION).read_text())
        per_fold[str(fold)] = desc.get("validation", {})
    first = out_dir / f"fold_{folds[0]}"
    description = json.loads((first / bundle_mod.DESCRIPTION).read_text())
    shutil.copyfile(first / bundle_mod.WEIGHTS, out_dir / bundle_mod.WEIGHTS)
    scores = [v.get("val_dice_mean") for v in per_fold.values() if v.get("val_dice_mean") is not None]
    description["name"] = out_dir.name
    description["ensemble"] = {"folds": folds, "members": [f"fold_{f}/{bundle_mod.WEIGHTS}" for f in folds], "combine": "mean softmax"}
    description["validation"] = {"val_dice_mean": float(np.mean(scores)) if scores else None, "per_fold": per_fold,
                                 "folds": {c.case_id: int(f) for c, f in zip(cases, fold_of)}}
    description["training_data"] = dict(data_summary or {}, n_cases=len(cases), n_folds=len(set(fold_of)))
    (out_dir / bundle_mod.DESCRIPTION).write_text(json.dumps(description, indent=2, default=str))
    return out_dir


def write_history(history: list[dict[str, Any]], out_dir: Path) -> None:
    """Training log as CSV and a loss/Dice plot."""
    if not history:
        return
    with open(out_dir / "training_log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["val_dice"] for h in history], "s-", color="tab:red", label="validation Dice")
    for key in (k for k in history[0] if k.startswith("val_dice_")):  # one line per head
        ax2.plot(epochs, [h[key] for h in history], "--", lw=1, label=key.removeprefix("val_dice_"))
    if any(k.startswith("val_dice_") for k in history[0]):
        ax2.legend(loc="lower right", fontsize=7)
    ax2.set_ylabel("validation Dice", color="tab:red")
    ax2.set_ylim(0, 1)
    ax1.set_title("Training log")
    fig.tight_layout()
    fig.savefig(out_dir / "training_log.png", dpi=100)
    plt.close(fig)
