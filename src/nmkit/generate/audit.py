"""Audit of synthetic images: memorised copies of training images and a distribution-level quality score.

Why: a diffusion model can reproduce training images (a privacy risk when they are patients' scans) and can
drift from the real distribution. For every synthetic image the audit finds its nearest training image

* in **pixel space**: RMS difference after the model's normalisation (``transforms.to_model_space``: Anscombe for
  counts, per-image scale), at the model size;
* in a **feature space**: standardised domain features (``image_features``: intensity quantiles, gradient and
  Laplacian energy, radial power-spectrum bands, centre and spread of activity - radiomics-like, computed on the
  normalised image) or, when a diffusion checkpoint is given, the denoising UNet's pooled encoder features at
  timestep 0 (``DiffusionFeatures``).

A synthetic image is flagged as a **memorised copy** when its pixel-space nearest-neighbour distance is below a
threshold. By default the threshold is ``copy_factor`` (0.5) times the 5th percentile of the training set's own
leave-one-out nearest-neighbour distances - i.e. much closer to a training image than any two real images are
to each other. The **quality score** is the Fréchet distance between Gaussian fits of training and synthetic
features (FID-like; features standardised with the training mean/std so every feature counts equally; 0 means
identical first and second moments). ``write_audit_report`` renders galleries (each sample beside its nearest
training image), the distance histogram with the threshold, and the table as an HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .data import resize
from .transforms import to_model_space

FEATURE_NAMES = ("mean", "std", "q05", "q25", "q50", "q75", "q95", "q99", "hot_fraction", "grad_mean", "grad_std", "laplace_var",
                 "power_low", "power_mid", "power_high", "power_top", "centre_y", "centre_x", "spread_y", "spread_x")


def antialias(array: np.ndarray, size: int) -> np.ndarray:
    """Gaussian prefilter (sigma = (factor - 1) / 2 per axis) before shrinking an image to ``size``: without it a
    large radiograph is point-sampled and a 1-pixel shift of a copy changes the small image as much as another patient."""
    from scipy.ndimage import gaussian_filter

    sigma = [max(0.0, (n / size - 1) / 2) for n in array.shape]
    return gaussian_filter(array, sigma, mode="nearest") if max(sigma) > 0 else array


def normalise_stack(images: Sequence[np.ndarray], size: int, normalisation: str = "counts", percentile: float = 99.5) -> np.ndarray:
    """Raw images -> model space (N, size, size) float32 (the space the pixel distances are measured in)."""
    return np.stack([to_model_space(resize(antialias(np.asarray(a, np.float32), size), size, 1), normalisation, percentile)[0]
                     for a in images])


def image_features(x: np.ndarray) -> np.ndarray:
    """Radiomics-like features of normalised images (N, H, W) -> (N, 20); see FEATURE_NAMES."""
    from scipy import ndimage

    x = np.asarray(x, np.float64)
    n, h, w = x.shape
    yy, xx = np.indices((h, w))
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.sqrt(fy**2 + fx**2)
    bands = [(0.0, 0.05), (0.05, 0.15), (0.15, 0.3), (0.3, 1.0)]
    rows = []
    for img in x:
        gy, gx = np.gradient(img)
        grad = np.hypot(gy, gx)
        power = np.abs(np.fft.fft2(img - img.mean())) ** 2
        total_power = power.sum() + 1e-12
        weights = img - img.min()
        weights = weights / (weights.sum() + 1e-12)
        cy, cx = float((weights * yy).sum()), float((weights * xx).sum())
        sy = float(np.sqrt((weights * (yy - cy) ** 2).sum()))
        sx = float(np.sqrt((weights * (xx - cx) ** 2).sum()))
        rows.append([img.mean(), img.std(), *np.percentile(img, [5, 25, 50, 75, 95, 99]), float((img > 0).mean()),
                     grad.mean(), grad.std(), ndimage.laplace(img).var(),
                     *[np.log(power[(radius >= lo) & (radius < hi)].sum() / total_power + 1e-12) for lo, hi in bands],
                     cy / h, cx / w, sy / h, sx / w])
    return np.asarray(rows, np.float64)


class DiffusionFeatures:
    """Pooled encoder features of a diffusion UNet at timestep 0: a feature extractor learnt on the domain itself.

    For each down block and the middle block the activations are averaged over space (mean and std per channel)
    and concatenated. Mask channels of a conditioned model are fed zeros.
    """

    def __init__(self, model, config):
        self.model, self.config = model, config

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        model, feats = self.model, []
        device = next(model.parameters()).device
        captured: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
                 for b in list(model.down_blocks) + [model.middle_block]]
        try:
            with torch.no_grad():
                for start in range(0, len(x), 16):
                    batch = torch.from_numpy(np.asarray(x[start:start + 16], np.float32))[:, None].to(device)
                    if self.config.n_condition:
                        batch = torch.cat([batch, torch.zeros(batch.shape[0], self.config.n_condition, *batch.shape[2:], device=device)], 1)
                    captured.clear()
                    model(batch, timesteps=torch.zeros(batch.shape[0], dtype=torch.long, device=device))
                    pooled = [torch.cat([c.mean(dim=(2, 3)), c.std(dim=(2, 3))], 1) for c in captured]
                    feats.append(torch.cat(pooled, 1).cpu().numpy())
        finally:
            for hook in hooks:
                hook.remove()
        return np.concatenate(feats).astype(np.float64)


def pairwise_rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS difference between every image of ``a`` (N, ...) and ``b`` (M, ...): (N, M)."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    sq = (a2**2).sum(1)[:, None] + (b2**2).sum(1)[None, :] - 2 * a2 @ b2.T
    return np.sqrt(np.clip(sq, 0, None) / a2.shape[1])


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (the FID formula).

    ``Tr(sqrt(Ca Cb))`` is computed as the sum of square roots of the eigenvalues of the symmetric matrix
    ``Ca^1/2 Cb Ca^1/2`` (same value, numerically stable when covariances are singular - few samples).
    """
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(features_a, rowvar=False)), np.atleast_2d(np.cov(features_b, rowvar=False))
    w, v = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    return max(0.0, float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root))


