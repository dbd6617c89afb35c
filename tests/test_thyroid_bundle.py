"""The shipped thyroid U-Net (trained on CPU by bench/train_thyroid_bundle.py) against held-out simulated readers.

Issue 4 asks for Dice >= 0.95 against held-out reader masks and a model inside the inter-reader spread. The shipped
bundle has one output head per simulated reader (R1, R2, R3, each trained on that reader's masks) and one for their
majority consensus (the default). The cohort here uses a seed the bundle never saw (it was trained on seed 101).
The thresholds hold the level measured by the bench run (bench/RESULTS.md) less a small margin for this smaller cohort.
"""

from __future__ import annotations

import numpy as np
import pytest

from nmkit.metrics.overlap import dice
from nmkit.segment.bundle import load_bundle, shipped_bundle

READERS = ["R1", "R2", "R3"]
#: Dice of each reader's head against that reader on this cohort, less a margin (measured values in bench/RESULTS.md)
OWN_READER_FLOOR = {"R1": 0.96, "R2": 0.95, "R3": 0.94}  # measured 0.973, 0.963, 0.951


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from nmkit.demo import prepare_thyroid_dataset
    from nmkit.phantoms.cohort import generate_cohort
    from nmkit.segment.data import load_case
    from nmkit.segment.infer import predict_image

    path = shipped_bundle("thyroid-unet2d")
    if path is None:
        pytest.skip("thyroid bundle not shipped (run bench/train_thyroid_bundle.py --ship)")
    out = tmp_path_factory.mktemp("thyroid_held_out")
    generate_cohort(out / "cohort", n=60, seed=7, workers=2, progress=False)
    cases, data, manifest = prepare_thyroid_dataset(out / "cohort", out, 3, seed=7, fractions=(0.0, 0.0, 1.0))
    images = [load_case(row.image, row.mask, row.case_id) for row in manifest.itertuples()]
    bundle = load_bundle(path, device="cpu")
    predictions = {head: [predict_image(bundle, c.image, head=head).binary(1) for c in images] for head in bundle.heads}
    return bundle, images, data, predictions


def test_bundle_loads_without_pickle_and_describes_its_heads(held_out):
    bundle, _, _, _ = held_out
    assert bundle.name == "thyroid-unet2d" and bundle.labels == {1: "thyroid"}
    assert bundle.heads == ("R1", "R2", "R3", "consensus") and bundle.default_head == "consensus"
    assert bundle.description["training_data"]["target"].startswith("one head per simulated reader")
    assert set(bundle.description["validation"]["val_dice_per_head"]) == set(bundle.heads)
    assert (bundle.path / "model.safetensors").read_bytes()[:1] != b"\x80"  # safetensors header, not a pickle


def test_each_reader_head_mimics_its_own_reader(held_out):
    """Each head reaches its floor against the reader it was trained on, and is the head that agrees best with that
    reader (the habits - threshold, margin, isthmus - were learnt, not only the anatomy). R1 and R2 draw alike, so the
    R2 head may match R1 about as well as R2; the tight reader R3 is the one the others cannot stand in for."""
    _, cases, data, predictions = held_out
    table = {head: {r: np.mean([dice(p, data["readers"][r][c.case_id]) for p, c in zip(predictions[head], cases)])
                    for r in READERS} for head in READERS}
    own = {head: table[head][head] for head in READERS}
    for head in READERS:
        assert own[head] >= OWN_READER_FLOOR[head], (head, table[head])
        assert own[head] > max(table[other][head] for other in READERS if other != head), table  # best head for it
    assert table["R3"]["R3"] > max(table["R3"]["R1"], table["R3"]["R2"]) + 0.02, table["R3"]
    assert np.mean(list(own.values())) >= 0.95, own  # issue 4's bar, met by the heads on average (0.962 measured)


def test_heads_sit_inside_the_readers_spread(held_out):
    from nmkit.metrics.readers import reader_study

    _, cases, data, predictions = held_out
    masks = {r: [data["readers"][r][c.case_id] for c in cases] for r in READERS}
    studies = {head: reader_study(masks, model=predictions[head], spacing=cases[0].image.spacing, case_ids=[c.case_id for c in cases])
               for head in ("consensus", *READERS)}
    for head, study in studies.items():
        assert study.model_inside, (head, study.overall)
    assert studies["consensus"].overall["model_dice_mean"] >= studies["consensus"].overall["reader_dice_mean"]


def test_default_prediction_is_the_consensus_head(held_out):
    from nmkit.segment.infer import predict_image

    bundle, cases, _, predictions = held_out
    default = predict_image(bundle, cases[0].image)
    assert default.meta["head"] == "consensus"
    assert np.array_equal(default.binary(1), predictions["consensus"][0])
