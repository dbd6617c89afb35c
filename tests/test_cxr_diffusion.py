"""Issue 18 (round 3): diffusion checkpoints resume exactly; few-label radiograph segmentation helpers (folds by patient,
no side-swapping augmentation, per-lung metrics, paired statistics) on tiny synthetic radiographs and real cxr_lungs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from nmkit.errors import InputError
from nmkit.generate.data import load_folder, load_source
from nmkit.generate.model import TRAINING_STATE, DiffusionConfig, read_description, train_diffusion


def _chest(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A toy radiograph (8-bit) with two dark 'lungs' on a bright body, and its label map (1 right = image left, 2 left)."""
    yy, xx = np.indices((size, size))
    label = np.zeros((size, size), np.uint8)
    cy = size / 2 + rng.uniform(-2, 2)
    for value, cx in ((1, size * 0.3), (2, size * 0.7)):
        label[((yy - cy) / (size * 0.32)) ** 2 + ((xx - cx) / (size * 0.14)) ** 2 <= 1] = value
    image = np.where(label > 0, 60, 180) + rng.normal(0, 8, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), label


@pytest.fixture(scope="module")
def chest_folder(tmp_path_factory) -> Path:
    """8 toy radiographs of 4 'patients' in images/ + masks/ + manifest.csv (cxr_lungs' layout)."""
    root = tmp_path_factory.mktemp("chest")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "patientid"])
        for i in range(8):
            image, label = _chest(rng)
            PILImage.fromarray(image).save(root / "images" / f"c{i}.png")
            PILImage.fromarray(label).save(root / "masks" / f"c{i}.png")
            writer.writerow([f"c{i}", f"p{i // 2}"])
    return root


def _tiny(iterations: int) -> DiffusionConfig:
    return DiffusionConfig(image_size=32, channels=(8, 16), norm_num_groups=4, num_train_timesteps=50, iterations=iterations,
                           batch_size=2, normalisation="percentile", num_threads=1)


