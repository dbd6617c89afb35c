"""SUV (body weight) and SUL (lean body mass) from DICOM PT: real STS FDG-PET data and hand-computed cases."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from conftest import need
from nmkit.errors import DicomReadError, MissingTagError
from nmkit.io.reader import read_image
from nmkit.io.suv import lean_body_mass, parse_dicom_datetime, parse_dicom_time, suv_factors
from nmkit.io.volume_files import read_volume

PATIENTS = ("STS_001", "STS_002", "STS_003")


def _pet_dir(root: Path, patient: str) -> Path:
    return need(root, f"pet_sts/sts_images/{patient}/PET/dicom/image")


def _reference(root: Path, patient: str):
    return read_volume(need(root, f"pet_sts/sts_images_flat/nifti/{patient}_PET_image.nii.gz"))


def _rel_error_in_body(ours: np.ndarray, ref: np.ndarray, threshold: float = 0.1) -> float:
    body = ref > threshold
    assert body.sum() > 100, "too few voxels above threshold to compare"
    return float(np.max(np.abs(ours[body] - ref[body]) / ref[body]))


@pytest.mark.parametrize("patient", PATIENTS)
def test_sts_suvbw_matches_reference_nifti(external_data, patient):
    image = read_image(_pet_dir(external_data, patient), suv="bw")
    ref = _reference(external_data, patient)
    assert image.units == "g/ml" and image.modality == "PT"
    assert image.same_grid(ref), (image.geometry(), ref.geometry())
    assert _rel_error_in_body(image.array, ref.array) < 0.01
    assert 3.0 < float(image.array.max()) < 40.0  # FDG tumour SUVmax range
    assert image.meta["suv"]["factor"] == pytest.approx(1.0)  # these files are stored already in SUV (Units GML)


def _as_bqml_copy(src_dir: Path, dst: Path, decay: str = "START") -> tuple[Path, float]:
    """Copy of an STS PET series re-expressed in Bq/ml (Units BQML) with a hand-computed factor.

    The stored SUVs are multiplied by D(t)/W where D(t) is the dose decayed from injection to the series
    start (START) or the undecayed dose (ADMIN). Reading the copy back in SUV must undo exactly that.
    """
    dst.mkdir(parents=True, exist_ok=True)
    factor = None
    for path in sorted(src_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if factor is None:
            rp = ds.RadiopharmaceuticalInformationSequence[0]
            dose, half_life = float(rp.RadionuclideTotalDose), float(rp.RadionuclideHalfLife)
            inj = dt.datetime.strptime(ds.SeriesDate + str(rp.RadiopharmaceuticalStartTime).split(".")[0], "%Y%m%d%H%M%S")
            start = dt.datetime.strptime(ds.SeriesDate + str(ds.SeriesTime).split(".")[0], "%Y%m%d%H%M%S")
            elapsed = (start - inj).total_seconds()
            decayed = dose * 0.5 ** (elapsed / half_life) if decay == "START" else dose
            factor = decayed / (float(ds.PatientWeight) * 1000.0)  # Bq/ml per SUV unit
        ds.Units = "BQML"
        ds.DecayCorrection = decay
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * factor:.10g}"
        ds.save_as(dst / path.name)
    return dst, float(factor)


def test_bqml_start_decay_correction_recovers_suv(external_data, tmp_path):
    folder, factor = _as_bqml_copy(_pet_dir(external_data, "STS_001"), tmp_path / "bqml")
    ref = _reference(external_data, "STS_001")
    activity = read_image(folder)
    assert activity.units == "Bq/ml"
    assert _rel_error_in_body(activity.array, ref.array * factor, threshold=0.1) < 0.01
    suv = read_image(folder, suv="bw")
    assert suv.units == "g/ml"
    assert _rel_error_in_body(suv.array, ref.array) < 0.01
    details = suv.meta["suv"]
    assert details["decay_correction"] == "START"
    assert details["elapsed_s"] == pytest.approx(2711.0)  # 10:35:00 injection -> 11:20:11 series start
    # ignoring decay would be off by 2**(2711/6588) ~ 33 %: the comparison above would fail
    assert details["decayed_dose_bq"] == pytest.approx(3.88777472e8 * 0.5 ** (2711.0 / 6588.0), rel=1e-9)


def test_bqml_admin_uses_undecayed_dose(external_data, tmp_path):
    folder, _ = _as_bqml_copy(_pet_dir(external_data, "STS_002"), tmp_path / "admin", decay="ADMIN")
    suv = read_image(folder, suv="bw")
    assert _rel_error_in_body(suv.array, _reference(external_data, "STS_002").array) < 0.01
    assert suv.meta["suv"]["elapsed_s"] == 0.0


def test_sul_is_suvbw_times_lbm_over_weight(external_data):
    folder = _pet_dir(external_data, "STS_001")
    bw = read_image(folder, suv="bw")
    sul = read_image(folder, suv="lbm")
    lbm = lean_body_mass(71.0, 1.63, "M")  # patient attributes of STS_001
    assert sul.meta["suv"]["lbm_kg"] == pytest.approx(lbm)
    np.testing.assert_allclose(sul.array, bw.array * lbm / 71.0, rtol=1e-5, atol=1e-6)
    james = read_image(folder, suv="lbm", lbm_formula="james")
    assert james.meta["suv"]["lbm_kg"] == pytest.approx(1.10 * 71.0 - 128.0 * (71.0 / 163.0) ** 2)


def test_missing_patient_weight_is_named(external_data, tmp_path):
    folder, _ = _as_bqml_copy(_pet_dir(external_data, "STS_003"), tmp_path / "noweight")
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.PatientWeight
        ds.save_as(path)
    with pytest.raises(MissingTagError) as info:
        read_image(folder, suv="bw")
    assert "PatientWeight" in str(info.value) and info.value.tags == ["PatientWeight"]
    assert read_image(folder).units == "Bq/ml"  # activity still readable without SUV


def test_missing_tags_for_sul_are_all_listed(external_data, tmp_path):
    folder, _ = _as_bqml_copy(_pet_dir(external_data, "STS_003"), tmp_path / "nosex")
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.PatientSex
        del ds.PatientSize
        ds.save_as(path)
    with pytest.raises(MissingTagError) as info:
        read_image(folder, suv="lbm")
    assert set(info.value.tags) == {"PatientSex", "PatientSize"}
    assert read_image(folder, suv="bw").units == "g/ml"


# ----- hand-computed cases on synthetic headers ----------------------------------------------------------
def _pet_header(**changes) -> Dataset:
    ds = Dataset()
    ds.Units, ds.DecayCorrection = "BQML", "START"
    ds.PatientWeight, ds.PatientSize, ds.PatientSex = "80", "1.80", "F"
    ds.SeriesDate, ds.SeriesTime = "20240301", "101000"
    ds.AcquisitionDate, ds.AcquisitionTime = "20240301", "101000"
    rp = Dataset()
    rp.RadionuclideTotalDose, rp.RadionuclideHalfLife = "370000000", "6586.2"
    rp.RadiopharmaceuticalStartTime = "084013.5"  # 6586.5 s before 10:10:00
    ds.RadiopharmaceuticalInformationSequence = [rp]
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def test_one_half_life_doubles_the_factor():
    ds = _pet_header()
    ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife = "7189"
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "081011"  # 10:10:00 - 08:10:11 = 7189 s
    result = suv_factors([ds], "bw")
    expected = 80_000.0 / (370e6 / 2.0)
    assert result.factor == pytest.approx(expected, rel=1e-9)


def test_start_datetime_overrides_time_and_crosses_midnight():
    ds = _pet_header(SeriesDate="20240302", SeriesTime="003000", AcquisitionDate="20240302", AcquisitionTime="003000")
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    rp.RadiopharmaceuticalStartDateTime = "20240301233000.000000+0100"
    result = suv_factors([ds], "bw")
    assert result.details["elapsed_s"] == pytest.approx(3600.0)
    assert result.factor == pytest.approx(80_000.0 / (370e6 * math.exp(-math.log(2) * 3600 / 6586.2)))


def test_none_decay_correction_uses_each_slice_acquisition_time():
    a = _pet_header(DecayCorrection="NONE", AcquisitionTime="101000")
    b = _pet_header(DecayCorrection="NONE", AcquisitionTime="102000")
    result = suv_factors([a, b], "bw")
    assert result.factors[1] / result.factors[0] == pytest.approx(2 ** (600 / 6586.2))


def test_series_time_after_acquisition_uses_acquisition():
    ds = _pet_header(SeriesTime="120000")  # series time rewritten by post-processing
    result = suv_factors([ds], "bw")
    assert result.details["reference"].endswith("10:10:00")


def test_missing_dose_and_times_all_named():
    ds = _pet_header()
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    del rp.RadionuclideTotalDose
    del rp.RadiopharmaceuticalStartTime
    with pytest.raises(MissingTagError) as info:
        suv_factors([ds], "bw", path="pet/slice1.dcm")
    text = str(info.value)
    assert "RadionuclideTotalDose" in text and "RadiopharmaceuticalStartTime" in text and "pet/slice1.dcm" in text


def test_philips_cnts_uses_suv_scale_factor():
    ds = _pet_header(Units="CNTS")
    ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
    ds.add_new((0x7053, 0x1000), "DS", "0.000123")
    assert suv_factors([ds], "bw").factor == pytest.approx(0.000123)
    plain = _pet_header(Units="CNTS")
    with pytest.raises(MissingTagError, match="SUV Scale Factor"):
        suv_factors([plain], "bw")


def test_unknown_units_and_decay_are_refused():
    with pytest.raises(DicomReadError, match="Units"):
        suv_factors([_pet_header(Units="PROPCNTS")], "bw")
    with pytest.raises(DicomReadError, match="DecayCorrection"):
        suv_factors([_pet_header(DecayCorrection="XYZ")], "bw")


def test_lean_body_mass_formulas():
    # Janmahasatian: male 9270 W / (6680 + 216 BMI); 80 kg, 1.80 m -> BMI 24.69
    assert lean_body_mass(80, 1.8, "M") == pytest.approx(9270 * 80 / (6680 + 216 * 80 / 1.8**2))
    assert lean_body_mass(80, 1.8, "M") == pytest.approx(61.73, abs=0.01)
    assert lean_body_mass(60, 1.65, "F") == pytest.approx(9270 * 60 / (8780 + 244 * 60 / 1.65**2))
    assert lean_body_mass(80, 1.8, "M", "james") == pytest.approx(88 - 128 * (80 / 180) ** 2)
    assert lean_body_mass(60, 1.65, "F") < 60
    with pytest.raises(ValueError):
        lean_body_mass(80, 1.8, "O")


def test_dicom_time_parsing():
    assert parse_dicom_time("083000.123") == dt.time(8, 30, 0, 123000)
    assert parse_dicom_time("0830") == dt.time(8, 30)
    assert parse_dicom_time("08:30:15") == dt.time(8, 30, 15)
    assert parse_dicom_datetime("20240301233000.5-0500") == dt.datetime(2024, 3, 1, 23, 30, 0, 500000)
    with pytest.raises(ValueError):
        parse_dicom_time("8h30")
