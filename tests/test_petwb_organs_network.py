"""Organ uptake table and inter-organ metabolic network (issue #17): organ statistics against the phantom's known
SUVs and volumes, lesion exclusion, an empty organ map, and recovery of a planted network (200 patients x 10 organs)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from nmkit.cli import main
from nmkit.petwb.network import bh_fdr, build_network, edge_recovery_auc, wide_matrix
from nmkit.petwb.organs import organ_table
from nmkit.petwb.phantom import ORGANS, simulate_cohort
from petwb_common import phantom as cached_phantom


def test_organ_table_matches_the_phantom():
    ph = cached_phantom(3)
    rows = {r["organ"]: r for r in organ_table(ph.pet, ph.organs)}
    assert set(rows) == set(ORGANS)
    for name in ("liver", "spleen", "brain"):  # organs no later organ overlaps
        _, suv, _, _, axes = ORGANS[name]
        assert rows[name]["volume_ml"] == pytest.approx(4 / 3 * np.pi * np.prod(axes) / 1000, rel=0.03)
        # partial volume at the organ edge lowers the mean of hot organs a little (6 mm FWHM, 4 mm voxels)
        assert rows[name]["suv_mean"] == pytest.approx(suv, rel=0.08)
    # the CT of the phantom: organ CT numbers (HU) with 10 HU noise
    for name in ("liver", "lung_right", "spine"):
        value = ph.organs.label_value(name)
        assert np.median(ph.ct.array[ph.organs.array == value]) == pytest.approx(ORGANS[name][2], abs=20 if name != "spine" else 60)
    assert np.median(ph.ct.array[:, :3, :3]) == pytest.approx(-1000, abs=30)  # air in the corners, outside the body
    liver = rows["liver"]
    assert liver["suv_cov"] == pytest.approx(liver["suv_sd"] / liver["suv_mean"])
    assert liver["suv_median"] <= liver["suv_peak"] <= liver["suv_max"]
    # lesion voxels excluded on request: the liver loses the 12 ml lesion (SUV 9) and its mean falls
    clean = {r["organ"]: r for r in organ_table(ph.pet, ph.organs, exclude=ph.lesions.array > 0)}
    assert clean["liver"]["lesion_voxels_excluded"] == pytest.approx(12 / 0.064, rel=0.1)
    assert clean["liver"]["suv_mean"] < liver["suv_mean"] and clean["liver"]["suv_max"] < liver["suv_max"]
    assert 0.08 < clean["liver"]["suv_cov"] < 0.16 < liver["suv_cov"]  # 10 % noise (+ edges) once the lesion is out
    assert clean["brain"]["lesion_voxels_excluded"] == 0 and clean["brain"]["suv_mean"] == rows["brain"]["suv_mean"]


def test_cli_organs_and_empty_organ_map(tmp_path, capsys):
    from nmkit.io.image import Mask
    from nmkit.io.volume_files import write_volume
    from nmkit.petwb.inputs import write_label_map

    ph = cached_phantom(3)
    write_volume(ph.pet, tmp_path / "pet.nii.gz")
    write_label_map(ph.organs, tmp_path / "organs.nii.gz")
    assert main(["organs", str(tmp_path / "pet.nii.gz"), str(tmp_path / "organs.nii.gz"), str(tmp_path / "o.csv"),
                 "--assume-suv", "--roi", "liver", "--roi", "kidney*"]) == 0
    table = pd.read_csv(tmp_path / "o.csv")
    assert sorted(table.organ) == ["kidney_left", "kidney_right", "liver"] and (table.units == "SUV g/ml").all()
    # IBSI features on request; pet-native does not resample, so its mean is the organ's SUVmean
    assert main(["organs", str(tmp_path / "pet.nii.gz"), str(tmp_path / "organs.nii.gz"), str(tmp_path / "r.csv"),
                 "--assume-suv", "--roi", "spleen", "--radiomics", "pet-native"]) == 0
    spleen = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert spleen.ibsi_stat_mean == pytest.approx(spleen.suv_mean, rel=1e-6)
    assert spleen.ibsi_morph_volume / 1000 == pytest.approx(spleen.volume_ml, rel=0.1)
    write_label_map(Mask.like(ph.pet, np.zeros(ph.pet.array.shape, np.uint8), labels={1: "liver"}), tmp_path / "empty.nii.gz")
    code = main(["organs", str(tmp_path / "pet.nii.gz"), str(tmp_path / "empty.nii.gz"), str(tmp_path / "e.csv"), "--assume-suv"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "empty.nii.gz" in err and "empty" in err
    assert len(err.strip().splitlines()) == 1


def test_bh_fdr_matches_hand_values():
    q = bh_fdr(np.array([0.01, 0.04, 0.03, 0.20]))
    # sorted p 0.01, 0.03, 0.04, 0.20 -> p x 4 / rank = 0.04, 0.06, 0.0533, 0.20 -> running minimum from the top
    assert q == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20])


@pytest.mark.parametrize("method", ["partial", "glasso", "spearman"])
def test_network_recovers_planted_structure(method):
    table, truth, _ = simulate_cohort(n=200, k=10, seed=0)
    wide = wide_matrix(table)
    assert wide.shape == (200, 10)
    net = build_network(wide, method, n_boot=5)
    auc = edge_recovery_auc(net, truth.to_numpy())
    if method == "spearman":  # marginal correlations also link organs two steps apart: lower, still informative
        assert auc > 0.8
    else:
        assert auc >= 0.9
    edges = net.edges()
    assert len(edges) == 45 and edges.stability.between(0, 1).all()


def test_cli_network_exports(tmp_path):
    table, truth, _ = simulate_cohort(n=200, k=10, seed=1)
    table.to_csv(tmp_path / "organs.csv", index=False)
    assert main(["network", str(tmp_path / "organs.csv"), str(tmp_path / "net"), "--bootstrap", "10"]) == 0
    edges = pd.read_csv(tmp_path / "net" / "edges.csv")
    g = nx.read_graphml(tmp_path / "net" / "network.graphml")
    assert g.number_of_nodes() == 10 and g.number_of_edges() == int(edges.selected.sum()) > 0
    selected = edges[edges.selected]
    precision = np.mean([truth.loc[a, b] for a, b in zip(selected.organ_a, selected.organ_b)])
    assert precision >= 0.8  # FDR-controlled edges are mostly planted ones
    scores = pd.read_csv(tmp_path / "net" / "node_scores.csv")
    assert len(scores) == 200 and scores.filter(like="node_").mean().abs().max() < 1e-9
    assert (tmp_path / "net" / "network.png").stat().st_size > 1000


def test_combat_by_centre_removes_spurious_edges(tmp_path):
    from nmkit.petwb.network import batch_of

    table, truth, _ = simulate_cohort(n=200, k=10, seed=0, centres=4, centre_effect=0.4)
    wide = wide_matrix(table)
    raw = build_network(wide, "partial", n_boot=0)
    harmonised = build_network(wide, "partial", n_boot=3, batch=batch_of(table, wide, "centre"))
    assert edge_recovery_auc(raw, truth.to_numpy()) < 0.75  # the scanner shift links every organ to every other
    assert edge_recovery_auc(harmonised, truth.to_numpy()) >= 0.9
    table.to_csv(tmp_path / "organs.csv", index=False)
    assert main(["network", str(tmp_path / "organs.csv"), str(tmp_path / "n"), "--bootstrap", "2", "--batch-col", "centre"]) == 0
    assert list(pd.read_csv(tmp_path / "n" / "node_scores.csv").columns[:2]) == ["patient_id", "centre"]


def test_network_refuses_a_too_small_cohort(tmp_path, capsys):
    table, _, _ = simulate_cohort(n=5, k=4, n_edges=2)
    table.to_csv(tmp_path / "small.csv", index=False)
    assert main(["network", str(tmp_path / "small.csv"), str(tmp_path / "n")]) == 2
    assert ">= 10 patients" in capsys.readouterr().err


def test_wbphantom_case_table_feeds_organs_and_burden(tmp_path):
    out = tmp_path / "wb"
    assert main(["wbphantom", str(out), "--voxel-mm", "6", "--followup-factor", "0.5", "--cohort", "20"]) == 0
    assert main(["organs", str(out / "dataset.csv"), str(tmp_path / "o.csv"), "--assume-suv", "--exclude-lesions"]) == 0
    table = pd.read_csv(tmp_path / "o.csv")
    assert len(table) == 2 * len(ORGANS) and set(table.time_point) == {1, 2}
    liver = table[table.organ == "liver"]
    assert (liver.lesion_voxels_excluded > 0).all() and liver.suv_mean.between(2.0, 2.4).all()
    truth = pd.read_csv(out / "wbphantom_0" / "tp1" / "truth.csv")
    assert truth.volume_ml.sum() == pytest.approx(33.0)
    assert len(pd.read_csv(out / "cohort_organs.csv")) == 20 * 10
    assert main(["network", str(tmp_path / "o.csv"), str(tmp_path / "n")]) == 2  # two scans per patient: refused
