"""`nmkit qc iq`: IEC body phantom image quality (NEMA NU 2-2018, EARL) on nmkit's simulated phantom with a known
blur (against the closed-form values) and on the real Siemens mCT EARL scan (../shared/data/qc_phantoms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.cli import main
from nmkit.quality.qc_iq import IQSettings, analyse_iq, analytic_rc

MCT = "qc_phantoms/linaqa_pet_spect_qc/EARL-Anon"
CT = "ct_totalsegmentator/tests/reference_files/example_ct_sm.nii.gz"
BLUR_FWHM_MM = 8.0


@pytest.fixture(scope="module")
def sim():
    """nmkit's IEC phantom (4 mm voxels, 4:1, 1 mm cold sphere walls) blurred by a known 8 mm FWHM Gaussian."""
    from scipy.ndimage import gaussian_filter

    from nmkit.phantoms.nema import NemaConfig, make_nema_phantom

    ph = make_nema_phantom(NemaConfig(n=80, nz=56, voxel_mm=4.0, supersample=6, sphere_ratio=4.0))
    blurred = gaussian_filter(ph.activity.array.astype(float), BLUR_FWHM_MM / (2 * math.sqrt(2 * math.log(2))) / 4.0)
    return ph, ph.activity.with_array(blurred)


@pytest.fixture(scope="module")
def sim_result(sim):
    ph, img = sim
    return analyse_iq(img, IQSettings(sphere_conc=ph.sphere_bq_ml, bg_conc=ph.background_bq_ml))


def test_simulated_phantom_matches_closed_form(sim, sim_result):
    ph, img = sim
    table, summary = sim_result
    assert not summary["ratio_estimated"]
    assert summary["sphere_to_background_ratio"] == pytest.approx(4.0)
    for _, row in table.iterrows():
        truth = min(ph.spheres, key=lambda s: abs(s["diameter_mm"] - row["diameter_mm"]))
        # sub-voxel centres (voxels are 4 mm)
        assert math.dist((row.x_mm, row.y_mm, row.z_mm), (truth["x_mm"], truth["y_mm"], truth["z_mm"])) < 0.5
        assert abs(row.fwhm_mm - BLUR_FWHM_MM) < 0.5, row.diameter_mm
        assert abs(row.fitted_diameter_mm - row.diameter_mm) < 1.0, row.diameter_mm
        ref = analytic_rc(img, (truth["x_mm"], truth["y_mm"], truth["z_mm"]), row.diameter_mm, BLUR_FWHM_MM,
                          ph.sphere_bq_ml, ph.background_bq_ml, wall_mm=1.0)
        assert row.rc_max == pytest.approx(ref["rc_max"], rel=0.02), row.diameter_mm
        assert row.rc_mean == pytest.approx(ref["rc_mean"], rel=0.02), row.diameter_mm
    # noise-free: background variability tiny, contrast falls with sphere size, cold lung insert
    assert (table["background_variability_n_percent"] < 1.0).all()
    assert table["contrast_q_h_percent"].is_monotonic_decreasing
    assert 60 < table["contrast_q_h_percent"].iloc[0] < 100
    assert summary["lung_residual_percent"] < 5.0


def test_simulated_phantom_rotated_and_off_centre(sim, sim_result):
    """Rotated 90 degrees in plane and shifted by 40 mm: the same spheres and RCs."""
    ph, img = sim
    settings = IQSettings(sphere_conc=ph.sphere_bq_ml, bg_conc=ph.background_bq_ml)
    base, _ = sim_result
    moved = np.roll(np.rot90(img.array, 1, axes=(1, 2)), 10, axis=2)
    table, summary = analyse_iq(img.with_array(np.ascontiguousarray(moved)), settings)
    assert list(table["diameter_mm"]) == [37.0, 28.0, 22.0, 17.0, 13.0, 10.0]
    np.testing.assert_allclose(table["rc_max"], base["rc_max"], rtol=0.02)
    np.testing.assert_allclose(table["rc_mean"], base["rc_mean"], rtol=0.02)
    np.testing.assert_allclose(table["fwhm_mm"], base["fwhm_mm"], atol=0.3)


