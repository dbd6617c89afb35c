"""Sub-pixel label resizing and networks with one output head per reader (mimicking several experts at once)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from nmkit.errors import InputError
from nmkit.io.image import Image, Mask
from nmkit.segment.bundle import load_bundle
from nmkit.segment.data import Case, load_split, read_manifest
from nmkit.segment.infer import grouped_softmax, predict_image
from nmkit.segment.losses import MultiHeadLoss, SegmentationLoss
from nmkit.segment.preprocess import Preprocessing
from nmkit.segment.train import TrainConfig, label_fractions_2d, resize_2d, train


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def test_label_fractions_keep_the_edge_where_nearest_resizing_moves_it():
    """At a 2x reduction nearest-neighbour labels sit half a pixel off the resized image; area fractions do not."""
    yy, xx = np.mgrid[:256, :256]
    disc = ((yy - 121.3) ** 2 + (xx - 134.6) ** 2) <= 37.0 ** 2
    fractions = label_fractions_2d(disc.astype(np.int64), (128, 128), 2)
    assert fractions.shape == (2, 128, 128) and torch.allclose(fractions.sum(0), torch.ones(128, 128))
    up = torch.nn.functional.interpolate(fractions[None, 1:], size=(256, 256), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    nearest = resize_2d(disc.astype(np.float32), (128, 128), "nearest")
    up_nearest = torch.nn.functional.interpolate(nearest[None], size=(256, 256), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    centre = np.array(ndimage.center_of_mass(disc))
    assert np.abs(np.array(ndimage.center_of_mass(up)) - centre).max() < 0.1
    assert np.abs(np.array(ndimage.center_of_mass(up_nearest)) - centre).min() > 0.35  # half a native pixel, both axes
    assert _dice(up, disc) > 0.995 > _dice(up_nearest, disc) + 0.005


def test_loss_is_the_same_for_labels_and_their_one_hot_fractions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    labels = torch.randint(0, 3, (2, 1, 16, 16))
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    for name in ("dice", "dice-ce", "dice-boundary"):
        loss = SegmentationLoss(name, 3)
        assert float(loss(logits, labels)) == pytest.approx(float(loss(logits, onehot)), rel=1e-5)
    with pytest.raises(ValueError, match="class fractions"):
        SegmentationLoss("dice", 3)(logits, onehot[:, :2])


def test_multi_head_loss_scores_each_head_against_its_own_target():
    seg = SegmentationLoss("dice-ce", 2)
    target_a = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target_a[..., 2:6, 2:6] = 1
    target_b = torch.zeros_like(target_a)
    target_b[..., 1:4, 3:8] = 1
    perfect_a = torch.cat([(1 - target_a) * 10.0, target_a * 10.0], 1).float()
    perfect_b = torch.cat([(1 - target_b) * 10.0, target_b * 10.0], 1).float()
    loss = MultiHeadLoss(seg, 2)
    right = loss(torch.cat([perfect_a, perfect_b], 1), torch.cat([target_a, target_b], 1))
    swapped = loss(torch.cat([perfect_b, perfect_a], 1), torch.cat([target_a, target_b], 1))
    assert float(right) < 0.01 < float(swapped)
    with pytest.raises(ValueError, match="2 heads"):
        loss(perfect_a, torch.cat([target_a, target_b], 1))
    probs = grouped_softmax(torch.randn(3, 6, 4, 4), 3)
    assert torch.allclose(probs.reshape(3, 3, 2, 4, 4).sum(2), torch.ones(3, 3, 4, 4))


def two_reader_case(rng: np.random.Generator, size: int = 64) -> Case:
    """A count image of an elliptical organ; a generous reader draws 3 px outside its edge, a tight one 3 px inside."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    ry, rx = rng.uniform(0.16, 0.24, 2) * size
    organ = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = Image(rng.poisson(60.0 * (0.15 + 0.85 * organ)).astype(np.float32), spacing=(2.0, 2.0), modality="NM", units="counts")
    generous = ndimage.binary_dilation(organ, iterations=3)
    tight = ndimage.binary_erosion(organ, iterations=3)
    return Case(f"c{rng.integers(1e9)}", image, np.stack([generous, tight]).astype(np.int64), heads=("generous", "tight"))