def test_resume_equals_uninterrupted_run(chest_folder, tmp_path):
    """2 iterations + resume to 4 gives bit-identical weights to 4 iterations in one go (optimiser and RNG states restored)."""
    images = load_folder(chest_folder / "images")
    whole, _, _ = train_diffusion(images, _tiny(4), tmp_path / "whole", checkpoint_every=2)
    train_diffusion(images, _tiny(2), tmp_path / "split", checkpoint_every=2)
    assert (tmp_path / "split" / TRAINING_STATE).exists()
    resumed, _, history = train_diffusion(images, _tiny(4), tmp_path / "split", resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert history[-1]["iteration"] == 4 and [h["iteration"] for h in history] == sorted(h["iteration"] for h in history)
    # an interrupted run whose first half differs (other seed) does not end equal: the check above is not vacuous
    train_diffusion(images, DiffusionConfig(**{**_tiny(2).__dict__, "seed": 7}), tmp_path / "other", checkpoint_every=2)
    other, _, _ = train_diffusion(images, DiffusionConfig(**{**_tiny(4).__dict__, "seed": 7}), tmp_path / "other", resume=True)
    assert not torch.equal(other.state_dict()["conv_in.conv.weight"], whole.state_dict()["conv_in.conv.weight"])


def test_resume_refuses_other_settings_and_missing_state(chest_folder, tmp_path):
    images = load_folder(chest_folder / "images")
    with pytest.raises(InputError, match="nothing to resume"):
        train_diffusion(images, _tiny(2), tmp_path / "empty", resume=True)
    train_diffusion(images, _tiny(1), tmp_path / "run", checkpoint_every=1)
    wider = _tiny(2)
    wider.channels = (8, 32)
    with pytest.raises(InputError, match="channels"):
        train_diffusion(images, wider, tmp_path / "run", resume=True)


def test_synth_train_cli_checkpoint_and_resume(chest_folder, tmp_path, capsys):
    from nmkit.cli import main

    out = tmp_path / "ckpt"
    common = ["synth", "train", "--folder", str(chest_folder / "images"), "--out", str(out), "--size", "32", "--channels", "8", "16",
              "--timesteps", "20", "--batch-size", "2", "--normalisation", "percentile", "--device", "cpu"]
    assert main(common + ["--iterations", "2", "--checkpoint-every", "1"]) == 0
    assert main(common + ["--iterations", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resuming at iteration 2/3" in text
    description = read_description(out)
    assert description["history"][-1]["iteration"] == 3 and description["config"]["iterations"] == 3


def test_folder_source_with_names_reloads_only_the_training_split(chest_folder):
    images = load_source({"kind": "folder", "path": str(chest_folder / "images"), "names": ["c1.png", "c4.png"]})
    assert [i.name for i in images] == ["c1.png", "c4.png"]
    with pytest.raises(InputError, match="none of the recorded"):
        load_source({"kind": "folder", "path": str(chest_folder / "images"), "names": ["gone.png"]})


def test_patient_folds_keep_patients_together():
    from nmkit.generate.fewlabel import patient_folds

    patients = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "f"]
    folds = patient_folds(patients, 3, seed=2)
    for p in set(patients):
        assert len({f for f, q in zip(folds, patients) if q == p}) == 1
    assert sorted(np.bincount(folds)) in ([3, 3, 4], [2, 4, 4])
    with pytest.raises(ValueError):
        patient_folds(patients, 7)


def test_random_affine_keeps_sides():
    """The augmentation never mirrors: a label on the image's left half stays there (right lung stays right)."""
    from nmkit.generate.pretrain import random_affine

    y = torch.zeros(4, 1, 32, 32, dtype=torch.long)
    y[:, :, 8:24, 4:12] = 1
    x = y.float()
    xa, ya = random_affine(x, y, np.random.default_rng(0))
    assert xa.shape == x.shape and ya.dtype == torch.long
    cols = torch.nonzero(ya[:, 0] == 1)[:, 2].float()
    assert len(cols) > 50 and cols.mean() < 14


def test_fewlabel_train_and_evaluate_on_toy_radiographs(chest_folder):
    """A short training on 6 toy radiographs segments the 2 held-out ones (both 'lungs' found, right on the right side)."""
    from nmkit.generate.fewlabel import evaluate, load_pairs, mean_ci, paired_difference, train_one

    torch.set_num_threads(1)
    items = load_pairs(chest_folder, size=32)
    assert len(items) == 8 and {i.patient for i in items} == {"p0", "p1", "p2", "p3"}
    assert items[0].image.shape == (32, 32) and items[0].label_full.shape == (32, 32)
    model, seconds = train_one(items[:6], 32, 3, iterations=100, seed=1, channels=(8, 16), batch_size=4, learning_rate=5e-3)
    rows = evaluate(model, items[6:], 32)
    assert {"dice_right_lung", "dice_left_lung", "hd95_px32_right_lung", "dice_mean"} <= set(rows[0])
    assert all(r["dice_right_lung"] > 0.6 and r["dice_left_lung"] > 0.6 for r in rows), rows
    m, lo, hi = mean_ci([0.8, 0.9, 0.85, 0.95])
    assert lo <= m <= hi and m == pytest.approx(0.875)
    d = paired_difference([0.9, 0.8, 0.85, 0.7, 0.9], [0.8, 0.7, 0.8, 0.6, 0.85])
    assert d["mean_difference"] == pytest.approx(0.08) and d["n_positive"] == 5 and d["ci_low"] > 0
    assert json.dumps(d)


@pytest.mark.slow
def test_load_pairs_real_cxr_lungs(external_data):
    from conftest import need

    from nmkit.generate.fewlabel import load_pairs

    folder = need(external_data, "cxr_lungs")
    items = load_pairs(folder, size=64, limit=4)
    assert len(items) == 4
    for item in items:
        assert item.image.shape == (64, 64) and set(np.unique(item.label)) == {0, 1, 2}
        assert set(np.unique(item.label_full)) == {0, 1, 2} and min(item.label_full.shape) > 200
        # label 1 is the patient's right lung: on the image's left side in a PA view
        cols1, cols2 = np.nonzero(item.label_full == 1)[1].mean(), np.nonzero(item.label_full == 2)[1].mean()
        assert cols1 < cols2
    assert items[0].patient == "5"  # gb_000's patientid in manifest.csv


def test_lung_mask_conditioned_diffusion_samples_follow_given_masks(chest_folder, tmp_path):
    """Item 4's machinery: a DDPM conditioned on right/left lung label maps trains and samples one image per given mask."""
    from nmkit.generate.data import TrainingImage
    from nmkit.generate.fewlabel import load_pairs
    from nmkit.generate.model import load_diffusion, sample
    from nmkit.generate.pretrain import build_segnet, init_from_diffusion
    from nmkit.io.image import Image

    torch.set_num_threads(1)
    pairs = load_pairs(chest_folder, size=32)
    images = [TrainingImage(p.name, Image(array=p.image, spacing=(1.0, 1.0)), p.label) for p in pairs[:6]]
    config = _tiny(2)
    config.condition_labels = {1: "right_lung", 2: "left_lung"}
    train_diffusion(images, config, tmp_path / "cond")
    model, loaded = load_diffusion(tmp_path / "cond")
    assert loaded.n_condition == 2 and model.conv_in.conv.weight.shape[1] == 3
    out = sample(model, loaded, 2, seed=0, method="ddim", steps=3, conditions=[p.label for p in pairs[6:]])
    assert out.shape == (2, 32, 32) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="mask-conditioned"):
        sample(model, loaded, 1, steps=2)
    # its encoder still initialises the segmentation net (mask input channels dropped)
    report = init_from_diffusion(build_segnet(tmp_path / "cond", 3), tmp_path / "cond")
    assert report["adapted"] and not report["skipped"]


def test_conditioned_model_warm_started_from_unconditional_checkpoint(chest_folder, tmp_path):
    """``init_from``: a mask-conditioned DDPM starts from a pre-trained unconditional one; the mask channels start at
    zero, so before training it predicts exactly what the pre-trained model does, whatever the mask."""
    from nmkit.cli import main
    from nmkit.generate.data import TrainingImage
    from nmkit.generate.fewlabel import load_pairs
    from nmkit.generate.model import build_unet, load_diffusion, warm_start
    from nmkit.io.image import Image

    torch.set_num_threads(1)
    train_diffusion(load_folder(chest_folder / "images"), _tiny(2), tmp_path / "uncond")
    plain, _ = load_diffusion(tmp_path / "uncond")
    config = _tiny(0)
    config.condition_labels = {1: "right_lung", 2: "left_lung"}
    cond = build_unet(config)
    report = warm_start(cond, config, tmp_path / "uncond")
    assert report["adapted"] == ["conv_in.conv.weight"]
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 40])
    masks = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(cond.eval()(torch.cat([x, masks], 1), t), plain(x, t), atol=1e-6)
    # a network of another layout is refused with the differing setting named
    wider = _tiny(1)
    wider.channels = (8, 32)
    with pytest.raises(InputError, match="channels"):
        warm_start(build_unet(wider), wider, tmp_path / "uncond")
    # training from it moves the weights away from the start (the masks get used) and the CLI has it too
    pairs = load_pairs(chest_folder, size=32)
    images = [TrainingImage(p.name, Image(array=p.image, spacing=(1.0, 1.0)), p.label) for p in pairs[:4]]
    trained, _, _ = train_diffusion(images, DiffusionConfig(**{**config.__dict__, "iterations": 2}), init_from=tmp_path / "uncond")
    assert trained.conv_in.conv.weight[:, 1:].abs().sum() > 0
    assert main(["synth", "train", "--folder", str(chest_folder / "images"), "--out", str(tmp_path / "cli"), "--size", "32",
                 "--channels", "8", "16", "--timesteps", "50", "--iterations", "1", "--batch-size", "2", "--normalisation",
                 "percentile", "--device", "cpu", "--init", str(tmp_path / "cond-missing")]) == 2


