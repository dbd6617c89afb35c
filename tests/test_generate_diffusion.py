"""Diffusion synthesis: count-aware transforms, training/sampling (DDPM, DDIM), mask conditioning, checkpoints, writers.

A tiny mask-conditioned DDPM (64x64, 60 iterations) is trained once on simulated thyroid scans with cold nodules;
the tests check behaviour that a broken pipeline would not show (the nodule region follows the mask, Poisson
statistics after resampling, deterministic DDIM, checkpoints that reproduce the model, synthetic markings).
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import torch

from nmkit.errors import InputError
from nmkit.generate.data import load_folder, make_nodule_mask, thyroid_phantoms
from nmkit.generate.model import DiffusionConfig, build_unet, load_diffusion, sample, synthesise, to_physical, train_diffusion
from nmkit.generate.transforms import (anscombe, dispersion_index, from_model_space, inverse_anscombe, poisson_resample,
                                       to_model_space)
from nmkit.generate.writers import SERIES_DESCRIPTION, write_samples

LABELS = {1: "gland", 2: "cold_nodule", 3: "hot_nodule"}


@pytest.fixture(scope="module")
def phantoms():
    return thyroid_phantoms(8, seed=3, matrix=64, pathologies=("cold_nodules",))


@pytest.fixture(scope="module")
def conditioned(phantoms, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("diffusion") / "conditioned"
    config = DiffusionConfig(image_size=64, channels=(8, 16, 16), norm_num_groups=4, num_train_timesteps=100, iterations=60,
                             batch_size=4, learning_rate=3e-3, condition_labels=LABELS, prediction_type="sample")
    model, config, history = train_diffusion(phantoms, config, out, source={"kind": "thyroid_phantoms", "n": 8, "seed": 3, "matrix": 64,
                                                                            "pathologies": ["cold_nodules"]})
    return model, config, history, out


@pytest.fixture(scope="module")
def nodule_masks(phantoms):
    return [make_nodule_mask(p.label > 0, 14.0, p.image.spacing, i) for i, p in enumerate(phantoms[:4])]


def test_inverse_anscombe_is_unbiased_at_low_counts():
    rng = np.random.default_rng(0)
    for lam in (1.0, 3.0, 10.0, 100.0):
        mean_transformed = anscombe(rng.poisson(lam, 400_000)).mean()
        assert inverse_anscombe(mean_transformed) == pytest.approx(lam, rel=0.02)
        algebraic = (mean_transformed / 2) ** 2 - 0.375
        if lam <= 3:  # the naive inverse is clearly biased where the unbiased one is not
            assert abs(algebraic - lam) > 0.07 * lam > abs(inverse_anscombe(mean_transformed) - lam)
    assert inverse_anscombe(anscombe(0.0)) == pytest.approx(0.0, abs=1e-9)


def test_model_space_round_trip_keeps_counts(phantoms):
    counts = phantoms[0].image.array
    x, scale = to_model_space(counts, "counts")
    assert x.dtype == np.float32 and -1.0 <= x.min() and np.percentile(x, 99.5) == pytest.approx(1.0, abs=1e-3)
    back = from_model_space(x, "counts", scale)
    high = counts > 50  # the unbiased inverse differs from the algebraic one only at low counts
    assert np.allclose(back[high], counts[high], rtol=0.01)


def test_conditioned_training_learns_the_nodule(conditioned, nodule_masks):
    model, config, history, _ = conditioned
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert config.scale > 10 and config.spacing == pytest.approx((2.03125, 2.03125))
    values = to_physical(sample(model, config, 4, seed=1, method="ddim", steps=5, conditions=nodule_masks), config)
    glands_only = [(m > 0).astype(np.int64) for m in nodule_masks]
    counterfactual = to_physical(sample(model, config, 4, seed=1, method="ddim", steps=5, conditions=glands_only), config)
    for v, c, mask in zip(values, counterfactual, nodule_masks):
        gland, nodule, background = v[mask == 1].mean(), v[mask == 2].mean(), v[mask == 0].mean()
        assert background < 0.5 * gland  # a thyroid, not noise
        assert nodule < 0.85 * gland  # the conditioned nodule is cold
        assert c[mask == 2].mean() > 0.95 * c[mask == 1].mean()  # same noise without the nodule in the mask: not cold


def test_poisson_resampled_synthetic_images_have_poisson_statistics(conditioned, nodule_masks):
    model, config, _, _ = conditioned
    estimates = to_physical(sample(model, config, 4, seed=2, method="ddim", steps=5, conditions=nodule_masks), config)
    rng = np.random.default_rng(5)
    pairs = [poisson_resample(e, 300_000, rng) for e in estimates]
    assert all(c.sum() == pytest.approx(300_000, rel=0.01) and np.all(c == np.round(c)) for c, _ in pairs)
    counts = np.hstack([c[:60, :60] for c, _ in pairs])
    expected = np.hstack([e[:60, :60] for _, e in pairs])
    assert 0.85 < dispersion_index(counts, expected) < 1.2
    # synthesise() gives the same acquisitions end to end
    direct = synthesise(model, config, 2, seed=2, steps=5, conditions=nodule_masks[:2], total_counts=300_000)
    assert direct.shape == (2, 64, 64) and direct.sum(axis=(1, 2)) == pytest.approx([300_000] * 2, rel=0.01)


def test_dispersion_index_detects_double_noise():
    rng = np.random.default_rng(1)
    flat = np.full((60, 60), 40.0)
    noisy_estimate = rng.poisson(flat).astype(float)
    counts, expected = poisson_resample(noisy_estimate, flat.sum(), rng, smooth_px=3.0)
    assert 0.85 < dispersion_index(counts, expected) < 1.15
    doubly_noisy = rng.poisson(noisy_estimate)  # Poisson drawn from an already noisy image: variance ~ 2 x mean
    assert dispersion_index(doubly_noisy, flat) > 1.6


def test_ddpm_and_ddim_sampling(conditioned, nodule_masks):
    model, config, _, _ = conditioned
    a = sample(model, config, 2, seed=7, method="ddim", steps=4, conditions=nodule_masks[:2])
    b = sample(model, config, 2, seed=7, method="ddim", steps=4, conditions=nodule_masks[:2])
    c = sample(model, config, 2, seed=8, method="ddim", steps=4, conditions=nodule_masks[:2])
    assert a.shape == (2, 64, 64) and np.array_equal(a, b) and not np.allclose(a, c)
    d = sample(model, config, 1, seed=7, method="ddpm", conditions=nodule_masks[:1])  # all 100 timesteps
    assert np.isfinite(d).all() and -1.0 <= d.min() and d.max() <= 2.0
    with pytest.raises(ValueError, match="mask-conditioned"):
        sample(model, config, 1)


def test_sampling_progress_counts_every_image_and_changes_nothing(conditioned, nodule_masks, monkeypatch):
    """progress=True: a bar advanced once per batch up to n images (shown on a terminal); the samples stay the same."""
    import tqdm.auto

    model, config, _, _ = conditioned
    bars = []

    class Recorder:
        def __init__(self, total, disable, **kwargs):
            self.total, self.disable, self.updates = total, disable, []
            bars.append(self)

        def update(self, k):
            self.updates.append(k)

        def close(self):
            pass

    plain = sample(model, config, 3, seed=5, method="ddim", steps=3, conditions=nodule_masks[:3], batch_size=2)
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    shown = sample(model, config, 3, seed=5, method="ddim", steps=3, conditions=nodule_masks[:3], batch_size=2, progress=True)
    assert np.array_equal(plain, shown)
    assert len(bars) == 1 and bars[0].total == 3 and bars[0].updates == [2, 1] and bars[0].disable is None
    sample(model, config, 1, seed=5, method="ddim", steps=2, conditions=nodule_masks[:1])
    assert bars[-1].disable is True  # quiet unless asked


def test_checkpoint_round_trip(conditioned, nodule_masks, tmp_path):
    model, config, _, folder = conditioned
    loaded, loaded_config = load_diffusion(folder, device="cpu")
    assert dict(loaded_config.to_dict(), device=None) == dict(config.to_dict(), device=None)
    description = json.loads((folder / "diffusion.json").read_text())
    assert description["training_source"]["kind"] == "thyroid_phantoms" and description["provenance"]["config_hash"]
    assert (folder / "diffusion.safetensors").read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    a = sample(model, config, 1, seed=3, steps=3, conditions=nodule_masks[:1])
    b = sample(loaded, loaded_config, 1, seed=3, steps=3, conditions=nodule_masks[:1])
    assert np.allclose(a, b, atol=1e-5)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "diffusion.json").write_text((folder / "diffusion.json").read_text())
    (broken / "diffusion.safetensors").write_bytes(b"not weights")
    with pytest.raises(InputError, match="broken/diffusion.safetensors: cannot read the weights"):
        load_diffusion(broken)
    with pytest.raises(InputError, match="not a diffusion checkpoint"):
        load_diffusion(tmp_path)


def test_unconditional_model_and_folder_training(tmp_path, phantoms):
    from nmkit.io.image import Image
    from nmkit.io.volume_files import write_volume

    folder = tmp_path / "images"
    for p in phantoms[:3]:
        write_volume(p.image, folder / f"{p.name}.nii.gz")
    (folder / "notes.nii.gz").write_text("not an image")  # logged and skipped
    write_volume(Image(np.zeros((3, 8, 8), np.float32), (1.0, 1.0, 1.0)), folder / "volume.nii.gz")  # 3D: skipped
    images = load_folder(folder)
    assert sorted(i.name for i in images) == sorted(f"{p.name}.nii.gz" for p in phantoms[:3])
    assert images[0].image.spacing == pytest.approx(phantoms[0].image.spacing)
    config = DiffusionConfig(image_size=32, channels=(8, 16), norm_num_groups=4, num_train_timesteps=20, iterations=2, batch_size=2)
    model, config, _ = train_diffusion(images, config)
    assert config.spacing == pytest.approx((4.0625, 4.0625))  # 64 px at 2.03 mm resized to 32 px
    assert build_unet(config).conv_in.conv.in_channels == 1
    out = sample(model, config, 2, seed=0, method="ddpm")  # all 20 timesteps
    assert out.shape == (2, 32, 32)
    assert np.array_equal(sample(model, config, 2, seed=0, method="ddpm", steps=20), out)
    with pytest.raises(ValueError, match="all 20 training timesteps"):  # strided DDPM would leave noise (MONAI steps t -> t-1)
        sample(model, config, 2, seed=0, method="ddpm", steps=5)
    with pytest.raises(ValueError, match="not mask-conditioned"):
        sample(model, config, 1, conditions=[np.zeros((32, 32), int)])
    with pytest.raises(InputError, match="no readable 2D images"):
        load_folder(_empty(tmp_path))


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("nothing")
    return folder


def test_writers_mark_images_synthetic(tmp_path):
    from PIL import Image as PILImage

    from nmkit.io.volume_files import read_volume

    counts = np.random.default_rng(0).poisson(30.0, (2, 64, 64)).astype(float)
    info = {"model": "thyroid-ddpm", "seed": 11, "sampler": "ddim-10", "config_hash": "abc123", "condition": "14 mm cold nodule"}
    rows = write_samples(counts, tmp_path, info, spacing=(2.0, 2.5))
    ds = pydicom.dcmread(rows[1]["dicom"])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
    assert ds.SeriesDescription == SERIES_DESCRIPTION and ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.PatientID == "SYNTHETIC-11"
    assert "thyroid-ddpm" in ds.ImageComments and "seed 11" in ds.ImageComments and "14 mm" in ds.ImageComments
    assert ds.private_block(0x0011, "NMKIT SYNTHETIC")[0x01].value == "thyroid-ddpm"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and [float(v) for v in ds.PixelSpacing] == [2.5, 2.0]
    assert np.array_equal(ds.pixel_array, counts[1].astype(np.uint16))  # counts stored exactly
    nifti = read_volume(rows[0]["nifti"])
    assert nifti.spacing[:2] == pytest.approx((2.0, 2.5)) and np.allclose(nifti.array.squeeze(), counts[0])
    sidecar = json.loads((tmp_path / "nifti" / "synthetic_11_0000.json").read_text())
    assert sidecar["synthetic"] is True and sidecar["seed"] == 11
    assert "SYNTHETIC" in PILImage.open(rows[0]["png"]).text["Description"]
    assert pydicom.dcmread(rows[0]["dicom"]).SOPInstanceUID != ds.SOPInstanceUID
