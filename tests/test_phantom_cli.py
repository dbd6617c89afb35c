"""`nmkit phantom thyroid --isotope/--collimator/--counts`: fixed acquisition settings for a whole cohort."""

from __future__ import annotations

import math

import pandas as pd
import pydicom
import pytest

from nmkit.cli import main
from nmkit.phantoms.cohort import case_plan


def test_thyroid_isotope_collimator_counts(tmp_path, capsys):
    out = tmp_path / "thy"
    rc = main(["phantom", "thyroid", "--out", str(out), "--n", "3", "--workers", "1", "--no-progress",
               "--isotope", "I-123", "--collimator", "parallel", "--counts", "1e5"])
    assert rc == 0 and "wrote 3 cases" in capsys.readouterr().out
    cases = pd.read_csv(out / "cases.csv")
    assert (cases["isotope"] == "I123").all() and (cases["collimator"] == "parallel").all()
    assert (cases["counts_requested"] == 100_000).all()
    for row in cases.itertuples():
        ds = pydicom.dcmread(out / row.dicom)
        total = int(ds.pixel_array.sum(dtype="int64"))
        # the expected image sums to the preset counts; the stored image is its Poisson draw (SD sqrt(1e5) = 316)
        assert abs(total - 100_000) < 5 * math.sqrt(100_000)
        assert total == row.counts_recorded
        assert "123" in ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeMeaning
        # 159 keV photopeak of I-123, 20 % window (Tc-99m would be 140 keV)
        window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
        assert float(window.EnergyWindowLowerLimit) < 159 < float(window.EnergyWindowUpperLimit)
        assert float(window.EnergyWindowLowerLimit) > 140
    # the overrides replace the drawn values only: patient, pathology and dates stay those of the seed
    free = case_plan(1, 0)
    fixed = case_plan(1, 0, {"isotope": "I123", "collimator": "parallel", "total_counts": 100_000})
    assert fixed["pathology"] == free["pathology"] and fixed["birth_date"] == free["birth_date"]
    assert fixed["acquisition_datetime"] == free["acquisition_datetime"]


@pytest.mark.parametrize("option, value", [("--isotope", "Lu177"), ("--collimator", "fanbeam"), ("--counts", "-5"),
                                           ("--counts", "many")])
def test_thyroid_bad_options_refused_before_any_output(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "thyroid", "--out", str(tmp_path / "x"), "--n", "1", option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and err.count("\n") <= 8 and "Traceback" not in err
    assert not (tmp_path / "x").exists()