def test_one_network_mimics_a_generous_and_a_tight_reader(tmp_path):
    rng = np.random.default_rng(11)
    train_cases = [two_reader_case(rng) for _ in range(24)]
    val_cases = [two_reader_case(rng) for _ in range(4)]
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(64, 64))
    config = TrainConfig(network="unet", network_options={"channels": (8, 16, 32, 64)}, loss="dice-ce", epochs=12, batch_size=8,
                         learning_rate=5e-3, seed=5, labels={1: "organ"}, patience=20, num_threads=1, heads=("generous", "tight"), iterations_per_epoch=8,
                         count_reduction=None)
    bundle_dir = train(train_cases, val_cases, prep, config, tmp_path / "bundle", progress=False)
    desc = json.loads((bundle_dir / "bundle.json").read_text())
    assert desc["heads"] == ["generous", "tight"] and desc["default_head"] == "generous"
    assert desc["network"]["out_channels"] == 4
    assert set(desc["validation"]["val_dice_per_head"]) == {"generous", "tight"}
    log = pd.read_csv(bundle_dir / "training_log.csv")
    assert {"val_dice_generous", "val_dice_tight"} <= set(log.columns)
    bundle = load_bundle(bundle_dir, device="cpu")
    assert bundle.heads == ("generous", "tight") and bundle.n_heads == 2
    tests = [two_reader_case(rng) for _ in range(4)]
    own, other = [], []
    for case in tests:
        g = predict_image(bundle, case.image, head="generous").array == 1
        t = predict_image(bundle, case.image, head="tight").array == 1
        assert g.sum() > 1.15 * t.sum()  # the two heads keep their readers' habits
        own += [_dice(g, case.label[0] == 1), _dice(t, case.label[1] == 1)]
        other += [_dice(g, case.label[1] == 1), _dice(t, case.label[0] == 1)]
    assert np.mean(own) > 0.85 and np.mean(own) > np.mean(other) + 0.05
    default = predict_image(bundle, tests[0].image)
    assert default.meta["head"] == "generous"
    assert np.array_equal(default.array, predict_image(bundle, tests[0].image, head="generous").array)
    with pytest.raises(InputError, match="no head 'R9'"):
        predict_image(bundle, tests[0].image, head="R9")
    # the demo report's table: each head against each reader (the diagonal wins)
    from nmkit.demo import _evaluate_heads

    for i, case in enumerate(tests):
        case.case_id = f"t{i}"
    data = {"readers": {name: {c.case_id: c.label[k] == 1 for c in tests} for k, name in enumerate(bundle.heads)},
            "consensus": {c.case_id: c.label[0] == 1 for c in tests}}
    default_predictions = {c.case_id: predict_image(bundle, c.image) for c in tests}
    table = _evaluate_heads(bundle, tests, default_predictions, data, list(bundle.heads), tmp_path).set_index("head")
    assert (tmp_path / "heads_dice.csv").exists()
    assert table.loc["generous", "dice_vs_generous"] > table.loc["generous", "dice_vs_tight"]
    assert table.loc["tight", "dice_vs_tight"] > table.loc["tight", "dice_vs_generous"]


def test_heads_must_match_the_cases(tmp_path):
    rng = np.random.default_rng(2)
    cases = [two_reader_case(rng, 32) for _ in range(2)]
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(32, 32))
    config = TrainConfig(network="unet", network_options={"channels": (4, 8)}, epochs=1, batch_size=2, labels={1: "organ"}, num_threads=1)
    with pytest.raises(ValueError, match="no heads"):
        train(cases, cases, prep, config, tmp_path / "a", progress=False)
    config.heads = ("tight", "generous")
    with pytest.raises(ValueError, match="do not match"):
        train(cases, cases, prep, config, tmp_path / "b", progress=False)
    config.heads, config.default_head = ("generous", "tight"), "R3"
    with pytest.raises(ValueError, match="default head"):
        config.resolved_default_head()


def _write_manifest(tmp_path, cases: list[Case]) -> str:
    from nmkit.io.volume_files import write_volume

    rows = []
    for i, case in enumerate(cases):
        write_volume(case.image, tmp_path / f"img{i}.nii.gz")
        row = {"case_id": f"c{i}", "image": f"img{i}.nii.gz", "split": "val" if i >= 6 else "train"}
        for k, head in enumerate(case.heads):
            write_volume(Mask.like(case.image, case.label[k].astype(np.uint8), labels={1: "organ"}), tmp_path / f"{head}{i}.nii.gz")
            row[f"mask_{head}"] = f"{head}{i}.nii.gz"
        rows.append(row)
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_manifest_heads_train_and_predict_cli(tmp_path):
    from nmkit.cli import main

    rng = np.random.default_rng(4)
    cases = [two_reader_case(rng, 32) for _ in range(8)]
    manifest = _write_manifest(tmp_path, cases)
    table = read_manifest(manifest)
    loaded = load_split(table, "train", heads=("generous", "tight"))
    assert len(loaded) == 6 and loaded[0].label.shape == (2, 32, 32) and loaded[0].heads == ("generous", "tight")
    assert np.array_equal(loaded[0].label, cases[0].label)
    with pytest.raises(InputError, match="mask_R1"):
        load_split(table, "train", heads=("R1",))
    assert main(["train", manifest, "--out", str(tmp_path / "bundle"), "--size", "32", "32", "--epochs", "1", "--batch-size", "2",
                 "--labels", "1=organ", "--heads", "generous", "tight", "--default-head", "tight"]) == 0
    assert load_bundle(tmp_path / "bundle", device="cpu").default_head == "tight"
    assert main(["predict", str(tmp_path / "bundle"), str(tmp_path / "img0.nii.gz"), "--out", str(tmp_path / "pred"), "--head", "all"]) == 0
    assert (tmp_path / "pred" / "img0_generous.nii.gz").exists() and (tmp_path / "pred" / "img0_tight.nii.gz").exists()
    record = json.loads((tmp_path / "pred" / "provenance.json").read_text())
    assert record["config"]["heads"] == ["generous", "tight"]
    assert main(["predict", str(tmp_path / "bundle"), str(tmp_path / "img0.nii.gz"), "--out", str(tmp_path / "p2"), "--head", "R7"]) == 2
    assert main(["train", manifest, "--out", str(tmp_path / "b2"), "--size", "32", "32", "--epochs", "1",
                 "--heads", "generous", "tight", "--default-head", "R7"]) == 2
