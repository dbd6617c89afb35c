"""The IVH with a half-open re-segmentation range ([0, inf) SUV), which IBSI leaves undefined: nmkit keeps the
given lower bound and ends the intensity range G at the centre of the bin holding the ROI maximum (documented in
``radiomics.intensity.ivh_features``; MIRP ends it one empty bin higher, see bench/bench_radiomics_ivh.py)."""

from __future__ import annotations

import numpy as np
import pytest

from nmkit.radiomics.config import Discretisation
from nmkit.radiomics.intensity import ivh_features

# ten voxels at bin centres of 0.1 SUV bins from 0: 1.05, 2.05, ..., 10.05 SUV
VALUES = np.arange(1, 11) + 0.05
FBS = Discretisation(method="FBS", bin_width=0.1, min=0.0)


def test_open_upper_bound_ends_at_the_roi_maximum_bin():
    f = ivh_features(VALUES, FBS, reseg_range=(0.0, None))
    # G = [0.05, 10.05]: gamma = (x - 0.05) / 10, so V90 counts the voxels >= 9.05 SUV (2 of 10)
    assert f["ivh_v90"] == pytest.approx(0.2)
    assert f["ivh_v10"] == pytest.approx(1.0)  # every voxel >= 1.05 SUV
    assert f["ivh_i10"] == pytest.approx(9.15)  # lowest bin with <= 10 % of the volume at or above it
    assert f["ivh_i90"] == pytest.approx(1.15)
    # the same as the closed range that ends where the maximum's bin ends (10.1 SUV: G's end 10.1 - 0.05)
    closed = ivh_features(VALUES, FBS, reseg_range=(0.0, 10.1))
    assert closed == pytest.approx(f)


def test_open_upper_bound_differs_from_roi_min_max_and_from_mirp_end():
    """The two other readings give other numbers: the ROI's own [min, max] (lower bound ignored) and MIRP's
    G ending one bin above the maximum's bin (closed range up to 10.2 SUV)."""
    ours = ivh_features(VALUES, FBS, reseg_range=(0.0, None))
    roi_range = ivh_features(VALUES, Discretisation(method="FBS", bin_width=0.1, min=1.0), reseg_range=None)
    mirp_like = ivh_features(VALUES, FBS, reseg_range=(0.0, 10.2))
    assert roi_range["ivh_v90"] == pytest.approx(0.1) and mirp_like["ivh_v90"] == pytest.approx(0.1)
    assert ours["ivh_v90"] == pytest.approx(0.2)


def test_open_range_for_integer_intensities_and_open_lower_bound():
    """``none`` (integer grey levels, e.g. CT in HU): an open upper end is the ROI's maximum; an open lower end
    (-inf, b] the ROI's minimum with the upper bound kept."""
    hu = np.array([-50.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 150.0])
    none = Discretisation(method="none", n_bins=None)
    up = ivh_features(hu, none, reseg_range=(-100.0, None))  # G = [-100, 150]: 90 % at 125 HU
    assert up["ivh_v90"] == pytest.approx(0.1) and up["ivh_i10"] == pytest.approx(71.0)
    low = ivh_features(hu, none, reseg_range=(None, 250.0))  # G = [-50, 250]: 10 % at -20 HU, 90 % at 220 HU
    assert low["ivh_v10"] == pytest.approx(0.9) and low["ivh_v90"] == pytest.approx(0.0)
