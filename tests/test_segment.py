"""Segmentation training, bundles and inference on small physically plausible count images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nmkit.io.image import Image
from nmkit.segment.bundle import load_bundle
from nmkit.segment.data import Case
from nmkit.segment.infer import fill_holes, largest_component, predict_image
from nmkit.segment.losses import BoundaryLoss, SegmentationLoss, WeightSchedule, signed_distance_map
from nmkit.segment.nets import NETWORK_NAMES, build_network, parameter_count
from nmkit.segment.preprocess import Preprocessing, normalise, thin_counts
from nmkit.segment.train import TrainConfig, train


def blob_case(rng: np.random.Generator, size: int = 64, counts: float = 60.0) -> Case:
    """An elliptical 'organ' at ~6x background uptake with Poisson counts (like a planar scan)."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    ry, rx = rng.uniform(0.12, 0.22, 2) * size
    organ = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    expected = counts * (0.15 + organ * 0.85)
    img = Image(rng.poisson(expected).astype(np.float32), spacing=(2.0, 2.0), modality="NM", units="counts")
    return Case(case_id=f"c{rng.integers(1e9)}", image=img, label=organ.astype(np.int64))


def test_signed_distance_map_sign_and_scale():
    m = np.zeros((21, 21), bool)
    m[5:16, 5:16] = True
    sdm = signed_distance_map(m, spacing=(2.0, 2.0))
    assert sdm[10, 10] < 0 and sdm[0, 0] > 0
    assert sdm[5, 10] == pytest.approx(0.0)  # boundary voxel inside
    assert sdm[10, 2] == pytest.approx(6.0)  # 3 voxels outside at 2 mm


def test_boundary_loss_prefers_correct_prediction():
    m = np.zeros((1, 1, 32, 32), np.int64)
    m[..., 8:24, 8:24] = 1
    target = torch.from_numpy(m)
    good = torch.zeros(1, 2, 32, 32)
    good[:, 1] = torch.from_numpy(m[0, 0] * 10.0 - 5)
    bad = torch.zeros(1, 2, 32, 32)
    bad[:, 1] = torch.from_numpy((1 - m[0, 0]) * 10.0 - 5)
    from nmkit.segment.losses import distance_maps_for

    maps = distance_maps_for(target, 2)
    assert BoundaryLoss()(good, maps) < BoundaryLoss()(bad, maps)
    combined = SegmentationLoss("dice-boundary", 2)
    assert combined(good, target) < combined(bad, target)


def test_weight_schedules():
    inc = WeightSchedule("increase", 0.01, 0.01, 0.05)
    values = [inc.update(e) for e in range(10)]
    assert values[0] == pytest.approx(0.02) and max(values) == pytest.approx(0.05)
    ada = WeightSchedule("adaptive", 0.01, 0.02, 0.5)
    ada.update(0, 0.8)
    up = ada.update(1, 0.85)
    down = ada.update(2, 0.6)  # Dice dropped: weight halves
    assert down == pytest.approx(up / 2)


def test_count_thinning_is_poisson_with_lower_mean():
    rng = np.random.default_rng(0)
    counts = rng.poisson(100.0, size=200_000)
    thin = thin_counts(counts, 0.3, rng)
    assert thin.mean() == pytest.approx(30.0, rel=0.01)
    assert thin.var() / thin.mean() == pytest.approx(1.0, abs=0.03)


def test_counts_normalisation_is_count_level_invariant():
    rng = np.random.default_rng(1)
    expected = np.full((64, 64), 1.0)
    expected[20:40, 20:40] = 6.0
    low = normalise(rng.poisson(expected * 20), Preprocessing())
    high = normalise(rng.poisson(expected * 200), Preprocessing())
    # The organ-to-background ratio of the normalised input varies much less than a linear scaling would allow.
    assert abs(low[25:35, 25:35].mean() - high[25:35, 25:35].mean()) < 0.15


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_every_network_builds_and_keeps_shape(name):
    torch.manual_seed(0)
    net = build_network(name, 2, 1, 2, img_size=(64, 64))
    out = net(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 2, 64, 64)
    assert parameter_count(net) > 1000


def test_global_context_unet_starts_as_the_plain_unet_and_learns_an_image_wide_level():
    """The wrapped bottleneck adds nothing at init (same outputs as MONAI's UNet with the same weights); the context
    layers get gradients and, after a few steps, the net labels two images that differ only in a far-away bright spot."""
    torch.manual_seed(0)
    plain = build_network("unet", 2, 1, 2, channels=(8, 16, 32))
    wrapped = build_network("unet", 2, 1, 2, channels=(8, 16, 32), global_context=True)
    state = {k: v for k, v in wrapped.state_dict().items() if ".mix." not in k}
    plain.load_state_dict({k.replace(".block.", "."): v for k, v in state.items()})
    x = torch.rand(2, 1, 32, 32)
    plain.eval(), wrapped.eval()
    assert torch.allclose(plain(x), wrapped(x), atol=1e-6)
    assert parameter_count(wrapped) > parameter_count(plain)
    # target: class 1 everywhere when the image holds a bright corner spot, class 0 otherwise
    base = torch.rand(8, 1, 32, 32) * 0.1
    spot = base.clone()
    spot[:, :, :3, :3] = 1.0
    images = torch.cat([base, spot])
    target = torch.cat([torch.zeros(8, 32, 32), torch.ones(8, 32, 32)]).long()
    wrapped.train()
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(wrapped(images), target)
        loss.backward()
        opt.step()
    mix = [p for n, p in wrapped.named_parameters() if ".mix.2." in n]
    assert any(p.abs().sum() > 0 for p in mix)  # the context path moved off its zero start
    wrapped.eval()
    with torch.no_grad():
        pred = wrapped(images).argmax(1)
    far = pred[:, 16:, 16:]  # pixels far from the spot
    assert far[:8].float().mean() < 0.1 and far[8:].float().mean() > 0.9


