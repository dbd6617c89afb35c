"""PERCIST 1.0 and Deauville-type scores (issue #17) on two-time-point whole-body phantoms with known SULpeak changes,
and the reference regions (liver 3 cm sphere, blood pool)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from nmkit.cli import main
from nmkit.petwb.phantom import DEFAULT_LESIONS, Lesion, make_phantom
from nmkit.petwb.reference import deauville_score, liver_reference, percist_response
from petwb_common import phantom as cached_phantom


#: the two-time-point CLI tests run on 6 mm voxels (3.4 x fewer than the default 4 mm) to stay fast
VOXEL_MM = 6.0


def _scaled(factor: float, seed: int, extra: tuple[Lesion, ...] = (), liver: float | None = None, keep_liver_lesion: bool = True):
    kept = [l for k, l in enumerate(DEFAULT_LESIONS) if keep_liver_lesion or k != 1]
    lesions = tuple(dataclasses.replace(l, suv=l.suv * factor) for l in kept) + extra
    return make_phantom(lesions, seed=seed, organ_suv={"liver": liver} if liver else None, voxel_mm=VOXEL_MM)


def _write(ph, folder, name):
    from nmkit.io.volume_files import write_volume
    from nmkit.petwb.inputs import write_label_map

    write_volume(ph.pet, folder / f"{name}_pet.nii.gz")
    write_label_map(ph.lesions, folder / f"{name}_lesions.nii.gz")
    write_label_map(ph.organs, folder / f"{name}_organs.nii.gz")


def _percist(tmp_path, base, follow) -> pd.Series:
    _write(base, tmp_path, "b")
    _write(follow, tmp_path, "f")
    code = main(["percist", str(tmp_path / "b_pet.nii.gz"), str(tmp_path / "f_pet.nii.gz"), str(tmp_path / "out"),
                 "--assume-suv", "--baseline-lesions", str(tmp_path / "b_lesions.nii.gz"),
                 "--followup-lesions", str(tmp_path / "f_lesions.nii.gz"), "--baseline-organs", str(tmp_path / "b_organs.nii.gz"),
                 "--followup-organs", str(tmp_path / "f_organs.nii.gz")])
    assert code == 0
    return pd.read_csv(tmp_path / "out" / "percist.csv").iloc[0]


@pytest.mark.parametrize(("factor", "expected"), [(0.5, "PMR"), (1.0, "SMD"), (1.6, "PMD"), (0.2, "CMR")])
def test_percist_categories_on_two_time_points(tmp_path, factor, expected):
    base = cached_phantom(3, VOXEL_MM)
    # after a complete response a liver lesion's SULpeak IS the liver's uptake (CMR is then a coin toss on noise):
    # the CMR follow-up keeps the four lesions outside the liver
    row = _percist(tmp_path, base, _scaled(factor, seed=11, keep_liver_lesion=expected != "CMR"))
    assert row.category == expected
    # the hottest lesion (liver lesion, SUV 9, 12 ml) drives SULpeak; its change follows the planted factor
    assert row.sulpeak_change_pct == pytest.approx(100 * (factor - 1), abs=8 + 5 * factor)
    assert bool(row.liver_stable) and bool(row.baseline_measurable)


def test_new_lesion_is_progression_and_unstable_liver_is_flagged(tmp_path):
    new = (Lesion((100.0, 0.0, 330.0), 5.0, 4.0),)
    row = _percist(tmp_path, cached_phantom(3, VOXEL_MM), _scaled(0.6, seed=12, extra=new, liver=2.9))
    assert row.category == "PMD" and bool(row.new_lesion) and str(row.new_lesion_labels) == "6"
    assert not bool(row.liver_stable)  # liver 2.2 -> 2.9: > 0.3 units
    refs = pd.read_csv(tmp_path / "out" / "references.csv")
    liver = refs[refs.reference == "liver"].set_index("time_point")["mean"]
    assert liver["baseline"] == pytest.approx(2.2, rel=0.05) and liver["followup"] == pytest.approx(2.9, rel=0.05)
    scores = pd.read_csv(tmp_path / "out" / "deauville.csv").set_index("label").deauville
    assert scores[6] == 4  # new lesion, SUV 4.0: above the liver (2.9), below 2 x liver


def test_percist_rules_in_units():
    liver = (2.0, 0.2)
    assert percist_response(2.0, 2.7, liver, liver)["category"] == "SMD"  # +35 % but only 0.7 units
    assert percist_response(2.8, 3.7, liver, liver)["category"] == "PMD"  # +32 %, +0.9 units
    assert percist_response(3.0, 2.2, liver, liver)["category"] == "SMD"  # -27 %
    assert percist_response(3.0, 1.9, liver, liver)["category"] == "CMR"  # below the liver mean
    assert percist_response(6.0, 4.0, liver, liver)["category"] == "PMR"


def test_deauville_scale():
    pool, liver = 1.6, 2.2
    assert [deauville_score(v, pool, liver, background=0.8) for v in (0.7, 1.5, 2.0, 4.0, 5.0)] == [1, 2, 3, 4, 5]


def test_liver_sphere_is_3cm_inside_the_right_lobe():
    ph = cached_phantom(3)
    liver = ph.organs.array == ph.organs.label_value("liver")
    ref = liver_reference(ph.pet, liver)
    assert ref.mask.sum() == (ref.mask & liver).sum()
    assert ref.volume_ml == pytest.approx(4 / 3 * np.pi * 15 ** 3 / 1000, rel=0.2)
    xs = ph.pet.index_to_physical(np.argwhere(liver)[:, ::-1].astype(float))[:, 0]
    assert ref.centre_mm[0] < np.median(xs)  # patient right (LPS: lower x)
    lesion = np.array([-20.0, -30.0, 250.0])
    assert np.linalg.norm(np.array(ref.centre_mm) - lesion) > 15 + 14  # clear of the liver lesion
    assert ref.mean == pytest.approx(2.2, rel=0.05)
