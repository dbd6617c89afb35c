"""Paired statistics checked against hand-computed and textbook values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

from nmkit.stats.paired import (benjamini_hochberg, bland_altman, bland_altman_plot, compare_pairs, holm, icc, lin_ccc,
                                paired_table, wilcoxon_paired)

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; published ICC(1,1)=.17, ICC(2,1)=.29, ICC(3,1)=.71
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def test_icc_shrout_fleiss_textbook():
    r = icc(SHROUT_FLEISS)
    assert r["n"] == 6 and r["k"] == 4
    # values to 4 decimals from the ANOVA table (BMS=11.24, WMS=6.26, JMS=32.49, EMS=1.02)
    assert r["icc1"] == pytest.approx(0.1657, abs=5e-4)
    assert r["icc2"] == pytest.approx(0.2898, abs=5e-4)
    assert r["icc3"] == pytest.approx(0.7148, abs=5e-4)


def test_icc_hand_computed_two_methods():
    # x = 1..5, y = x + 1: a pure offset -> consistency ICC(3,1) = 1, absolute agreement ICC(2,1) < 1
    x = np.arange(1.0, 6.0)
    r = icc(x, x + 1)
    assert r["icc3"] == pytest.approx(1.0)
    # MSR = 2*var_rows: row means 1.5..5.5 -> SS_rows = 2*10 = 20, MSR = 5; MSC = 5*(2*0.25) = 2.5; MSE = 0
    # ICC(2,1) = (5 - 0) / (5 + 0 + 2*(2.5 - 0)/5) = 5/6
    assert r["icc2"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError):
        icc(np.ones((1, 2)))


def test_lin_ccc_hand_computed():
    x = np.array([1.0, 2, 3, 4])
    # identical -> 1; y = x + 1: s_xy = var = 1.25 (1/n), ccc = 2.5 / (2.5 + 1) = 0.7142857
    assert lin_ccc(x, x) == pytest.approx(1.0)
    assert lin_ccc(x, x + 1) == pytest.approx(2.5 / 3.5)
    # y = 2x: s_xy = 2.5, var_y = 5, (mean diff)^2 = 6.25 -> 5 / (1.25 + 5 + 6.25) = 0.4
    assert lin_ccc(x, 2 * x) == pytest.approx(0.4)
    assert lin_ccc(x, -x) < 0


def test_bland_altman_hand_computed():
    a = [1.0, 2, 3, 4]
    b = [2.0, 2, 5, 5]  # d = 1, 0, 2, 1 -> bias 1, sd sqrt(2/3)
    r = bland_altman(a, b)
    sd = math.sqrt(2 / 3)
    assert r["bias"] == pytest.approx(1.0)
    assert r["sd_diff"] == pytest.approx(sd)
    assert r["loa_low"] == pytest.approx(1 - 1.96 * sd)
    assert r["loa_high"] == pytest.approx(1 + 1.96 * sd)
    # t(0.975, 3) = 3.182446
    assert r["bias_ci_high"] - 1 == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    rp = bland_altman([10.0, 20.0], [11.0, 18.0], percent=True)
    assert rp["bias"] == pytest.approx((100 * 1 / 10.5 + 100 * -2 / 19) / 2)
    with pytest.raises(ValueError):
        bland_altman([1.0], [2.0])


def test_holm_and_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    out = holm([0.2, np.nan, 0.6])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.4) and out[2] == pytest.approx(0.6)
    assert np.all(holm([0.5, 0.9, 0.7]) <= 1.0)


def test_wilcoxon_exact_all_positive():
    a = np.zeros(10)
    b = np.arange(1.0, 11.0)  # all ten differences positive: W = 0, exact two-sided p = 2 / 2^10
    r = wilcoxon_paired(a, b)
    assert r["n"] == 10 and r["wilcoxon_w"] == 0
    assert r["p_wilcoxon"] == pytest.approx(2 / 1024)
    assert r["median_diff"] == pytest.approx(5.5)
    # no usable differences -> no test, no crash
    assert math.isnan(wilcoxon_paired([1.0, 2.0], [1.0, 2.0])["p_wilcoxon"])


def test_paired_table_matches_by_key_and_corrects():
    rng = np.random.default_rng(3)
    n = 25
    base = rng.normal(10, 2, n)
    a = pd.DataFrame({"case": [f"c{i}" for i in range(n)], "shifted": base, "same": base, "noise": base})
    b = pd.DataFrame({"case": [f"c{i}" for i in range(n)][::-1], "shifted": (base * 1.2)[::-1], "same": base[::-1],
                      "noise": (base + rng.normal(0, 0.5, n))[::-1]})
    t = paired_table(a, b, key="case").set_index("metric")
    assert t.loc["shifted", "p_wilcoxon"] < 1e-4  # every difference positive
    assert t.loc["shifted", "p_holm"] == pytest.approx(min(1, 2 * t.loc["shifted", "p_wilcoxon"]))
    assert math.isnan(t.loc["same", "p_wilcoxon"]) and t.loc["same", "ccc"] == pytest.approx(1.0)
    assert t.loc["noise", "p_wilcoxon"] > 0.01
    assert t.loc["shifted", "mean_rel_diff_pct"] == pytest.approx(20.0)
    assert t.loc["noise", "icc3_1"] > 0.9
    with pytest.raises(ValueError):
        paired_table(a, b.iloc[:3])


def test_compare_pairs_and_plot(tmp_path):
    x = np.linspace(1, 10, 12)
    row = compare_pairs(x, x * 1.1)
    assert row["ba_bias"] > 0 and row["ccc"] < 1 and row["icc3_1"] > 0.99
    fig = bland_altman_plot(x, x * 1.1 + 0.1 * np.sin(x), label_a="OSEM", label_b="CT-guided")
    path = tmp_path / "ba.png"
    fig.savefig(path)
    with PILImage.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 200