def test_ct_is_not_a_phantom(external_data, tmp_path, capsys):
    ct = need(external_data, CT)
    assert main(["qc", "iq", str(ct), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no IEC body phantom" in err and "Traceback" not in err


def test_activity_options_checked(tmp_path, capsys):
    assert main(["qc", "iq", str(tmp_path), "--out", str(tmp_path / "o"), "--sphere-conc", "20000"]) == 2
    assert "--bg-conc" in capsys.readouterr().err
    assert main(["qc", "iq", str(tmp_path), "--out", str(tmp_path / "o"), "--ratio", "0.5"]) == 2
    assert "--ratio" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mct_run(tmp_path_factory):
    from conftest import external_data_root

    root = external_data_root()
    if not (root / MCT).is_dir():
        pytest.skip(f"external data item missing: {root / MCT}")
    outs = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"iq{i}")
        assert main(["qc", "iq", str(root / MCT), "--out", str(out)]) == 0
        outs.append(out)
    return outs


@pytest.mark.slow
def test_mct_scan_from_cli(mct_run):
    out = mct_run[0]
    table = pd.read_csv(out / "iq_spheres.csv")
    record = json.loads((out / "iq_summary.json").read_text())
    s = record["summary"]
    assert record["units"]["image"] == "Bq/ml" and "max_Bq_per_ml" in table
    # no fill values are documented: the ratio is estimated and every output says so
    assert s["ratio_estimated"] and table["activity_source"].str.startswith("ESTIMATED").all()
    assert "ESTIMATED" in (out / "iq_report.html").read_text()
    assert 8.0 < s["sphere_to_background_ratio"] < 11.0  # EARL fill 10:1
    assert 2300 < s["background_37mm_mean"] < 2900  # Bq/ml, ~2.6 kBq/ml measured by the data's provenance
    # the six spheres on the 57.2 mm ring around the lung insert, 60 degrees apart, in the sphere plane
    assert list(table["diameter_mm"]) == [37.0, 28.0, 22.0, 17.0, 13.0, 10.0]
    # the diameters the image shows (fitted with the blur fixed) are the nominal ones within 2 mm, in order
    assert (abs(table["fitted_diameter_mm"] - table["diameter_mm"]) < 2.0).all()
    assert table["fitted_diameter_mm"].is_monotonic_decreasing
    ring = np.hypot(table.x_mm - s["lung_x_mm"], table.y_mm - s["lung_y_mm"])
    assert (abs(ring - 57.2) < 3.0).all()
    assert (abs(table.z_mm - s["sphere_plane_z_mm"]) < 2.0).all()
    gaps = np.hypot(np.diff(table.x_mm), np.diff(table.y_mm))
    assert (abs(gaps - 57.2) < 4.0).all()
    # PSF+TOF with a 3.5 mm filter: FWHM 4-8 mm; recovery and NEMA values in physical ranges
    assert table["fwhm_mm"].iloc[:4].between(4.0, 8.0).all()
    assert table["rc_max"].between(0.6, 1.5).all() and table["rc_mean"].between(0.4, 1.1).all()
    assert table["rc_peak"].iloc[0] == pytest.approx(1.0, abs=0.1)
    assert table["contrast_q_h_percent"].iloc[0] > table["contrast_q_h_percent"].iloc[-1] > 20
    assert table["background_variability_n_percent"].between(1.0, 10.0).all()
    assert (table["n_background_rois"] == 60).all()
    assert 5.0 < s["lung_residual_percent"] < 30.0
    # identical on a re-run
    pd.testing.assert_frame_equal(table, pd.read_csv(mct_run[1] / "iq_spheres.csv"))


@pytest.mark.slow
def test_mct_truncated_series(external_data, tmp_path, capsys):
    src = need(external_data, MCT)
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    for f in sorted(src.glob("*.IMA"))[:30]:
        (trunc / f.name).symlink_to(f)
    assert main(["qc", "iq", str(trunc), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "Traceback" not in err


@pytest.mark.slow
def test_mct_rotated(external_data):
    from nmkit.io.reader import read_image

    img = read_image(need(external_data, MCT))
    base, _ = analyse_iq(img)
    rot, _ = analyse_iq(img.with_array(np.ascontiguousarray(np.rot90(img.array, 1, axes=(1, 2)))))
    np.testing.assert_allclose(rot["rc_max"], base["rc_max"], rtol=0.02)
    # A50 of the 10 mm sphere holds ~6 voxels of 4 mm: the background ROIs move with the rotation, the threshold
    # by ~0.5 %, and one voxel more or less changes its mean by a few %
    np.testing.assert_allclose(rot["rc_mean"].iloc[:5], base["rc_mean"].iloc[:5], rtol=0.02)
    assert rot["rc_mean"].iloc[5] == pytest.approx(base["rc_mean"].iloc[5], rel=0.06)


# ----- activities at a calibration time, decay-corrected to the scan start ------------------------------------------
F18_ONE_HOUR = 2 ** (-3600 / 6586.2)  # hand-computed: 0.684633 of F-18 left after one hour


def test_decay_correction_hand_computed():
    from nmkit.quality.qc_activity import resolve_activities, scan_start

    # the mCT header's times and half-life (Series = Acquisition = 12:28:52 on 2025-07-09, F-18 6586.2 s)
    meta = {"Modality": "PT", "SeriesDate": "20250709", "SeriesTime": "122852.000000", "AcquisitionDate": "20250709",
            "AcquisitionTime": "123000", "RadionuclideHalfLife": 6586.2}
    assert scan_start(meta)[1] == "SeriesDate/SeriesTime"  # PET: the DICOM reference time of activity values
    assert scan_start({**meta, "Modality": "NM"})[1] == "AcquisitionDate/AcquisitionTime"
    act = resolve_activities(40000.0, 4000.0, meta, "20250709112852")  # calibrated 1 h before, header half-life
    assert F18_ONE_HOUR == pytest.approx(0.684633, abs=1e-6)
    assert act.record["decay_factor"] == pytest.approx(F18_ONE_HOUR, rel=1e-12)
    assert act.sphere_conc == pytest.approx(40000.0 * F18_ONE_HOUR, rel=1e-12)
    assert act.bg_conc == pytest.approx(4000.0 * F18_ONE_HOUR, rel=1e-12)
    assert act.record["elapsed_s"] == 3600.0 and act.record["half_life_source"] == "DICOM RadionuclideHalfLife"
    # Ga-68 given by name, 30 min: 2^(-1800/4062.6)
    ga = resolve_activities(1.0, 1.0, meta, "20250709115852", isotope="ga68")
    assert ga.record["decay_factor"] == pytest.approx(2 ** (-1800 / 4062.6), rel=1e-12)
    # without a calibration time nothing changes
    assert resolve_activities(5.0, 1.0, meta, None).sphere_conc == 5.0


def test_decay_corrected_cli_equals_decayed_concentrations(sim, sim_result, tmp_path):
    """Concentrations given 1 h before the scan (F-18) reproduce the analysis with the true scan-start values."""
    from nmkit.io.volume_files import write_volume

    ph, img = sim
    path = write_volume(img, tmp_path / "sim.nii.gz")
    out = tmp_path / "o"
    assert main(["qc", "iq", str(path), "--out", str(out), "--sphere-conc", str(ph.sphere_bq_ml / F18_ONE_HOUR),
                 "--bg-conc", str(ph.background_bq_ml / F18_ONE_HOUR), "--calibration-time", "20250709112852",
                 "--scan-time", "20250709122852", "--isotope", "F-18"]) == 0
    table = pd.read_csv(out / "iq_spheres.csv")
    s = json.loads((out / "iq_summary.json").read_text())["summary"]
    assert s["decay_factor"] == pytest.approx(F18_ONE_HOUR, rel=1e-12)
    assert s["calibration_time"] == "2025-07-09T11:28:52" and s["scan_start_time"] == "2025-07-09T12:28:52"
    assert s["sphere_concentration"] == pytest.approx(ph.sphere_bq_ml, rel=1e-9)
    assert "decay-corrected" in table["activity_source"].iloc[0]
    base, _ = sim_result
    for col in ("rc_max", "rc_mean", "rc_peak", "contrast_q_h_percent", "fwhm_mm"):
        np.testing.assert_allclose(table[col], base[col], rtol=1e-6, err_msg=col)


@pytest.mark.parametrize("extra, expected", [
    (["--ratio", "10", "--calibration-time", "20250709112852"], "a --ratio does not decay"),
    (["--sphere-conc", "1", "--bg-conc", "1", "--calibration-time", "2025-07-09"], "--calibration-time must be YYYYMMDDHHMMSS"),
    (["--sphere-conc", "1", "--bg-conc", "1", "--calibration-time", "20250709112852", "--isotope", "Xx-1"], "--isotope"),
    (["--sphere-activity-mbq", "5", "--bg-conc", "1"], "--sphere-volume-ml"),
    (["--isotope", "F-18", "--ratio", "10"], "give --calibration-time"),
])
def test_decay_options_checked(tmp_path, capsys, extra, expected):
    assert main(["qc", "iq", str(tmp_path), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
