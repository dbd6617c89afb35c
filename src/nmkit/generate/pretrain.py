"""Diffusion pre-training for few-label segmentation: the denoiser's encoder initialises a segmentation net.

Why: labelled NM images are scarce, unlabelled ones are not. A denoising diffusion model trained on unlabelled
images learns the anatomy's features; its encoder is a good starting point for segmentation (as in
"Pre-Training with Diffusion models for Dental Radiography segmentation", Rousseau et al., 2023).

Layout: the segmentation network ``DiffusionSegNet`` (``nmkit.segment.nets``, re-exported here) *is* a MONAI ``DiffusionModelUNet`` with the diffusion
model's channels/blocks, one image input channel and one output channel per class, always called with
timestep 0 (the "clean image" end of the diffusion chain). So the mapping is one-to-one by parameter name:

==========================  ==========================================================================
diffusion tensor            segmentation tensor (``unet.`` prefix)
==========================  ==========================================================================
``conv_in.*``               ``unet.conv_in.*`` - for a mask-conditioned diffusion model only the image
                            channel's input filters ``[:, :1]`` are taken (the mask channels are dropped)
``time_embed.*``            ``unet.time_embed.*`` (the t=0 embedding is what the encoder was trained with)
``down_blocks.*``           ``unet.down_blocks.*`` (ResNet blocks, attention, downsamplers)
``middle_block.*``          ``unet.middle_block.*``
``up_blocks.*``, ``out.0``  copied only with ``parts=("encoder", "decoder")``
``out.2.conv.*``            never (one output per class instead of the noise estimate): random init
==========================  ==========================================================================

``init_from_diffusion`` copies these tensors and returns a report of what was copied, adapted and skipped;
tests assert the tensors are equal afterwards. ``learning_curve`` compares fine-tuning from the diffusion
encoder with training from scratch on 5/10/20/50 labelled images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..devices import torch_device
from ..errors import InputError
from ..segment.nets import DiffusionSegNet  # defined with the other networks; importable from here too

ENCODER_PREFIXES = ("conv_in.", "time_embed.", "down_blocks.", "middle_block.")
DECODER_PREFIXES = ("up_blocks.", "out.0.")


def segnet_options(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Network options that reproduce a diffusion checkpoint's layout (for ``build_network('diffusion-unet', ...)``)."""
    from .model import load_diffusion

    _, config = load_diffusion(checkpoint_dir, device="cpu")
    return {"channels": list(config.channels), "attention_levels": list(config.attention),
            "num_res_blocks": config.num_res_blocks, "norm_num_groups": config.norm_num_groups}


def build_segnet(checkpoint_dir: str | Path, n_classes: int = 2) -> DiffusionSegNet:
    """A 2D segmentation net with the layout of the diffusion checkpoint (weights not yet copied)."""
    return DiffusionSegNet(2, 1, n_classes, **segnet_options(checkpoint_dir))


def _prefix(state: dict[str, torch.Tensor]) -> str:
    for key in state:
        if key.endswith("conv_in.conv.weight"):
            return key[: -len("conv_in.conv.weight")]
    raise KeyError("conv_in.conv.weight")


