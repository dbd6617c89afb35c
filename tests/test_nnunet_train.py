"""`nmkit train --engine nnunet` on a two-channel (PET+CT) case table, offline, and prediction with the bundle
(voxel-identical to nnU-Net's own predictor on the same channels); channel mismatches are one clear message."""

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
from nmkit.dataset import MaskRef, new_table, write_dataset

if importlib.util.find_spec("nnunetv2") is None:
    pytest.skip("nnU-Net v2 not installed", allow_module_level=True)


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


def _refuse(*_a, **_k):
    raise OSError("network blocked by the test")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny two-channel nnU-Net bundle trained by `nmkit train --engine nnunet` (nnU-Net's own planner and trainer,
    1 epoch x 2 iterations, CPU) with the network blocked; returns (bundle, data folder)."""
    root = tmp_path_factory.mktemp("nnunet")
    table = _pet_ct_table(root / "data")
    bundle = root / "bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        assert main(["train", "--engine", "nnunet", str(table), "--out", str(bundle), "--channels", "PT", "CT", "--labels",
                     "1=lesion", "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--threads", "2",
                     "--device", "cpu"]) == 0
    return bundle, root / "data"


def _reference(results: Path, data: Path, i: int, out: Path, mirroring: bool = False) -> np.ndarray:
    """nnU-Net's own predictor on PET + CT resampled onto the PET grid by SimpleITK (linear)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out.mkdir(parents=True, exist_ok=True)
    pet = sitk.ReadImage(str(data / f"s{i}" / "pet.nii.gz"))
    ct = sitk.Resample(sitk.ReadImage(str(data / f"s{i}" / "ct.nii.gz")), pet, sitk.Transform(), sitk.sitkLinear, 0.0)
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkFloat32), str(out / f"ct{i}.nii.gz"))
    predictor = nnUNetPredictor(use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results), use_folds=None)
    predictor.predict_from_files_sequential([[str(data / f"s{i}" / "pet.nii.gz"), str(out / f"ct{i}.nii.gz")]],
                                            [str(out / f"r{i}")], False, True)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"r{i}.nii.gz")))


