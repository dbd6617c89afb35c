"""Device choice shared by every network: a GPU when torch sees one, the CPU otherwise, and a device the machine lacks
refused in one line (library: DeviceError; CLI: argparse error naming --device, exit 2) before any data is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nmkit.devices import DeviceError, device_name, torch_device


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch reports one CUDA GPU (nothing is moved to it in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_default_is_the_gpu_when_present(fake_gpu):
    assert torch_device(None).type == "cuda"
    assert torch_device("auto").type == "cuda"
    assert torch_device("cpu").type == "cpu"  # an explicit CPU stays the CPU
    assert torch_device("cuda:0") == torch.device("cuda", 0)


def test_default_is_the_cpu_without_gpu(no_gpu):
    assert torch_device(None) == torch.device("cpu")
    assert device_name("") == "cpu"


def test_missing_or_unknown_devices_are_refused(no_gpu, monkeypatch):
    with pytest.raises(DeviceError, match="'cuda' is not available"):
        torch_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'banana'"):
        torch_device("banana")
    with pytest.raises(DeviceError, match="not supported"):
        torch_device("meta")
    from nmkit.phantoms.spect_sim import Projector

    with pytest.raises(DeviceError, match="'cuda' is not available"):  # the SPECT simulator asks the same place
        Projector(np.zeros((2, 4, 4), np.float32), (1.0, 1.0, 1.0), device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="1 CUDA GPU"):
        torch_device("cuda:1")


def test_every_network_asks_the_shared_choice(fake_gpu):
    """Diffusion training/sampling and segmentation training pick the GPU by themselves."""
    from nmkit.generate.model import DiffusionConfig, _device
    from nmkit.segment.train import select_device

    assert _device(DiffusionConfig()).type == "cuda"
    assert _device(DiffusionConfig(device="cpu")).type == "cpu"
    assert select_device(None).type == "cuda"


@pytest.mark.parametrize("argv", [
    ["synth", "train", "--phantom-thyroid", "2", "--out", "OUT", "--device", "cuda:7"],
    ["train", "MANIFEST", "--out", "OUT", "--device", "banana"],
    ["predict", "BUNDLE", "MANIFEST", "--device", "cuda:7"],
])
def test_cli_device_errors_are_one_line(argv, tmp_path, capsys, monkeypatch):
    from nmkit.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"nmkit {argv[0]}") and "argument --device:" in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "OUT").exists()  # refused before anything is written