def init_from_diffusion(model: nn.Module, diffusion_checkpoint_dir: str | Path, parts: Sequence[str] = ("encoder",)) -> dict[str, Any]:
    """Copy the diffusion UNet's encoder (optionally decoder) weights into ``model``; returns a report.

    ``model`` must contain a DiffusionModelUNet-compatible network (``DiffusionSegNet``, or any module whose
    state dict has ``<prefix>conv_in.conv.weight`` ...). Raises ``InputError`` naming the checkpoint when the
    layouts do not match at all. Report keys: ``checkpoint``, ``copied`` / ``adapted`` / ``skipped`` (tensor
    names; skipped with the reason), ``n_copied``, ``parameters_initialised`` (fraction of the model's
    parameter values that now come from the diffusion model).
    """
    from safetensors.torch import load_file

    from .model import WEIGHTS, load_diffusion

    folder = Path(diffusion_checkpoint_dir)
    load_diffusion(folder, device="cpu")  # validates the checkpoint (format, weights match config)
    source = load_file(str(folder / WEIGHTS))
    target = model.state_dict()
    try:
        prefix = _prefix(target)
    except KeyError:
        raise InputError(folder, f"the segmentation network ({type(model).__name__}) has no DiffusionModelUNet layout; "
                                 "use the 'diffusion-unet' network (nmkit.segment.nets.DiffusionSegNet)") from None
    wanted = ENCODER_PREFIXES + (DECODER_PREFIXES if "decoder" in parts else ())
    copied, adapted, skipped = [], [], []
    new_state = dict(target)
    for key, tensor in source.items():
        if not key.startswith(wanted):
            continue
        name = prefix + key
        if name not in target:
            skipped.append(f"{key}: not in the segmentation network")
            continue
        dest = target[name]
        if dest.shape == tensor.shape:
            new_state[name] = tensor.to(dest.dtype).clone()
            copied.append(key)
        elif key == "conv_in.conv.weight" and tensor.shape[0] == dest.shape[0] and tensor.shape[2:] == dest.shape[2:] \
                and tensor.shape[1] > dest.shape[1]:
            new_state[name] = tensor[:, : dest.shape[1]].to(dest.dtype).clone()  # image channel(s) of a conditioned model
            adapted.append(f"{key}: input channels {tensor.shape[1]} -> {dest.shape[1]} (mask channels dropped)")
        else:
            skipped.append(f"{key}: shape {tuple(tensor.shape)} != {tuple(dest.shape)}")
    if not copied:
        raise InputError(folder, f"no tensor of the diffusion model fits the segmentation network "
                                 f"({len(skipped)} shape/name mismatches, e.g. {skipped[:2]}); build it with segnet_options()")
    model.load_state_dict(new_state)
    params = dict(model.named_parameters())
    from_diffusion = sum(params[prefix + k].numel() for k in copied if prefix + k in params) + \
        sum(params[prefix + "conv_in.conv.weight"].numel() for a in adapted if a.startswith("conv_in.conv.weight"))
    total = sum(p.numel() for p in params.values())
    return {"checkpoint": str(folder), "parts": list(parts), "copied": copied, "adapted": adapted, "skipped": skipped,
            "n_copied": len(copied) + len(adapted), "parameters_initialised": from_diffusion / max(total, 1)}


# ----- few-label fine-tuning and the learning curve ---------------------------------------------------------------

def _inputs(images: Sequence[np.ndarray], size: int, normalisation: str = "counts") -> torch.Tensor:
    """Raw images -> (N, 1, size, size) network input (``segment.preprocess.normalise``: ``counts`` for NM count
    images, ``percentile`` for radiographs, whose 8/16-bit values are not counts)."""
    from ..segment.preprocess import Preprocessing, normalise
    from .data import resize

    prep = Preprocessing(normalisation=normalisation)
    return torch.from_numpy(np.stack([normalise(resize(np.asarray(a, np.float32), size, 1), prep)[None] for a in images]).astype(np.float32))


def _targets(labels: Sequence[np.ndarray], size: int) -> torch.Tensor:
    from .data import resize

    return torch.from_numpy(np.stack([resize(np.asarray(lab, np.int64), size, 0)[None] for lab in labels])).long()