def test_hrnet_3d_forward():
    net = build_network("hrnet", 3, 1, 3, width=4)
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_largest_component_post_processing():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:10, 2:10] = 1
    lab[15:17, 15:17] = 1
    out = largest_component(lab, [1])
    assert out.sum() == 64 and out[16, 16] == 0


def test_fill_holes_keeps_a_cold_nodule_inside_the_gland():
    lab = np.zeros((30, 30), np.uint8)
    lab[5:20, 5:20] = 1
    lab[10:14, 10:14] = 0  # photopenic nodule: a hole in the predicted gland
    lab[22:28, 22:28] = 2
    lab[24:26, 24:26] = 0
    lab[0:4, 25:30] = 1  # touches the border, open: nothing to fill
    out = fill_holes(lab, [1, 2])
    assert (out[10:14, 10:14] == 1).all() and (out[24:26, 24:26] == 2).all()
    assert out.sum() == lab.sum() + 16 * 1 + 4 * 2


def test_peak_normalisation_makes_a_relative_threshold_one_input_level():
    rng = np.random.default_rng(4)
    expected = np.full((96, 96), 1.0)
    yy, xx = np.mgrid[:96, :96]
    expected += 7.0 * np.exp(-(((yy - 48) / 14.0) ** 2 + ((xx - 40) / 9.0) ** 2))
    prep = Preprocessing(normalisation="peak")
    levels = []
    for scale in (30, 300, 3000):
        x = normalise(rng.poisson(expected * scale).astype(np.float32), prep)
        levels.append(float(x[48, 40]))
        assert x.dtype == np.float32 and x.min() >= 0
    # the organ's centre sits at the same fraction of the smoothed maximum at every count level (noise aside)
    assert max(levels) - min(levels) < 0.08 and all(0.85 < v < 1.15 for v in levels)


def test_train_bundle_predict_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    train_cases = [blob_case(rng) for _ in range(24)]
    val_cases = [blob_case(rng) for _ in range(4)]
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(64, 64))
    config = TrainConfig(network="unet", network_options={"channels": (8, 16, 32, 64)}, loss="dice-ce", epochs=12, batch_size=8,
                         learning_rate=5e-3, seed=5, labels={1: "organ"}, patience=20, num_threads=1)
    bundle_dir = train(train_cases, val_cases, prep, config, tmp_path / "bundle", progress=False)
    desc = json.loads((bundle_dir / "bundle.json").read_text())
    assert desc["labels"] == {"1": "organ"} and desc["validation"]["val_dice_mean"] > 0.8
    assert (bundle_dir / "training_log.csv").read_text().count("\n") >= 2 and (bundle_dir / "training_log.png").stat().st_size > 1000
    # No pickle: the weights are safetensors and load through the bundle description.
    assert (bundle_dir / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle header
    bundle = load_bundle(bundle_dir, device="cpu")
    test = blob_case(rng)
    mask = predict_image(bundle, test.image, flips=(-1,), keep_largest=True)
    assert mask.same_grid(test.image) and mask.labels == {1: "organ"}
    pred = mask.array == 1
    truth = test.label == 1
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.8, dice
    assert mask.meta["model_version"] == "1.0.0"
    # The bundle's recommended post-processing applies unless the caller says otherwise.
    desc["postprocessing"] = {"fill_holes": True, "flips": [-1]}
    (bundle_dir / "bundle.json").write_text(json.dumps(desc))
    bundle = load_bundle(bundle_dir, device="cpu")
    assert predict_image(bundle, test.image).meta["postprocessing"] == {"flips": [-1], "keep_largest": False, "fill_holes": True}
    assert predict_image(bundle, test.image, flips=(), fill=False).meta["postprocessing"]["fill_holes"] is False


def test_fine_tuning_starts_from_given_weights(tmp_path):
    from dataclasses import replace

    from nmkit.segment.bundle import load_weights

    rng = np.random.default_rng(8)
    cases = [blob_case(rng, 32) for _ in range(4)]
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(32, 32))
    config = TrainConfig(network="unet", network_options={"channels": (4, 8, 16)}, epochs=1, batch_size=2, labels={1: "organ"}, num_threads=1)
    first = train(cases, cases[:1], prep, config, tmp_path / "a", progress=False)
    # zero epochs from the first bundle's weights: the written bundle carries exactly those weights
    second = train(cases, cases[:1], prep, replace(config, epochs=0, init_weights=str(first / "model.safetensors")), tmp_path / "b", progress=False)
    a, b = load_weights(first / "model.safetensors"), load_weights(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "bundle.json").read_text())["training_data"]["initialisation"]["init_weights"].endswith("model.safetensors")


