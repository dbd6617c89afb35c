"""Audit of synthetic images: copies of training images are flagged, new images are not; Fréchet distance ranks
realistic samples above implausible ones; HTML report; and the whole `nmkit synth train|sample|audit` chain."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from nmkit.generate.audit import DiffusionFeatures, audit, frechet_distance, image_features, write_audit_report
from nmkit.generate.data import thyroid_phantoms
from nmkit.phantoms.thyroid import simulate_thyroid


@pytest.fixture(scope="module")
def cohort():
    train = thyroid_phantoms(12, seed=5, matrix=64)
    new = thyroid_phantoms(5, seed=77, matrix=64)
    return train, new


def _redrawn_copy(item, rng):
    """The same simulated patient as a training image with a fresh Poisson draw: a memorised anatomy."""
    seed, index = item.image.meta["seed"]
    case = simulate_thyroid((seed, index), pathology=item.image.meta["pathology"], total_counts=item.image.meta["total_counts"], matrix=64)
    assert np.array_equal(case.counts, item.image.array)  # same case
    return rng.poisson(case.expected).astype(np.float32)


def test_copies_flagged_and_new_images_not(cohort, tmp_path):
    train, new = cohort
    rng = np.random.default_rng(0)
    training = [t.image.array for t in train]
    names = [t.name for t in train]
    synthetic = [training[3].copy(), _redrawn_copy(train[7], rng), np.fliplr(training[5]).copy()] + [n.image.array for n in new]
    result = audit(synthetic, training, training_names=names)
    table = result.table
    assert list(table["memorised"]) == [True, True, False] + [False] * len(new)
    assert table.loc[0, "nearest_training"] == names[3] and table.loc[0, "pixel_distance"] < 1e-6
    assert table.loc[1, "nearest_training"] == names[7] and table.loc[1, "distance_ratio"] < 0.6
    assert table.loc[0, "feature_nearest_training"] == names[3]
    # genuinely new patients are about as far from the training set as training images are from each other
    assert (table["pixel_distance_vs_train_median"][3:] > 0.7).all()
    assert result.threshold == pytest.approx(0.5 * np.percentile(result.train_nn_distances, 5))
    strict = audit(synthetic, training, threshold=1e-6)  # an explicit threshold: only the exact copy is that close
    assert list(strict.flagged) == [True] + [False] * (len(synthetic) - 1)
    path = write_audit_report(result, synthetic, training, tmp_path / "audit.html", training_names=names)
    html = path.read_text()
    assert "Galleries" in html and html.count("<img") >= 3 and "2 flagged as memorised copies" in html


def test_frechet_distance_ranks_plausible_samples_first(cohort):
    train, new = cohort
    training = [t.image.array for t in train]
    rng = np.random.default_rng(3)
    plausible = [n.image.array for n in new]
    implausible = [rng.poisson(np.full((64, 64), float(a.mean()))).astype(np.float32) for a in plausible]  # flat noise, no thyroid
    good = audit(plausible, training).frechet
    bad = audit(implausible, training).frechet
    assert 0 <= good < bad / 3
    a = rng.normal(size=(200, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([2.0, 0, 0])) == pytest.approx(4.0, rel=1e-6)  # mean shift only
    from scipy import linalg

    b = rng.normal(size=(300, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 2.0]]) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * np.real(linalg.sqrtm(ca @ cb)))
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)  # the textbook FID formula
    assert image_features(np.zeros((2, 16, 16))).shape == (2, 20)


def test_synth_cli_chain(tmp_path, cohort, capsys):
    import torch

    from nmkit.cli import main
    from nmkit.generate.model import load_diffusion

    torch.set_num_threads(1)
    ckpt, samples, report = tmp_path / "ckpt", tmp_path / "samples", tmp_path / "audit"
    assert main(["synth", "train", "--phantom-thyroid", "4", "--conditioned", "--out", str(ckpt), "--channels", "8", "16",
                 "--timesteps", "20", "--iterations", "2", "--batch-size", "2"]) == 0
    assert main(["synth", "sample", str(ckpt), "--out", str(samples), "-n", "3", "--steps", "3", "--nodule-mm", "15",
                 "--counts", "150000", "--seed", "4"]) == 0
    ds = pydicom.dcmread(next((samples / "dicom").glob("*.dcm")))
    assert "SYNTHETIC" in ds.ImageType and ds.PatientName.family_name == "SYNTHETIC" and "15 mm cold nodule" in ds.ImageComments
    assert int(ds.pixel_array.sum()) == pytest.approx(150_000, rel=0.01)  # Poisson acquisition at the chosen count level
    assert len(list((samples / "conditions").glob("*.nii.gz"))) == 3
    assert json.loads((samples / "provenance.json").read_text())["inputs"] == [str(ckpt)]
    assert main(["synth", "audit", str(ckpt), "--synthetic", str(samples / "nifti"), "--out", str(report)]) == 0
    summary = json.loads((report / "audit.json").read_text())
    assert summary["n_synthetic"] == 3 and summary["n_training"] == 4 and summary["feature_kind"] == "diffusion-encoder"
    assert (report / "audit.html").stat().st_size > 10_000
    model, config = load_diffusion(ckpt)
    feats = DiffusionFeatures(model, config)(np.zeros((2, 64, 64), np.float32))
    assert feats.shape == (2, 2 * (8 + 16 + 16)) and np.isfinite(feats).all()
    assert main(["synth", "sample", str(ckpt), "--out", str(tmp_path / "x"), "-n", "1"]) == 2  # conditioned: needs a mask
    capsys.readouterr()
    assert main(["synth", "sample", str(ckpt), "--out", str(tmp_path / "y"), "-n", "1", "--sampler", "ddpm", "--steps", "7",
                 "--nodule-mm", "15"]) == 2  # strided DDPM refused, before sampling
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps 7" in err[0] and "--sampler ddim" in err[0] and not (tmp_path / "y").exists()