@pytest.mark.slow
def test_two_channel_bundle_round_trip_offline(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    bundle, data = trained
    desc = json.loads((bundle / "bundle.json").read_text())
    assert desc["engine"] == "nnunet" and desc["channels"] == ["PT", "CT"] and desc["labels"] == {"1": "lesion"}
    assert (bundle / "nnunet" / "fold_0" / "checkpoint_final.pth").is_file() and not (bundle / "nnunet_work").exists()
    assert json.loads((bundle / "nnunet" / "dataset.json").read_text())["channel_names"] == {"0": "PT", "1": "CT"}
    assert len(desc["checksums_sha256"]["nnunet/fold_0/checkpoint_final.pth"]) == 64
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), str(data / "dataset.csv"), "--split", "val", "--out", str(out), "--no-tta"]) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "s3_pet.nii.gz")))
    ref = _reference(bundle / "nnunet", data, 3, tmp_path / "ref")
    assert ours.shape == (16, 32, 32) and np.array_equal(ours, ref)
    rows = (out / "dataset.csv").read_text()
    assert "s3_pet" in rows and "model:bundle@1.0.0" in rows
    # server instances load models through the same loader: registration keeps the nnU-Net weights
    from nmkit.serve.registry import Registry
    from nmkit.serve.worker import cached_bundle

    registry = Registry(tmp_path / "registry")
    version = registry.register("lesions", bundle)
    served = cached_bundle(str(registry.path("lesions", version)), "cpu")
    assert served.labels == {1: "lesion"} and served.channels == ["PT", "CT"]
    assert served.identity["sha256"]["fold_0/checkpoint_final.pth"] == desc["checksums_sha256"]["nnunet/fold_0/checkpoint_final.pth"]
    # the bundle on a table without CT rows: one clear message naming the missing channel
    pet_only = _pet_ct_table(tmp_path / "pet_only", channels=("PT",))
    capsys.readouterr()
    assert main(["predict", str(bundle), str(pet_only), "--split", "all", "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no row of modality CT" in err[0]
    # files: PET and CT in groups; a lone PET file is one message saying so
    assert main(["predict", str(bundle), str(data / "s3" / "pet.nii.gz"), "--out", str(tmp_path / "p3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes 2 channels (PT, CT)" in err[0] and "groups of 2" in err[0]


@pytest.mark.slow
def test_results_folder_and_zip_equal_nnunet_offline(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    """The bundle's nnunet/ folder is a plain nnU-Net results folder: as a folder and as an exported zip, `nmkit predict`
    (PET and CT files in channel order, CT resampled by nmkit) equals nnU-Net's own predictor voxel for voxel."""
    bundle, data = trained
    results = bundle / "nnunet"
    ref = _reference(results, data, 3, tmp_path / "ref")
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    inputs = [str(data / "s3" / "pet.nii.gz"), str(data / "s3" / "ct.nii.gz")]
    assert main(["predict", str(results), *inputs, "--out", str(tmp_path / "p"), "--no-tta"]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p" / "pet.nii.gz"))), ref)
    assert json.loads((tmp_path / "p" / "pet.json").read_text()) == {"1": "lesion"}
    identity = json.loads((tmp_path / "p" / "provenance.json").read_text())["model"]["identity"]
    assert identity["engine"] == "nnunet" and identity["folds"] == ["0"] and identity["configuration"] == "3d_fullres"
    assert identity["sha256"]["fold_0/checkpoint_final.pth"] == json.loads((bundle / "bundle.json").read_text())[
        "checksums_sha256"]["nnunet/fold_0/checkpoint_final.pth"]
    # default test-time augmentation = nnU-Net's own mirroring
    assert main(["predict", str(results), *inputs, "--out", str(tmp_path / "m")]) == 0
    mirrored = _reference(results, data, 3, tmp_path / "ref_m", mirroring=True)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m" / "pet.nii.gz"))), mirrored)
    archive = tmp_path / "model.zip"  # the layout of nnUNetv2_export_model_to_zip
    with zipfile.ZipFile(archive, "w") as zf:
        for f in results.rglob("*"):
            if f.is_file():
                zf.write(f, Path("Dataset900_bundle") / "nnUNetTrainer__nnUNetPlans__3d_fullres" / f.relative_to(results))
    assert main(["predict", str(archive), *inputs, "--out", str(tmp_path / "z"), "--no-tta"]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "z" / "pet.nii.gz"))), ref)
    # a fold that is not there: one line naming the file expected
    capsys.readouterr()
    assert main(["predict", str(results), *inputs, "--out", str(tmp_path / "f"), "--folds", "0", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold_1/checkpoint_final.pth" in err[0] and "available folds: 0" in err[0]


def test_splits_from_the_case_table() -> None:
    """Fold 0 from train/val; fold k from the fold column (train on the other folds); folds > 0 without it: an error."""
    from nmkit.errors import InputError
    from nmkit.segment.engines.nnunet_train import make_splits

    cases = [{"id": f"c{i}", "case_id": str(i), "split": "train" if i < 3 else "val", "fold": ""} for i in range(4)]
    assert make_splits(cases, [0], "t.csv") == [{"train": ["c0", "c1", "c2"], "val": ["c3"]}]
    with pytest.raises(InputError, match="need a fold column"):
        make_splits(cases, [0, 1], "t.csv")
    cases = [{"id": f"c{i}", "case_id": str(i), "split": "train", "fold": str(i % 2)} for i in range(4)]
    assert make_splits(cases, [0, 1], "t.csv") == [{"train": ["c1", "c3"], "val": ["c0", "c2"]},
                                                   {"train": ["c0", "c2"], "val": ["c1", "c3"]}]


def test_sided_labels_train_nnunet_without_mirroring() -> None:
    """Labels naming a body side: nnU-Net trains and predicts without mirroring (the worker's patch of the default
    trainer gives no mirror axes and None as the checkpoint's inference mirroring axes); other labels keep it."""
    pytest.importorskip("nnunetv2")
    from nmkit.segment.engines.nnunet_train import nnunet_mirroring
    from nmkit.segment.engines.nnunet_worker import without_mirroring

    assert nnunet_mirroring({1: "kidney_left", 2: "kidney_right"}) is False
    assert nnunet_mirroring({1: "lesion", 2: "liver"}) is True
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert callable(nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size)  # the method patched

    class Trainer:  # nnU-Net's method contract: (rotation, dummy 2D, initial patch size, mirror axes)
        inference_allowed_mirroring_axes = None

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            self.inference_allowed_mirroring_axes = (0, 1, 2)
            return "rot", False, (64, 64, 64), (0, 1, 2)

    trainer = Trainer()
    without_mirroring(trainer)
    assert trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size() == ("rot", False, (64, 64, 64), None)
    assert trainer.inference_allowed_mirroring_axes is None
