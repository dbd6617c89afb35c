"""Radiomics cohorts from a DICOM catalog, with RTSTRUCT/SEG masks rasterised on the image grid.

The IBSI CT phantom ships the same image and GTV as NIfTI and as DICOM + RTSTRUCT: features from the catalog
(RTSTRUCT, and a SEG written from the NIfTI mask) must equal those from the NIfTI files. The STS PET cases add
a structure set with a renamed and an off-image ROI: those fail on their own and the other cases still give rows.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import need

IBSI_CT = "ibsi/ibsi_1_ct_radiomics_phantom"
ID_COLUMNS = {"patient_id", "study_uid", "series_uid", "roi_name", "config_hash", "nmkit_version"}


def _assert_same_features(row, expected: dict[str, float]) -> None:
    """Every feature of ``expected`` equals the row's (relative 1e-6; NaN equals NaN)."""
    bad = []
    for tag, value in expected.items():
        got = float(row[tag])
        if math.isnan(value):
            if not math.isnan(got):
                bad.append(f"{tag}: {got} vs NaN")
        elif not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9):
            bad.append(f"{tag}: {got} vs {value}")
    assert not bad, f"{len(bad)} of {len(expected)} features differ: " + "; ".join(bad[:10])


@pytest.fixture(scope="module")
def ibsi_ct(external_data, tmp_path_factory):
    """A catalog of the IBSI CT phantom's DICOM folder plus a SEG (GTV and an eroded core) written from the NIfTI mask;
    the NIfTI features (config C) of the GTV for comparison."""
    from scipy import ndimage

    from nmkit.catalog.index import index_folder
    from nmkit.io.image import Mask
    from nmkit.io.reader import read_image
    from nmkit.io.seg import write_seg
    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics.engine import extract

    root = need(external_data, IBSI_CT)
    tmp = tmp_path_factory.mktemp("ibsi_ct")
    image = read_image(root / "dicom" / "image")
    gtv = read_label_map(root / "nifti" / "mask" / "mask.nii.gz").binary()
    layers = np.stack([gtv, ndimage.binary_erosion(gtv, iterations=3)])
    seg_dir = tmp / "seg"
    seg_dir.mkdir()
    write_seg(Mask.like(image, layers, labels={1: "GTV", 2: "Core"}, overlapping=True), image, seg_dir / "seg.dcm")
    db = tmp / "catalog.sqlite"
    index_folder(root / "dicom", db)
    index_folder(seg_dir, db)
    expected = extract(read_volume(root / "nifti" / "image" / "phantom.nii.gz"),
                       read_label_map(root / "nifti" / "mask" / "mask.nii.gz"), "ibsi-c")
    return {"root": root, "db": db, "seg": seg_dir / "seg.dcm", "image": image, "expected": expected}


def test_catalog_rtstruct_and_seg_match_nifti_features(ibsi_ct):
    from nmkit.radiomics.cohort import cases_from_catalog, extract_cohort
    from nmkit.radiomics.presets import load_config

    cases = cases_from_catalog(ibsi_ct["db"], modality="CT")
    assert sorted(cases.mask_format) == ["rtstruct", "seg"] and cases.series_uid.nunique() == 1
    assert Path(cases.image[0]) == ibsi_ct["root"] / "dicom" / "image"  # the series folder, read by read_image
    result = extract_cohort(cases, load_config("ibsi-c"), progress=False)
    assert result.failures == []
    t = result.table
    assert ID_COLUMNS | {"mask", "config_name", "roi_series_uid"} <= set(t.columns)
    assert sorted(t.roi_name) == ["Core", "GTV", "GTV-1"]  # blank roi: one row per structure
    image = ibsi_ct["image"]
    assert set(t.patient_id) == {image.meta["PatientID"]}
    assert set(t.study_uid) == {image.meta["StudyInstanceUID"]} and set(t.series_uid) == {image.meta["SeriesInstanceUID"]}
    assert t.config_hash.nunique() == 1 and len(t.config_hash[0]) == 16 and set(t.config_name) == {"ibsi-c"}
    by_roi = t.set_index("roi_name")
    _assert_same_features(by_roi.loc["GTV-1"], ibsi_ct["expected"])  # RTSTRUCT contours
    _assert_same_features(by_roi.loc["GTV"], ibsi_ct["expected"])  # SEG frames
    assert by_roi.loc["Core", "morph_volume"] < 0.8 * by_roi.loc["GTV", "morph_volume"]

    gtv_only = extract_cohort(cases_from_catalog(ibsi_ct["db"], roi="gtv"), load_config("ibsi-c"), progress=False)
    # "gtv" is the SEG's "GTV" (case-insensitive); the RTSTRUCT has only "GTV-1": that case fails, naming its ROIs
    assert list(gtv_only.table.roi_name) == ["GTV"] and len(gtv_only.failures) == 1
    assert "GTV-1" in gtv_only.failures[0]["error"] and gtv_only.failures[0]["mask"].endswith("DCM_RS_00060.dcm")


