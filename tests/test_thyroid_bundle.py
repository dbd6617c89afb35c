"""The shipped thyroid U-Net (trained on CPU by bench/train_thyroid_bundle.py) against held-out simulated readers.

Issue 4 asks for Dice >= 0.95 against held-out reader masks and a model inside the inter-reader spread. The shipped
bundle is inside the spread (it agrees with each reader better than the readers agree with each other) but reaches
about 0.94 mean Dice against the individual readers, not yet 0.95: the simulated readers agree with each other at about
0.92 and with their majority consensus at about 0.96, so 0.95 needs a model within about 0.98 of the consensus. This test
holds the level reached (a drop fails it); the cohort uses a seed the bundle never saw (it was trained on seed 101).
"""

from __future__ import annotations

import numpy as np
import pytest

from nmkit.segment.bundle import load_bundle, shipped_bundle


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from nmkit.demo import prepare_thyroid_dataset
    from nmkit.phantoms.cohort import generate_cohort
    from nmkit.segment.data import load_case

    path = shipped_bundle("thyroid-unet2d")
    if path is None:
        pytest.skip("thyroid bundle not shipped (run bench/train_thyroid_bundle.py --ship)")
    out = tmp_path_factory.mktemp("thyroid_held_out")
    generate_cohort(out / "cohort", n=40, seed=7, workers=2, progress=False)
    cases, data, manifest = prepare_thyroid_dataset(out / "cohort", out, 3, seed=7, fractions=(0.0, 0.0, 1.0))
    images = [load_case(row.image, row.mask, row.case_id) for row in manifest.itertuples()]
    return load_bundle(path, device="cpu"), images, data


def test_bundle_loads_without_pickle_and_describes_itself(held_out):
    bundle, _, _ = held_out
    assert bundle.name == "thyroid-unet2d" and bundle.labels == {1: "thyroid"}
    assert bundle.description["training_data"]["target"].startswith("majority consensus")
    assert (bundle.path / "model.safetensors").read_bytes()[:1] != b"\x80"  # safetensors header, not a pickle


def test_bundle_matches_held_out_readers_within_their_spread(held_out):
    from nmkit.metrics.readers import reader_study
    from nmkit.segment.infer import predict_image

    bundle, cases, data = held_out
    readers = ["R1", "R2", "R3"]
    predictions = [predict_image(bundle, c.image).binary(1) for c in cases]
    dice = []
    for case, pred in zip(cases, predictions):
        for r in readers:
            truth = data["readers"][r][case.case_id]
            denom = pred.sum() + truth.sum()
            dice.append(1.0 if denom == 0 else 2 * np.logical_and(pred, truth).sum() / denom)
    assert np.mean(dice) >= 0.93, f"mean Dice vs readers {np.mean(dice):.4f}"
    study = reader_study({r: [data["readers"][r][c.case_id] for c in cases] for r in readers}, model=predictions,
                         spacing=cases[0].image.spacing, case_ids=[c.case_id for c in cases])
    assert study.model_inside, study.overall
    assert study.overall["model_dice_mean"] >= study.overall["reader_dice_mean"]