def random_affine(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, rotate_deg: float = 10.0, scale: float = 0.1,
                  shift: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random rotation/zoom/shift of a batch (image bilinear, labels nearest); no flip, so left/right anatomy
    (e.g. right vs left lung) keeps its side. ``shift`` is a fraction of the half-width."""
    n = x.shape[0]
    theta = np.zeros((n, 2, 3), np.float32)
    for i in range(n):
        a = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
        s = 1.0 + rng.uniform(-scale, scale)
        theta[i, :, :2] = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        theta[i, :, 2] = rng.uniform(-shift, shift, 2)
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta).to(x.device), list(x.shape), align_corners=False)
    xa = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    ya = torch.nn.functional.grid_sample(y.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
    return xa, ya


def fine_tune(model: nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], size: int, iterations: int = 200,
              batch_size: int = 8, learning_rate: float = 1e-3, seed: int = 1, flip: bool = True, normalisation: str = "counts",
              affine: bool = False, schedule: str = "constant") -> list[float]:
    """Train ``model`` on (image, label map) pairs with Dice+CE (segmentation's loss); returns the losses.

    ``flip``: random left-right flips (leave off when labels name a side); ``affine``: small random rotation/zoom/shift
    (``random_affine``); ``schedule``: ``constant`` or ``cosine`` (learning rate decays to 0 over the iterations).
    """
    from ..segment.losses import SegmentationLoss

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; choose constant or cosine")
    n_classes = int(model.unet.out_channels) if hasattr(model, "unet") else 2
    x_all, y_all = _inputs(images, size, normalisation), _targets(labels, size)
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    loss_fn = SegmentationLoss("dice-ce", n_classes)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-5)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(iterations, 1)) if schedule == "cosine" else None
    losses = []
    model.train()
    for _ in range(iterations):
        idx = torch.from_numpy(rng.integers(0, len(x_all), size=min(batch_size, max(len(x_all), 1))))
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        if flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if affine:
            x, y = random_affine(x, y, rng)
        loss = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if lr_sched is not None:
            lr_sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: Sequence[np.ndarray], size: int, normalisation: str = "counts") -> np.ndarray:
    """Softmax class probabilities (N, C, size, size) of raw images at the model size."""
    model.eval()
    device = next(model.parameters()).device
    x = _inputs(images, size, normalisation)
    return torch.cat([torch.softmax(model(x[i:i + 16].to(device)), 1).cpu() for i in range(0, len(x), 16)]).numpy()


@torch.no_grad()
def evaluate_dice(model: nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], size: int,
                  normalisation: str = "counts") -> float:
    """Mean foreground Dice on a test set (at the model size)."""
    from ..metrics.overlap import dice_per_class

    y = _targets(labels, size)[:, 0].numpy()
    pred = predict_probabilities(model, images, size, normalisation).argmax(1)
    values = sorted(int(v) for v in np.unique(y) if v > 0) or [1]
    return float(np.mean([dice_per_class(p, t, values) for p, t in zip(pred, y)]))


def learning_curve(checkpoint_dir: str | Path, train_images: Sequence[np.ndarray], train_labels: Sequence[np.ndarray],
                   test_images: Sequence[np.ndarray], test_labels: Sequence[np.ndarray], sizes: Sequence[int] = (5, 10, 20, 50),
                   iterations: int = 200, seeds: Sequence[int] = (1,), n_classes: int = 2, batch_size: int = 8,
                   learning_rate: float = 1e-3, device: str | None = None):
    """Test Dice after training on the first n labelled images, diffusion-initialised vs from scratch (a DataFrame)."""
    import pandas as pd

    from .model import load_diffusion

    _, config = load_diffusion(checkpoint_dir, device="cpu")
    dev = torch_device(device)
    rows = []
    for n in sizes:
        if n > len(train_images):
            raise ValueError(f"learning curve asks for {n} labelled images but only {len(train_images)} are given")
        for seed in seeds:
            for init in ("diffusion", "scratch"):
                torch.manual_seed(seed)
                model = build_segnet(checkpoint_dir, n_classes)
                if init == "diffusion":
                    init_from_diffusion(model, checkpoint_dir)
                model.to(dev)
                t0 = time.perf_counter()
                fine_tune(model, train_images[:n], train_labels[:n], config.image_size, iterations, batch_size, learning_rate, seed)
                dice = evaluate_dice(model, test_images, test_labels, config.image_size)
                rows.append({"n_labelled": n, "init": init, "seed": seed, "test_dice": dice, "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)
