"""Dataset manifests: building from a catalog or NIfTI folder, patient-level splits, stratification, k folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.catalog.index import index_folder
from nmkit.catalog.manifest import (assign_folds, manifest_from_catalog, manifest_from_nifti, read_manifest,
                                    split_by_patient, write_manifest)
from nmkit.cli import main
from nmkit.errors import InputError
from test_catalog import archive  # noqa: F401  (synthetic DICOM archive fixture)


def _cohort(n_patients: int = 200, seed: int = 3) -> pd.DataFrame:
    """Patients with 1-4 studies each, PET + CT per study, a per-patient site (for stratification)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        site = ["A", "B", "C"][p % 3] if p % 10 else "D"
        for s in range(rng.integers(1, 5)):
            for mod in ("PT", "CT"):
                rows.append({"patient_id": f"PAT{p:04d}", "study_uid": f"1.2.{p}.{s}", "series_uid": f"1.2.{p}.{s}.{mod}",
                             "modality": mod, "image": f"/data/{p}/{s}/{mod}", "site": site})
    return pd.DataFrame(rows)


def _patients_per_split(df: pd.DataFrame) -> dict[str, set[str]]:
    return {k: set(v) for k, v in df.groupby("split").patient_id}


def test_split_is_patient_level_and_deterministic():
    cohort = _cohort()
    a = split_by_patient(cohort, (0.7, 0.15, 0.15), seed=1)
    groups = _patients_per_split(a)
    assert set(groups) == {"train", "val", "test"}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    assert {k: len(v) for k, v in groups.items()} == {"train": 140, "val": 30, "test": 30}
    assert (a.groupby("patient_id").split.nunique() == 1).all()  # every study of a patient in one split
    # same seed -> same split, whatever the row order; another seed -> another split
    shuffled = split_by_patient(cohort.sample(frac=1, random_state=7), (0.7, 0.15, 0.15), seed=1)
    assert shuffled.set_index("series_uid").split.sort_index().equals(a.set_index("series_uid").split.sort_index())
    b = split_by_patient(cohort, (0.7, 0.15, 0.15), seed=2)
    assert _patients_per_split(b)["test"] != groups["test"]
    assert len(a) == len(cohort) and "split" not in cohort.columns  # input untouched


def test_stratified_split_keeps_proportions_per_stratum():
    cohort = _cohort()
    df = split_by_patient(cohort, (0.6, 0.2, 0.2), seed=5, stratify="site")
    per = df.drop_duplicates("patient_id").groupby(["site", "split"]).size().unstack(fill_value=0)
    for site, row in per.iterrows():
        n = row.sum()
        for split, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(row[split] - frac * n) < 1, (site, split, row.to_dict())
    assert (df.groupby("patient_id").split.nunique() == 1).all()
    with pytest.raises(InputError, match="not in the manifest"):
        split_by_patient(cohort, seed=5, stratify="nope")


def test_bad_fractions_are_refused():
    with pytest.raises(InputError, match="sum to 1"):
        split_by_patient(_cohort(10), (0.7, 0.2))
    with pytest.raises(InputError, match="split names"):
        split_by_patient(_cohort(10), (0.5, 0.5), names=["a", "b", "c"])


def test_k_folds_patient_level_with_held_out_test():
    cohort = split_by_patient(_cohort(), (0.8, 0.2), seed=0)
    df = assign_folds(cohort, 5, seed=0, stratify="site", where=(cohort.split == "train").to_numpy())
    assert (df[df.split == "test"].fold == -1).all()
    train = df[df.split == "train"]
    assert set(train.fold) == {0, 1, 2, 3, 4}
    assert (df.groupby("patient_id").fold.nunique() == 1).all()
    sizes = train.drop_duplicates("patient_id").fold.value_counts()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 160
    again = assign_folds(cohort, 5, seed=0, stratify="site", where=(cohort.split == "train").to_numpy())
    assert again.fold.equals(df.fold)
    with pytest.raises(InputError):
        assign_folds(_cohort(3), 5)


