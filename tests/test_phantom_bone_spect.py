"""Patient-like bone SPECT/CT cohort: anatomy truth, determinism, quantitative reconstructions, cohort files read back.

Small grids (64 x 64 x 40 at 7 mm) keep the module to a few seconds per simulated patient.
"""

from __future__ import annotations

import csv
import logging

import numpy as np
import pydicom
import pytest

torch = pytest.importorskip("torch")

from nmkit.io.dicom_series import stack_slices  # noqa: E402
from nmkit.io.nm import read_nm_recon  # noqa: E402
from nmkit.io.volume_files import read_label_map, read_volume  # noqa: E402
from nmkit.phantoms.bone_spect import (  # noqa: E402
    BoneSpectConfig, generate_cohort, make_patient, region_means, register_phantom, simulate_patient,
)
from nmkit.phantoms.spect_sim import CameraModel, zone_map_from_ct  # noqa: E402


def small_config(**kw) -> BoneSpectConfig:
    base = dict(n=64, nz=40, voxel_mm=7.0, camera=CameraModel(n_views=60, time_per_view_s=15.0))
    base.update(kw)
    return BoneSpectConfig(**base)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def study():
    return simulate_patient(small_config(), seed=2, device="cpu")  # seed 2: four lesions in spine, sacrum and ilium


def test_patient_truth_is_anatomically_consistent():
    for seed in (2, 11):
        p = make_patient(small_config(), seed)
        conc = p.concentrations_bq_ml
        assert 1 <= len(p.lesions) <= 4
        for les in p.lesions:
            assert 8.0 <= les["diameter_mm"] <= 30.0 and 2.0 <= les["uptake_factor"] <= 10.0
            assert les["site"] != "L4" and les["mask_voxels"] > 0
            assert les["true_bq_ml"] == pytest.approx(les["uptake_factor"] * conc["trabecular_bone"])
            vals = p.activity.array[p.masks.array == les["label"]]
            assert vals.max() <= les["true_bq_ml"] * 1.0001 and np.median(vals) > conc["trabecular_bone"]
        # L4 and the liver region are uniform reference regions in the truth (L4 voxels at 7 mm share some cortical shell)
        l4 = p.activity.array[p.masks.binary("l4_body")]
        assert l4.size >= 8 and l4.std() / l4.mean() < 0.15
        assert conc["trabecular_bone"] * 0.999 <= np.median(l4) < 0.5 * (conc["trabecular_bone"] + conc["cortical_bone"])
        assert np.median(p.activity.array[p.masks.binary("liver")]) == pytest.approx(conc["liver"], rel=1e-4)
        assert conc["cortical_bone"] > conc["trabecular_bone"] > conc["liver"] > conc["soft_tissue"] > 0
        # CT: air outside, bone dense enough for the CT zone map to call it bone, soft tissue near water
        bone = p.masks.binary("bone")
        zones = zone_map_from_ct(p.ct.array)
        assert np.mean(zones[bone] == 3) > 0.8
        assert np.all(p.ct.array[:, 0, :] < -990) and abs(np.median(p.ct.array[p.masks.binary("liver")]) - 60) < 15
        assert np.all(p.mu.array[bone] > 0.0154) and np.all(p.activity.array >= 0)


def test_patients_are_deterministic_and_vary_by_seed():
    cfg = small_config()
    a, b, c = make_patient(cfg, 7), make_patient(cfg, 7), make_patient(cfg, 8)
    assert np.array_equal(a.activity.array, b.activity.array) and np.array_equal(a.ct.array, b.ct.array)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.activity.array, c.activity.array)
    assert a.params["body_semi_axes_mm"] != c.params["body_semi_axes_mm"]