def test_synthetic_pairs_join_the_train_split_as_a_case_table(chest_folder, tmp_path, capsys):
    """`synth sample --mask` writes its image/mask pairs as a case table (masks on the samples' grid, split train,
    one pseudo-patient each); `manifest --add-train` appends them to a real table after the patient-level split
    (never val/test) and refuses a table whose patients are already there."""
    from nmkit.cli import main
    from nmkit.dataset import read_dataset
    from nmkit.io.volume_files import read_label_map, read_volume

    common = ["--size", "32", "--channels", "8", "16", "--timesteps", "20", "--batch-size", "2", "--normalisation",
              "percentile", "--device", "cpu", "--iterations", "1"]
    assert main(["manifest", "--image-dir", str(chest_folder / "images"), "--mask-dir", str(chest_folder / "masks"),
                 "--labels", "1=right_lung", "2=left_lung", "--split", "0.5", "0.5", "--out", str(tmp_path / "real.csv")]) == 0
    assert main(["synth", "train", "--manifest", str(tmp_path / "real.csv"), "--conditioned", "--labels", "1=right_lung",
                 "2=left_lung", "--out", str(tmp_path / "cond"), *common]) == 0
    masks = [str(chest_folder / "masks" / f"c{i}.png") for i in (0, 1)]
    assert main(["synth", "sample", str(tmp_path / "cond"), "--mask", *masks, "-n", "3", "--steps", "2", "--formats", "nii.gz",
                 "--out", str(tmp_path / "samples")]) == 0
    pairs = read_dataset(tmp_path / "samples" / "dataset.csv", need_masks=True)
    assert len(pairs) == 3 and set(pairs.split) == {"train"} and pairs.patient_id.nunique() == 3
    first = pairs.iloc[0]
    assert [(m.structure, m.label) for m in first.masks] == [("right_lung", 1), ("left_lung", 2)]
    image, mask = read_volume(first.image), read_label_map(first.masks[0].file)
    assert image.array.shape == mask.array.shape == (32, 32) and set(np.unique(mask.array)) == {0, 1, 2}
    assert first.condition_source.endswith("c0.png")
    assert "func" not in json.loads((tmp_path / "samples" / "provenance.json").read_text())["config"]
    out = tmp_path / "real_plus.csv"
    assert main(["manifest", "--dataset", str(tmp_path / "real.csv"), "--split", "0.5", "0.5", "--add-train",
                 str(tmp_path / "samples" / "dataset.csv"), "--out", str(out)]) == 0
    table = read_dataset(out)
    real = read_dataset(tmp_path / "real.csv")
    assert len(table) == len(real) + 3 and set(table[table.synthetic.astype(str) == "True"].split) == {"train"}
    assert (table[table.patient_id.str.startswith("synthetic:")].split == "train").all()
    capsys.readouterr()
    assert main(["manifest", "--dataset", str(tmp_path / "real.csv"), "--add-train", str(tmp_path / "real.csv"),
                 "--out", str(tmp_path / "clash.csv")]) == 2
    assert "already in the case table" in capsys.readouterr().err and not (tmp_path / "clash.csv").exists()


