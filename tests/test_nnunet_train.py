"""`nmkit train --engine nnunet` on a two-channel (PET+CT) case table, offline, and prediction with the bundle
(voxel-identical to nnU-Net's own predictor on the same channels); channel mismatches are one clear message."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nmkit.cli import main
from nmkit.dataset import MaskRef, new_table, write_dataset

if importlib.util.find_spec("nnunetv2") is None:
    pytest.skip("nnU-Net v2 not installed", allow_module_level=True)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _img(arr, spacing, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _pet_ct_table(root: Path, n: int = 4, channels=("PT", "CT")) -> Path:
    """PET (2 mm, 16x32x32) and CT (1x1x2 mm, 16x64x64, same extent) per study, a hot/dense sphere, PET label map."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        shape = (16, 32, 32)
        c = np.array([16.0, 32.0, 32.0]) + rng.uniform(-4, 4, 3)  # centre in mm (z, y, x)
        r = rng.uniform(9, 14)
        z, y, x = np.indices(shape) * 2.0 + 1.0
        label = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r ** 2).astype(np.uint8)
        pet = (label * 6.0 + 1.0 + rng.normal(0, 0.4, shape)).astype(np.float32)
        zc, yc, xc = np.indices((16, 64, 64)).astype(float)
        zc, yc, xc = zc * 2.0 + 1.0, yc + 0.5, xc + 0.5
        ct = np.where((zc - c[0]) ** 2 + (yc - c[1]) ** 2 + (xc - c[2]) ** 2 < r ** 2, 40.0, -100.0) + rng.normal(0, 10, zc.shape)
        case = root / f"s{i}"
        case.mkdir(parents=True)
        sitk.WriteImage(_img(pet, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0)), str(case / "pet.nii.gz"))
        sitk.WriteImage(_img(label, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0)), str(case / "pet_label.nii.gz"))
        sitk.WriteImage(_img(ct.astype(np.float32), (1.0, 1.0, 2.0), (0.5, 0.5, 1.0)), str(case / "ct.nii.gz"))
        split = "train" if i < n - 1 else "val"
        common = {"patient_id": f"P{i}", "study_uid": f"1.2.3.{i}", "split": split}
        if "PT" in channels:
            rows.append({**common, "case_id": f"s{i}_pet", "modality": "PT", "image": str(case / "pet.nii.gz"),
                         "masks": [MaskRef(file=str(case / "pet_label.nii.gz"), label=1, structure="lesion")]})
        if "CT" in channels:
            rows.append({**common, "case_id": f"s{i}_ct", "modality": "CT", "image": str(case / "ct.nii.gz"), "masks": []})
    path = root / "dataset.csv"
    write_dataset(new_table(rows), path, {"producer": "test"})
    return path


def test_channels_missing_from_the_table_one_message(tmp_path: Path, capsys) -> None:
    table = _pet_ct_table(tmp_path, n=3)
    assert main(["train", "--engine", "nnunet", str(table), "--out", str(tmp_path / "b"), "--channels", "PT", "MR"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no row of modality MR" in err[0] and "CT, PT" in err[0]


@pytest.mark.slow
def test_two_channel_train_predict_round_trip_offline(tmp_path: Path, no_network, capsys) -> None:
    table = _pet_ct_table(tmp_path / "data")
    bundle = tmp_path / "bundle"
    assert main(["train", "--engine", "nnunet", str(table), "--out", str(bundle), "--channels", "PT", "CT", "--labels",
                 "1=lesion", "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--threads", "2", "--device", "cpu"]) == 0
    desc = json.loads((bundle / "bundle.json").read_text())
    assert desc["engine"] == "nnunet" and desc["channels"] == ["PT", "CT"] and desc["labels"] == {"1": "lesion"}
    assert (bundle / "nnunet" / "fold_0" / "checkpoint_final.pth").is_file()
    assert json.loads((bundle / "nnunet" / "dataset.json").read_text())["channel_names"] == {"0": "PT", "1": "CT"}
    assert not (bundle / "nnunet_work").exists()

    out = tmp_path / "pred"
    assert main(["predict", str(bundle), str(table), "--split", "val", "--out", str(out), "--no-tta"]) == 0
    # nnU-Net's own predictor on the same channels (CT resampled onto the PET grid by SimpleITK, linear)
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    files = []
    for i in (3,):
        pet = sitk.ReadImage(str(tmp_path / "data" / f"s{i}" / "pet.nii.gz"))
        ct = sitk.Resample(sitk.ReadImage(str(tmp_path / "data" / f"s{i}" / "ct.nii.gz")), pet, sitk.Transform(), sitk.sitkLinear, 0.0)
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkFloat32), str(ref_dir / f"ct{i}.nii.gz"))
        files.append([str(tmp_path / "data" / f"s{i}" / "pet.nii.gz"), str(ref_dir / f"ct{i}.nii.gz")])
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(bundle / "nnunet"), use_folds=None)
    predictor.predict_from_files_sequential(files, [str(ref_dir / "r3")], False, True)
    for i in (3,):
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"s{i}_pet.nii.gz")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"r{i}.nii.gz")))
        assert ours.shape == (16, 32, 32) and np.array_equal(ours, ref)
    rows = (out / "dataset.csv").read_text()
    assert "s3_pet" in rows and "model:bundle@1.0.0" in rows

    # the same bundle on a table without the CT rows: one clear message naming the missing channel
    pet_only = _pet_ct_table(tmp_path / "pet_only", channels=("PT",))
    capsys.readouterr()
    assert main(["predict", str(bundle), str(pet_only), "--split", "all", "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no row of modality CT" in err[0]
