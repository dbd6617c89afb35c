"""`nmkit study evaluations`: models of any engine compared from their `nmkit evaluate` tables (means, bootstrap CIs,
paired differences), checked against numpy on hand-made tables; bad input gives one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nmkit.cli import main


def _table(path, dice, hd95, f1):
    pd.DataFrame({"case": [f"C{i}" for i in range(len(dice))], "structure": "lesion", "label": 1, "dice": dice,
                  "hd95_mm": hd95, "lesion_f1": f1}).to_csv(path, index=False)
    return path


def test_paired_comparison_of_two_engines(tmp_path, capsys):
    rng = np.random.default_rng(3)
    dice_a = rng.uniform(0.5, 0.9, 12)
    dice_b = np.clip(dice_a - 0.1 + rng.normal(0, 0.02, 12), 0, 1)
    hd_a = rng.uniform(2, 10, 12)
    hd_b = hd_a + 3.0
    hd_b[4] = np.inf  # an empty prediction: counted, not averaged
    a = _table(tmp_path / "a.csv", dice_a, hd_a, rng.uniform(0.6, 1, 12))
    b = _table(tmp_path / "b.csv", dice_b, hd_b, rng.uniform(0.6, 1, 12))
    assert main(["study", "evaluations", f"nnunet={a}", f"own={b}", "--reference", "nnunet", "--out", str(tmp_path / "cmp")]) == 0
    s = pd.read_csv(tmp_path / "cmp" / "evaluations.csv").fillna("")
    own_dice = s[(s.model == "own") & (s.comparison == "") & (s.metric == "dice")].iloc[0]
    assert own_dice["mean"] == pytest.approx(dice_b.mean()) and own_dice["ci_low"] < own_dice["mean"] < own_dice["ci_high"]
    diff = s[(s.comparison == "own - nnunet") & (s.metric == "dice")].iloc[0]
    assert diff["mean"] == pytest.approx((dice_b - dice_a).mean()) and diff["ci_high"] < 0  # clearly worse, CI says so
    hd = s[(s.model == "own") & (s.comparison == "") & (s.metric == "hd95_mm")].iloc[0]
    assert hd["n_not_finite"] == 1 and hd["n_cases"] == 11 and hd["unit"] == "mm"
    assert hd["mean"] == pytest.approx(np.delete(hd_b, 4).mean())
    assert (tmp_path / "cmp" / "evaluations.png").stat().st_size > 5000
    assert (tmp_path / "cmp" / "evaluations.provenance.json").is_file()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    a = _table(tmp_path / "a.csv", [0.5, 0.6], [3.0, 4.0], [1.0, 0.5])
    other = tmp_path / "other.csv"
    pd.DataFrame({"x": [1]}).to_csv(other, index=False)
    no_f1 = tmp_path / "no_f1.csv"
    pd.read_csv(a).drop(columns="lesion_f1").to_csv(no_f1, index=False)
    for argv, said in ((["a=" + str(tmp_path / "missing.csv")], "no such evaluation table"),
                       ([f"a={other}"], "no 'case' column"),
                       ([f"a={a}", f"a={a}"], "given twice"),
                       ([f"a={a}", f"b={no_f1}", "--metrics", "lesion_f1"], "--lesions"),
                       ([f"a={a}", "--reference", "zz"], "reference 'zz'")):
        capsys.readouterr()
        assert main(["study", "evaluations", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["study", "evaluations", "no-equals-sign", "--out", str(tmp_path / "o")])


def test_study_compare_takes_evaluated_models_of_any_engine(tmp_path, capsys):
    """`study compare --evaluations` is the same comparison as `study evaluations`; without a manifest or tables: one line."""
    a = _table(tmp_path / "a.csv", [0.5, 0.6, 0.7], [3.0, 4.0, 5.0], [1.0, 0.5, 0.8])
    b = _table(tmp_path / "b.csv", [0.6, 0.7, 0.9], [2.0, 3.0, 4.0], [1.0, 1.0, 0.8])
    assert main(["study", "evaluations", f"own={a}", f"nnunet={b}", "--out", str(tmp_path / "e")]) == 0
    assert main(["study", "compare", "--evaluations", f"own={a}", f"nnunet={b}", "--out", str(tmp_path / "c")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "e" / "evaluations.csv"), pd.read_csv(tmp_path / "c" / "evaluations.csv"))
    capsys.readouterr()
    assert main(["study", "compare", "--out", str(tmp_path / "x")]) == 2
    assert "needs a manifest" in capsys.readouterr().err
    assert main(["study", "compare", str(a), "--evaluations", f"own={a}", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err


def test_units_follow_the_evaluate_tables_distance_unit():
    """Radiograph evaluations (PNG masks, no pixel spacing) hold distances in px: the comparison says px, not mm."""
    from nmkit.segment.study import compare_evaluations

    def table(shift: float, unit: str) -> pd.DataFrame:
        return pd.DataFrame({"case": ["a", "b", "c"], "structure": "lung", "dice": [0.9, 0.8, 0.85],
                             "hd95_mm": np.array([3.0, 4.0, 5.0]) + shift, "abs_area_difference_mm2": [10.0, 20.0, 30.0],
                             "distance_unit": unit})

    units = lambda s: dict(zip(s.metric, s.unit))  # noqa: E731
    px = compare_evaluations({"own": table(1, "px"), "ref": table(0, "px")})
    assert units(px) == {"dice": "1", "hd95_mm": "px", "abs_area_difference_mm2": "px2"}
    mm = compare_evaluations({"own": table(1, "mm"), "ref": table(0, "mm").drop(columns="distance_unit")})
    assert units(mm) == {"dice": "1", "hd95_mm": "mm", "abs_area_difference_mm2": "mm2"}
    mixed = compare_evaluations({"own": table(1, "px"), "ref": table(0, "mm")})
    assert units(mixed)["hd95_mm"].startswith("mixed")
