"""Outcome models: Cox/C-index against hand-computed values and lifelines, nested CV on synthetic data with a
known signal, TRUE-checklist report with figures, and the model-outcome CLI."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

from nmkit.stats.outcome import chance_level, nested_cv, write_outcome_report
from nmkit.stats.survival import concordance_index, cox_fit, kaplan_meier, martingale_residuals_null


def _survival_data(n=200, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    beta = np.array([0.8, -0.5, 0.0])
    t = rng.exponential(1 / np.exp(x @ beta))
    c = rng.exponential(1.5, n)
    time = np.minimum(t, c)
    if ties:
        time = np.round(time, 1) + 0.1
    return x, time, t <= c


def test_cox_hand_computed_loglik_and_cindex():
    # at beta = 0 the Breslow log partial likelihood is -sum_j d_j log(n_j) (n_j at risk at event time j)
    time = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    event = np.array([1, 1, 1, 0, 1, 0], bool)
    x = np.zeros((6, 1))
    res = cox_fit(x, time, event, max_iter=1)
    expected = -(math.log(6) + 2 * math.log(5) + math.log(2))
    assert -res["neg_log_partial_likelihood"] == pytest.approx(expected)
    # C-index by hand: risk ordering reversed w.r.t. time -> 1; constant risk -> 0.5
    assert concordance_index(time, -time, event) == pytest.approx(1.0)
    assert concordance_index(time, np.zeros(6), event) == pytest.approx(0.5)
    # KM: S(1) = 5/6, S(2) = 5/6 * 3/5 = 0.5, S(4) = 0.5 * 1/2
    t, s = kaplan_meier(time, event)
    np.testing.assert_allclose(t, [1, 2, 4])
    np.testing.assert_allclose(s, [5 / 6, 0.5, 0.25])
    r = martingale_residuals_null(time, event)
    assert r.sum() == pytest.approx(0.0, abs=1e-12)  # null-model martingale residuals sum to zero


def test_cox_recovers_true_coefficients_and_matches_lifelines():
    x, time, event = _survival_data(n=400, seed=1)
    res = cox_fit(x, time, event)
    np.testing.assert_allclose(res["coef"], [0.8, -0.5, 0.0], atol=3 * res["se"].max())
    lifelines = pytest.importorskip("lifelines", reason="lifelines not installed (optional cross-check)")
    df = pd.DataFrame(x, columns=["a", "b", "c"])
    df["T"], df["E"] = time, event
    ref = lifelines.CoxPHFitter().fit(df, "T", "E")  # no ties: Efron == Breslow
    np.testing.assert_allclose(res["coef"], ref.params_.to_numpy(), atol=1e-3)
    np.testing.assert_allclose(res["se"], ref.standard_errors_.to_numpy(), rtol=1e-3)
    from lifelines.utils import concordance_index as ll_ci

    risk = x @ res["coef"]
    assert concordance_index(time, risk, event) == pytest.approx(ll_ci(time, -risk, event))


def _classification_data(n=160, p=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    logit = 2.0 * x[:, 0] - 1.6 * x[:, 1] + 1.2 * x[:, 2]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(x, columns=[f"feat{i:02d}" for i in range(p)]), y


def test_nested_cv_classification_finds_the_signal(tmp_path):
    X, y = _classification_data(p=20)
    res = nested_cv(X, y, task="classification", model="logistic", k_features=(3, 8), n_boot=100, n_permutations=2,
                    param_grid={"model__C": [1.0]})
    assert res.score > 0.75 and res.score_ci[0] > 0.6 and res.score_ci[0] < res.score < res.score_ci[1]
    assert len(res.fold_scores) == 5 and np.isfinite(res.oof_prediction).all()
    assert set(res.importance["feature"].head(3)) == {"feat00", "feat01", "feat02"}
    assert res.importance.set_index("feature").loc["feat00", "times_selected"] == 5
    assert 0.0 < res.brier < 0.25
    # pure-noise labels: no better than shuffled outcomes (pooled out-of-fold AUC of noise is often even below
    # 0.5, a known pessimism of cross-validation on noise), far below the real signal
    noise = nested_cv(X, np.random.default_rng(9).integers(0, 2, len(y)), k_features=(3,), outer_folds=3, inner_folds=2,
                      n_boot=100, n_permutations=0, param_grid={"model__C": [1.0]})
    assert noise.score < res.score - 0.2 and chance_level(noise)["p_value"] > 0.05
    assert chance_level(res)["p_value"] < 0.01
    out = write_outcome_report(res, tmp_path / "report.html", baseline=noise, provenance_record={"test": True})
    html = out.read_text()
    for heading in ("True:", "Reproducible:", "Useful:", "Explainable:"):
        assert heading in html
    chunks = html.split("data:image/png;base64,")[1:]
    assert len(chunks) == 3  # ROC, calibration, importance
    for chunk in chunks:
        with PILImage.open(io.BytesIO(base64.b64decode(chunk.split('"', 1)[0]))) as im:
            assert im.size[0] > 200 and im.size[1] > 150


@pytest.mark.slow
def test_nested_cv_random_forest_runs():
    X, y = _classification_data(n=100, p=12, seed=2)
    res = nested_cv(X, y, model="random_forest", k_features=(5,), outer_folds=3, inner_folds=2, n_boot=50, n_permutations=0,
                    param_grid={"model__max_depth": [3]})
    assert res.score > 0.65


def test_nested_cv_survival_and_report(tmp_path):
    rng = np.random.default_rng(3)
    x, time, event = _survival_data(n=150, seed=3)
    noise = rng.normal(size=(150, 12))
    X = pd.DataFrame(np.hstack([x[:, :2], noise]), columns=["signal_a", "signal_b"] + [f"noise{i}" for i in range(12)])
    res = nested_cv(X, np.column_stack([time, event]), task="survival", model="cox", k_features=(2, 6),
                    n_boot=100, n_permutations=3, param_grid={"model__l2": [1.0]})
    assert res.score > 0.65 and res.score_ci[0] > 0.55
    assert set(res.importance["feature"].head(2)) == {"signal_a", "signal_b"}
    out = write_outcome_report(res, tmp_path / "surv.html")
    chunks = out.read_text().split("data:image/png;base64,")[1:]
    assert len(chunks) == 2  # Kaplan-Meier, importance
    for chunk in chunks:
        with PILImage.open(io.BytesIO(base64.b64decode(chunk.split('"', 1)[0]))) as im:
            assert im.size[0] > 200
    with pytest.raises(ValueError, match="two classes"):
        nested_cv(X, np.zeros(150), task="classification")


def test_model_outcome_cli_survival_with_clinical_baseline(tmp_path):
    import json

    from nmkit.cli import main

    x, time, event = _survival_data(n=120, seed=4)
    rng = np.random.default_rng(4)
    ids = [f"case{i:03d}" for i in range(120)]
    feats = pd.DataFrame(np.hstack([x[:, :1], rng.normal(size=(120, 6))]), columns=["suv_like"] + [f"tex{i}" for i in range(6)])
    feats.insert(0, "case_id", ids)
    clin = pd.DataFrame({"case_id": ids, "os_months": time * 12, "death": event.astype(int), "age_z": x[:, 1]})
    feats.to_csv(tmp_path / "f.csv", index=False)
    clin.iloc[::-1].to_csv(tmp_path / "c.csv", index=False)  # order differs: joined by id
    out = tmp_path / "out"
    assert main(["model-outcome", "--features", str(tmp_path / "f.csv"), "--clinical", str(tmp_path / "c.csv"),
                 "--time", "os_months", "--event", "death", "--covariates", "age_z", "--k-features", "2",
                 "--outer-folds", "3", "--inner-folds", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["task"] == "survival" and summary["c_index"] > 0.6
    assert 0.5 < summary["baseline"]["c_index"] < summary["c_index"]  # age alone is weaker than age + the SUV-like feature
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 120 and pred["oof_prediction"].notna().all()
    assert "Useful:" in (out / "report.html").read_text()
    assert main(["model-outcome", "--features", str(tmp_path / "f.csv"), "--clinical", str(tmp_path / "c.csv"),
                 "--target", "nope", "--out", str(out)]) == 2
