"""nnU-Net v2 engine: bad results folders (missing folds, no weights, unsafe checkpoints) are one clear message.

The trained-model tests (voxel identity with nnU-Net's predictor, zip, offline, two channels) are in
tests/test_nnunet_train.py: they share one tiny training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


if importlib.util.find_spec("nnunetv2") is None:  # without importing it (seconds)
    pytest.skip("nnU-Net v2 not installed", allow_module_level=True)


def _fake_results(root: Path, folds: list[int]) -> Path:
    folder = root / "Dataset777_Fake" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset777_Fake", "plans_name": "nnUNetPlans"}))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}))
    for f in folds:
        (folder / f"fold_{f}").mkdir()
        (folder / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    return folder


def test_bad_results_folders_one_clear_message(tmp_path: Path) -> None:
    from nmkit.errors import InputError
    from nmkit.segment.engines.nnunet import load_nnunet

    folder = _fake_results(tmp_path, [0, 2])
    with pytest.raises(InputError, match=r"fold\(s\) 1 missing: expected fold_1/checkpoint_final.pth \(available folds: 0, 2\)"):
        load_nnunet(folder, folds=[0, 1])
    empty = _fake_results(tmp_path / "e", [])
    with pytest.raises(InputError, match="no fold_N/checkpoint_final.pth.*never downloads"):
        load_nnunet(empty)
    with pytest.raises(InputError, match="does not exist.*never downloads"):
        load_nnunet(tmp_path / "nowhere")
    with pytest.raises(InputError, match="cannot be loaded safely"):  # a corrupt (or code-carrying) checkpoint
        load_nnunet(folder, folds=[0])


def test_training_worker_refuses_every_connection() -> None:
    """nnU-Net trains in a child process (its folders are import-time environment variables); that process blocks
    the network itself, so the in-process socket patch of the train test also holds there."""
    import subprocess
    import sys

    code = ("from nmkit.segment.engines.nnunet_worker import block_network; block_network()\n"
            "import socket, urllib.request\n"
            "for attempt in (lambda: socket.create_connection(('127.0.0.1', 9), timeout=1),\n"
            "                lambda: socket.socket().connect(('127.0.0.1', 9)),\n"
            "                lambda: urllib.request.urlopen('http://127.0.0.1:9/', timeout=1)):\n"
            "    try:\n"
            "        attempt()\n"
            "    except OSError as exc:\n"
            "        print('refused:', 'offline by design' in str(exc))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split("\n")
    assert [line for line in out if line] == ["refused: True"] * 3
