"""ComBat inside the nested cross-validation of outcome models (fitted on training folds only)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nmkit.cli import main
from nmkit.stats.outcome import BatchColumnComBat, nested_cv


def _cohort(n: int = 160, seed: int = 0):
    """Outcome from 3 informative features; every feature shifted and scaled by the centre (balanced outcome)."""
    rng = np.random.default_rng(seed)
    centre = np.where(np.arange(n) % 2, "B", "A")
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 12))
    X[:, :3] += 0.9 * y[:, None]
    X[centre == "B"] = X[centre == "B"] * 2.5 + 4.0
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(12)]), y, centre


def test_combat_within_folds_recovers_the_signal_a_centre_effect_hides():
    X, y, centre = _cohort()
    plain = nested_cv(X, y, k_features=(3,), outer_folds=4, inner_folds=3, n_boot=50, n_permutations=0)
    harmonised = nested_cv(X, y, k_features=(3,), outer_folds=4, inner_folds=3, n_boot=50, n_permutations=0, batch=centre)
    assert harmonised.config["combat_within_folds"] and not plain.config["combat_within_folds"]
    assert harmonised.score > plain.score + 0.05, (plain.score, harmonised.score)
    assert list(harmonised.importance.feature) != [] and "__batch__" not in set(harmonised.importance.feature)


def test_the_step_is_fitted_on_training_rows_only():
    X, _, centre = _cohort(n=40)
    codes = (centre == "B").astype(float)
    x = np.column_stack([X.to_numpy(), codes])
    step = BatchColumnComBat().fit(x[:20])
    out = step.transform(x[20:])
    assert out.shape == (20, 12)  # the batch column is consumed
    refit = BatchColumnComBat().fit(x)
    assert not np.allclose(out, refit.transform(x[20:]))  # estimates depend on the rows it was fitted on


def test_model_outcome_cli_takes_the_batch_from_the_clinical_table(tmp_path, capsys):
    X, y, centre = _cohort(n=60, seed=2)
    feats = X.assign(case_id=[f"c{i}" for i in range(len(X))])
    clin = pd.DataFrame({"case_id": feats.case_id, "response": y, "centre": centre})
    feats.to_csv(tmp_path / "f.csv", index=False)
    clin.to_csv(tmp_path / "c.csv", index=False)
    assert main(["model-outcome", "--features", str(tmp_path / "f.csv"), "--clinical", str(tmp_path / "c.csv"),
                 "--target", "response", "--batch-col", "centre", "--k-features", "3", "--outer-folds", "3",
                 "--out", str(tmp_path / "out")]) == 0
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["provenance"]["config"]["batch_col"] == "centre"
    assert main(["model-outcome", "--features", str(tmp_path / "f.csv"), "--clinical", str(tmp_path / "c.csv"),
                 "--target", "response", "--batch-col", "site", "--out", str(tmp_path / "out2")]) == 2
    assert "--batch-col 'site'" in capsys.readouterr().err