def test_manifest_with_dicom_masks_fills_ids_from_the_image(ibsi_ct, tmp_path):
    from nmkit.errors import InputError
    from nmkit.radiomics.cohort import extract_cohort
    from nmkit.radiomics.presets import load_config

    root = ibsi_ct["root"]
    manifest = tmp_path / "cases.csv"
    manifest.write_text("series_uid,image,mask,roi\n"  # no patient_id column: filled from the DICOM header
                        f",{root / 'dicom' / 'image'},{root / 'dicom' / 'mask' / 'DCM_RS_00060.dcm'},gtv-1\n"
                        f",{root / 'dicom' / 'image'},{ibsi_ct['seg']},2\n"  # segment number 2 = Core
                        f",{root / 'dicom' / 'image'},{root / 'dicom' / 'image' / 'DCM_IMG_00000.dcm'},\n")  # not a mask
    result = extract_cohort(manifest, load_config("ibsi-c"), progress=False)
    t = result.table
    assert list(t.roi_name) == ["GTV-1", "Core"] and list(t.structure) == ["GTV-1", "Core"]
    assert list(t.segment_number) == [1, 2] and list(t.mask_kind) == ["rtstruct", "seg"]
    assert list(t.patient_id) == [ibsi_ct["image"].meta["PatientID"]] * 2
    assert set(t.series_uid) == {ibsi_ct["image"].meta["SeriesInstanceUID"]}
    _assert_same_features(t.iloc[0], ibsi_ct["expected"])
    assert [f["index"] for f in result.failures] == ["2"] and "not a mask" in result.failures[0]["error"]
    assert "DCM_IMG_00000.dcm" in result.failures[0]["error"]

    blank = tmp_path / "blank.csv"  # a patient_id column with a blank cell breaks the contract: row and column named
    blank.write_text(f"patient_id,image,mask\n,{root / 'dicom' / 'image'},{ibsi_ct['seg']}\n")
    with pytest.raises(InputError, match=r"blank\.csv.*row 2.*patient_id"):
        extract_cohort(blank, load_config("ibsi-c"), progress=False)


