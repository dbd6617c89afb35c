"""A physicist's journey on the real data, through the CLI only (subprocesses), each command reading the last one's output.

index the shared data -> query FDG PET with ROIs (a case table) -> roi2mask --suv bw -> manifest (patient split) ->
radiomics with the PET preset -> evaluate the GTV against a second mask -> quality on the Lu-177 SPECT ->
anonymize (research profile) -> the same chain on the anonymised copy gives identical numbers.

Numbers are checked independently: SUVmax against the raw pixel data and tags read with pydicom, Dice against numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from conftest import need

pytestmark = pytest.mark.slow


def nmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI as a user would; fail with its output when it fails or prints a traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "nmkit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"nmkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def raw_suv_volume(folder: Path) -> np.ndarray:
    """SUVbw of a PET series from the raw tags: stored value x slope + intercept, then (Bq/ml only) x weight / dose
    decayed to the series time (DecayCorrection START) or not (ADMIN). Slices sorted along the normal."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    slices.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    values = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    ds = slices[0]
    if ds.Units == "GML":
        return values
    assert ds.Units == "BQML"
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    dose = float(rp.RadionuclideTotalDose)
    if ds.DecayCorrection == "START":
        def seconds(t: str) -> float:
            return int(t[:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:])
        dose *= 0.5 ** ((seconds(ds.SeriesTime) - seconds(rp.RadiopharmaceuticalStartTime)) / float(rp.RadionuclideHalfLife))
    return values * float(ds.PatientWeight) * 1000.0 / dose


