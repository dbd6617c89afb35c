"""3D inference (issue 23): streamed sliding window equal to MONAI's, bounded memory, ensembles, CLI window options.

What is checked: the own streamed sliding window gives MONAI's ``sliding_window_inference`` probabilities (with
padding, overlaps, batches and a test-time flip); windows are run at most ``batch`` at a time and the NumPy memory
beyond the input stays within the output accumulator, the weight map and one slab (tracemalloc) - far below what
holding every window would need; a list of models averages their softmax; ``nmkit predict --overlap --sw-batch``
reaches the windows and the provenance, and a bad overlap is one clear line.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from nmkit.cli import main
from nmkit.segment.infer import SlidingWindow, grouped_softmax, predict_probabilities, sliding_window_probabilities, window_slices
from nmkit.segment.nets import build_network
from nmkit.segment.preprocess import Preprocessing


def _net(seed: int, in_channels: int = 2, out_channels: int = 3) -> torch.nn.Module:
    """A tiny random 3D network whose output near a window's border depends on the border (zero padding), so
    blending and window positions matter."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(in_channels, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(4, out_channels, 3, padding=1)).eval()


@pytest.mark.parametrize("shape,overlap,batch", [((2, 20, 37, 45), 0.25, 2), ((2, 20, 37, 45), 0.5, 3), ((2, 8, 30, 12), 0.0, 1)])
def test_streamed_window_equals_monai(shape, overlap, batch):
    from monai.inferers import sliding_window_inference

    net = _net(0)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    roi = (16, 16, 16)
    stats: dict[str, int] = {}
    ours = sliding_window_probabilities(net, x, roi, 3, "cpu", SlidingWindow(overlap, batch), flips=(-1,), stats=stats)
    t = torch.from_numpy(x)[None]
    with torch.no_grad():
        plain = grouped_softmax(sliding_window_inference(t, roi, batch, net, overlap=overlap, mode="gaussian"), 1)
        flipped = torch.flip(grouped_softmax(sliding_window_inference(torch.flip(t, (4,)), roi, batch, net, overlap=overlap,
                                                                      mode="gaussian"), 1), (4,))
    reference = ((plain + flipped) / 2)[0].numpy()
    assert ours.shape == (3, *shape[1:]) and np.abs(ours - reference).max() < 1e-5
    padded = [max(s, r) for s, r in zip(shape[1:], roi)]
    n_windows = len(window_slices(padded, roi, overlap))
    assert stats["windows"] == 2 * n_windows and stats["max_batch"] <= batch
    assert stats["forward_passes"] == 2 * math.ceil(n_windows / batch)


def test_window_batch_is_streamed_and_memory_bounded(monkeypatch):
    """Peak NumPy memory of a 1-channel 24x48x48 prediction (8^3 windows, overlap 0.5, 16 per batch): output
    accumulator + weight map + one slab + 0.5 MiB; holding all windows (input and logits) would need several times more."""
    import nmkit.segment.infer as infer

    monkeypatch.setattr(infer, "_SLAB_VOXELS", 4 * 48 * 48)  # several slabs: the in-place softmax path is exercised
    net = _net(1, in_channels=1, out_channels=2)
    x = np.random.default_rng(2).normal(size=(1, 24, 48, 48)).astype(np.float32)
    roi, window = (8, 8, 8), SlidingWindow(0.5, 16)
    voxels = x[0].size
    n_windows = len(window_slices(x.shape[1:], roi, window.overlap))
    all_windows_bytes = n_windows * int(np.prod(roi)) * 4 * (1 + 2)  # every window's input and logits held at once
    stats: dict[str, int] = {}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        probs = sliding_window_probabilities(net, x, roi, 2, "cpu", window, stats=stats)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    bound = (2 + 1) * voxels * 4 + 2 * infer._SLAB_VOXELS * 4 + 1024**2 // 2  # output + weight map + slab + 0.5 MiB
    assert peak <= bound, f"peak {peak / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert all_windows_bytes > 2 * bound  # the bound does discriminate streaming from holding every window
    assert stats["max_batch"] == 16 and stats["windows"] == n_windows
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)


def test_ensemble_averages_softmax():
    prep = Preprocessing(normalisation="zscore", spatial_dims=3, target_size=None, patch_size=(16, 16, 16))
    a, b = _net(3, 1, 2), _net(4, 1, 2)
    image = np.random.default_rng(5).gamma(2.0, 1.0, size=(18, 24, 20)).astype(np.float32)
    window = SlidingWindow(0.25, 4)
    pa = predict_probabilities(a, image, prep, "cpu", 2, window=window)
    pb = predict_probabilities(b, image, prep, "cpu", 2, window=window)
    both = predict_probabilities([a, b], image, prep, "cpu", 2, window=window)
    assert np.abs(both - (pa + pb) / 2).max() < 1e-6 and np.abs(pa - pb).max() > 1e-3
    with_flip = predict_probabilities([a, b], image, prep, "cpu", 2, flips=(-1,), window=window)
    flipped = [predict_probabilities(m, image[..., ::-1].copy(), prep, "cpu", 2, window=window)[..., ::-1] for m in (a, b)]
    assert np.abs(with_flip - (pa + pb + flipped[0] + flipped[1]) / 4).max() < 1e-6


