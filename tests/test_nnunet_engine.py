"""nnU-Net v2 engine: users' results folders run offline through `nmkit predict` (voxel-identical to nnU-Net's own
predictor), `nmkit train --engine nnunet` on a two-channel (PET+CT) case table, and bad-input messages."""

from __future__ import annotations

import importlib.util
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nmkit.cli import main

if importlib.util.find_spec("nnunetv2") is None:  # without importing it (seconds)
    pytest.skip("nnU-Net v2 not installed", allow_module_level=True)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails (a hidden download would raise)."""

    def refuse(*_a, **_k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _write(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def _lesion_case(rng, shape=(16, 32, 32)):
    """A hot ellipsoid lesion (PET-like counts, 2 mm slices) and its label map."""
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    r = rng.uniform(5, 8)
    label = ((2 * (z - c[0])) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r ** 2).astype(np.uint8)
    pet = (label * 8.0 + 1.0 + rng.normal(0, 0.5, shape)).astype(np.float32)
    return pet, label


def _train_with_nnunet_api(root: Path) -> Path:
    """A tiny model trained by nnU-Net's own planner/preprocessor/trainer (1 epoch x 2 iterations, CPU)."""
    from nmkit.segment.engines import nnunet_worker  # noqa: F401  (the same worker nmkit train uses)
    import subprocess
    import sys

    raw = root / "raw" / "Dataset501_Tiny"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        pet, label = _lesion_case(rng)
        _write(pet, raw / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        _write(label, raw / "labelsTr" / f"case{i:02d}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "PET"}, "labels": {"background": 0, "lesion": 1},
                                                  "numTraining": 4, "file_ending": ".nii.gz", "name": "Tiny"}))
    spec = {"raw": str(root / "raw"), "preprocessed": str(root / "pre"), "results": str(root / "res"), "dataset_id": 501,
            "dataset_name": "Dataset501_Tiny", "configuration": "3d_fullres", "folds": [0], "epochs": 1, "iterations": 2,
            "val_iterations": 1, "device": "cpu", "threads": 2,
            "splits": [{"train": ["case00", "case01", "case02"], "val": ["case03"]}]}
    (root / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "nmkit.segment.engines.nnunet_worker", str(root / "spec.json")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return root / "res" / "Dataset501_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    return _train_with_nnunet_api(tmp_path_factory.mktemp("nnunet"))


def _nnunet_reference(results: Path, images: list[list[str]], out: Path) -> list[np.ndarray]:
    """nnU-Net's own predictor on files (no mirroring), read back as arrays."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results), use_folds=None)
    out.mkdir(parents=True, exist_ok=True)
    names = [str(out / f"ref{i}") for i in range(len(images))]
    predictor.predict_from_files_sequential(images, names, save_probabilities=False, overwrite=True)
    return [sitk.GetArrayFromImage(sitk.ReadImage(n + ".nii.gz")) for n in names]


@pytest.mark.slow
def test_results_folder_and_zip_equal_nnunet_offline(tiny_results: Path, tmp_path: Path, no_network) -> None:
    rng = np.random.default_rng(7)
    pet, truth = _lesion_case(rng)
    image = _write(pet, tmp_path / "new.nii.gz")
    ref = _nnunet_reference(tiny_results, [[str(image)]], tmp_path / "ref")[0]
    assert main(["predict", str(tiny_results.parent), str(image), "--out", str(tmp_path / "p"), "--no-tta"]) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p" / "new.nii.gz")))
    assert ours.shape == ref.shape and np.array_equal(ours, ref)
    assert json.loads((tmp_path / "p" / "new.json").read_text()) == {"1": "lesion"}
    identity = json.loads((tmp_path / "p" / "provenance.json").read_text())["model"]["identity"]
    assert identity["engine"] == "nnunet" and identity["folds"] == ["0"] and identity["configuration"] == "3d_fullres"
    assert len(identity["sha256"]["fold_0/checkpoint_final.pth"]) == 64
    # the same model as nnU-Net's exported zip
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in tiny_results.rglob("*"):
            if f.is_file() and f.name != "checkpoint_best.pth":
                zf.write(f, f.relative_to(tiny_results.parents[1]))
    assert main(["predict", str(archive), str(image), "--out", str(tmp_path / "z"), "--no-tta"]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "z" / "new.nii.gz"))), ref)


@pytest.mark.slow
def test_missing_fold_names_the_file(tiny_results: Path, tmp_path: Path, capsys) -> None:
    image = _write(np.ones((16, 32, 32), np.float32), tmp_path / "x.nii.gz")
    assert main(["predict", str(tiny_results), str(image), "--out", str(tmp_path / "p"), "--folds", "0", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold_1/checkpoint_final.pth" in err[0] and "available folds: 0" in err[0]


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
