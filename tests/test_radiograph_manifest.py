"""2D image/mask folders (cxr_lungs) into the dataset contract, split by patient; the table feeds the training loader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.catalog.manifest import manifest_from_image_folders, parse_labels
from nmkit.cli import main
from nmkit.dataset import read_dataset
from nmkit.errors import InputError
from nmkit.io.roi_select import select_rois


def test_cxr_lungs_folders_to_case_table(external_data):
    root = need(external_data, "cxr_lungs")
    source = pd.read_csv(root / "manifest.csv", dtype=str)
    table = manifest_from_image_folders(root / "images", root / "masks", labels={1: "right_lung", 2: "left_lung"})
    assert len(table) == 30 and table["patient_id"].nunique() == 25  # manifest.csv detected beside the images
    expected = dict(zip(source["id"], source["patientid"]))
    assert dict(zip(table["case_id"], table["patient_id"])) == expected
    assert (table["image_format"] == "png").all() and "licence" in table.columns  # licence travels with the image
    for refs, case in zip(table["masks"], table["case_id"]):
        assert [(m.label, m.structure, m.kind) for m in refs] == [(1, "right_lung", "labelmap"), (2, "left_lung", "labelmap")]
        assert refs[0].file.endswith(f"masks/{case}.png")
    names = {m.label: m.structure for m in table["masks"][0]}
    assert select_rois(names, "left*", "test") == {2: "left_lung"}


def test_cli_manifest_image_dir_patient_level_splits(external_data, tmp_path):
    root = need(external_data, "cxr_lungs")
    out = tmp_path / "lungs.csv"
    rc = main(["manifest", "--image-dir", str(root / "images"), "--mask-dir", str(root / "masks"), "--labels", "1=right_lung",
               "2=left_lung", "--split", "0.8", "0.2", "--folds", "5", "--seed", "3", "--out", str(out)])
    assert rc == 0
    table = read_dataset(out, require=("image", "split"), need_masks=True)
    assert len(table) == 30
    per_patient = table.groupby("patient_id")[["split", "fold"]].nunique()
    assert (per_patient == 1).all().all()  # no patient in two splits or two folds
    assert set(table["split"]) == {"train", "test"} and sorted(set(table.loc[table.split == "train", "fold"])) == [0, 1, 2, 3, 4]
    prov = json.loads((tmp_path / "lungs.provenance.json").read_text())
    assert prov["config"]["patients"].endswith("cxr_lungs/manifest.csv")
    from nmkit.generate.data import load_manifest

    cases = load_manifest(out, "test", limit=2)  # the table feeds the diffusion/segmentation loader
    for case in cases:
        assert case.label.shape == case.image.array.shape and set(np.unique(case.label)) == {0, 1, 2}
        right, left = np.argwhere(case.label == 1)[:, 1].mean(), np.argwhere(case.label == 2)[:, 1].mean()
        assert right < left  # the patient's right lung is on the viewer's left of a PA radiograph


def test_patients_csv_options_and_errors(external_data, tmp_path):
    images = need(external_data, "cxr_unlabelled/images")
    csv = tmp_path / "who.csv"
    pd.DataFrame({"file": ["cxr_0000.png", "cxr_0001.png"], "pid": ["A", "A"]}).to_csv(csv, index=False)
    table = manifest_from_image_folders(images, patients=csv, patient_column="pid", patient_key="file")
    by_case = dict(zip(table.case_id, table.patient_id))
    assert by_case["cxr_0000"] == by_case["cxr_0001"] == "A" and by_case["cxr_0002"] == "cxr_0002"  # unlisted: own patient
    with pytest.raises(InputError, match="--patient-column"):
        manifest_from_image_folders(images, patients=csv, patient_column="nope", patient_key="file")
    with pytest.raises(InputError, match="--labels"):
        parse_labels(["right_lung"])
    assert parse_labels(["1=right_lung", "2=left_lung"]) == {1: "right_lung", 2: "left_lung"}
