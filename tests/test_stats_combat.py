"""ComBat: agreement with neuroCombat to 1e-6, applying stored estimates, one-sample batches, leakage-safe CV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from nmkit.stats.combat import ComBat, cv_leakage_check, harmonize_table


def _multisite(seed: int = 0, n_per: tuple[int, ...] = (25, 20, 15), p: int = 12):
    """Radiomics-like features with an age and a sex effect, and a known location/scale effect per site."""
    rng = np.random.default_rng(seed)
    sites = ["A", "B", "C", "D"][: len(n_per)]
    batch = np.repeat(sites, n_per)
    n = batch.size
    age = rng.integers(30, 80, n).astype(float)  # integers: neuroCombat casts covariates to float32
    sex = rng.choice(["F", "M"], n)
    x = rng.normal(0, 1, (n, p)) + 0.03 * age[:, None] + 0.5 * (sex == "M")[:, None]
    shift = {"A": 0.0, "B": 1.5, "C": -1.0, "D": 0.7}
    scale = {"A": 1.0, "B": 2.0, "C": 0.5, "D": 1.3}
    x = np.array([x[i] * scale[b] + shift[b] for i, b in enumerate(batch)])
    cov = pd.DataFrame({"batch": batch, "age": age, "sex": sex})
    return x, batch, cov




@pytest.mark.parametrize("parametric,eb,mean_only", [(True, True, False), (False, True, False), (True, False, False), (True, True, True)])
def test_matches_neurocombat(parametric, eb, mean_only):
    nc = pytest.importorskip("neuroCombat", reason="reference implementation neuroCombat not installed")
    x, batch, cov = _multisite()
    ref = nc.neuroCombat(x.T.copy(), cov, "batch", categorical_cols=["sex"], continuous_cols=["age"],
                         eb=eb, parametric=parametric, mean_only=mean_only)
    mine = ComBat(categorical=["sex"], continuous=["age"], eb=eb, parametric=parametric, mean_only=mean_only)
    out = mine.fit_transform(x, batch=batch, covariates=cov)
    np.testing.assert_allclose(out, ref["data"].T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(mine.gamma_star_, np.asarray(ref["estimates"]["gamma.star"]), atol=1e-6)
    np.testing.assert_allclose(mine.var_pooled_, np.asarray(ref["estimates"]["var.pooled"]).ravel(), atol=1e-6)
    assert not np.allclose(out, x)


def test_apply_to_new_samples_matches_reference_from_training():
    nc = pytest.importorskip("neuroCombat", reason="reference implementation neuroCombat not installed")
    x, batch, cov = _multisite(seed=1)
    # the reference's stored estimates applied to held-out samples with the ComBat model (what
    # neuroCombatFromTraining does; that function itself fails under NumPy 2)
    train = np.arange(len(batch)) % 3 != 0
    ref_fit = nc.neuroCombat(x[train].T.copy(), cov[["batch"]][train].reset_index(drop=True), "batch")
    est = ref_fit["estimates"]
    levels = [str(b) for b in est["batches"]]
    assert levels == ["A", "B", "C"]
    idx = np.searchsorted(["A", "B", "C"], batch[~train])
    sd = np.sqrt(np.asarray(est["var.pooled"]).ravel())
    mean = np.asarray(est["stand.mean"])[:, 0]
    s = (x[~train] - mean) / sd
    ref_new = (s - np.asarray(est["gamma.star"])[idx]) / np.sqrt(np.asarray(est["delta.star"])[idx]) * sd + mean
    model = ComBat().fit(x[train], batch=batch[train])
    np.testing.assert_allclose(model.transform(x[~train], batch=batch[~train]), ref_new, atol=1e-6)


def test_transform_with_covariates_reuses_training_estimates():
    x, batch, cov = _multisite(seed=2)
    model = ComBat(categorical=["sex"], continuous=["age"]).fit(x, batch=batch, covariates=cov)
    full = model.transform(x, batch=batch, covariates=cov)
    # harmonising the samples one by one with the stored estimates gives the same values
    for i in (0, 30, 59):
        one = model.transform(x[i:i + 1], batch=batch[i:i + 1], covariates=cov.iloc[i:i + 1])
        np.testing.assert_allclose(one[0], full[i], atol=1e-12)
    # site effects removed, covariate effects kept
    resid_means = pd.DataFrame(full).groupby(batch).mean()
    raw_means = pd.DataFrame(x).groupby(batch).mean()
    assert np.ptp(resid_means.to_numpy(), axis=0).mean() < 0.25 * np.ptp(raw_means.to_numpy(), axis=0).mean()
    sds = pd.DataFrame(full).groupby(batch).std().to_numpy()
    assert (sds.max(axis=0) / sds.min(axis=0)).mean() < 1.6  # scale 0.5 vs 2 before
    age_slope = np.polyfit(cov["age"], full.mean(axis=1), 1)[0]
    assert age_slope == pytest.approx(0.03, abs=0.01)
    with pytest.raises(ValueError, match="not in the training data"):
        model.transform(x[:2], batch=["Z", "A"], covariates=cov.iloc[:2])
    with pytest.raises(ValueError, match="not seen"):
        model.transform(x[:1], batch=["A"], covariates=pd.DataFrame({"age": [50.0], "sex": ["X"]}))
    est = model.estimates()
    assert est["batches"] == ["A", "B", "C"] and len(est["gamma_star"][0]) == x.shape[1]


@pytest.mark.parametrize("parametric", [True, False])
def test_single_sample_batch_gives_finite_values(parametric):
    x, batch, cov = _multisite(seed=3, n_per=(20, 15, 1))
    model = ComBat(continuous=["age"], parametric=parametric)
    out = model.fit_transform(x, batch=batch, covariates=cov)
    assert np.all(np.isfinite(out))
    assert np.all(model.delta_star_[2] == 1.0)  # location-only for the one-sample site
    assert not np.allclose(out[-1], x[-1])  # but its location is adjusted


def test_dataframe_pipeline_and_harmonize_table():
    x, batch, cov = _multisite(seed=4)
    table = pd.DataFrame(x, columns=[f"feat{i}" for i in range(x.shape[1])])
    table.insert(0, "site", batch)
    table["age"] = cov["age"]
    out, model = harmonize_table(table, "site", continuous=["age"])
    direct = ComBat(continuous=["age"]).fit_transform(x, batch=batch, covariates=cov)
    np.testing.assert_allclose(out[[f"feat{i}" for i in range(x.shape[1])]].to_numpy(), direct, atol=1e-10)
    assert list(out["site"]) == list(batch) and model.features_[0] == "feat0"
    with pytest.raises(ValueError, match="non-finite"):
        ComBat().fit(np.array([[1.0, np.nan], [2.0, 3.0]]), batch=["a", "b"])


def test_leakage_check_inside_folds_differs_from_fit_on_all():
    rng = np.random.default_rng(0)
    n, p = 80, 30
    batch = rng.choice(["s1", "s2", "s3", "s4"], n)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, p))
    x[:, 0] += 0.8 * y
    for k, b in enumerate(["s1", "s2", "s3", "s4"]):
        x[batch == b] = x[batch == b] * (1 + 0.5 * k) + k
    table = pd.DataFrame(x, columns=[f"x{i}" for i in range(p)])
    table.insert(0, "batch", batch)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = LogisticRegression(max_iter=1000, C=0.1)
    r = cv_leakage_check(table, y, clf, cv=cv)
    # inside folds the pipeline is exactly a ComBat + classifier pipeline in cross-validation
    inside = cross_val_score(make_pipeline(ComBat(), clf), table, y, cv=cv, scoring="roc_auc")
    assert r["score_inside_folds"] == pytest.approx(inside.mean())
    assert abs(r["optimism"]) > 1e-3
    assert not np.allclose(r["scores_inside_folds"], r["scores_fit_on_all"])
    assert 0.5 < r["score_inside_folds"] < 0.95  # one weak true signal is found


def test_harmonize_cli_fit_then_apply_stored_estimates(tmp_path):
    import json

    from nmkit.cli import main

    x, batch, cov = _multisite(seed=6)
    table = pd.DataFrame(x, columns=[f"feat{i}" for i in range(x.shape[1])])
    table.insert(0, "case_id", [f"c{i}" for i in range(len(batch))])
    table["scanner"], table["age"], table["sex"] = batch, cov["age"], cov["sex"]
    train, new = table.iloc[::2], table.iloc[1::2]
    train.to_csv(tmp_path / "train.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["harmonize", "--features", str(tmp_path / "train.csv"), "--batch-col", "scanner", "--categorical", "sex",
                 "--continuous", "age", "--id", "case_id", "--out", str(tmp_path / "train_h.csv")]) == 0
    est = tmp_path / "train_h.csv.estimates.json"
    assert json.loads(est.read_text())["batches"] == ["A", "B", "C"]
    assert main(["harmonize", "--features", str(tmp_path / "new.csv"), "--batch-col", "scanner", "--categorical", "sex",
                 "--continuous", "age", "--id", "case_id", "--estimates", str(est), "--out", str(tmp_path / "new_h.csv")]) == 0
    feats = [f"feat{i}" for i in range(x.shape[1])]
    model = ComBat(batch_col="scanner", categorical=["sex"], continuous=["age"]).fit(train[["scanner", "sex", "age", *feats]])
    expected = model.transform(new[["scanner", "sex", "age", *feats]])
    got = pd.read_csv(tmp_path / "new_h.csv")
    np.testing.assert_allclose(got[feats].to_numpy(), expected, atol=1e-9)
    assert list(got["case_id"]) == list(new["case_id"])
    assert json.loads((tmp_path / "new_h.csv.json").read_text())["config"]["estimates"] == str(est)
    # an unknown scanner is a clear error (exit code 2), not a traceback
    bad = new.copy()
    bad.loc[bad.index[0], "scanner"] = "Z"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["harmonize", "--features", str(tmp_path / "bad.csv"), "--batch-col", "scanner", "--categorical", "sex",
                 "--continuous", "age", "--id", "case_id", "--estimates", str(est), "--out", str(tmp_path / "bad_h.csv")]) == 2
