"""`nmkit qc flood|lines|slit|spect-resolution|spect-uniformity|trend` on the real Mediso/GE QC scans in
../shared/data/qc_phantoms, with the ranges a physicist would accept stated per assertion, re-run identity, and bad input."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.cli import main

GC = "qc_phantoms/nmqc_mediso_gammacamera/images"
LQ = "qc_phantoms/linaqa_pet_spect_qc"


def _run(args: list[str], out) -> dict:
    assert main(args + ["--out", str(out)]) == 0
    return json.loads(next(out.glob("*.json")).read_text())


def test_flood_uniformity(external_data, tmp_path):
    f = need(external_data, f"{GC}/UNIFORMIDAD_1.dcm")
    rec = _run(["qc", "flood", str(f), "--history", str(tmp_path / "h")], tmp_path / "a")
    s = rec["summary"]
    assert s["rebin_factor"] == 3 and s["pixel_mm"] == pytest.approx(6.195, abs=0.01)  # 2.065 mm x 3, NEMA 6.4 +- 30 %
    # a working camera: IU 1.5-6 %, DU 1-5 %; the CFOV is more uniform than the UFOV; 16 Mcounts ~ 3100 counts/pixel
    assert 1.5 < s["integral_uniformity_cfov_percent"] <= s["integral_uniformity_ufov_percent"] < 6.0
    assert 1.0 < s["differential_uniformity_cfov_percent"] <= s["differential_uniformity_ufov_percent"] < 5.0
    assert 2800 < s["cfov_mean_counts_per_pixel"] < 3400 and "10000" in s["note"]
    assert rec["units"]["integral_uniformity_cfov_percent"] == "%"
    assert rec["scanner"]["Manufacturer"] == "MEDISO" and rec["scanner"]["DeviceSerialNumber"] == "DV000010-001"
    again = _run(["qc", "flood", str(f)], tmp_path / "b")["summary"]
    assert again == s  # identical on a re-run
    db = next((tmp_path / "h").glob("MEDISO_NUCLINE_DHV_DV000010-001.sqlite"))
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT measure, acquired FROM results WHERE test='flood'").fetchall()
    assert ("integral_uniformity_cfov_percent", "2013-04-02T" + rows[0][1][11:]) in rows


def test_planar_resolution_from_two_lines(external_data, tmp_path):
    from nmkit.io.reader import read_image
    from nmkit.quality.qc_gamma import line_resolution
    from nmkit.quality.resolution import line_fwhm

    for name in ("Spatial_Resol_X", "Spatial_Resol_Y"):
        f = need(external_data, f"{GC}/{name}.dcm")
        s = _run(["qc", "lines", str(f)], tmp_path / name)["summary"]
        # LEHR system resolution: FWHM 6-10 mm, FWTM/FWHM ~1.8 (Gaussian 1.82); lines ~48.5 mm apart by the header
        assert 6.0 < s["fwhm_mm"] < 10.0 and 1.6 < s["fwtm_mm"] / s["fwhm_mm"] < 2.1
        assert 45 < s["line_separation_mm"] < 53 and s["bands"] >= 5
        assert s["profile_axis"] == ("x" if name.endswith("X") else "y")
    # calibration from the known spacing: the pixel scales by spacing / measured separation
    cal = _run(["qc", "lines", str(f), "--spacing-mm", "50"], tmp_path / "cal")["summary"]
    assert cal["line_separation_mm"] == pytest.approx(50.0)
    assert cal["fwhm_mm"] == pytest.approx(s["fwhm_mm"] * 50.0 / s["line_separation_mm"], rel=1e-6)
    # independent check: a Gaussian fit to one band's profile agrees with the NEMA interpolation within 10 %
    img = read_image(f)
    table, _ = line_resolution(img)
    arr = np.asarray(img.array, float).T  # Y: lines horizontal -> profiles along y
    start = int(table["band_start_px"].iloc[0])
    prof = arr[start:start + 29].sum(axis=0)
    p = int(round(table["position_px"].iloc[0]))
    g = line_fwhm(np.arange(p - 15, p + 16) * img.spacing[0], prof[p - 15:p + 16])["fwhm_mm"]
    assert g == pytest.approx(table["fwhm_mm"].iloc[0], rel=0.10)


def test_four_line_phantom(external_data, tmp_path):
    """FourBar.dcm holds line sources, not bars (`qc bars` says so): `qc lines` gives the LEHR system FWHM 6-10 mm,
    FWTM/FWHM 1.6-2.1 and the lines ~100 mm apart by the header pixel (pylinac's example uses separation_mm=100);
    --spacing-mm 100 rescales the widths; identical on a re-run."""
    f = need(external_data, f"{GC}/FourBar.dcm")
    s = _run(["qc", "lines", str(f)], tmp_path / "a")["summary"]
    assert 6.0 < s["fwhm_mm"] < 10.0 and 1.6 < s["fwtm_mm"] / s["fwhm_mm"] < 2.1
    assert 95 < s["line_separation_mm"] < 103
    assert _run(["qc", "lines", str(f)], tmp_path / "b")["summary"] == s
    cal = _run(["qc", "lines", str(f), "--spacing-mm", "100"], tmp_path / "c")["summary"]
    assert cal["fwhm_mm"] == pytest.approx(s["fwhm_mm"] * 100.0 / s["line_separation_mm"], rel=1e-6)


def test_slit_linearity(external_data, tmp_path):
    for name, n_slits in (("Lin_X", 13), ("Lin_Y", 17)):
        f = need(external_data, f"{GC}/{name}.dcm")
        s = _run(["qc", "slit", str(f)], tmp_path / name)["summary"]
        assert s["slits"] == n_slits
        assert s["slit_spacing_mm_measured"] == pytest.approx(30.0, abs=0.3)  # NEMA mask: 30 mm; header pixel 0.59 mm
        # linearity of a tuned camera: absolute < 1 mm (CFOV), differential < 0.5 mm; intrinsic FWHM 2.5-4.5 mm
        assert 0.1 < s["absolute_linearity_cfov_mm"] < 1.0 and s["absolute_linearity_cfov_mm"] <= s["absolute_linearity_ufov_mm"] < 2.0
        assert 0.05 < s["differential_linearity_cfov_mm"] < 0.5
        assert 2.5 < s["intrinsic_fwhm_cfov_mm"] < 4.5 and 1.7 < s["intrinsic_fwtm_cfov_mm"] / s["intrinsic_fwhm_cfov_mm"] < 2.3


def test_spect_point_resolution(external_data, tmp_path):
    f = need(external_data, f"{LQ}/NMQC_Mediso/TomoResolution.dcm")
    rec = _run(["qc", "spect-resolution", str(f)], tmp_path / "m")
    s = rec["summary"]
    # SPECT LEHR on a 180/360 orbit with 8.26 mm voxels: 15-30 mm, similar along x, y, z
    for ax in "xyz":
        assert 15 < s[f"fwhm_{ax}_mm"] < 30 and 1.6 < s[f"fwtm_{ax}_mm"] / s[f"fwhm_{ax}_mm"] < 2.1
    table = pd.read_csv(tmp_path / "m" / "spect_resolution.csv")
    np.testing.assert_allclose(table["fwhm_gauss_fit_mm"], table["fwhm_mm"], rtol=0.1)  # two estimators agree


def test_pet_point_resolution(external_data, tmp_path):
    f = need(external_data, f"{LQ}/TomoRes")
    s = _run(["qc", "spect-resolution", str(f)], tmp_path / "p")["summary"]
    for ax in "xyz":  # GE Discovery IQ, 3.6 mm voxels, VPHD: 5-12 mm
        assert 5 < s[f"fwhm_{ax}_mm"] < 12
    assert "sampling-limited" in s["note"]


def test_spect_uniformity_jaszczak(external_data, tmp_path):
    f = need(external_data, f"{GC}/Jaszack.dcm")
    # the uniform section above the spheres: slices 36-41 (0-21 hold the cold rods, 26-35 the cold spheres)
    s = _run(["qc", "spect-uniformity", str(f), "--slices", "36:42"], tmp_path / "j")["summary"]
    # Jaszczak 21.6 cm inner diameter, Tc-99m, 4.13 mm voxels (rebinned x2): noise 5-12 %, IU 5-20 %
    assert 100 < s["cylinder_radius_mm"] < 112
    assert 5 < s["noise_cov_percent_mean"] < 12 and 5 < s["integral_uniformity_percent_mean"] < 20
    assert s["slices"] >= 4


def test_pet_uniform_cylinder(external_data, tmp_path):
    f = need(external_data, f"{LQ}/TomoUniformity")
    rec = _run(["qc", "spect-uniformity", str(f)], tmp_path / "u")
    s = rec["summary"]
    assert 90 < s["cylinder_radius_mm"] < 105  # 20 cm cylinder
    assert 2 < s["noise_cov_percent_mean"] < 10 and s["axial_uniformity_percent"] < 8
    assert rec["units"]["mean_value"] == "counts"  # GE PROPCNTS: proportional counts, not Bq/ml


def test_trend_flags_out_of_tolerance_and_drift(tmp_path, capsys):
    from nmkit.quality.qc_history import record

    ident = {"Manufacturer": "ACME", "ManufacturerModelName": "Cam", "StationName": "S1", "DeviceSerialNumber": "42"}
    values = [2.1, 2.3, 2.2, 2.25, 2.15, 3.4, 5.2]  # CFOV IU (%): stable, then a drift, then out of tolerance (> 4 %)
    for day, v in enumerate(values, start=1):
        record(tmp_path / "h", {**ident, "AcquisitionDate": f"202401{day:02d}", "AcquisitionTime": "080000"}, "flood",
               {"integral_uniformity_cfov_percent": v}, {"integral_uniformity_cfov_percent": "%"}, source=f"flood{day}.dcm")
    db = tmp_path / "h" / "ACME_Cam_S1_42.sqlite"
    assert main(["qc", "trend", str(db), "--out", str(tmp_path / "t")]) == 0
    trend = pd.read_csv(tmp_path / "t" / "trend.csv")
    assert list(trend["drift"]) == [False] * 5 + [True, True]
    assert list(trend["out_of_tolerance"]) == [False] * 6 + [True]
    assert (tmp_path / "t" / "trend.png").stat().st_size > 5000
    assert "out of tolerance" in capsys.readouterr().out
    # user tolerance
    assert main(["qc", "trend", str(db), "--out", str(tmp_path / "t2"), "--tolerance", "integral_uniformity_cfov_percent=0:3"]) == 0
    assert pd.read_csv(tmp_path / "t2" / "trend.csv")["out_of_tolerance"].sum() == 2


def test_bad_inputs_give_one_line(external_data, tmp_path, capsys):
    flood = need(external_data, f"{GC}/UNIFORMIDAD_1.dcm")
    lines = need(external_data, f"{GC}/Spatial_Resol_X.dcm")
    ct = need(external_data, "ct_totalsegmentator/tests/reference_files/example_ct_sm.nii.gz")
    cases = [
        (["qc", "slit", str(flood)], "slits"),  # a flood is not a slit mask
        (["qc", "lines", str(flood)], "line"),
        (["qc", "flood", str(lines)], "flood"),  # line sources are not a uniform flood
        (["qc", "flood", str(ct)], "planar"),  # a CT volume
        (["qc", "spect-resolution", str(flood)], "3D"),
        (["qc", "spect-uniformity", str(flood), "--slices", "9:3"], "slices"),
        (["qc", "trend", str(flood)], "QC history"),
    ]
    for args, words in cases:
        assert main(args + ["--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, (args, err)


def test_identical_on_rerun(external_data, tmp_path):
    """Every supported real scan gives the same numbers when analysed again."""
    cases = [("lines", f"{GC}/Spatial_Resol_Y.dcm"), ("slit", f"{GC}/Lin_Y.dcm"),
             ("spect-resolution", f"{LQ}/NMQC_Mediso/TomoResolution.dcm"), ("spect-uniformity", f"{GC}/Jaszack.dcm"),
             ("spect-resolution", f"{LQ}/TomoRes"), ("spect-uniformity", f"{LQ}/TomoUniformity")]
    for test, rel in cases:
        f = need(external_data, rel)
        first = _run(["qc", test, str(f)], tmp_path / f"{test}-{f.stem}-1")["summary"]
        second = _run(["qc", test, str(f)], tmp_path / f"{test}-{f.stem}-2")["summary"]
        assert first == second, test
        assert any(isinstance(v, float) and np.isfinite(v) for v in first.values())


@pytest.mark.parametrize("test", ["iq", "flood", "lines", "slit", "spect-resolution", "spect-uniformity", "spect-contrast", "trend"])
def test_help(test, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["qc", test, "--help"])
    assert exc.value.code == 0 and "--out" in capsys.readouterr().out