def test_reconstructions_are_quantitative_and_ct_guided_recovers_lesions(study):
    p = study.patient
    truth_total = p.activity_bq_per_voxel.sum()
    v_ml = p.activity.voxel_volume / 1000.0
    truth_means = region_means(p.activity.array, p)
    rec = {}
    for name, img in (("osem", study.osem), ("ct_guided", study.ct_guided)):
        assert img.same_grid(p.activity) and img.units == "BQML"
        assert img.array.sum() * v_ml == pytest.approx(truth_total, rel=0.10), name
        means = region_means(img.array, p)
        assert means["liver"] == pytest.approx(truth_means["liver"], rel=0.15), name
        assert means["l4_body"] == pytest.approx(truth_means["l4_body"], rel=0.30), name
        rec[name] = [means[les["name"]] / les["true_bq_ml"] for les in p.lesions]
    assert len(p.lesions) == 4
    assert np.mean(rec["ct_guided"]) > np.mean(rec["osem"]) + 0.05, rec
    assert sum(c > o for c, o in zip(rec["ct_guided"], rec["osem"])) >= 3, rec
    # the CT-guided reconstruction keeps L4 closer to its truth than the post-filtered OSEM
    rm_o, rm_c = region_means(study.osem.array, p), region_means(study.ct_guided.array, p)
    assert abs(rm_c["l4_body"] - truth_means["l4_body"]) < abs(rm_o["l4_body"] - truth_means["l4_body"])


def test_cohort_files_read_back(tmp_path):
    cfg = small_config(camera=CameraModel(n_views=20, time_per_view_s=15.0), osem_subsets=5, osem_iterations=2, ctg_iterations=3)
    cases_csv = generate_cohort(tmp_path / "cohort", n_patients=2, seed=4, config=cfg, device="cpu")
    root = cases_csv.parent
    cases = list(csv.DictReader(open(cases_csv)))
    lesions = list(csv.DictReader(open(root / "lesions.csv")))
    assert [c["case_id"] for c in cases] == ["BONE004_001", "BONE004_002"]
    assert len(lesions) == sum(int(c["n_lesions"]) for c in cases)
    study_uids = set()
    for case in cases:
        ct, ct_ds = stack_slices(sorted((root / case["ct_dir"]).iterdir()))
        truth = read_volume(root / case["truth_activity"])
        masks = read_label_map(root / case["truth_masks"])
        assert ct.same_grid(truth) and masks.same_grid(truth) and ct.modality == "CT"
        uids = {(str(d.StudyInstanceUID), str(d.FrameOfReferenceUID)) for d in ct_ds}
        for key in ("osem_pt_dir", "ctguided_pt_dir"):
            pt, pt_ds = stack_slices(sorted((root / case[key]).iterdir()))
            assert pt.same_grid(truth) and pt_ds[0].Units == "BQML"
            l4 = pt.array[masks.array == 2].mean()
            assert l4 == pytest.approx(float(case[key.split("_")[0] + "_l4_bq_ml"]), rel=0.01)
            uids |= {(str(d.StudyInstanceUID), str(d.FrameOfReferenceUID)) for d in pt_ds}
        for key in ("osem_nm", "ctguided_nm"):
            nm = pydicom.dcmread(root / case[key])
            assert "RECON TOMO" in nm.ImageType and int(nm.NumberOfFrames) == truth.array.shape[0]
            assert read_nm_recon(root / case[key]).same_grid(truth)
            uids.add((str(nm.StudyInstanceUID), str(nm.FrameOfReferenceUID)))
        assert len(uids) == 1
        study_uids |= uids
    assert len(study_uids) == 2  # distinct studies per patient
    # the case table pairs the two reconstructions of each patient for `nmkit compare --manifest`
    from nmkit.cli import main
    from nmkit.dataset import read_dataset

    table = read_dataset(root / "dataset.csv", need_masks=True)
    assert sorted(table.series_description) == ["CTGUIDED", "CTGUIDED", "OSEM", "OSEM"]
    assert main(["compare", "--manifest", str(root / "dataset.csv"), "--a", "OSEM", "--b", "CTGUIDED",
                 "--labels", "OSEM", "CTGUIDED", "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "paired_statistics.csv").is_file()  # two patients: cohort statistics


def test_bad_case_is_logged_and_skipped(tmp_path, caplog):
    cfg = small_config(n=32)  # 224 mm field of view: too small for the anatomy
    with caplog.at_level(logging.ERROR):
        cases_csv = generate_cohort(tmp_path / "bad", n_patients=1, seed=0, config=cfg, device="cpu")
    assert "BONE000_001" in caplog.text and "too small" in caplog.text
    assert cases_csv.exists() and cases_csv.read_text() == ""


def test_cli_registration_parses_options():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    register_phantom(sub)
    args = parser.parse_args(["bone-spect", "--out", "x", "--n", "3", "--seed", "2", "--no-bladder"])
    assert args.func.__name__ == "run_bone_spect" and args.n == 3 and args.no_bladder
