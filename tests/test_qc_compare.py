"""`nmkit qc compare`: two `qc iq` results of the real Siemens mCT EARL scan (../shared/data/qc_phantoms) that differ
only in the A50 background (NEMA ROIs vs pynemaiqpet's 3066.47 Bq/ml): only RCmean may change."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from nmkit.cli import main

MCT = "qc_phantoms/linaqa_pet_spect_qc/EARL-Anon"


def test_compare_bad_input(tmp_path, capsys):
    assert main(["qc", "compare", str(tmp_path / "none"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "Traceback" not in err
    assert main(["qc", "compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no iq_spheres.csv" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_compare_two_runs_of_the_mct_scan(tmp_path, capsys):
    from conftest import external_data_root

    image = external_data_root() / MCT
    if not image.is_dir():
        pytest.skip(f"external data item missing: {image}")
    a, b, out = tmp_path / "nema", tmp_path / "pyn", tmp_path / "cmp"
    assert main(["qc", "iq", str(image), "--out", str(a)]) == 0
    assert main(["qc", "iq", str(image), "--out", str(b), "--a50-background", "3066.47"]) == 0
    assert main(["qc", "compare", str(a), str(b), "--labels", "NEMA-bg", "pyn-bg", "--out", str(out)]) == 0
    diff = pd.read_csv(out / "compare.csv")
    by = {m: g.set_index("diameter_mm") for m, g in diff.groupby("measure")}
    assert list(by["rc_max"].index) == [37.0, 28.0, 22.0, 17.0, 13.0, 10.0]
    # the A50 background enters RCmean only
    for m in ("rc_max", "rc_peak", "contrast_q_h_percent", "background_variability_n_percent", "fwhm_mm"):
        assert (by[m]["difference"] == 0).all(), m
    # a higher background raises the A50 threshold: fewer, hotter voxels, RCmean up (never down), 10 mm the most
    rc_mean = by["rc_mean"]["difference"]
    assert (rc_mean >= 0).all() and rc_mean.max() > 0.01 and rc_mean.idxmax() == 10.0
    a_table = pd.read_csv(a / "iq_spheres.csv").set_index("diameter_mm")
    assert (by["rc_mean"]["value_a"] == a_table["rc_mean"]).all()
    record = json.loads((out / "compare.json").read_text())
    assert record["summary"]["labels"] == ["NEMA-bg", "pyn-bg"]
    assert any("ESTIMATED" in n for n in record["summary"]["notes"])
    assert (out / "compare.png").stat().st_size > 20_000
    html = (out / "compare_report.html").read_text()
    assert "NEMA-bg" in html and "pyn-bg" in html and "<img" in html
    # different diameters: not the same phantom
    t = pd.read_csv(b / "iq_spheres.csv")
    t.loc[0, "diameter_mm"] = 38.0
    t.to_csv(b / "iq_spheres.csv", index=False)
    capsys.readouterr()
    assert main(["qc", "compare", str(a), str(b), "--out", str(out)]) == 2
    assert "different sphere diameters" in capsys.readouterr().err
