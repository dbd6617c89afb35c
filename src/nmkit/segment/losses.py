"""Losses: Dice, Dice + cross-entropy, and the boundary (distance-map) loss with a weighting schedule.

The boundary loss (Kervadec et al., MIDL 2019 / MedIA 2021) integrates the softmax probability of each
foreground class against the signed distance map of its ground truth (negative inside, positive
outside), so predictions far from the true boundary cost proportionally to their distance. It is
combined with Dice as ``(1 - a) * Dice + a * Boundary`` (the paper's "rebalance" strategy) where ``a``
follows a schedule over epochs:

* ``constant``: ``a`` fixed;
* ``increase``: ``a = min(a_max, a0 + step * epoch)`` (the paper's schedule, a0 = step = 0.01);
* ``adaptive``: like ``increase`` but ``a`` only grows while the validation Dice is not falling,
  and is halved when it falls (the boundary term may pull too hard early on when Dice is poor).

Distance maps are physical: in 3D training they are computed ONCE per case on the whole case with its true voxel
spacing (:func:`case_distance_maps`, ``distance_transform_edt(sampling=spacing)``) and cropped with the patch, so a step
through 3.27 mm MR slices counts 3.27 mm, not one in-plane voxel, and a boundary just outside the patch still counts.
Without precomputed maps the loss falls back to maps of the patch's own labels (``spacing`` if given, else voxels).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .names import BOUNDARY_SCHEDULES, LOSS_NAMES


def signed_distance_map(target: np.ndarray, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Signed Euclidean distance to the boundary of a binary mask: < 0 inside, > 0 outside, in mm (or voxels).

    Empty or full masks give zeros (no boundary to pull towards).
    """
    target = target.astype(bool)
    if not target.any() or target.all():
        return np.zeros(target.shape, np.float32)
    outside = ndimage.distance_transform_edt(~target, sampling=spacing)  # outside voxels: distance to the object
    inside = ndimage.distance_transform_edt(target, sampling=spacing)  # inside voxels: distance to the background
    step = min(spacing) if spacing else 1.0  # inner boundary voxels sit at 0, as in Kervadec's reference code
    return np.where(target, -(inside - step), outside).astype(np.float32)


class BoundaryLoss(nn.Module):
    """Mean over voxels of softmax probability x signed distance map, for foreground classes."""

    def __init__(self, normalise_by: float = 1.0):
        super().__init__()
        self.normalise_by = normalise_by

    def forward(self, logits: torch.Tensor, distance_maps: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=1)[:, 1:]
        return (probs * distance_maps).mean() / self.normalise_by


def distance_maps_for(target: torch.Tensor, n_classes: int, spacing: tuple[float, ...] | None = None) -> torch.Tensor:
    """Per-class signed distance maps (B, C-1, ...) from an integer label tensor (B, 1, ...); ``spacing`` in NumPy axis
    order (mm), else voxel units."""
    labels = target[:, 0].detach().cpu().numpy()
    maps = np.zeros((labels.shape[0], n_classes - 1) + labels.shape[1:], np.float32)
    for b in range(labels.shape[0]):
        for c in range(1, n_classes):
            maps[b, c - 1] = signed_distance_map(labels[b] == c, spacing)
    return torch.from_numpy(maps).to(target.device)


