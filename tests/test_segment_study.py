"""Learning-curve and comparison studies on small synthetic count images (tiny nets, few epochs)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nmkit.metrics.surface")

from nmkit.segment.preprocess import Preprocessing
from nmkit.segment.study import bootstrap_ci, compare, learning_curve
from nmkit.segment.train import TrainConfig

from test_segment import blob_case


def test_bootstrap_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(0.9, 0.05, 10)
    large = rng.normal(0.9, 0.05, 400)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s)


def test_learning_curve_and_compare_write_tables_and_figures(tmp_path):
    rng = np.random.default_rng(11)
    train_cases = [blob_case(rng, 32) for _ in range(16)]
    val = [blob_case(rng, 32) for _ in range(2)]
    test = [blob_case(rng, 32) for _ in range(4)]
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(32, 32))
    config = TrainConfig(network="unet", network_options={"channels": (8, 16, 32)}, epochs=4, batch_size=8, learning_rate=5e-3,
                         labels={1: "organ"}, num_threads=1)
    summary = learning_curve(train_cases, val, test, [4, 16], prep, config, tmp_path / "lc")
    assert list(summary["n_train"]) == [4, 16]
    assert ((summary["dice_ci_low"] <= summary["dice_mean"] + 1e-12) & (summary["dice_mean"] <= summary["dice_ci_high"] + 1e-12)).all()
    assert (tmp_path / "lc" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    # More data must not make this easy task much worse.
    assert summary["dice_mean"].iloc[1] > summary["dice_mean"].iloc[0] - 0.05
    table = compare([{"network": "unet", "loss": "dice-ce"}, {"network": "hrnet", "loss": "dice-boundary", "network_options": {"width": 8}}],
                    train_cases, val, test, prep, config, tmp_path / "cmp")
    assert set(table["variant"]) == {"unet_dice-ce", "hrnet_dice-boundary"}
    assert (table["parameters"] > 0).all() and (table["train_seconds"] > 0).all()
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 5000
