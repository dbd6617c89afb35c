"""`nmkit anonymize --profile basic|research`: what each profile keeps, and SUV before/after on real scans."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import need
from nmkit.errors import MissingTagError
from nmkit.io.deid import (Deidentifier, anonymize_tree, deidentification_method_text, method_codes, profile_of,
                           profile_options)
from nmkit.io.reader import read_image
from nmkit.io.suv import deidentification_hint, suv_factors

SALT = "profile-test-salt"
PET_CLASS = "1.2.840.10008.5.1.4.1.1.128"
NAME, PID, BIRTH, DAY = "DOE^JANE", "HOSP-0042", "19530412", "20210305"


# ----- a small, physically plausible F-18 PET (Bq/ml, decay corrected to the series start) -------------
def _pet(folder: Path, n: int = 3) -> Path:
    """3 slices of 8x8, 5 kBq/ml background; injection 08:05, series start 09:10 (65 min uptake)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = PET_CLASS, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = PET_CLASS, ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
        ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.PatientSize = "F", "067Y", "63.5", "1.68"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = DAY
        ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime = "090000", "091000", "091000"
        ds.StudyDescription, ds.SeriesDescription = "PET-CT Jane Doe staging", "WB FDG 3D AC"
        ds.InstitutionName, ds.ReferringPhysicianName = "St Elsewhere", "HOUSE^GREGORY"
        ds.Modality, ds.Units, ds.DecayCorrection = "PT", "BQML", "START"
        rp = Dataset()
        rp.Radiopharmaceutical = "Fluorodeoxyglucose"
        rp.RadionuclideTotalDose, rp.RadionuclideHalfLife = "250000000", "6586.2"
        rp.RadiopharmaceuticalStartTime = "080500"
        rp.RadiopharmaceuticalStartDateTime = DAY + "080500"
        ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
        ds.InstanceNumber, ds.SeriesNumber = k + 1, 3
        ds.ImagePositionPatient = [-16.0, -16.0, 4.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [4.0, 4.0], 4.0
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        pixels = np.full((8, 8), 5000, dtype=np.uint16)
        pixels[3:5, 3:5] = 40000  # a hot lesion, 40 kBq/ml
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"pt_{k}.dcm", enforce_file_format=True)
    return folder


def _datasets(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def _values(ds: Dataset):
    for elem in ds.iterall():
        if elem.VR != "SQ":
            yield elem


def _series_dirs(out: Path) -> list[Path]:
    return sorted({p.parent for p in out.rglob("*.dcm")})


def _datetime(ds: Dataset) -> dt.datetime:
    return dt.datetime.strptime(str(ds.SeriesDate) + str(ds.SeriesTime).split(".")[0], "%Y%m%d%H%M%S")


def _day(value: str) -> dt.date:
    return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))


# ----- profiles as data ----------------------------------------------------------------------------------
def test_profiles_record_their_cid7050_codes():
    research, basic = profile_options("research"), profile_options("basic")
    assert method_codes(basic) == ["113100"]
    assert method_codes(research) == ["113100", "113107", "113108", "113105", "113111"]
    for options in (research, basic, profile_options("basic", retain_device_identity=True, keep=("ProtocolName",))):
        text = deidentification_method_text(options)
        assert len(text) <= 64 and text.startswith(f"nmkit profile {options.profile}:")
    assert profile_options("basic", date_mode="shift").date_mode == "shift"  # overrides win
    with pytest.raises(ValueError, match="unknown de-identification profile"):
        profile_options("strict")