def test_fold_units_and_run_tables(chest_folder, tmp_path):
    """A few-label unit: test patients never in its pool, the pool in a seeded order that every bench shares; a run
    table stays rectangular when a later run brings a new metric column."""
    import pandas as pd

    from nmkit.generate.fewlabel import append_run, fold_unit, load_pairs, patient_folds

    items = load_pairs(chest_folder, size=16)
    folds = patient_folds([i.patient for i in items], 2, 0)
    pool, test = fold_unit(items, folds, 0, seed=1)
    assert {i.patient for i in pool}.isdisjoint({i.patient for i in test}) and len(pool) + len(test) == len(items)
    assert [i.name for i in fold_unit(items, folds, 0, seed=1)[0]] == [i.name for i in pool]
    assert [i.name for i in fold_unit(items, folds, 0, seed=2)[0]] != [i.name for i in pool]
    path = tmp_path / "runs.csv"
    append_run(path, {"seed": 1, "dice_mean": 0.8})
    append_run(path, {"seed": 2, "dice_mean": 0.9, "dice_pp_mean": 0.91})
    append_run(path, {"seed": 3, "dice_pp_mean": 0.7, "dice_mean": 0.6})
    table = pd.read_csv(path)
    assert list(table.seed) == [1, 2, 3] and list(table.dice_mean) == [0.8, 0.9, 0.6]
    assert table.dice_pp_mean.isna().tolist() == [True, False, False] and table.dice_pp_mean.iloc[2] == 0.7