def test_real_scans_end_to_end(external_data: Path, tmp_path: Path):
    sts = need(external_data, "pet_sts/sts_images")
    need(external_data, "spect_lu177")
    work = tmp_path
    # 1. catalog the whole shared folder (FDG PET, Lu-177 SPECT stored as PT, CT, MR, corpus ...)
    nmkit("index", str(external_data), "--db", "cat.sqlite", cwd=work)
    # 2. FDG PET with ROIs as a case table: the Lu-177 SPECT (also PT) stays out
    nmkit("query", "--db", "cat.sqlite", "--modality", "PT", "--tracer", "FDG", "--has-roi", "--format", "dataset",
          "--out", "fdg.csv", cwd=work)
    fdg = pd.read_csv(work / "fdg.csv", dtype=str, keep_default_na=False)
    assert sorted(fdg.patient_id) == ["STS_001", "STS_002", "STS_003"]
    assert all(json.loads(m)[0]["kind"] == "rtstruct" for m in fdg.masks)
    # 3. ROIs to masks, images in SUV (body weight)
    nmkit("roi2mask", "fdg.csv", "masks", "--suv", "bw", cwd=work)
    # 4. patient-level split of the case table roi2mask wrote
    out = nmkit("manifest", "--dataset", "masks/dataset.csv", "--out", "split.csv", "--split", "0.67", "0.33",
                "--seed", "1", cwd=work).stdout
    assert "patients per split: train 2, test 1" in out
    # 5. PET radiomics: native-grid SUVmax equals the raw DICOM maximum inside the GTV
    nmkit("radiomics", "--manifest", "split.csv", "--preset", "lifex-pet", "--per-patient", "--out", "pet.csv", cwd=work)
    pet = pd.read_csv(work / "pet.csv")
    assert len(pet) == 3 and set(pet.structure) == {"GTV_Mass_PET"} and set(pet.split) == {"train", "test"}
    units = json.loads((work / "pet.csv.units.json").read_text())
    units = units.get("columns", units)
    assert units["native_suv_max"].startswith("g/ml") and units["mtv_ml"] == "ml" and units["tlg_g"] == "g"
    split = pd.read_csv(work / "split.csv", dtype=str, keep_default_na=False)
    from nmkit.dataset import read_dataset

    table = read_dataset(work / "split.csv")
    for row in pet.itertuples():
        case = table[table.patient_id == row.patient_id].iloc[0]
        raw = raw_suv_volume(sts / row.patient_id / "PET" / "dicom" / "image")
        from nmkit.io.volume_files import read_label_map

        gtv = read_label_map(case.masks[0].file).array > 0
        assert gtv.shape == raw.shape
        expected = float(raw[gtv].max())
        assert abs(row.native_suv_max - expected) <= 0.005 * expected, (row.patient_id, row.native_suv_max, expected)
        assert row.native_suv_mean <= row.native_suv_peak <= row.native_suv_max
        voxel_ml = float(np.prod(read_label_map(case.masks[0].file).spacing)) / 1000.0
        assert row.mtv_ml == pytest.approx(gtv.sum() * voxel_ml, rel=1e-9)
        assert row.tlg_g == pytest.approx(row.native_suv_mean * row.mtv_ml, rel=1e-9)
    assert [round(v, 2) for v in pet.sort_values("patient_id").native_suv_max] == [7.91, 21.68, 10.27]
    assert len(split) == 3
    # 6. evaluate: the GTV rasterised from the RTSTRUCT against (a) the expert NIfTI masks of the same patients,
    #    matched through their case tables, and (b) a 40 % SUVmax threshold inside the GTV, checked with numpy
    nmkit("manifest", "--nifti-dir", str(need(external_data, "pet_sts/sts_images_flat/nifti")), "--modality", "PT",
          "--out", "nifti.csv", "--split", "1", cwd=work)
    nmkit("evaluate", "--pred", "nifti.csv", "--truth", "masks/dataset.csv", "--out", "agreement.csv", cwd=work)
    agreement = pd.read_csv(work / "agreement.csv")
    assert len(agreement) == 3 and (agreement.dice > 0.99).all() and set(agreement.structure) == {"GTV_Mass_PET"}
    import SimpleITK as sitk

    case = table[table.patient_id == "STS_001"].iloc[0]
    suv = sitk.ReadImage(case.image)
    gtv_img = sitk.ReadImage(case.masks[0].file)
    suv_a, gtv_a = sitk.GetArrayFromImage(suv), sitk.GetArrayFromImage(gtv_img) > 0
    thr = (gtv_a & (suv_a >= 0.4 * suv_a[gtv_a].max())).astype(np.uint8)
    thr_img = sitk.GetImageFromArray(thr)
    thr_img.CopyInformation(gtv_img)
    sitk.WriteImage(thr_img, str(work / "thr40.nii.gz"))
    nmkit("evaluate", "--pred", "thr40.nii.gz", "--truth", case.masks[0].file, "--out", "thr40.csv", cwd=work)
    dice = pd.read_csv(work / "thr40.csv").dice.item()
    assert dice == pytest.approx(2 * thr.sum() / (thr.sum() + gtv_a.sum()), abs=1e-9) and 0.1 < dice < 0.99
    assert "hd95_mm" in pd.read_csv(work / "thr40.csv").columns
    # 7. quality on the Lu-177 SPECT: per-lesion mean, max and MBq, with units
    nmkit("query", "--db", "cat.sqlite", "--modality", "PT", "--tracer", "Lu177", "--has-roi", "--format", "dataset",
          "--out", "lu.csv", cwd=work)
    nmkit("quality", "--manifest", "lu.csv", "--out", "lu_quality.csv", cwd=work)
    quality = pd.read_csv(work / "lu_quality.csv")
    assert quality.case_id.nunique() == 2 and sorted(quality.time_point.unique()) == ["TP1", "TP2"]
    lesion = quality[quality.metric == "activity_mbq"]
    assert len(lesion) == 4 and (lesion.unit == "MBq").all() and (lesion.value > 0).all()
    assert set(quality[quality.metric.isin(["mean", "max"])].unit) == {"Bq/ml"}
    # 8. anonymise with the research profile; the same chain on the copy gives identical numbers
    nmkit("anonymize", str(sts), "anon", "--map", "map.csv", "--salt", "journey-secret", "--profile", "research", cwd=work)
    nmkit("index", "anon", "--db", "anon.sqlite", cwd=work)
    nmkit("query", "--db", "anon.sqlite", "--modality", "PT", "--tracer", "FDG", "--has-roi", "--format", "dataset",
          "--out", "anon_fdg.csv", cwd=work)
    nmkit("roi2mask", "anon_fdg.csv", "anon_masks", "--suv", "bw", cwd=work)
    nmkit("radiomics", "--manifest", "anon_masks/dataset.csv", "--preset", "lifex-pet", "--out", "anon_pet.csv", cwd=work)
    anon = pd.read_csv(work / "anon_pet.csv")
    assert not set(anon.patient_id) & {"STS_001", "STS_002", "STS_003"}
    mapping = pd.read_csv(work / "map.csv", dtype=str)
    pseudonym = dict(zip(mapping.iloc[:, 1], mapping.iloc[:, 0])) if "STS_001" in set(mapping.iloc[:, 0]) else None
    features = [c for c in pet.columns if pd.api.types.is_numeric_dtype(pet[c]) and c in anon.columns
                and c not in split.columns]  # measurements, not the case table's identifiers (dates are shifted)
    assert len(features) > 100
    ours = pet.sort_values("native_suv_max").reset_index(drop=True)[features]
    theirs = anon.sort_values("native_suv_max").reset_index(drop=True)[features]
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert pseudonym is None or set(pseudonym) >= set(anon.patient_id)