# ----- synthetic PET: what each profile keeps ------------------------------------------------------------
def test_research_profile_keeps_suv_descriptions_and_intervals(tmp_path: Path):
    src = _pet(tmp_path / "in")
    results = anonymize_tree(src, tmp_path / "out", tmp_path / "map.csv", SALT)  # default: research
    assert len(results) == 3 and not any(r.error for r in results)
    before, after = _datasets(src), _datasets(tmp_path / "out")
    ds = after[0]
    # SUV: the same factor from the anonymised tags (weight kept, injection and series start shifted together)
    f0, f1 = suv_factors(before, "bw"), suv_factors(after, "bw")
    assert f1.factor == pytest.approx(f0.factor, rel=1e-12)
    assert f1.details["elapsed_s"] == pytest.approx(65 * 60)  # 08:05 -> 09:10
    assert suv_factors(after, "lbm").factor == pytest.approx(suv_factors(before, "lbm").factor, rel=1e-12)
    # dates shifted by the same whole number of days everywhere, times kept
    shift = (dt.date.fromisoformat(f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}")
             - dt.date(2021, 3, 5)).days
    assert shift <= -365
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    assert rp.RadiopharmaceuticalStartDateTime[:8] == ds.SeriesDate == ds.AcquisitionDate == ds.StudyDate
    assert rp.RadiopharmaceuticalStartTime == "080500" and ds.SeriesTime == "091000"
    assert rp.Radiopharmaceutical == "Fluorodeoxyglucose" and float(rp.RadionuclideHalfLife) == 6586.2
    # patient characteristics and (cleaned) descriptors kept; identity gone
    assert (ds.PatientWeight, ds.PatientSize, ds.PatientSex, ds.PatientAge) == (63.5, 1.68, "F", "067Y")
    assert ds.SeriesDescription == "WB FDG 3D AC"
    assert ds.StudyDescription == "PET-CT X X staging"  # the patient's name is cleaned out of free text
    assert ds.PatientBirthDate == "" and "InstitutionName" not in ds and ds.PatientName != NAME
    assert ds.PatientIdentityRemoved == "YES" and profile_of(ds) == "research"
    assert {i.CodeValue for i in ds.DeidentificationMethodCodeSequence} == {"113100", "113107", "113108", "113105",
                                                                           "113111"}
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_basic_profile_removes_identity_dates_weight_and_says_so_in_suv_errors(tmp_path: Path):
    src = _pet(tmp_path / "in")
    anonymize_tree(src, tmp_path / "out", tmp_path / "map.csv", SALT, profile_options("basic"))
    after = _datasets(tmp_path / "out")
    for path in (tmp_path / "out").rglob("*.dcm"):
        raw = path.read_bytes()
        for value in (NAME, PID, BIRTH, DAY, "Jane", "St Elsewhere", "HOUSE"):
            assert value.encode() not in raw, f"{value} left in {path}"
    for ds in after:
        assert not [e for e in _values(ds) if e.VR in ("DA", "DT") and e.value], "a date survived"
        for kw in ("PatientWeight", "PatientSize", "PatientAge", "SeriesDescription", "StudyDescription"):
            assert kw not in ds
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    with pytest.raises(MissingTagError) as info:
        suv_factors(after, "bw", path=tmp_path / "out")
    message = str(info.value)
    assert "PatientWeight" in info.value.tags and "SeriesDate/SeriesTime" in info.value.tags
    assert "de-identification profile 'basic'" in message and "nmkit anonymize --profile research" in message


def test_suv_hint_only_for_deidentified_files(tmp_path: Path):
    ds = _datasets(_pet(tmp_path / "in", n=1))[0]
    del ds.PatientWeight
    with pytest.raises(MissingTagError) as plain:
        suv_factors([ds], "bw")
    assert "de-identification" not in str(plain.value)  # an ordinary file: no misleading hint
    ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "Limited Data Set: MIM"
    with pytest.raises(MissingTagError) as foreign:
        suv_factors([ds], "bw")
    assert "probably removed by de-identification ('Limited Data Set: MIM')" in str(foreign.value)
    assert deidentification_hint(ds, ["RadionuclideTotalDose"]) == ""  # not something a profile removes


def test_clean_descriptors_replace_the_patient_id(tmp_path: Path):
    ds = _datasets(_pet(tmp_path / "in", n=1))[0]
    ds.SeriesDescription = "hosp-0042 PET day 1 (DOE)"
    out = Deidentifier(SALT).deidentify(ds)
    assert out.SeriesDescription == f"{out.PatientID} PET day 1 (X)"


# ----- real scans ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lu177(external_data: Path, tmp_path_factory) -> dict[str, Path]:
    """The two Lu-177 SPECT time points (Bq/ml, stored as PT): all slices anonymised with the research profile,
    every 20th slice with the basic profile (enough for the identity and SUV-error checks)."""
    root = need(external_data, "spect_lu177")
    files = sorted(p for p in root.glob("SCAN_00[12]/image/*.dcm"))
    tmp = tmp_path_factory.mktemp("lu177")
    for name, chosen in (("research", files), ("basic", files[::20])):
        results = anonymize_tree(root, tmp / name, tmp / f"{name}.csv", SALT, profile_options(name), files=chosen)
        assert len(results) == len(chosen) and not any(r.error for r in results)
    return {"root": root, "research": tmp / "research", "basic": tmp / "basic"}