def case_distance_maps(label: np.ndarray, n_classes: int, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """Signed distance maps (layers * (C-1), *grid) in mm of a whole case's label map (one layer, or one per head),
    computed once with the true voxel spacing (NumPy axis order); crop them with the patch."""
    layers = label if label.ndim > len(spacing_zyx) else label[None]
    return np.concatenate([np.stack([signed_distance_map(layer == c, tuple(spacing_zyx)) for c in range(1, n_classes)])
                           for layer in layers]).astype(np.float32)


def class_fractions(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Integer labels (B, 1, ...) as one-hot floats (B, C, ...); class fractions (B, C, ...) pass through."""
    if target.shape[1] == n_classes and torch.is_floating_point(target):
        return target
    if target.shape[1] != 1:
        raise ValueError(f"target must be labels (B, 1, ...) or {n_classes} class fractions, got shape {tuple(target.shape)}")
    onehot = nn.functional.one_hot(target[:, 0].long(), n_classes)
    return onehot.movedim(-1, 1).to(torch.float32)


class WeightSchedule:
    """Weight ``a`` of the boundary term per epoch (see module docstring)."""

    def __init__(self, kind: str = "increase", start: float = 0.01, step: float = 0.01, maximum: float = 0.5):
        if kind not in BOUNDARY_SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(BOUNDARY_SCHEDULES)}")
        self.kind, self.start, self.step, self.maximum = kind, start, step, maximum
        self.value = start
        self._best_dice = -np.inf

    def update(self, epoch: int, val_dice: float | None = None) -> float:
        """Called after each epoch; returns the weight for the next one."""
        if self.kind == "constant":
            self.value = self.start
        elif self.kind == "increase":
            self.value = min(self.maximum, self.start + self.step * (epoch + 1))
        else:
            if val_dice is not None and val_dice < self._best_dice - 0.005:
                self.value = max(self.start, self.value / 2)
            else:
                self.value = min(self.maximum, self.value + self.step)
            if val_dice is not None:
                self._best_dice = max(self._best_dice, val_dice)
        return self.value

    def state(self) -> dict:
        return {"kind": self.kind, "start": self.start, "step": self.step, "maximum": self.maximum, "value": self.value}


class SegmentationLoss(nn.Module):
    """Loss by name: ``dice``, ``dice-ce`` or ``dice-boundary`` (with a weight schedule)."""

    def __init__(self, name: str = "dice-ce", n_classes: int = 2, schedule: WeightSchedule | None = None):
        super().__init__()
        from monai.losses import DiceCELoss, DiceLoss

        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
        self.name, self.n_classes = name, n_classes
        # targets arrive as class fractions (B, C, ...): soft at the edges when labels were area-resampled
        self.dice = DiceLoss(to_onehot_y=False, softmax=True, include_background=False)
        self.dice_ce = DiceCELoss(to_onehot_y=False, softmax=True, include_background=False)
        self.boundary = BoundaryLoss()
        self.schedule = schedule or (WeightSchedule("increase") if name == "dice-boundary" else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, distance_maps: torch.Tensor | None = None) -> torch.Tensor:
        """``target``: integer labels (B, 1, ...) or class fractions (B, C, ...) summing to 1 per voxel.
        ``distance_maps``: precomputed signed distance maps (B, C-1, ...) in mm for the boundary term (else computed
        from ``target`` in voxel units)."""
        target = class_fractions(target, self.n_classes)
        if self.name == "dice":
            return self.dice(logits, target)
        if self.name == "dice-ce":
            return self.dice_ce(logits, target)
        weight = self.schedule.value if self.schedule else 0.01
        maps = distance_maps if distance_maps is not None else distance_maps_for(target.argmax(1, keepdim=True), self.n_classes)
        return (1 - weight) * self.dice(logits, target) + weight * self.boundary(logits, maps.to(logits.dtype))

    def end_epoch(self, epoch: int, val_dice: float | None) -> None:
        if self.schedule is not None:
            self.schedule.update(epoch, val_dice)


class MultiHeadLoss(nn.Module):
    """One loss per output head (a group of ``n_classes`` channels, e.g. one per reader), averaged over heads.

    Targets hold the heads' layers side by side along the channel axis: ``n_heads * n_classes`` class-fraction
    channels, or ``n_heads`` integer label channels.
    """

    def __init__(self, loss: SegmentationLoss, n_heads: int):
        super().__init__()
        if n_heads < 1:
            raise ValueError("n_heads must be at least 1")
        self.loss, self.n_heads = loss, n_heads

    def forward(self, logits: torch.Tensor, target: torch.Tensor, distance_maps: torch.Tensor | None = None) -> torch.Tensor:
        """``distance_maps``: (B, heads * (C-1), ...) precomputed boundary-loss maps, or None."""
        if self.n_heads == 1:
            return self.loss(logits, target, distance_maps)
        c = self.loss.n_classes
        if logits.shape[1] != c * self.n_heads or target.shape[1] % self.n_heads:
            raise ValueError(f"{self.n_heads} heads of {c} classes need {c * self.n_heads} logit channels and a target with a "
                             f"multiple of {self.n_heads} channels; got {logits.shape[1]} and {target.shape[1]}")
        per = target.shape[1] // self.n_heads
        maps = [None if distance_maps is None else distance_maps[:, k * (c - 1):(k + 1) * (c - 1)] for k in range(self.n_heads)]
        parts = [self.loss(logits[:, k * c:(k + 1) * c], target[:, k * per:(k + 1) * per], maps[k]) for k in range(self.n_heads)]
        return torch.stack(parts).mean()

    def end_epoch(self, epoch: int, val_dice: float | None) -> None:
        self.loss.end_epoch(epoch, val_dice)