def _blob_bundle(out: Path, seed: int = 7) -> Path:
    """A 3D U-Net bundle (random weights, labels 1=liver): enough to run the chain, not to segment."""
    from nmkit.segment.bundle import write_bundle
    from nmkit.segment.train import TrainConfig

    config = TrainConfig(network="unet", network_options={"channels": (4, 8)}, labels={1: "liver"})
    prep = Preprocessing(normalisation="window", spatial_dims=3, target_size=None, patch_size=(16, 16, 16))
    torch.manual_seed(seed)
    model = build_network("unet", 3, 1, 2, img_size=(16, 16, 16), channels=(4, 8))
    return write_bundle(out, model, config, prep, name="blob-liver", version="0.0.2")


def _ct_file(path: Path) -> Path:
    import SimpleITK as sitk

    ct = np.random.default_rng(8).normal(40, 30, size=(20, 40, 36)).astype(np.float32)
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def test_kfold_bundle_ensemble_and_fold_choice(tmp_path, capsys):
    """A two-fold bundle (H5's ensemble entry): predict averages both folds' softmax; --folds 0 uses fold 0 alone;
    a fold it lacks is one clear line."""
    import shutil

    from nmkit.io.volume_files import read_volume
    from nmkit.segment.bundle import load_bundle

    single = [_blob_bundle(tmp_path / f"single{f}", seed=10 + f) for f in (0, 1)]
    bundle = tmp_path / "kfold"
    shutil.copytree(single[0], bundle)
    for f in (0, 1):
        (bundle / f"fold_{f}").mkdir()
        shutil.copy(single[f] / "model.safetensors", bundle / f"fold_{f}" / "model.safetensors")
    description = json.loads((bundle / "bundle.json").read_text())
    description["ensemble"] = {"folds": [0, 1], "members": ["fold_0/model.safetensors", "fold_1/model.safetensors"],
                               "combine": "mean softmax"}
    (bundle / "bundle.json").write_text(json.dumps(description))
    ct = _ct_file(tmp_path / "ct.nii.gz")
    image = read_volume(ct)
    models = [load_bundle(b, device="cpu").model for b in single]
    prep = load_bundle(single[0], device="cpu").preprocessing
    probs = [predict_probabilities(m, image.array, prep, "cpu", 2) for m in models]
    expected_mean = ((probs[0] + probs[1]) / 2).argmax(0)
    assert main(["predict", str(bundle), str(ct), "--out", str(tmp_path / "all"), "--no-tta", "--device", "cpu"]) == 0
    assert np.array_equal(read_volume(tmp_path / "all" / "ct.nii.gz").array, expected_mean)
    assert not np.array_equal(probs[0].argmax(0), expected_mean)  # the second fold does change the result
    record = json.loads((tmp_path / "all" / "provenance.json").read_text())
    assert record["model"]["identity"]["folds"] == ["0", "1"] and record["config"]["sliding_window"]["models"] == 2
    assert set(record["model"]["identity"]["sha256"]) == {"bundle.json", "model.safetensors", "fold_0/model.safetensors",
                                                          "fold_1/model.safetensors"}
    assert main(["predict", str(bundle), str(ct), "--out", str(tmp_path / "f0"), "--no-tta", "--device", "cpu", "--folds", "0"]) == 0
    assert np.array_equal(read_volume(tmp_path / "f0" / "ct.nii.gz").array, probs[0].argmax(0))
    capsys.readouterr()
    assert main(["predict", str(bundle), str(ct), "--out", str(tmp_path / "f5"), "--folds", "5"]) != 0
    err = capsys.readouterr().err
    assert "fold(s) 5 not in the bundle (folds: 0, 1)" in err and "Traceback" not in err