def test_manifest_from_catalog_links_roi_files(archive, tmp_path: Path):  # noqa: F811
    db = tmp_path / "cat.sqlite"
    index_folder(archive["root"], db)
    df = manifest_from_catalog(db, modality="PT")
    assert len(df) == 3 and set(df.modality) == {"PT"}
    row = df.set_index("series_uid").loc[archive["P1_pet"]]
    assert row.image_format == "dicom" and Path(row.image).is_dir() and len(list(Path(row.image).iterdir())) == 3
    assert [(Path(m.file).parent.name + "/" + Path(m.file).name, m.kind, m.reader) for m in row.masks] == [
        ("rt/000.dcm", "rtstruct", "READER^A")] and row.reader == "READER^A"
    assert row.roi == ""  # roi is a structure selector, never a file
    seg_row = df.set_index("series_uid").loc[archive["P3_psma"]]
    assert [m.kind for m in seg_row.masks] == ["seg"] and seg_row.reader == "READER^B"
    assert df.set_index("series_uid").loc[archive["P2_pet"]].masks == []
    only = manifest_from_catalog(db, require_roi=True)
    assert set(only.series_uid) == {archive["P1_pet"], archive["P3_psma"]}
    all_images = manifest_from_catalog(db)
    assert not set(all_images.modality) & {"RTSTRUCT", "SEG"} and len(all_images) == 6


def test_manifest_from_nifti_pairs(tmp_path: Path):
    import SimpleITK as sitk

    class nib:  # tiny NIfTI writer on SimpleITK (a project dependency)
        @staticmethod
        def save(image, path):
            sitk.WriteImage(image, str(path))

    img = sitk.GetImageFromArray(np.zeros((3, 4, 4), np.float32))
    (tmp_path / "flat").mkdir()
    for p in ("case01", "case02"):
        nib.save(img, tmp_path / "flat" / f"{p}_PET_image.nii.gz")
        nib.save(img, tmp_path / "flat" / f"{p}_PET_mask.nii.gz")
    nib.save(img, tmp_path / "flat" / "case03_CT_image.nii.gz")  # no mask
    (tmp_path / "nn" / "images").mkdir(parents=True)
    (tmp_path / "nn" / "labels").mkdir()
    nib.save(img, tmp_path / "nn" / "images" / "liver_007.nii.gz")
    nib.save(img, tmp_path / "nn" / "labels" / "liver_007.nii.gz")
    flat = manifest_from_nifti(tmp_path / "flat")
    assert flat.patient_id.tolist() == ["case01", "case02", "case03"]
    assert flat["mask"].str.endswith("case01_PET_mask.nii.gz").tolist() == [True, False, False]
    assert flat["mask"].tolist()[2] == "" and flat.masks.tolist()[2] == [] and flat.modality.tolist() == ["PT", "PT", "CT"]
    assert [m.kind for m in flat.masks[0]] == ["labelmap"] and flat.case_id[0] == "case01_PET_image"
    nn = manifest_from_nifti(tmp_path / "nn")
    assert nn.patient_id.tolist() == ["liver_007"] and nn["mask"][0].endswith("labels/liver_007.nii.gz")
    with pytest.raises(InputError, match="no image files"):
        manifest_from_nifti(tmp_path / "nn" / "labels")


def test_write_read_round_trip_and_cli(archive, tmp_path: Path, capsys):  # noqa: F811
    db = tmp_path / "cat.sqlite"
    index_folder(archive["root"], db)
    out = tmp_path / "m" / "manifest.csv"
    assert main(["manifest", "--db", str(db), "--out", str(out), "--split", "0.34", "0.33", "0.33", "--seed", "1",
                 "--folds", "2"]) == 0
    df = read_manifest(out)
    assert len(df) == 6 and set(df.split) <= {"train", "val", "test"} and "fold" in df.columns
    assert (df.groupby("patient_id").split.nunique() == 1).all()
    side = json.loads((tmp_path / "m" / "manifest.provenance.json").read_text())
    assert side["config"]["seed"] == 1 and side["config"]["source"] == str(db.resolve()) and side["nmkit_version"]
    assert side["patients"] == 3 and sum(side["split_patients"].values()) == 3
    # the same command gives the same manifest; JSON output reads back identically
    out2 = tmp_path / "m2.json"
    assert main(["manifest", "--db", str(db), "--out", str(out2), "--split", "0.34", "0.33", "0.33", "--seed", "1",
                 "--folds", "2"]) == 0
    df2 = read_manifest(out2)
    assert df2[["series_uid", "split", "fold"]].equals(df[["series_uid", "split", "fold"]])
    assert main(["manifest", "--db", str(db), "--out", str(tmp_path / "x.csv"), "--split", "0.5", "0.6"]) == 2
    write_manifest(df, tmp_path / "again.csv")
    again = read_manifest(tmp_path / "again.csv")
    assert again.drop(columns="masks").equals(df.drop(columns="masks")) and again.masks.tolist() == df.masks.tolist()


