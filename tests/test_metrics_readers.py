"""Reader variability: a model close to the truth sits inside the readers' spread, a bad model does not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nmkit.errors import InputError
from nmkit.io.image import Mask
from nmkit.metrics.overlap import dice
from nmkit.metrics.readers import consensus, plot_agreement, reader_study

SPACING = (1.0, 1.0, 2.0)


def organ(seed: int) -> np.ndarray:
    """A smooth, irregular 3D structure (about 20 x 20 x 10 voxels)."""
    z, y, x = np.ogrid[:24, :40, :40]
    rng = np.random.default_rng(seed)
    a, b, c = 7 + rng.uniform(-1, 1, 3) * np.array([1, 2, 2])
    base = ((z - 12) / a) ** 2 + ((y - 20) / (b + 4)) ** 2 + ((x - 20) / (c + 4)) ** 2 <= 1
    wobble = ndimage.gaussian_filter(rng.random(base.shape), 2) > 0.52
    return ndimage.binary_opening(base | (ndimage.binary_dilation(base, iterations=2) & wobble), iterations=1)


def readers_for(truth: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "generous": ndimage.binary_dilation(truth),
        "tight": ndimage.binary_erosion(truth),
        "shifted": np.roll(truth, 1, axis=2),
    }


@pytest.fixture(scope="module")
def cohort():
    truths = [organ(s) for s in (1, 2, 3)]
    readers: dict[str, list] = {"generous": [], "tight": [], "shifted": []}
    for t in truths:
        for name, mask in readers_for(t).items():
            readers[name].append(mask)
    good = [np.roll(t, 1, axis=1) for t in truths]
    bad = [ndimage.binary_erosion(np.roll(t, 5, axis=1), iterations=2) for t in truths]
    return truths, readers, good, bad


def test_good_model_inside_and_bad_model_outside(cohort, tmp_path):
    truths, readers, good, bad = cohort
    ok = reader_study(readers, good, spacing=SPACING, n_bootstrap=300)
    assert ok.model_inside
    assert ok.per_case["model_inside"].all()
    lo, hi = ok.overall["williams_index_dice"], ok.overall["williams_index_ci95"][1]
    assert lo > 0.95 and hi >= 1.0
    assert len(ok.pairs) == 3 * (3 + 3)  # 3 reader pairs + 3 model-reader pairs per case
    assert set(ok.per_reader["reader"]) == set(readers)

    poor = reader_study(readers, bad, spacing=SPACING, n_bootstrap=300)
    assert not poor.model_inside
    assert not poor.per_case["model_inside"].any()
    assert poor.overall["williams_index_ci95"][1] < 1.0
    assert poor.overall["model_hd95_mean"] > ok.overall["model_hd95_mean"]

    png = plot_agreement(ok, tmp_path / "agreement.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_readers_only_and_masks_with_spacing(cohort):
    truths, readers, good, bad = cohort
    as_masks = {r: [Mask(array=m, spacing=SPACING) for m in ms] for r, ms in readers.items()}
    study = reader_study(as_masks, case_ids=["a", "b", "c"])
    assert list(study.per_case["case"]) == ["a", "b", "c"]
    assert "model_inside" not in study.overall
    assert 0.5 < study.overall["reader_dice_mean"] < 1.0
    with pytest.raises(InputError):
        reader_study({"only": readers["tight"]}, spacing=SPACING)
    with pytest.raises(InputError):
        reader_study(readers, good[:2], spacing=SPACING)


def test_consensus_recovers_truth(cohort):
    truths, readers, _, _ = cohort
    for i, t in enumerate(truths):
        masks = [readers[r][i] for r in readers]
        staple, prob = consensus(masks, "staple")
        vote, share = consensus(masks, "majority")
        assert prob.min() >= 0.0 and prob.max() <= 1.0
        assert dice(staple, t) > 0.9
        assert dice(vote, t) > 0.9
        # each reader alone is further from the truth than the majority vote
        assert dice(vote, t) >= min(dice(m, t) for m in masks)
    two, _ = consensus([readers["generous"][0], readers["tight"][0]], "majority")
    assert np.array_equal(two, readers["tight"][0])  # ties are background -> intersection