def test_cli_window_options_reach_windows_and_provenance(tmp_path, monkeypatch):
    import nmkit.segment.infer as infer

    bundle = _blob_bundle(tmp_path / "bundle")
    _ct_file(tmp_path / "ct.nii.gz")
    seen: list[SlidingWindow] = []
    real = infer.sliding_window_probabilities

    def spy(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs["window"])
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "sliding_window_probabilities", spy)
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), str(tmp_path / "ct.nii.gz"), "--out", str(out), "--overlap", "0.5", "--sw-batch", "3",
                 "--device", "cpu", "--no-tta"]) == 0
    assert seen == [SlidingWindow(0.5, 3)]
    record = json.loads((out / "provenance.json").read_text())
    window = record["config"]["sliding_window"]
    assert (window["engine"], window["overlap"], window["batch"], window["mode"], window["models"]) == ("nmkit", 0.5, 3, "gaussian", 1)
    import hashlib

    identity = record["model"]["identity"]
    assert identity["sha256"]["model.safetensors"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()
    assert len(identity["model_sha256"]) == 64
    seen.clear()
    assert main(["predict", str(bundle), str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "p2"), "--device", "cpu", "--no-tta"]) == 0
    assert seen == [SlidingWindow(0.25, 2)]  # the default: what 3D prediction always used


@pytest.mark.parametrize("option,value,message", [("--overlap", "1", "0 <= overlap < 1"), ("--overlap", "-0.1", "0 <= overlap < 1"),
                                                  ("--overlap", "half", "not a number"), ("--sw-batch", "0", "at least 1")])
def test_bad_window_options_one_line(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "thyroid-unet2d", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "o"), option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and option in err and "Traceback" not in err


def test_pointwise_normalisation_per_window_equals_whole_image():
    """SUV/CT-window channels are normalised window by window (no float copy of the image); the probabilities equal
    those of normalising the whole image first; a z-score channel (image-wide statistics) takes the eager path."""
    from dataclasses import replace

    import nmkit.segment.infer as infer

    prep = Preprocessing(normalisation="window", spatial_dims=3, target_size=None, patch_size=(16, 16, 16))
    if hasattr(prep, "channel_normalisations"):
        prep = replace(prep, channels=("CT", "PT"), channel_normalisations=("window", "suv"))
        rng = np.random.default_rng(9)
        image = np.stack([rng.normal(40, 300, size=(20, 33, 30)), rng.gamma(2, 2, size=(20, 33, 30))]).astype(np.float32)
        net = _net(11, 2, 2)
    else:  # one channel (before multi-channel preprocessing existed)
        image = np.random.default_rng(9).normal(40, 300, size=(20, 33, 30)).astype(np.int16)
        net = _net(11, 1, 2)
    assert infer.window_normaliser(image, prep, prep.patch_size) is not None
    lazy = predict_probabilities(net, image, prep, "cpu", 2, flips=(-1,))
    eager_input = infer.network_input(image, prep)
    eager = sliding_window_probabilities(net, eager_input, prep.patch_size, 2, "cpu", flips=(-1,))
    assert np.abs(lazy - eager).max() < 1e-6
    assert infer.window_normaliser(image, replace(prep, normalisation="zscore", channel_normalisations=None)
                                   if hasattr(prep, "channel_normalisations") else replace(prep, normalisation="zscore"),
                                   prep.patch_size) is None
    assert infer.window_normaliser(image[..., :8], prep, prep.patch_size) is None  # smaller than a window: padded eagerly


def test_window_options_reach_foreign_engines(tmp_path):
    """--overlap/--sw-batch go to a MONAI bundle's SlidingWindowInferer (without them its own values stay) and become
    nnU-Net's tile step (1 - overlap; nnU-Net has no window batch)."""
    from types import SimpleNamespace

    import SimpleITK as sitk
    from test_monai_bundle import _bundle, _image

    from nmkit.segment.infer import window_settings

    bundle, image = _bundle(tmp_path / "bundle"), _image(tmp_path / "ct1.nii.gz")
    runs = {"none": [], "half": ["--overlap", "0.5", "--sw-batch", "3"]}
    masks, windows = {}, {}
    for name, options in runs.items():
        assert main(["predict", str(bundle), str(image), "--out", str(tmp_path / name), "--device", "cpu", *options]) == 0
        masks[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "ct1.nii.gz")))
        windows[name] = json.loads((tmp_path / name / "provenance.json").read_text())["config"]["sliding_window"]
    assert masks["none"].shape == masks["half"].shape == (12, 28, 26)
    assert (windows["none"]["engine"], windows["none"]["overlap"], windows["none"]["batch"]) == ("monai", 0.25, 2)
    assert (windows["half"]["overlap"], windows["half"]["batch"]) == (0.5, 3)
    nnunet_like = SimpleNamespace(predictor=SimpleNamespace(tile_step_size=0.5, use_gaussian=True), predict_labels=lambda *a: None)
    assert window_settings(nnunet_like)["overlap"] == 0.5  # nnU-Net's own default kept without the option
    settings = window_settings(nnunet_like, SlidingWindow(0.3, 4))
    assert nnunet_like.predictor.tile_step_size == pytest.approx(0.7) and settings["batch"] is None
    assert settings["engine"] == "nnunet" and settings["overlap"] == pytest.approx(0.3)