@dataclass
class AuditResult:
    """Per-sample nearest neighbours and flags, the copy threshold, and the FID-like score."""

    table: pd.DataFrame
    threshold: float
    frechet: float
    feature_kind: str
    train_nn_distances: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> np.ndarray:
        return self.table["memorised"].to_numpy()


def audit(synthetic: Sequence[np.ndarray], training: Sequence[np.ndarray], size: int = 64, normalisation: str = "counts",
          threshold: float | None = None, copy_factor: float = 0.5, features: Callable[[np.ndarray], np.ndarray] | None = None,
          feature_kind: str = "radiomics-like", training_names: Sequence[str] | None = None) -> AuditResult:
    """Nearest training image of every synthetic image (pixel and feature space), copy flags and Fréchet distance.

    ``synthetic``/``training``: raw images (counts or intensities), any size (resized to ``size``).
    ``features``: a callable on model-space stacks (default ``image_features``; e.g. ``DiffusionFeatures``).
    """
    if len(training) < 2 or len(synthetic) < 1:
        raise ValueError("the audit needs at least 2 training images and 1 synthetic image")
    train = normalise_stack(training, size, normalisation)
    synth = normalise_stack(synthetic, size, normalisation)
    names = list(training_names) if training_names is not None else [f"train_{i}" for i in range(len(train))]
    d_train = pairwise_rms(train, train)
    np.fill_diagonal(d_train, np.inf)
    train_nn = d_train.min(1)
    if threshold is None:
        threshold = copy_factor * float(np.percentile(train_nn, 5))
    d = pairwise_rms(synth, train)
    nn_idx = d.argmin(1)
    nn_dist = d[np.arange(len(synth)), nn_idx]
    second = np.sort(d, axis=1)[:, 1] if d.shape[1] > 1 else np.full(len(synth), np.nan)
    extract = features or image_features
    f_train, f_synth = extract(train), extract(synth)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-8
    z_train, z_synth = (f_train - mu) / sd, (f_synth - mu) / sd
    fd = pairwise_rms(z_synth, z_train) * np.sqrt(z_train.shape[1])  # Euclidean distance in standardised features
    table = pd.DataFrame({
        "sample": np.arange(len(synth)),
        "nearest_training": [names[i] for i in nn_idx],
        "pixel_distance": nn_dist,
        "distance_ratio": nn_dist / np.maximum(second, 1e-12),
        "pixel_distance_vs_train_median": nn_dist / max(float(np.median(train_nn)), 1e-12),
        "feature_nearest_training": [names[i] for i in fd.argmin(1)],
        "feature_distance": fd.min(1),
        "memorised": nn_dist < threshold,
    })
    frechet = frechet_distance(z_train, z_synth)
    summary = {"n_synthetic": len(synth), "n_training": len(train), "n_memorised": int(table["memorised"].sum()),
               "threshold": float(threshold), "train_nn_median": float(np.median(train_nn)), "frechet_distance": frechet,
               "feature_kind": feature_kind, "size": size, "normalisation": normalisation}
    return AuditResult(table=table, threshold=float(threshold), frechet=frechet, feature_kind=feature_kind,
                       train_nn_distances=train_nn, summary=summary)


