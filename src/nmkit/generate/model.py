"""Denoising diffusion models for 2D images (MONAI's DiffusionModelUNet, DDPM/DDIM schedulers, DiffusionInferer).

Training: each image is mapped to [-1, 1] (``transforms.to_model_space``; Anscombe for counts), Gaussian noise
is added at a random timestep and the UNet learns to predict it (DDPM). Mask-conditioned models receive the
label map as extra one-hot input channels concatenated to the noisy image (MONAI's ``concat`` mode), so a
sample follows a given anatomy (e.g. a thyroid with a cold nodule of a chosen size).

A checkpoint is a folder with ``diffusion.safetensors`` (weights, no pickle) and ``diffusion.json`` (the
``DiffusionConfig``, training log and provenance); ``load_diffusion`` rebuilds the network from the JSON. Long runs
write it every ``checkpoint_every`` iterations together with ``training_state.pt`` (optimiser moments, numpy/torch
RNG states, iteration; read back with ``torch.load(weights_only=True)``), and ``resume=True`` continues such a run
exactly where it stopped (on CPU the result equals an uninterrupted run), also to a larger ``iterations``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..devices import torch_device
from ..errors import InputError
from ..provenance import library_versions, provenance
from .data import TrainingImage, one_hot, resize, resized_spacing
from .transforms import from_model_space, to_model_space

log = logging.getLogger(__name__)

WEIGHTS = "diffusion.safetensors"
DESCRIPTION = "diffusion.json"
TRAINING_STATE = "training_state.pt"  # optimiser moments, RNG states, iteration (torch.load weights_only: no code runs)
#: config fields that must match to resume a run (the network and what it is trained on)
RESUME_FIELDS = ("image_size", "channels", "attention_levels", "num_res_blocks", "norm_num_groups", "num_train_timesteps", "schedule",
                 "prediction_type", "normalisation", "percentile", "condition_labels")
FORMAT = "nmkit-diffusion/1"


@dataclass
class DiffusionConfig:
    """Everything needed to rebuild, train and sample a diffusion model (saved as JSON with the weights)."""

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] | None = None  # default: no attention except MONAI's middle block
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    prediction_type: str = "epsilon"
    normalisation: str = "counts"  # counts | percentile
    percentile: float = 99.5
    condition_labels: dict[int, str] | None = None  # one extra input channel per label (mask conditioning)
    iterations: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-4
    count_thinning: tuple[float, float] | None = (0.5, 1.0)  # augmentation for counts: binomial thinning range
    flip: bool = False
    seed: int = 1
    num_threads: int | None = None
    device: str | None = None
    # filled in by training
    scale: float = 1.0  # median per-image scale of the training set (to map samples back)
    spacing: tuple[float, float] = (1.0, 1.0)  # median pixel spacing (x, y) of the resized training images
    modality: str = "OT"
    units: str = ""

    @property
    def attention(self) -> tuple[bool, ...]:
        return tuple(self.attention_levels) if self.attention_levels else (False,) * len(self.channels)

    @property
    def n_condition(self) -> int:
        return len(self.condition_labels) if self.condition_labels else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.condition_labels:
            d["condition_labels"] = {str(k): v for k, v in self.condition_labels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionConfig":
        d = dict(d)
        for key in ("channels", "attention_levels", "count_thinning", "spacing"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        if d.get("condition_labels"):
            d["condition_labels"] = {int(k): v for k, v in d["condition_labels"].items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def build_unet(config: DiffusionConfig):
    """The denoising UNet (MONAI DiffusionModelUNet): 1 image channel + one channel per conditioning label."""
    from monai.networks.nets import DiffusionModelUNet

    if config.image_size % 2 ** (len(config.channels) - 1):
        raise ValueError(f"image_size {config.image_size} must be divisible by {2 ** (len(config.channels) - 1)}")
    return DiffusionModelUNet(spatial_dims=2, in_channels=1 + config.n_condition, out_channels=1, channels=tuple(config.channels),
                              attention_levels=config.attention, num_res_blocks=config.num_res_blocks,
                              norm_num_groups=config.norm_num_groups, num_head_channels=config.channels[-1])


def build_scheduler(config: DiffusionConfig, method: str = "ddpm", steps: int | None = None):
    """DDPM (all training timesteps, ancestral) or DDIM (``steps`` evenly spaced timesteps, deterministic) scheduler.

    DDPM takes no shorter schedule: MONAI's DDPM step always goes from t to t - 1, so with strided timesteps each
    step removes only a fraction of the noise (on the 128x128 radiograph DDPM, 250 strided steps left Laplacian
    variance 7.2 vs 0.07 with all 1000). Shorter sampling is DDIM's job.
    """
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kwargs = dict(num_train_timesteps=config.num_train_timesteps, schedule=config.schedule, prediction_type=config.prediction_type,
                  clip_sample=True, clip_sample_min=-1.0, clip_sample_max=2.0)
    if method == "ddpm":
        if steps and steps != config.num_train_timesteps:
            raise ValueError(f"DDPM sampling runs all {config.num_train_timesteps} training timesteps of this model (got {steps} "
                             "steps); use DDIM for a shorter sampler")
        return DDPMScheduler(**kwargs)
    if method == "ddim":
        scheduler = DDIMScheduler(**kwargs)
        scheduler.set_timesteps(min(steps or 50, config.num_train_timesteps))
        return scheduler
    raise ValueError(f"unknown sampler {method!r}; choose ddpm or ddim")


def _device(config: DiffusionConfig) -> torch.device:
    """The configured device, checked; CUDA when present if none is configured."""
    return torch_device(config.device)


def prepare(images: Sequence[TrainingImage], config: DiffusionConfig) -> tuple[list[np.ndarray], list[np.ndarray | None], list[float]]:
    """Resize raw images (and labels) to the model size; returns raw arrays, labels and per-image scales."""
    raws, labels, scales = [], [], []
    for item in images:
        raw = resize(np.asarray(item.image.array, np.float32), config.image_size, order=1)
        raws.append(np.clip(raw, 0, None) if config.normalisation == "counts" else raw)
        labels.append(None if item.label is None else resize(item.label, config.image_size, order=0))
        scales.append(to_model_space(raws[-1], config.normalisation, config.percentile)[1])
    return raws, labels, scales


def _save_state(out_dir: Path, optimiser: torch.optim.Optimizer, step: int, rng: np.random.Generator,
                history: list[dict[str, float]], elapsed: float) -> None:
    state = {"optimiser": optimiser.state_dict(), "iteration": torch.tensor(step), "torch_rng": torch.get_rng_state(),
             "numpy_rng": json.dumps(rng.bit_generator.state), "history": json.dumps(history), "seconds": torch.tensor(elapsed)}
    tmp = out_dir / (TRAINING_STATE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out_dir / TRAINING_STATE)


def _resume_state(out_dir: Path, config: DiffusionConfig, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                  rng: np.random.Generator) -> tuple[int, list[dict[str, float]], float]:
    """Load weights, optimiser and RNG states of an interrupted run in ``out_dir``; returns (iteration, history, seconds)."""
    from safetensors.torch import load_file

    path = out_dir / TRAINING_STATE
    if not path.exists() or not (out_dir / WEIGHTS).exists():
        raise InputError(out_dir, f"nothing to resume: no {TRAINING_STATE} and {WEIGHTS} (train with a checkpoint interval first)")
    saved = DiffusionConfig.from_dict(read_description(out_dir)["config"]).to_dict()
    wanted = config.to_dict()
    different = [k for k in RESUME_FIELDS if saved.get(k) != wanted.get(k) and not (k == "attention_levels" and
                 DiffusionConfig.from_dict(saved).attention == config.attention)]
    if different:
        raise InputError(out_dir, "cannot resume: the checkpoint was trained with other settings ("
                         + ", ".join(f"{k} {saved.get(k)} != {wanted.get(k)}" for k in different) + ")")
    model.load_state_dict(load_file(str(out_dir / WEIGHTS)))
    state = torch.load(path, map_location="cpu", weights_only=True)
    optimiser.load_state_dict(state["optimiser"])
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    return int(state["iteration"]), json.loads(state["history"]), float(state["seconds"])


def train_diffusion(images: Sequence[TrainingImage], config: DiffusionConfig, out_dir: str | Path | None = None,
                    progress: bool = False, source: dict[str, Any] | None = None, checkpoint_every: int | None = None,
                    resume: bool = False, init_from: str | Path | None = None
                    ) -> tuple[torch.nn.Module, DiffusionConfig, list[dict[str, float]]]:
    """Train a DDPM on ``images`` (with their label maps when ``config.condition_labels`` is set).

    ``init_from``: a diffusion checkpoint of the same network whose weights start the training
    (:func:`warm_start`), e.g. a model pre-trained on unlabelled images fine-tuned into a mask-conditioned one.

    Returns the model, the completed config (training scale and spacing filled in) and the loss log; writes a
    checkpoint folder when ``out_dir`` is given (also every ``checkpoint_every`` iterations, with the training state);
    ``resume`` continues the interrupted run in ``out_dir`` up to ``config.iterations``. ``source`` (see
    ``data.load_source``) is recorded so that the audit can reload the training images.
    """
    from monai.inferers import DiffusionInferer

    from ..segment.preprocess import thin_counts

    if not images:
        raise ValueError("no training images")
    if (resume or checkpoint_every) and out_dir is None:
        raise ValueError("checkpoints and resume need an output folder")
    if config.n_condition and any(item.label is None for item in images):
        missing = [item.name for item in images if item.label is None][:5]
        raise InputError(missing[0], "a mask-conditioned model needs a label map for every training image")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = _device(config)
    raws, labels, scales = prepare(images, config)
    config.scale = float(np.median(scales))
    config.spacing = tuple(float(v) for v in np.median([resized_spacing(i.image, config.image_size) for i in images], axis=0))
    config.modality = images[0].image.modality or "OT"
    config.units = images[0].image.units
    conds = [one_hot(lab, config.n_condition) if config.n_condition else None for lab in labels]

    model = build_unet(config)
    if init_from is not None and not resume:
        warm_start(model, config, init_from)
    model = model.to(device)
    scheduler = build_scheduler(config, "ddpm")
    inferer = DiffusionInferer(scheduler)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    history: list[dict[str, float]] = []
    first, previous_seconds = 0, 0.0
    if resume:
        first, history, previous_seconds = _resume_state(Path(out_dir), config, model, optimiser, rng)
        model.to(device)
        log.info("resuming %s at iteration %d of %d", out_dir, first, config.iterations)
        if progress:
            print(f"resuming at iteration {first}/{config.iterations}", flush=True)
    inputs = [i.name for i in images]
    start = time.perf_counter() - previous_seconds
    losses: list[float] = []
    model.train()
    for step in range(first, config.iterations):
        idx = rng.integers(0, len(raws), size=config.batch_size)
        xs, cs = [], []
        for i in idx:
            raw, cond = raws[i], conds[i]
            if config.normalisation == "counts" and config.count_thinning:
                raw = thin_counts(raw, float(rng.uniform(*config.count_thinning)), rng)
            x = to_model_space(raw, config.normalisation, config.percentile)[0]
            if config.flip and rng.random() < 0.5:
                x = x[:, ::-1]
                cond = None if cond is None else cond[:, :, ::-1]
            xs.append(np.ascontiguousarray(x)[None])
            if cond is not None:
                cs.append(np.ascontiguousarray(cond))
        x = torch.from_numpy(np.stack(xs)).to(device)
        condition = torch.from_numpy(np.stack(cs)).to(device) if cs else None
        noise = torch.randn_like(x)
        t = torch.randint(0, config.num_train_timesteps, (x.shape[0],), device=device).long()
        pred = inferer(inputs=x, diffusion_model=model, noise=noise, timesteps=t, condition=condition,
                       mode="concat" if condition is not None else "crossattn")
        target = noise if config.prediction_type == "epsilon" else x
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, min(100, config.iterations // 10)) == 0 or step + 1 == config.iterations:
            history.append({"iteration": step + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start})
            if progress:
                print(f"iteration {step + 1:6d}/{config.iterations}  loss {history[-1]['loss']:.4f}  "
                      f"{history[-1]['seconds']:.0f} s", flush=True)
            losses = []
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.iterations:
            save_diffusion(model, config, out_dir, history=history, inputs=inputs, source=source)
            _save_state(Path(out_dir), optimiser, step + 1, rng, history, time.perf_counter() - start)
    model.eval()
    if out_dir is not None:
        save_diffusion(model, config, out_dir, history=history, inputs=inputs, source=source)
        if checkpoint_every or resume:
            _save_state(Path(out_dir), optimiser, max(first, config.iterations), rng, history, time.perf_counter() - start)
    return model, config, history


def warm_start(model: torch.nn.Module, config: DiffusionConfig, checkpoint_dir: str | Path) -> dict[str, Any]:
    """Load a pre-trained diffusion checkpoint's weights into ``model`` (built from ``config``).

    The networks must have the same layout (channels, attention, residual blocks, groups). Only the number of
    conditioning channels may differ: the input convolution keeps the pre-trained image-channel weights and starts
    the new mask channels at zero, so at iteration 0 the conditioned model predicts exactly what the pre-trained
    one does and learns to use the masks from there. Returns ``{"checkpoint", "adapted"}``.
    """
    source_model, source_config = load_diffusion(checkpoint_dir, device="cpu")
    for key in ("image_size", "channels", "num_res_blocks", "norm_num_groups", "attention_levels"):
        if getattr(source_config, key) != getattr(config, key):
            raise InputError(checkpoint_dir, f"cannot start from this checkpoint: its {key} is {getattr(source_config, key)!r}, "
                                             f"this model's is {getattr(config, key)!r}")
    state = source_model.state_dict()  # read and checked once by load_diffusion
    target = model.state_dict()
    adapted = []
    for key, value in target.items():
        src = state.get(key)
        if src is None:
            raise InputError(checkpoint_dir, f"cannot start from this checkpoint: it has no weight {key}")
        if src.shape == value.shape:
            target[key] = src
        elif key.endswith("conv_in.conv.weight") and src.shape[0] == value.shape[0] and src.shape[2:] == value.shape[2:]:
            new = torch.zeros_like(value)
            n = min(src.shape[1], value.shape[1])
            new[:, :n] = src[:, :n]  # the image channel first; extra mask channels start at zero
            target[key] = new
            adapted.append(key)
        else:
            raise InputError(checkpoint_dir, f"cannot start from this checkpoint: {key} is {tuple(src.shape)}, "
                                             f"this model needs {tuple(value.shape)}")
    model.load_state_dict(target)
    log.info("diffusion weights started from %s (adapted: %s)", checkpoint_dir, adapted or "none")
    return {"checkpoint": str(checkpoint_dir), "adapted": adapted}


def save_diffusion(model: torch.nn.Module, config: DiffusionConfig, out_dir: str | Path, history: list[dict[str, float]] | None = None,
                   inputs: Sequence[str] = (), source: dict[str, Any] | None = None) -> Path:
    """Write ``diffusion.safetensors`` + ``diffusion.json`` (config, training log, provenance)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS + ".tmp")  # write then rename: a run killed while saving keeps its previous checkpoint
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out_dir / WEIGHTS)
    description = {"format": FORMAT, "config": config.to_dict(), "history": history or [], "n_training_images": len(inputs), "training_source": source,
                   "training_images": list(inputs)[:1000], "libraries": library_versions(),
                   "provenance": provenance(config.to_dict(), inputs=list(inputs)[:1000])}
    tmp = out_dir / (DESCRIPTION + ".tmp")
    tmp.write_text(json.dumps(description, indent=2))
    tmp.replace(out_dir / DESCRIPTION)
    return out_dir


