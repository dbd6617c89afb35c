"""Diffusion pre-training -> segmentation: encoder weights really transfer, bad layouts are refused, fine-tuning learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nmkit.errors import InputError
from nmkit.generate.data import thyroid_phantoms
from nmkit.generate.model import DiffusionConfig, train_diffusion
from nmkit.generate.pretrain import (ENCODER_PREFIXES, build_segnet, evaluate_dice, fine_tune, init_from_diffusion, learning_curve,
                                     segnet_options)


@pytest.fixture(scope="module")
def phantoms():
    return thyroid_phantoms(8, seed=21, matrix=64)


@pytest.fixture(scope="module")
def checkpoint(phantoms, tmp_path_factory):
    """A (briefly trained) mask-conditioned diffusion model: its input conv has 1 + 3 channels."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "diffusion"
    config = DiffusionConfig(image_size=64, channels=(8, 16, 16), norm_num_groups=4, num_train_timesteps=50, iterations=3, batch_size=2,
                             condition_labels={1: "gland", 2: "cold_nodule", 3: "hot_nodule"})
    train_diffusion(phantoms, config, out)
    return out


def test_encoder_tensors_equal_after_init(checkpoint):
    from safetensors.torch import load_file

    source = load_file(str(checkpoint / "diffusion.safetensors"))
    torch.manual_seed(0)
    model = build_segnet(checkpoint, n_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_diffusion(model, checkpoint)
    state = model.state_dict()
    encoder = [k for k in source if k.startswith(ENCODER_PREFIXES)]
    assert len(encoder) > 30 and report["n_copied"] == len(encoder)
    for key in encoder:
        if key == "conv_in.conv.weight":  # conditioned model: only the image channel's filters
            assert source[key].shape[1] == 4 and state["unet." + key].shape[1] == 1
            assert torch.equal(state["unet." + key], source[key][:, :1])
        else:
            assert torch.equal(state["unet." + key], source[key]), key
            if key.endswith("conv.weight"):  # independent random initialisations: the copy changed them
                assert not torch.equal(before["unet." + key], source[key]), key
    # the decoder and the class head keep their own (random) initialisation
    for key in ("up_blocks.0.resnets.0.conv1.conv.weight", "out.2.conv.weight"):
        assert torch.equal(state["unet." + key], before["unet." + key])
        if state["unet." + key].shape == source[key].shape:
            assert not torch.equal(state["unet." + key], source[key])
    assert state["unet.out.2.conv.weight"].shape[0] == 3
    assert 0.2 < report["parameters_initialised"] < 0.9 and report["adapted"] and not report["skipped"]


def test_decoder_transfer_and_options(checkpoint):
    from safetensors.torch import load_file

    source = load_file(str(checkpoint / "diffusion.safetensors"))
    model = build_segnet(checkpoint)
    report = init_from_diffusion(model, checkpoint, parts=("encoder", "decoder"))
    state = model.state_dict()
    assert torch.equal(state["unet.up_blocks.1.resnets.0.conv1.conv.weight"], source["up_blocks.1.resnets.0.conv1.conv.weight"])
    assert any(s.startswith("out.2") for s in report["skipped"]) is False  # the head is never attempted
    assert segnet_options(checkpoint) == {"channels": [8, 16, 16], "attention_levels": [False, False, False], "num_res_blocks": 1,
                                          "norm_num_groups": 4}


def test_incompatible_networks_are_refused(checkpoint):
    from nmkit.generate.pretrain import DiffusionSegNet
    from nmkit.segment.nets import build_network

    with pytest.raises(InputError, match="diffusion-unet"):
        init_from_diffusion(build_network("unet", 2, 1, 2), checkpoint)
    with pytest.raises(InputError, match="no tensor of the diffusion model fits"):
        init_from_diffusion(DiffusionSegNet(channels=(16, 32, 32), norm_num_groups=8), checkpoint)
    with pytest.raises(InputError, match="not a diffusion checkpoint"):
        init_from_diffusion(build_segnet(checkpoint), checkpoint.parent)


def test_fine_tuning_learns_the_gland_and_learning_curve(checkpoint, phantoms):
    images = [p.image.array for p in phantoms]
    labels = [(p.label > 0).astype(np.int64) for p in phantoms]
    torch.manual_seed(0)
    model = build_segnet(checkpoint)
    untrained = evaluate_dice(model, images[6:], labels[6:], 64)
    init_from_diffusion(model, checkpoint)
    losses = fine_tune(model, images[:6], labels[:6], 64, iterations=25, batch_size=4, learning_rate=3e-3)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    tuned = evaluate_dice(model, images[6:], labels[6:], 64)
    assert tuned > 0.6 and tuned > untrained + 0.2
    table = learning_curve(checkpoint, images[:6], labels[:6], images[6:], labels[6:], sizes=(2, 6), iterations=4)
    assert list(table.columns[:4]) == ["n_labelled", "init", "seed", "test_dice"]
    assert len(table) == 4 and set(table["init"]) == {"diffusion", "scratch"} and table["test_dice"].between(0, 1).all()
    with pytest.raises(ValueError, match="only 6"):
        learning_curve(checkpoint, images[:6], labels[:6], images[6:], labels[6:], sizes=(10,), iterations=1)


def test_nmkit_train_cli_with_pretrained_diffusion(checkpoint, phantoms, tmp_path):
    """`nmkit train --pretrained-diffusion` builds the diffusion-layout net, copies the encoder, and the bundle reloads."""
    import json

    import pandas as pd

    from nmkit.cli import main
    from nmkit.io.image import Image, Mask
    from nmkit.io.volume_files import write_volume
    from nmkit.segment.bundle import load_bundle
    from nmkit.segment.infer import predict_image

    rows = []
    for i, case in enumerate(phantoms):
        image = case.image
        write_volume(image, tmp_path / f"img{i}.nii.gz")
        write_volume(Mask.like(image, (case.label > 0).astype(np.uint8), labels={1: "thyroid"}), tmp_path / f"mask{i}.nii.gz")
        rows.append({"case_id": f"c{i}", "image": f"img{i}.nii.gz", "mask": f"mask{i}.nii.gz", "split": "val" if i >= 6 else "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    code = main(["train", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "bundle"), "--size", "64", "64", "--epochs", "1",
                 "--batch-size", "2", "--labels", "1=thyroid", "--pretrained-diffusion", str(checkpoint)])
    assert code == 0
    desc = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert desc["network"]["name"] == "diffusion-unet"
    pre = desc["training_data"]["pretrained_diffusion"]
    assert pre["n_copied"] > 0 and 0 < pre["parameters_initialised"] <= 1
    bundle = load_bundle(tmp_path / "bundle", device="cpu")
    mask = predict_image(bundle, phantoms[0].image)
    assert mask.spatial_shape == phantoms[0].image.spatial_shape
    # a 3D request is refused with a clear error (exit code 2)
    assert main(["train", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "b3"), "--dims", "3",
                 "--pretrained-diffusion", str(checkpoint)]) == 2