def _gallery(result: AuditResult, synthetic: Sequence[np.ndarray], training: Sequence[np.ndarray], names: Sequence[str], rows: list[int],
             title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {n: i for i, n in enumerate(names)}
    fig, axes = plt.subplots(2, max(len(rows), 1), figsize=(1.8 * max(len(rows), 1), 4), squeeze=False)
    for col, r in enumerate(rows):
        row = result.table.iloc[r]
        axes[0, col].imshow(np.asarray(synthetic[r]), cmap="gray_r")
        axes[0, col].set_title(f"#{r}{' COPY' if row['memorised'] else ''}\nd={row['pixel_distance']:.3f}", fontsize=7,
                               color="red" if row["memorised"] else "black")
        axes[1, col].imshow(np.asarray(training[index[row["nearest_training"]]]), cmap="gray_r")
        axes[1, col].set_title(str(row["nearest_training"])[:18], fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def write_audit_report(result: AuditResult, synthetic: Sequence[np.ndarray], training: Sequence[np.ndarray], path: str | Path,
                       training_names: Sequence[str] | None = None, title: str = "Synthetic image audit",
                       config: dict[str, Any] | None = None, n_gallery: int = 8) -> Path:
    """HTML report: summary, closest samples (most likely copies) and random samples beside their nearest training image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..provenance import provenance
    from ..report.html import Report

    names = list(training_names) if training_names is not None else [f"train_{i}" for i in range(len(training))]
    report = Report(title)
    s = report.section("Summary")
    s.text(f"{result.summary['n_synthetic']} synthetic images audited against {result.summary['n_training']} training images. "
           f"{result.summary['n_memorised']} flagged as memorised copies (pixel nearest-neighbour distance below "
           f"{result.threshold:.4f}; the median nearest-neighbour distance between training images is "
           f"{result.summary['train_nn_median']:.4f}). Fréchet distance ({result.feature_kind} features): {result.frechet:.3f}.",
           note=result.summary["n_memorised"] > 0)
    s.table(pd.DataFrame([result.summary]), caption="Audit summary")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(result.train_nn_distances, bins=20, alpha=0.6, label="training vs training (leave-one-out)")
    ax.hist(result.table["pixel_distance"], bins=20, alpha=0.6, label="synthetic vs training")
    ax.axvline(result.threshold, color="red", linestyle="--", label="copy threshold")
    ax.set_xlabel("nearest-neighbour RMS distance (normalised pixels)")
    ax.legend(fontsize=7)
    s.figure(fig, "Nearest-neighbour distances; samples left of the red line are flagged as copies")
    order = list(result.table["pixel_distance"].argsort()[:n_gallery])
    g = report.section("Galleries")
    g.figure(_gallery(result, synthetic, training, names, order, "Closest samples (top) and their nearest training image (bottom)"),
             "The samples most similar to a training image")
    rng = np.random.default_rng(0)
    random_rows = sorted(rng.choice(len(result.table), size=min(n_gallery, len(result.table)), replace=False).tolist())
    g.figure(_gallery(result, synthetic, training, names, random_rows, "Random samples (top) and their nearest training image"),
             "A random selection of samples")
    report.section("Per-sample table").table(result.table, caption="Nearest neighbours and copy flags")
    report.section("Provenance").code(provenance(config or {}, inputs=names[:1000], audit=result.summary))
    return report.write(path)