def test_nifti_manifest_real_sts(external_data: Path, tmp_path: Path):
    folder = need(external_data, "pet_sts/sts_images_flat/nifti")
    df = split_by_patient(manifest_from_nifti(folder), (0.34, 0.33, 0.33), seed=0, stratify=None)
    assert len(df) == 9 and all(len(m) == 1 for m in df.masks)
    assert sorted(df.patient_id.unique()) == ["STS_001", "STS_002", "STS_003"]
    assert df.groupby("patient_id").split.nunique().eq(1).all() and df.split.nunique() == 3
    assert sorted(df.modality.unique()) == ["CT", "MR", "PT"]


def test_manifest_on_real_corpus_lists_images_only_and_never_merges_blank_patients(external_data: Path, tmp_path: Path,
                                                                                     capsys):
    corpus = need(external_data, "dicom_corpus")
    db = tmp_path / "corpus.sqlite"
    index_folder(corpus, db)
    # the corpus holds an ECG, a real-world value map and an annotation object: none of them is an image
    with pytest.raises(InputError, match="without a Patient ID.*--blank-patient"):
        manifest_from_catalog(db)
    skipped = manifest_from_catalog(db, blank_patient="skip")
    per_study = manifest_from_catalog(db, blank_patient="study")
    assert not set(per_study.modality) & {"ECG", "RWV", "ANN", "SR", "SEG", "RTSTRUCT", "PR"}
    blank_rows = per_study[per_study.patient_id.str.startswith("blank:")]
    assert len(blank_rows) == len(per_study) - len(skipped) > 0
    # one pseudo-patient per study: two blank-ID series of different studies are two patients
    assert blank_rows.patient_id.nunique() == blank_rows.study_uid.nunique() > 1
    out = tmp_path / "m.csv"
    assert main(["manifest", "--db", str(db), "--out", str(out)]) == 2
    assert "--blank-patient" in capsys.readouterr().err and not out.exists()


def test_manifest_cli_reports_empty_split_and_time_points(external_data: Path, tmp_path: Path, capsys):
    db = tmp_path / "cat.sqlite"
    index_folder(need(external_data, "pet_sts/sts_images"), db)
    index_folder(need(external_data, "spect_lu177"), db)
    out = tmp_path / "fdg.csv"
    assert main(["manifest", "--db", str(db), "--out", str(out), "--modality", "PT", "--tracer", "FDG", "--require-roi"]) == 0
    captured = capsys.readouterr()
    assert "test 0" in captured.out and "split 'test' got no patient" in captured.err
    fdg = read_manifest(out)
    assert sorted(fdg.patient_id) == ["STS_001", "STS_002", "STS_003"]  # the Lu-177 SPECT stored as PT is not FDG
    assert all(m[0].kind == "rtstruct" and Path(m[0].file).is_file() for m in fdg.masks)
    lu = manifest_from_catalog(db, modality="PT", tracer="Lu177")
    assert sorted(lu.time_point) == ["TP1", "TP2"] and lu.series_description.str.contains("xSPECT").all()
    assert (lu.acquisition_datetime.str[:10].tolist() == ["2018-11-15", "2018-11-16"])
    # the case table re-splits: manifest --dataset
    again = tmp_path / "again.csv"
    assert main(["manifest", "--dataset", str(out), "--out", str(again), "--split", "0.5", "0.5", "--seed", "3"]) == 0
    assert set(read_manifest(again).split) == {"train", "test"}


def test_time_points_number_scan_days_per_patient_modality_and_tracer():
    from nmkit.io.dicom_dates import scan_day, time_point_labels

    # a study date without acquisition time is the same day as an ISO acquisition date-time of that day
    days = [scan_day("2018-11-15T13:06:28", ""), scan_day("", "20181116"), scan_day("", "20181115"), scan_day("", "")]
    assert days == ["2018-11-15", "2018-11-16", "2018-11-15", ""]
    groups = [("P1", "PT", "Lu"), ("P1", "PT", "Lu"), ("P1", "PT", "Lu"), ("P1", "PT", "Lu")]
    assert time_point_labels(groups, days) == ["TP1", "TP2", "TP1", ""]
    assert time_point_labels([("P2", "CT", ""), ("P3", "CT", "")], ["2020-01-01", "2020-02-01"]) == ["", ""]
