"""train -> predict -> evaluate / case table, on simulated thyroid scintigraphy DICOM (``nmkit phantom thyroid``).

What is checked: a bundle trained with ``--labels 1=gtv`` from a case table writes predictions whose label maps,
case table and evaluation all say ``gtv``; the shipped multi-reader bundle runs by name, writes every head from ONE
forward pass per image (counted), and each head agrees with its own simulated reader; the predicted case table is
read by ``nmkit.dataset.read_dataset`` with the DICOM patient/study/series IDs (checked against pydicom) and
``model:<bundle>@<version>/<head>`` readers; wrong options fail before any data is read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nmkit.cli import main
from nmkit.dataset import MaskRef, new_table, read_dataset, write_dataset


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """Five simulated planar thyroid scans (DICOM NM), their true gland masks and three readers' masks."""
    out = tmp_path_factory.mktemp("thyroid")
    assert main(["phantom", "thyroid", "--out", str(out), "--n", "5", "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def case_table(phantom) -> Path:
    """A case table (nmkit-dataset/1) of the phantom: DICOM images, gland label maps named ``gtv``, 3/1/1 split."""
    cases = pd.read_csv(phantom / "cases.csv")
    splits = ["train", "train", "train", "val", "test"]
    rows = [{"case_id": c.case, "patient_id": c.patient_id, "image": str(phantom / c.dicom), "pathology": c.pathology,
             "masks": [MaskRef(file=str(phantom / c.truth_gland), structure="gtv", label=1)], "split": split}
            for c, split in zip(cases.itertuples(), splits)]
    path = phantom / "train_table" / "dataset.csv"
    write_dataset(new_table(rows), path, {"producer": "test_predict_chain"})
    return path


@pytest.fixture(scope="module")
def tiny_bundle(case_table, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    assert main(["train", str(case_table), "--out", str(out), "--size", "32", "32", "--epochs", "1", "--batch-size", "2",
                 "--labels", "1=gtv", "--name", "tiny-gtv", "--version", "0.1.0"]) == 0
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_label_names_travel_from_train_to_predict_and_evaluate(phantom, case_table, tiny_bundle, tmp_path):
    from nmkit.io.roi import read_named_label_map
    from nmkit.segment.bundle import load_bundle

    assert load_bundle(tiny_bundle, device="cpu").labels == {1: "gtv"}
    out = tmp_path / "pred"
    assert main(["predict", str(tiny_bundle), str(case_table), "--out", str(out)]) == 0  # the table's test split
    table = read_dataset(out / "dataset.csv", need_masks=True)
    assert list(table["case_id"]) == ["case00004"] and list(table["split"]) == ["test"]
    assert table.loc[0, "patient_id"] == pd.read_csv(phantom / "cases.csv")["patient_id"][4]
    (ref,) = table.loc[0, "masks"]
    assert (ref.structure, ref.label, ref.kind, ref.reader) == ("gtv", 1, "labelmap", "model:tiny-gtv@0.1.0")
    assert json.loads((out / "case00004.json").read_text()) == {"1": "gtv"}
    assert read_named_label_map(ref.file).labels == {1: "gtv"}
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(phantom / "truth" / "case00004_gland.nii.gz", truth / "case00004.nii.gz")
    assert main(["evaluate", "--pred", str(out), "--truth", str(truth), "--out", str(tmp_path / "eval.csv")]) == 0
    metrics = pd.read_csv(tmp_path / "eval.csv")
    assert set(metrics["structure"]) == {"gtv"}


def test_shipped_bundle_by_name_all_heads_one_forward_pass(phantom, tmp_path, monkeypatch):
    import pydicom

    import nmkit.segment.bundle as bundle_module

    calls = {"forward": 0}
    real_load = bundle_module.load_bundle

    def counting_load(*args, **kwargs):
        bundle = real_load(*args, **kwargs)
        forward = bundle.model.forward

        def counted(x):
            calls["forward"] += 1
            return forward(x)

        bundle.model.forward = counted
        return bundle

    monkeypatch.setattr(bundle_module, "load_bundle", counting_load)
    images = [phantom / "dicom" / f"case0000{i}" / "ANT.dcm" for i in (0, 1)]
    out = tmp_path / "pred"
    assert main(["predict", "thyroid-unet2d", *map(str, images), "--head", "all", "--tta", "--out", str(out)]) == 0
    assert calls["forward"] == 2 * 2  # 2 images x (plain + left-right flip), whatever the number of heads (4)
    heads = ["R1", "R2", "R3", "consensus"]
    table = read_dataset(out / "dataset.csv", need_masks=True, heads=heads)
    assert list(table["case_id"]) == ["case00000_ANT", "case00001_ANT"]  # same file names: the folder tells them apart
    for row, image in zip(table.to_dict(orient="records"), images):
        ds = pydicom.dcmread(image, stop_before_pixels=True)
        assert (row["patient_id"], row["study_uid"], row["series_uid"]) == (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert row["modality"] == "NM" and row["image_format"] == "dicom"
        assert [m.reader for m in row["masks"]] == [f"model:thyroid-unet2d@3.0.0/{h}" for h in heads]
        assert {m.structure for m in row["masks"]} == {"thyroid"}
        case = Path(image).parent.name
        for head in ("R1", "R2", "R3"):  # each head delineates as its own simulated reader does
            assert _dice(_read(row[f"mask_{head}"]), _read(phantom / "masks" / head / f"{case}.nii.gz")) > 0.9


def test_predict_heads_matches_one_head_at_a_time(phantom):
    from nmkit.segment.bundle import load_bundle
    from nmkit.segment.data import load_image
    from nmkit.segment.infer import predict_heads, predict_image

    bundle = load_bundle("thyroid-unet2d", device="cpu")
    image = load_image(phantom / "dicom" / "case00001" / "ANT.dcm")
    calls = []
    forward = bundle.model.forward
    bundle.model.forward = lambda x: (calls.append(1), forward(x))[1]
    masks = predict_heads(bundle, image, list(bundle.heads), flips=())
    assert len(calls) == 1 and list(masks) == list(bundle.heads)
    for head, mask in masks.items():
        assert mask.labels == {1: "thyroid"} and mask.meta["head"] == head
        assert np.array_equal(mask.array, predict_image(bundle, image, flips=(), head=head).array)
    assert np.array_equal(predict_image(bundle, image, flips=()).array, masks["consensus"].array)  # the default head


def test_unknown_bundle_names_the_shipped_ones(phantom, tmp_path, capsys):
    image = phantom / "dicom" / "case00000" / "ANT.dcm"
    assert main(["predict", "thyroid-unet", str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "thyroid-unet2d" in err[0] and "shipped bundles" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), str(image), "--out", str(tmp_path / "p")]) == 2
    assert "bundle.json missing" in capsys.readouterr().err


def test_train_options_fail_before_the_data_is_read(case_table, tmp_path, capsys, monkeypatch):
    import nmkit.segment.data as data_module
    import nmkit.segment.nets as nets_module

    with pytest.raises(SystemExit) as exit_info:  # argparse: not a listed network
        main(["train", str(case_table), "--out", str(tmp_path / "b"), "--network", "segresnet"])
    assert exit_info.value.code == 2 and "invalid choice: 'segresnet'" in capsys.readouterr().err

    def no_data(*args, **kwargs):
        raise AssertionError("the case table was read before the options were checked")

    monkeypatch.setattr(data_module, "read_manifest", no_data)
    assert main(["train", str(case_table), "--out", str(tmp_path / "b"), "--size", "40", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--network unet" in err[0] and "divisible by 16" in err[0]

    def unbuildable(*args, **kwargs):
        raise ImportError("No module named 'einops'")

    monkeypatch.setattr(nets_module, "build_network", unbuildable)
    assert main(["train", str(case_table), "--out", str(tmp_path / "b"), "--network", "swin-unetr", "--size", "64", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--network swin-unetr cannot be built" in err[0] and "einops" in err[0]


def _whole_image_bundle(out: Path, normalisation: str) -> Path:
    """A 3D U-Net bundle whose output layer says "gtv" everywhere (bias only): predictions are the whole image, so
    what the chain reads (SUV, IDs, table) is checked without training a model."""
    import torch

    from nmkit.segment.bundle import write_bundle
    from nmkit.segment.nets import build_network
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig

    config = TrainConfig(network="unet", network_options={"channels": (4, 8)}, labels={1: "gtv"})
    prep = Preprocessing(normalisation=normalisation, spatial_dims=3, target_size=None, patch_size=(16, 16, 16))
    model = build_network("unet", 3, 1, 2, img_size=(16, 16, 16), channels=(4, 8))
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-10.0, 10.0]))
    return write_bundle(out, model, config, prep, name="whole-gtv", version="0.0.1")


def test_pet_dicom_prediction_chains_to_radiomics_in_suv(external_data, tmp_path):
    """Real FDG PET DICOM (pet_sts): a bundle trained on SUV reads the PET in SUV (the table says so), the rows carry
    the DICOM IDs, and radiomics on predict's table finds the SUVmax of the reference SUV NIfTI (mirp's conversion)."""
    import pydicom
    import SimpleITK as sitk

    from conftest import need

    series = need(external_data, "pet_sts/sts_images/STS_001/PET/dicom/image")
    reference = need(external_data, "pet_sts/sts_images_flat/nifti/STS_001_PET_image.nii.gz")
    bundle = _whole_image_bundle(tmp_path / "bundle", "suv")
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), str(series), "--out", str(out)]) == 0
    (row,) = read_dataset(out / "dataset.csv", need_masks=True).to_dict(orient="records")
    ds = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    assert (row["patient_id"], row["series_uid"], row["modality"], row["suv"]) == (ds.PatientID, ds.SeriesInstanceUID, "PT", "bw")
    assert row["masks"][0].structure == "gtv" and row["masks"][0].reader == "model:whole-gtv@0.0.1"
    assert main(["radiomics", "--manifest", str(out / "dataset.csv"), "--preset", "lifex-pet", "--out", str(tmp_path / "rad.csv")]) == 0
    features = pd.read_csv(tmp_path / "rad.csv")
    suv_max = float(sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).max())
    assert list(features["structure"]) == ["gtv"]
    assert features["native_suv_max"][0] == pytest.approx(suv_max, rel=0.005)
