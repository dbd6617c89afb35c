"""Cohort extraction from a manifest (one broken case is logged and skipped) and the `nmkit radiomics` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import need


@pytest.fixture()
def manifest(external_data, tmp_path):
    dp = need(external_data, "ibsi/ibsi_1_digital_phantom/nifti")
    pet = need(external_data, "pet_sts/sts_images_flat/nifti")
    rows = [
        ("P1", dp / "image/phantom.nii.gz", dp / "mask/mask.nii.gz", ""),
        ("STS_001", pet / "STS_001_PET_image.nii.gz", pet / "STS_001_PET_mask.nii.gz", "1"),
        ("BROKEN", tmp_path / "missing.nii.gz", dp / "mask/mask.nii.gz", ""),  # file does not exist
        ("WRONGROI", dp / "image/phantom.nii.gz", dp / "mask/mask.nii.gz", "liver"),  # no such ROI
    ]
    path = tmp_path / "cases.csv"
    path.write_text("patient_id,image,mask,roi,study_uid\n" + "".join(f"{p},{i},{m},{r},1.2.3.{k}\n" for k, (p, i, m, r) in enumerate(rows)))
    return path


def _fast_config():
    from nmkit.radiomics.config import RadiomicsConfig

    return RadiomicsConfig(name="fast", discretisation={"method": "FBN", "n_bins": 16},
                           families=("morphology", "intensity_statistics", "intensity_histogram"))


def test_cohort_skips_broken_cases(manifest, caplog):
    from nmkit.radiomics.cohort import extract_cohort

    result = extract_cohort(manifest, _fast_config(), n_workers=1, progress=False)
    t = result.table
    assert list(t.patient_id) == ["P1", "STS_001"]
    assert [f["index"] for f in result.failures] == ["2", "3"]
    assert "does not exist" in result.failures[0]["error"] and "liver" in result.failures[1]["error"]
    assert "skipping case 2" in caplog.text
    assert t.loc[0, "stat_mean"] == pytest.approx(2.15, abs=0.005)  # IBSI digital phantom mean
    assert t.loc[0, "morph_vol_approx"] == pytest.approx(592.0)
    assert {"roi_name", "config_hash", "nmkit_version", "study_uid"} <= set(t.columns)
    assert t.config_hash.nunique() == 1 and len(t.config_hash[0]) == 16


def test_cohort_process_pool_matches_serial(manifest):
    from nmkit.radiomics.cohort import extract_cohort

    serial = extract_cohort(manifest, _fast_config(), n_workers=1, progress=False).table
    pooled = extract_cohort(manifest, _fast_config(), n_workers=2, progress=False)
    assert len(pooled.failures) == 2
    np.testing.assert_allclose(pooled.table["stat_var"], serial["stat_var"], rtol=1e-12)


@pytest.mark.slow
def test_cohort_dask_local(manifest):
    from nmkit.radiomics.cohort import extract_cohort

    result = extract_cohort(manifest, _fast_config(), scheduler="dask-local", progress=False)
    assert list(result.table.patient_id) == ["P1", "STS_001"] and len(result.failures) == 2


def test_cli_single_case_and_manifest(external_data, manifest, tmp_path, capsys):
    import pandas as pd

    from nmkit.cli import main

    dp = need(external_data, "ibsi/ibsi_1_digital_phantom/nifti")
    out = tmp_path / "one.csv"
    assert main(["radiomics", "--image", str(dp / "image/phantom.nii.gz"), "--mask", str(dp / "mask/mask.nii.gz"),
                 "--preset", "ibsi-digital-phantom", "--format", "long", "--out", str(out)]) == 0
    long = pd.read_csv(out).set_index("feature")
    assert long.loc["morph_volume", "value"] == pytest.approx(556, abs=4)
    assert long.loc["morph_volume", "ibsi_code"] == "RNU0"
    assert long.loc["stat_mean", "pyradiomics"] == "original_firstorder_Mean"
    prov = json.loads((tmp_path / "one.csv.provenance.json").read_text())
    assert prov["config"]["name"] == "ibsi-digital-phantom" and len(prov["config_hash"]) == 16

    cfg = tmp_path / "user.yaml"
    cfg.write_text("base: ibsi-digital-phantom\nname: mine\nfamilies: [intensity_statistics]\n")
    out2 = tmp_path / "cohort.csv"
    assert main(["radiomics", "--manifest", str(manifest), "--config", str(cfg), "--no-progress", "--out", str(out2)]) == 0
    table = pd.read_csv(out2)
    assert len(table) == 2 and set(table.config_name) == {"mine"}
    assert "2 case(s) failed" in capsys.readouterr().out


def test_cli_bad_preset_is_clear_error(tmp_path, capsys):
    from nmkit.cli import main

    assert main(["radiomics", "--image", "a.nii", "--mask", "b.nii", "--preset", "nope", "--out", str(tmp_path / "x.csv")]) == 2
    assert "presets:" in capsys.readouterr().err