def test_every_normalisation_gives_float32_network_input():
    """NumPy 2 promotes float32 arrays combined with float64 scalars (a percentile) to float64, which a float32 network
    refuses ("Input type (double) and bias type (float)"): the network input is float32 whatever the normalisation."""
    from nmkit.segment.preprocess import NORMALISATIONS, Preprocessing, normalise

    x = np.random.default_rng(0).gamma(2.0, 100.0, (8, 16, 16)).astype(np.float32)
    for kind in NORMALISATIONS:
        out = normalise(x, Preprocessing(normalisation=kind))
        assert out.dtype == np.float32 and out.shape == x.shape and np.isfinite(out).all(), kind


def _two_sided_blobs(rng: np.random.Generator, size: int = 32) -> Case:
    """Two identical 'lungs': label 1 (right, image left as radiographs show it) and 2 (left, image right)."""
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), np.int64)
    cy = size * rng.uniform(0.45, 0.55)
    for value, cx in ((1, size * rng.uniform(0.25, 0.32)), (2, size * rng.uniform(0.68, 0.75))):
        label[((yy - cy) / (size * 0.3)) ** 2 + ((xx - cx) / (size * 0.13)) ** 2 <= 1] = value
    img = Image(rng.poisson(40 * (0.2 + (label > 0) * 0.8)).astype(np.float32), spacing=(2.0, 2.0), modality="NM", units="counts")
    return Case(case_id=f"s{rng.integers(1e9)}", image=img, label=label)


def _side_confidence(bundle_dir, cases) -> float:
    """Mean probability the model gives each structure's own label inside it (1 = sides told apart, ~0.5 = mixed)."""
    from nmkit.segment.infer import predict_probabilities

    bundle = load_bundle(bundle_dir, device="cpu")
    values = []
    for case in cases:
        probs = predict_probabilities(bundle.models, case.image.array, bundle.preprocessing, "cpu", 3)
        values += [float(probs[v][case.label == v].mean()) for v in (1, 2)]
    return float(np.mean(values))


def test_sided_labels_turn_left_right_flips_off(tmp_path, capsys, monkeypatch):
    """Labels that name a side (right_lung / left_lung) are never trained on left-right flipped images: a flipped right
    lung keeps label 'right' on the image's other side. Two structures that differ only by their side are told apart
    confidently; side-less names keep the flips."""
    from dataclasses import replace

    import nmkit.segment.train as train_mod
    from nmkit.segment.names import sided_names
    from nmkit.segment.train import without_side_flips

    assert sided_names(["right_lung", "kidney_left", "Left parotid", "lung", "bright_spot", "leftover"]) == \
        ["right_lung", "kidney_left", "Left parotid"]
    config = TrainConfig(network="unet", network_options={"channels": (8, 16, 32)}, epochs=20, batch_size=8, learning_rate=5e-3,
                         seed=2, labels={1: "right_lung", 2: "left_lung"}, num_threads=1, count_reduction=None, patience=100)
    assert without_side_flips(config, 2).flip_axes == ()
    assert without_side_flips(TrainConfig(labels={1: "organ"}), 2).flip_axes == (-1,)
    assert without_side_flips(TrainConfig(labels={1: "kidney_left"}, flip_axes=(0, 2)), 3).flip_axes == (0,)
    seen: list[tuple[int, ...]] = []
    real_augment = train_mod.augment

    def spy(*args, **kwargs):
        seen.append(tuple(args[5]))
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_mod, "augment", spy)
    rng = np.random.default_rng(4)
    cases = [_two_sided_blobs(rng) for _ in range(16)]
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(32, 32))
    sided = train(cases, cases[:2], prep, config, tmp_path / "sided", progress=True)
    assert "left-right flips off: the labels right_lung, left_lung name a body side" in capsys.readouterr().out
    assert json.loads((sided / "bundle.json").read_text())["training"]["flip_axes"] == []
    assert seen and set(seen) == {()}
    assert _side_confidence(sided, [_two_sided_blobs(rng) for _ in range(3)]) > 0.85
    # a test-time left-right flip is skipped for such a model (it would swap the sides), whatever the caller asks
    test = _two_sided_blobs(rng)
    bundle = load_bundle(sided, device="cpu")
    flipped = predict_image(bundle, test.image, flips=(-1,))
    assert flipped.meta["postprocessing"]["flips"] == [] and np.array_equal(flipped.array, predict_image(bundle, test.image, flips=()).array)
    seen.clear()
    neutral = train(cases, cases[:2], prep, replace(config, labels={1: "a", 2: "b"}, epochs=1), tmp_path / "neutral", progress=False)
    assert json.loads((neutral / "bundle.json").read_text())["training"]["flip_axes"] == [-1] and set(seen) == {(-1,)}