# ----- STS PET: several patients, SUV, a broken structure set ------------------------------------------------
def _broken_rtstruct(source: Path, target: Path) -> None:
    """A copy of ``source`` (new UIDs) whose GTV is renamed and with a second ROI lying 1 m above the image."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    roi, contour = ds.StructureSetROISequence[0], ds.ROIContourSequence[0]
    roi.ROIName = "Renamed GTV"
    number = max(int(r.ROINumber) for r in ds.StructureSetROISequence) + 1
    outside_roi, outside = copy.deepcopy(roi), copy.deepcopy(contour)
    outside_roi.ROINumber, outside_roi.ROIName = number, "Outside"
    outside.ReferencedROINumber = number
    for c in outside.ContourSequence:
        points = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        points[:, 2] += 1000.0
        c.ContourData = [f"{v:.4f}" for v in points.ravel()]
    ds.StructureSetROISequence.append(outside_roi)
    ds.ROIContourSequence.append(outside)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)


@pytest.fixture(scope="module")
def sts_catalog(external_data, tmp_path_factory):
    from nmkit.catalog.index import index_folder

    root = need(external_data, "pet_sts/sts_images")
    tmp = tmp_path_factory.mktemp("sts")
    _broken_rtstruct(root / "STS_003" / "PET" / "dicom" / "mask" / "RS.dcm", tmp / "extra" / "RS_broken.dcm")
    db = tmp / "catalog.sqlite"
    index_folder(root, db)
    index_folder(tmp / "extra", db)
    return {"db": db, "root": root}


def _fast_config():
    from nmkit.radiomics.config import RadiomicsConfig

    return RadiomicsConfig(name="fast-pet", discretisation={"method": "FBS", "bin_width": 0.5},
                           families=("morphology", "intensity_statistics"))


def test_sts_pet_catalog_one_row_per_patient_and_broken_cases_logged(sts_catalog, external_data, caplog):
    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics.cohort import cases_from_catalog, extract_cohort

    cases = cases_from_catalog(sts_catalog["db"], modality="PT", roi="gtv_mass_pet", suv="bw")
    assert len(cases) == 4 and set(cases.suv) == {"bw"} and set(cases.mask_format) == {"rtstruct"}
    result = extract_cohort(cases, _fast_config(), progress=False)
    t = result.table
    assert list(t.patient_id) == ["STS_001", "STS_002", "STS_003"] and set(t.roi_name) == {"GTV_Mass_PET"}
    assert (t.stat_max > 0).all()
    for row in t.itertuples():  # SUVmax in the contoured GTV: the shipped NIfTI SUV image and mask agree
        flat = need(external_data, "pet_sts/sts_images_flat/nifti")
        suv = read_volume(flat / f"{row.patient_id}_PET_image.nii.gz").array
        gtv = read_label_map(flat / f"{row.patient_id}_PET_mask.nii.gz").binary()
        assert row.stat_max == pytest.approx(float(suv[gtv].max()), rel=1e-5)
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure["mask"].endswith("RS_broken.dcm") and failure["roi"] == ""
    assert "'gtv_mass_pet' not found" in failure["error"] and "Renamed GTV" in failure["error"]
    assert "RS_broken.dcm" in caplog.text

    every = extract_cohort(cases_from_catalog(sts_catalog["db"], modality="PT"), _fast_config(), progress=False)
    # blank roi: each structure is its own row; the off-image ROI fails alone, its sibling still gives a row
    assert sorted(every.table.roi_name) == ["GTV_Mass_PET"] * 3 + ["Renamed GTV"]
    renamed = every.table.set_index("roi_name").loc["Renamed GTV"]
    sts3 = every.table[(every.table.patient_id == "STS_003") & (every.table.roi_name == "GTV_Mass_PET")].iloc[0]
    assert renamed.stat_max == sts3.stat_max and renamed.morph_volume == sts3.morph_volume
    assert [(f["roi"], "empty" in f["error"]) for f in every.failures] == [("Outside", True)]


def test_cli_catalog_writes_table_and_provenance(ibsi_ct, tmp_path, capsys):
    import pandas as pd

    from nmkit.cli import main

    out = tmp_path / "cohort.csv"
    assert main(["radiomics", "--catalog", str(ibsi_ct["db"]), "--modality", "CT", "--roi", "GTV-1", "--preset", "ibsi-c",
                 "--no-progress", "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"patient_id": str})
    assert len(table) == 1 and table.roi_name[0] == "GTV-1" and ID_COLUMNS <= set(table.columns)
    _assert_same_features(table.iloc[0], ibsi_ct["expected"])
    prov = json.loads((tmp_path / "cohort.csv.provenance.json").read_text())
    assert prov["inputs"] == [str(ibsi_ct["db"])] and prov["config"]["name"] == "ibsi-c"
    assert prov["selection"]["modality"] == ["CT"] and prov["selection"]["cases"] == 2
    assert len(prov["failures"]) == 1 and "GTV-1" in prov["failures"][0]["error"]  # the SEG has GTV and Core
    assert "1 case(s) failed" in capsys.readouterr().out

    assert main(["radiomics", "--catalog", str(ibsi_ct["db"]), "--modality", "MR", "--out", str(tmp_path / "none.csv")]) == 2
    assert "no image series" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --catalog and --manifest are mutually exclusive
        main(["radiomics", "--catalog", str(ibsi_ct["db"]), "--manifest", "m.csv", "--out", str(tmp_path / "x.csv")])


def test_cli_single_dicom_case_one_row_per_structure(ibsi_ct, tmp_path):
    import pandas as pd

    from nmkit.cli import main

    out = tmp_path / "one.csv"
    image = ibsi_ct["root"] / "dicom" / "image"
    assert main(["radiomics", "--image", str(image), "--mask", str(ibsi_ct["seg"]), "--preset", "ibsi-c",
                 "--format", "long", "--out", str(out)]) == 0
    long = pd.read_csv(out)
    assert sorted(long.roi_name.unique()) == ["Core", "GTV"]
    gtv = long[long.roi_name == "GTV"].set_index("feature")
    assert gtv.loc["morph_volume", "value"] == pytest.approx(ibsi_ct["expected"]["morph_volume"], rel=1e-6)
    assert gtv.loc["morph_volume", "ibsi_code"] == "RNU0" and set(long.series_uid) == {ibsi_ct["image"].meta["SeriesInstanceUID"]}


def test_sts_pet_catalog_process_pool_reports_structure_failures(sts_catalog):
    from nmkit.radiomics.cohort import cases_from_catalog, extract_cohort

    cases = cases_from_catalog(sts_catalog["db"], modality="PT", suv="bw")
    pooled = extract_cohort(cases, _fast_config(), n_workers=2, progress=False)
    assert sorted(pooled.table.roi_name) == ["GTV_Mass_PET"] * 3 + ["Renamed GTV"]
    assert list(pooled.table.patient_id) == ["STS_001", "STS_002", "STS_003", "STS_003"]  # case order kept
    assert [f["roi"] for f in pooled.failures] == ["Outside"] and "empty" in pooled.failures[0]["error"]