def test_lu177_research_profile_keeps_suv_time_points_and_descriptions(lu177: dict[str, Path]):
    originals = {str(pydicom.dcmread(next((lu177["root"] / s / "image").glob("*.dcm"))).SeriesDescription): s
                 for s in ("SCAN_001", "SCAN_002")}
    anon = {}
    for folder in _series_dirs(lu177["research"]):
        ds = pydicom.dcmread(next(folder.glob("*.dcm")))
        anon[str(ds.SeriesDescription)] = (folder, ds)
    assert set(anon) == set(originals) == {"C2S1D0 [xSPECT48iNOFILT - AC ]", "C2S2D1 [xSPECT48iNOFILT - AC ]"}
    for description, scan in originals.items():
        folder, ds = anon[description]
        suv_in = read_image(lu177["root"] / scan / "image", suv="bw")
        suv_out = read_image(folder, suv="bw")
        assert suv_out.units == "g/ml" and suv_out.array.max() > 1.0
        assert suv_out.array.max() == suv_in.array.max()
        np.testing.assert_array_equal(suv_out.array, suv_in.array)
        assert ds.PatientWeight == 92.987 and ds.PatientIdentityRemoved == "YES" and profile_of(ds) == "research"
    ref = {s: pydicom.dcmread(next((lu177["root"] / s / "image").glob("*.dcm")), stop_before_pixels=True)
           for s in ("SCAN_001", "SCAN_002")}
    d1, d2 = anon["C2S1D0 [xSPECT48iNOFILT - AC ]"][1], anon["C2S2D1 [xSPECT48iNOFILT - AC ]"][1]
    assert d1.SeriesDate != ref["SCAN_001"].SeriesDate and d2.SeriesDate != ref["SCAN_002"].SeriesDate
    interval = _datetime(d2) - _datetime(d1)
    assert interval == _datetime(ref["SCAN_002"]) - _datetime(ref["SCAN_001"])
    assert dt.timedelta(hours=23) < interval < dt.timedelta(hours=25)  # day 0 and day 1 after therapy
    for scan, anon_ds in (("SCAN_001", d1), ("SCAN_002", d2)):  # every date moved by the same whole days
        before = {e.tag: str(e.value) for e in _values(ref[scan]) if e.VR in ("DA", "DT") and e.value}
        after = {e.tag: str(e.value) for e in _values(anon_ds) if e.VR in ("DA", "DT") and e.value}
        assert set(after) == set(before) and len(before) >= 5
        shifts = {(_day(after[t]) - _day(before[t])).days for t in before}
        assert len(shifts) == 1 and shifts.pop() <= -365
        assert all(after[t][8:] == before[t][8:] for t in before)  # times of day untouched
    shifted_injection = d1.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    original_injection = ref["SCAN_001"].RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    assert shifted_injection != original_injection and shifted_injection[8:] == original_injection[8:]


def test_lu177_basic_profile_leaves_no_identity_and_suv_names_the_profile(lu177: dict[str, Path]):
    originals = [pydicom.dcmread(next((lu177["root"] / s / "image").glob("*.dcm")), stop_before_pixels=True)
                 for s in ("SCAN_001", "SCAN_002")]
    secrets = {str(o.PatientName) for o in originals} | {str(o.PatientID) for o in originals}
    secrets |= {str(e.value)[:8] for o in originals for e in _values(o) if e.VR in ("DA", "DT") and e.value}
    assert {"DOE^JOHN", "ANON54121", "20181115", "20181116"} <= secrets
    folders = _series_dirs(lu177["basic"])
    assert len(folders) == 2
    for folder in folders:
        paths = sorted(folder.glob("*.dcm"))
        assert len(paths) >= 9
        for path in paths:
            ds = pydicom.dcmread(path)
            text = {str(e.value) for e in _values(ds) if e.value not in (None, "")}
            assert not [t for t in text if any(s in t for s in secrets)], f"{path}: original identity or date left"
            assert "PatientWeight" not in ds and "SeriesDescription" not in ds
        with pytest.raises(MissingTagError) as info:
            read_image(paths[0], suv="bw")
        assert "PatientWeight" in info.value.tags
        assert "profile 'basic'" in str(info.value) and "`nmkit anonymize --profile research`" in str(info.value)
        assert read_image(paths[0]).units == "Bq/ml"  # activity itself is still there


def test_pet_sts_research_profile_suv_identical(external_data: Path, tmp_path: Path):
    src = need(external_data, "pet_sts/sts_images/STS_001/PET/dicom/image")
    results = anonymize_tree(src, tmp_path / "out", tmp_path / "map.csv", SALT)
    assert not any(r.error for r in results)
    (folder,) = _series_dirs(tmp_path / "out")
    for kind in ("bw", "lbm"):  # pixels are SUVbw (Units GML); SUL needs weight, size and sex
        before, after = read_image(src, suv=kind), read_image(folder, suv=kind)
        assert after.array.max() == before.array.max() > 5.0
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    assert ds.SeriesDescription == f"IBSI_1_{ds.PatientID}_PET_image"  # the original ID "STS_001" cleaned out


# ----- CLI -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("progress", ["--progress", "--no-progress"])
def test_cli_progress_on_stderr_only(external_data: Path, tmp_path: Path, progress: str):
    src = need(external_data, "pet_sts/sts_images/STS_001/PET/dicom")
    cmd = [sys.executable, "-m", "nmkit.cli", "anonymize", str(src), str(tmp_path / "out"), "--map",
           str(tmp_path / "map.csv"), "--salt", SALT, "--profile", "basic", progress]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") == 1 and "file(s) de-identified" in run.stdout and "profile basic" in run.stdout
    has_bar = "anonymize: 100%" in run.stderr
    assert has_bar == (progress == "--progress")
    assert "Traceback" not in run.stderr
