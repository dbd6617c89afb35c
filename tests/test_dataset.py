"""The dataset contract (nmkit-dataset/1): one case table, one validating reader, errors naming row/column/file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nmkit.dataset import SCHEMA, DatasetError, MaskRef, new_table, read_dataset, single_label_map, write_dataset
from nmkit.errors import InputError
from nmkit.io.roi_select import select_rois


def _files(folder: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")
        out.append(path)
    return out


def test_round_trip_keeps_masks_and_writes_paths_relative_to_the_table(tmp_path: Path, monkeypatch):
    image, gtv, seg = _files(tmp_path / "data", "P1/image.nii.gz", "P1/gtv.nii.gz", "P1/lesions.dcm")
    masks = [MaskRef(str(gtv), "labelmap", segment=1, structure="GTV", label=1, reader="R1"),
             MaskRef(str(seg), "seg", segment=3, structure="Neoplasm, Secondary")]
    table = new_table([{"patient_id": "P1", "image": str(image), "masks": masks, "tracer": "FDG", "centre": "A"}])
    assert table.case_id[0] == "image" and table.image_format[0] == "nifti" and table["mask"][0] == ""  # two files
    side = write_dataset(table, tmp_path / "data" / "dataset.csv", {"producer": "test"})
    text = (tmp_path / "data" / "dataset.csv").read_text()
    assert str(tmp_path) not in text and "P1/gtv.nii.gz" in text  # moves with its folder
    record = json.loads(side.read_text())
    assert record["schema"] == SCHEMA and record["rows"] == 1 and record["producer"] == "test"
    monkeypatch.chdir(tmp_path)  # reading does not depend on the working directory
    back = read_dataset(tmp_path / "data" / "dataset.csv", need_masks=True)
    assert back.masks[0] == masks and back.image[0] == str(image) and back.centre[0] == "A"
    assert [m.selector for m in back.masks[0]] == ["1", "3"]
    # a relative output folder given from another working directory still gives correct relative paths
    write_dataset(back, Path("out") / "t.csv")
    assert read_dataset(tmp_path / "out" / "t.csv").masks[0] == masks


@pytest.mark.parametrize("content, message", [
    ("patient_id,image\nP1,missing.nii.gz\n", r"row 2, column 'image': file .*missing.nii.gz does not exist"),
    ("patient_id,image\n,img.nii.gz\n", r"row 2, column 'patient_id': blank patient ID"),
    ('patient_id,image,masks\nP1,img.nii.gz,"[{""file"": ""m.nii.gz"", ""kind"": ""rtss""}]"\n', r"row 2, column 'masks'.*kind 'rtss'"),
    ("patient_id,image,masks\nP1,img.nii.gz,not json\n", r"row 2, column 'masks': not a list"),
    ("patient_id,image,mask\nP1,img.nii.gz,\nP2,img.nii.gz,gone.nii.gz\n", r"row 3, column 'masks': mask file .*gone.nii.gz"),
    ("patient_id,image,fold\nP1,img.nii.gz,x\n", r"row 2, column 'fold'"),
    ("patient,file\nP1,img.nii.gz\n", r"no 'image' column"),
])
def test_bad_rows_name_row_column_and_file(tmp_path: Path, content: str, message: str):
    _files(tmp_path, "img.nii.gz")
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_dataset(tmp_path / "t.csv")
    assert str(tmp_path / "t.csv") in str(info.value)


def test_requirements_and_legacy_manifests(tmp_path: Path):
    image, mask, rt = _files(tmp_path, "img.nii.gz", "mask.nii.gz", "rt.dcm")
    (tmp_path / "legacy.csv").write_text(f"patient_id,image,mask\nP1,img.nii.gz,mask.nii.gz\n")
    legacy = read_dataset(tmp_path / "legacy.csv")
    assert legacy.masks[0] == [MaskRef(str(mask), "labelmap")] and single_label_map(legacy.iloc[0]) == str(mask)
    with pytest.raises(DatasetError, match="lacks column.*split"):
        read_dataset(tmp_path / "legacy.csv", require=("image", "split"))
    # the catalog manifest of nmkit 0.1 kept ROI files in 'roi' (+ roi_format): read as masks, not as a structure name
    (tmp_path / "old_catalog.csv").write_text("patient_id,image,roi,roi_format\nP1,img.nii.gz,rt.dcm,rtstruct\n")
    old = read_dataset(tmp_path / "old_catalog.csv")
    assert [m.file for m in old.masks[0]] == [str(rt)]
    with pytest.raises(InputError, match="convert it to a label map first with `nmkit roi2mask`"):
        single_label_map({"case_id": "c", "masks": [MaskRef(str(rt), "rtstruct")]})
    (tmp_path / "nomask.csv").write_text("patient_id,image\nP1,img.nii.gz\n")
    with pytest.raises(DatasetError, match="row 2, column 'masks': no mask"):
        read_dataset(tmp_path / "nomask.csv", need_masks=True)
    with pytest.raises(InputError, match="does not exist"):
        read_dataset(tmp_path / "absent.csv")


def test_roi_selection_by_number_glob_and_repeated_names():
    names = {1: "Neoplasm, Primary", 2: "Neoplasm, Secondary", 3: "Neoplasm, Secondary", 7: "GTV_Mass_PET"}
    assert select_rois(names, "3") == {3: "Neoplasm, Secondary"}
    assert select_rois(names, "neoplasm, secondary") == {2: "Neoplasm, Secondary", 3: "Neoplasm, Secondary"}
    assert select_rois(names, "GTV*") == {7: "GTV_Mass_PET"}
    assert select_rois(names, "1;7") == {1: "Neoplasm, Primary", 7: "GTV_Mass_PET"}
    assert select_rois(names, None) == names
    with pytest.raises(InputError, match=r"ROI 'GTV' not found.*7='GTV_Mass_PET'"):
        select_rois(names, "GTV", "rs.dcm")
    with pytest.raises(InputError, match="ROI number 9 not found"):
        select_rois(names, "9")


def test_thyroid_phantom_writes_a_case_table_that_training_reads(tmp_path: Path):
    from nmkit.phantoms.cohort import generate_cohort
    from nmkit.segment.data import read_manifest

    generate_cohort(tmp_path / "ph", n=2, seed=4, workers=1, progress=False)
    table = read_dataset(tmp_path / "ph" / "dataset.csv", need_masks=True, heads=["R1", "R2", "R3"])
    cases = pd.read_csv(tmp_path / "ph" / "cases.csv")
    assert table.patient_id.tolist() == cases.patient_id.tolist() and (table.modality == "NM").all()
    assert [m[0].reader for m in table.masks] == ["truth", "truth"] and table.series_uid.str.startswith("2.25.").all()
    assert all(Path(f).is_file() for f in table.mask_R2)
    assert (tmp_path / "ph" / "dataset.provenance.json").is_file()
    with pytest.raises(DatasetError, match="column 'split'"):  # training needs a split: manifest makes one
        read_manifest(tmp_path / "ph" / "dataset.csv")
    from nmkit.cli import main

    assert main(["manifest", "--dataset", str(tmp_path / "ph" / "dataset.csv"), "--out", str(tmp_path / "m.csv"),
                 "--split", "0.5", "0.5"]) == 0
    segment_view = read_manifest(tmp_path / "m.csv")  # segmentation reads the same table, reader columns kept
    assert len(segment_view) == 2 and set(segment_view.split) == {"train", "test"} and "mask_R3" in segment_view
