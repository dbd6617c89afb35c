"""MONAI bundle folders run offline through `nmkit predict`, voxel-identical to `monai.bundle run` on the same image;
a bundle with a missing file is one clear message."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nmkit.cli import main

# The bundle's own workflow, written without pytorch-ignite (not installed): preprocessing -> sliding-window inferer ->
# postprocessing (softmax, inverse of the preprocessing, argmax, SaveImaged).
INFERENCE = {
    "imports": ["$import glob", "$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "dataset_dir": "/data",
    "output_dir": "$@bundle_root + '/eval'",
    "datalist": "$sorted(glob.glob(@dataset_dir + '/*.nii.gz'))",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
                    "strides": [2, 2], "num_res_units": 1},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image"}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "resample": False, "separate_folder": False, "output_dtype": "$numpy.uint8"}]},
    "initialize": ["$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', weights_only=True))",
                   "$@network.eval()"],
    "run": ["$[@postprocessing({**(d := @preprocessing({'image': f})), "
            "'pred': @inferer(d['image'][None].to(@device), @network)[0]}) for f in @datalist]"],
}
METADATA = {"name": "tiny_spleen_like", "version": "0.1.0", "monai_version": "1.6.1",
            "network_data_format": {"inputs": {"image": {"num_channels": 1}},
                                    "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}}}


def _bundle(root: Path) -> Path:
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    with torch.no_grad():  # a bias towards the bright object, so both labels occur
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _image(path: Path) -> Path:
    """A bright sphere in noise on an anisotropic, LPS-oriented grid (1.5 x 1.5 x 3 mm): the bundle reorients and resamples."""
    rng = np.random.default_rng(1)
    z, y, x = np.indices((12, 28, 26))
    arr = np.where((3 * (z - 6)) ** 2 + (1.5 * (y - 14)) ** 2 + (1.5 * (x - 12)) ** 2 < 100, 200.0, 20.0) + rng.normal(0, 5, z.shape)
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((1.5, 1.5, 3.0))
    img.SetOrigin((-20.0, -21.0, 5.0))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.slow
def test_monai_bundle_equals_monai_bundle_run_offline(tmp_path: Path, monkeypatch) -> None:
    from monai.bundle import run

    bundle = _bundle(tmp_path / "bundle")
    data = tmp_path / "data"
    data.mkdir()
    image = _image(data / "ct1.nii.gz")
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), dataset_dir=str(data), output_dir=str(tmp_path / "ref"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / "ct1_seg.nii.gz")))

    def refuse(*_a, **_k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert main(["predict", str(bundle), str(image), "--out", str(tmp_path / "p")]) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p" / "ct1.nii.gz")))
    assert ours.shape == (12, 28, 26) and 0 < (ours == 1).sum() < ours.size
    assert ref.shape == ours.shape and np.array_equal(ours, ref)
    assert json.loads((tmp_path / "p" / "ct1.json").read_text()) == {"1": "spleen"}
    identity = json.loads((tmp_path / "p" / "provenance.json").read_text())["model"]["identity"]
    assert identity["engine"] == "monai-bundle" and len(identity["sha256"]["models/model.pt"]) == 64


def test_monai_bundle_missing_file_one_message(tmp_path: Path, capsys) -> None:
    bundle = _bundle(tmp_path / "bundle")
    image = _image(tmp_path / "x.nii.gz")
    (bundle / "models" / "model.pt").unlink()
    assert main(["predict", str(bundle), str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models/model.pt missing" in err[0] and "never downloads" in err[0]
    (bundle / "configs" / "inference.json").unlink()
    assert main(["predict", str(bundle), str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "configs/inference.json" in err[0]


def test_prediction_on_the_bundles_grid_comes_back_onto_the_image(tmp_path: Path) -> None:
    """A bundle that does not invert its resampling: its output (RAS, 2 mm) is mapped through the affine onto the
    image's own grid (LPS, swapped in-plane axes, 1.5 x 1.5 x 3 mm). An off-centre object, so a flip would miss it."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    from nmkit.io.volume_files import read_volume
    from nmkit.segment.engines.monai_bundle import _on_grid

    z, y, x = np.indices((12, 28, 26))
    label = (((3 * (z - 4)) ** 2 + (1.5 * (y - 8)) ** 2 + (1.5 * (x - 18)) ** 2) < 64).astype(np.uint8)
    img = sitk.GetImageFromArray(label)
    img.SetSpacing((1.5, 1.5, 3.0))
    img.SetOrigin((-20.0, -21.0, 5.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "l.nii.gz"))
    to_bundle_grid = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                              Spacingd("image", pixdim=(2.0, 2.0, 2.0), mode="nearest")])
    back = _on_grid(to_bundle_grid({"image": str(tmp_path / "l.nii.gz")})["image"], read_volume(tmp_path / "l.nii.gz"))
    assert back.shape == label.shape
    dice = 2 * ((back == 1) & (label == 1)).sum() / ((back == 1).sum() + label.sum())
    assert dice > 0.85  # 2 mm nearest-neighbour round trip of a 300-voxel ellipsoid (0.92 here); a flip gives ~0