def read_description(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's ``diffusion.json`` (config, training log, training source, provenance)."""
    path = Path(checkpoint_dir) / DESCRIPTION
    if not path.exists():
        raise InputError(checkpoint_dir, f"not a diffusion checkpoint (no {DESCRIPTION})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc}") from exc


def load_diffusion(checkpoint_dir: str | Path, device: str | None = None) -> tuple[torch.nn.Module, DiffusionConfig]:
    """Rebuild the network from ``diffusion.json`` and load ``diffusion.safetensors`` (never unpickles)."""
    from safetensors.torch import load_file

    folder = Path(checkpoint_dir)
    desc_path, weights_path = folder / DESCRIPTION, folder / WEIGHTS
    if not desc_path.exists() or not weights_path.exists():
        raise InputError(folder, f"not a diffusion checkpoint (needs {DESCRIPTION} and {WEIGHTS}; train one with `nmkit synth train`)")
    try:
        description = json.loads(desc_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(desc_path, f"invalid JSON: {exc}") from exc
    if description.get("format") != FORMAT:
        raise InputError(desc_path, f"unknown checkpoint format {description.get('format')!r} (expected {FORMAT})")
    config = DiffusionConfig.from_dict(description["config"])
    if device:
        config.device = device
    model = build_unet(config)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error type on a damaged file
        raise InputError(weights_path, f"cannot read the weights (damaged or not a safetensors file): {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(weights_path, f"weights do not match the network in {DESCRIPTION}: {str(exc).splitlines()[0]}") from exc
    return model.to(_device(config)).eval(), config


@torch.no_grad()
def sample(model: torch.nn.Module, config: DiffusionConfig, n: int, seed: int = 0, method: str = "ddim", steps: int | None = None,
           conditions: Sequence[np.ndarray] | np.ndarray | None = None, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Draw ``n`` samples (model space, shape (n, H, W)) with DDPM or DDIM; ``conditions``: one label map per sample.

    ``progress`` shows a bar of images drawn on a terminal (a 128x128 batch takes minutes on a CPU).
    """
    from monai.inferers import DiffusionInferer
    from tqdm.auto import tqdm

    if config.n_condition and conditions is None:
        raise ValueError("this model is mask-conditioned: pass one label map per sample (conditions=...)")
    if conditions is not None:
        if not config.n_condition:
            raise ValueError("this model is not mask-conditioned; conditions cannot be used")
        if len(conditions) != n:
            raise ValueError(f"got {len(conditions)} label maps for {n} samples")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    out = []
    bar = tqdm(total=n, desc=f"sampling ({method}, {config.image_size}x{config.image_size})", unit="image", disable=None if progress else True)
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        noise = torch.randn((count, 1, config.image_size, config.image_size), generator=generator).to(device)
        cond = None
        if conditions is not None:
            cond = torch.from_numpy(np.stack([one_hot(resize(np.asarray(c), config.image_size, 0), config.n_condition)
                                              for c in conditions[start:start + count]])).to(device)
        scheduler = build_scheduler(config, method, steps)
        inferer = DiffusionInferer(scheduler)
        torch.manual_seed(int(seed) + start)  # DDPM's stochastic steps draw from the global generator
        images = inferer.sample(input_noise=noise, diffusion_model=model, scheduler=scheduler, conditioning=cond,
                                mode="concat" if cond is not None else "crossattn",
                                verbose=False)
        out.append(images[:, 0].float().cpu().numpy())
        bar.update(count)
    bar.close()
    return np.concatenate(out)


def to_physical(samples: np.ndarray, config: DiffusionConfig) -> np.ndarray:
    """Model-space samples back to image values: expected-count estimates (counts) or intensities."""
    return np.stack([from_model_space(s, config.normalisation, config.scale) for s in samples])


def synthesise(model: torch.nn.Module, config: DiffusionConfig, n: int, seed: int = 0, method: str = "ddim", steps: int | None = None,
               conditions: Sequence[np.ndarray] | None = None, total_counts: float | None = None,
               smooth_px: float = 1.0, progress: bool = False) -> np.ndarray:
    """Samples as images: count estimates (or intensities); with ``total_counts`` a Poisson acquisition of that many counts.

    Count-aware path: model space -> inverse Anscombe (expected-count estimate) -> ``poisson_resample`` at the
    chosen count level, so the synthetic image has Poisson statistics like a real acquisition.
    """
    from .transforms import poisson_resample

    values = to_physical(sample(model, config, n, seed, method, steps, conditions, progress=progress), config)
    if total_counts is None:
        return values
    if config.normalisation != "counts":
        raise ValueError("Poisson resampling needs a model trained on count images (normalisation 'counts')")
    rng = np.random.default_rng(seed)
    return np.stack([poisson_resample(v, total_counts, rng, smooth_px)[0] for v in values])
