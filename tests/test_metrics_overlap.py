"""Overlap metrics, per-structure tables (evaluate_pair/evaluate_cases) and the `nmkit evaluate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nmkit.cli import main
from nmkit.errors import GeometryError
from nmkit.io.image import Mask
from nmkit.io.volume_files import write_volume
from nmkit.metrics.evaluate import evaluate_cases, evaluate_pair, summarise
from nmkit.metrics.overlap import dice, iou, overlap_metrics

SPACING = (0.98, 0.98, 2.5)  # x, y, z mm -> voxel of 2.401 ul


def boxes():
    truth = np.zeros((10, 20, 20), bool)
    truth[2:8, 5:15, 5:15] = True  # 600 voxels
    pred = np.zeros_like(truth)
    pred[4:8, 5:15, 5:20] = True  # 600 voxels, 400 shared
    return pred, truth


def test_overlap_values_by_hand():
    pred, truth = boxes()
    m = overlap_metrics(pred, truth, SPACING)
    assert m["dice"] == pytest.approx(2 * 400 / 1200)
    assert m["iou"] == pytest.approx(400 / 800)
    assert m["sensitivity"] == pytest.approx(400 / 600)
    assert m["precision"] == pytest.approx(400 / 600)
    voxel_ml = 0.98 * 0.98 * 2.5 / 1000
    assert m["volume_truth_ml"] == pytest.approx(600 * voxel_ml)
    assert m["volume_difference_ml"] == pytest.approx(0.0)
    assert dice(pred, truth) == m["dice"] and iou(pred, truth) == m["iou"]
    # Dice and IoU are linked: D = 2J / (1 + J)
    assert m["dice"] == pytest.approx(2 * m["iou"] / (1 + m["iou"]))


def test_overlap_matches_medpy():
    binary = pytest.importorskip("medpy.metric.binary")

    rng = np.random.default_rng(0)
    pred, truth = rng.random((12, 16, 16)) > 0.6, rng.random((12, 16, 16)) > 0.5
    m = overlap_metrics(pred, truth, SPACING)
    assert m["dice"] == pytest.approx(binary.dc(pred, truth))
    assert m["iou"] == pytest.approx(binary.jc(pred, truth))
    assert m["precision"] == pytest.approx(binary.precision(pred, truth))
    assert m["sensitivity"] == pytest.approx(binary.recall(pred, truth))


def test_empty_conventions():
    empty = np.zeros((4, 4, 4), bool)
    some = empty.copy()
    some[1:3, 1:3, 1:3] = True
    both = overlap_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and both["relative_volume_difference"] == 0.0
    assert np.isnan(both["sensitivity"]) and np.isnan(both["precision"])
    missed = overlap_metrics(empty, some, (1, 1, 1))
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0 and np.isnan(missed["precision"])
    assert missed["relative_volume_difference"] == -1.0
    spurious = overlap_metrics(some, empty, (1, 1, 1))
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0 and np.isnan(spurious["relative_volume_difference"])


def label_maps():
    truth = np.zeros((10, 24, 24), np.uint8)
    truth[2:8, 2:10, 2:10] = 1
    truth[2:8, 12:22, 12:22] = 2
    pred = np.zeros_like(truth)
    pred[2:8, 3:11, 2:10] = 1  # shifted by one voxel in y
    # label 2 missed entirely, a spurious label 3
    pred[0:2, 0:4, 20:24] = 3
    return pred, truth


def test_evaluate_pair_rows_per_structure():
    pred, truth = label_maps()
    t = Mask(array=truth, spacing=SPACING, labels={1: "liver", 2: "spleen"})
    p = Mask(array=pred, spacing=SPACING, labels={1: "liver", 3: "other"})
    rows = {r["structure"]: r for r in evaluate_pair(p, t, tolerance_mm=1.0)}
    assert set(rows) == {"liver", "spleen", "other"}
    liver = rows["liver"]
    assert liver["dice"] == pytest.approx(2 * 6 * 7 * 8 / (2 * 6 * 8 * 8))
    assert liver["hd_mm"] == pytest.approx(0.98)  # one-voxel shift along y
    assert liver["nsd"] == pytest.approx(1.0)
    assert not liver["missed"]
    assert rows["spleen"]["missed"] and rows["spleen"]["dice"] == 0.0 and np.isinf(rows["spleen"]["hd95_mm"])
    only = evaluate_pair(p, t, labels=["spleen"])
    assert [r["structure"] for r in only] == ["spleen"]
    with_lesions = evaluate_pair(p, t, labels=[1], lesions=True)[0]
    assert with_lesions["lesion_f1"] == 1.0 and with_lesions["fp_volume_ml"] == 0.0


def test_evaluate_pair_refuses_different_grids():
    pred, truth = label_maps()
    t = Mask(array=truth, spacing=SPACING)
    p = Mask(array=pred, spacing=(1.0, 1.0, 2.5))
    with pytest.raises(GeometryError, match="different grids"):
        evaluate_pair(p, t)


def test_evaluate_cases_skips_bad_case():
    pred, truth = label_maps()
    t = Mask(array=truth, spacing=SPACING, labels={1: "liver", 2: "spleen"})
    p = Mask(array=pred, spacing=SPACING, labels={1: "liver", 3: "other"})
    bad = Mask(array=pred[:, :20], spacing=SPACING)
    df = evaluate_cases([("a", p, t), ("b", t, t), ("broken", bad, t)], labels=[1, 2])
    assert set(df["case"]) == {"a", "b"} and len(df) == 4
    assert "broken" in df.attrs["skipped"]
    assert df.loc[df.case == "b", "dice"].eq(1.0).all()
    s = summarise(df)
    assert s["missed_share"] == pytest.approx(0.25)  # spleen of case a


def test_cli_evaluate_writes_csv_and_provenance(tmp_path):
    import pandas as pd

    pred, truth = label_maps()
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    for case in ("c1", "c2"):
        write_volume(Mask(array=truth, spacing=SPACING, labels={1: "a", 2: "b"}), tmp_path / "truth" / f"{case}.nii.gz")
    write_volume(Mask(array=pred, spacing=SPACING), tmp_path / "pred" / "c1.nii.gz")
    write_volume(Mask(array=pred[:, :20], spacing=SPACING), tmp_path / "pred" / "c2.nii.gz")  # wrong grid
    (tmp_path / "pred" / "c3.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "metrics.csv"
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--out", str(out), "--lesions"])
    assert rc == 0
    df = pd.read_csv(out)
    assert set(df["case"]) == {"c1"}
    assert df.loc[df.label == 1, "dice"].item() == pytest.approx(2 * 6 * 7 * 8 / (2 * 6 * 8 * 8))
    assert "lesion_f1" in df.columns
    record = json.loads((tmp_path / "metrics.csv.json").read_text())
    assert record["config"]["method"] == "surface-distance"
    assert "c2" in record["skipped"]
    assert any(str(tmp_path / "truth" / "c1.nii.gz") == i for i in record["inputs"])


def test_cli_resample_and_lesion_table(tmp_path, capsys):
    import pandas as pd

    pred, truth = label_maps()
    write_volume(Mask(array=truth, spacing=SPACING, labels={1: "a", 2: "b"}), tmp_path / "truth.nii.gz")
    # the same prediction stored at half the in-plane resolution on the same physical extent
    coarse = Mask(array=pred[:, ::2, ::2], spacing=(1.96, 1.96, 2.5), origin=(0.49, 0.49, 0.0))
    write_volume(coarse, tmp_path / "pred.nii.gz")
    out = tmp_path / "m.csv"
    args = ["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--truth", str(tmp_path / "truth.nii.gz"), "--out", str(out)]
    assert main(args) == 2  # different grids: the only case is skipped, and the error says why
    assert "no case could be evaluated (1 skipped" in capsys.readouterr().err
    assert main(args + ["--resample", "--lesions", "--lesion-table", str(tmp_path / "lesions.csv"), "--labels", "1", "2"]) == 0
    df = pd.read_csv(out)
    # rows 3..10 sampled every 2nd voxel come back as rows 4..11 (truth 2..9): 6 of 8 rows shared
    assert df.loc[df.label == 1, "dice"].item() == pytest.approx(0.75)
    assert df.loc[df.label == 1, "hd_mm"].item() == pytest.approx(2 * 0.98, rel=1e-6)
    lesions = pd.read_csv(tmp_path / "lesions.csv")
    assert set(lesions["side"]) == {"truth", "pred"}
    spleen = lesions[(lesions.label == 2) & (lesions.side == "truth")]
    assert len(spleen) == 1 and not spleen["detected"].item()


def test_planar_masks_give_areas_and_pixel_distances_without_spacing(tmp_path):
    """2D masks report areas (mm^2), not volumes; PNG label maps carry no pixel spacing, so their distances are in
    pixels and say so; two images of one patient (no series UID, no time point) are not mixed up."""
    from PIL import Image as PILImage

    from nmkit.cli import main
    from nmkit.dataset import MaskRef, new_table, write_dataset

    m = overlap_metrics(np.ones((4, 5), bool), np.ones((4, 5), bool), (0.5, 2.0))
    assert m["area_truth_mm2"] == pytest.approx(20.0) and "volume_truth_ml" not in m
    rows_truth, rows_pred = [], []
    for i, (shift, size) in enumerate(((0, 10), (6, 14))):  # two images of patient p1, different sizes of structure
        truth = np.zeros((40, 40), np.uint8)
        truth[5:5 + size, 5:5 + size] = 1
        pred = np.roll(truth, shift, axis=1)
        PILImage.fromarray(truth).save(tmp_path / f"t{i}.png")
        PILImage.fromarray(pred).save(tmp_path / f"p{i}.png")
        PILImage.fromarray(truth * 50).save(tmp_path / f"img{i}.png")
        common = {"case_id": f"c{i}", "patient_id": "p1", "image": str(tmp_path / f"img{i}.png"), "split": "test"}
        rows_truth.append({**common, "masks": [MaskRef(str(tmp_path / f"t{i}.png"), structure="lesion", label=1)]})
        rows_pred.append({**common, "masks": [MaskRef(str(tmp_path / f"p{i}.png"), structure="lesion", label=1)]})
    write_dataset(new_table(rows_truth), tmp_path / "truth.csv")
    write_dataset(new_table(rows_pred[::-1]), tmp_path / "pred.csv")  # other order: rows must pair by image, not position
    assert main(["evaluate", "--pred", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"),
                 "--out", str(tmp_path / "eval.csv")]) == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "eval.csv").set_index("case")
    assert df.loc["c0", "dice"] == pytest.approx(1.0) and df.loc["c0", "area_truth_mm2"] == 100
    assert df.loc["c1", "area_truth_mm2"] == 196 and df.loc["c1", "hd95_mm"] == pytest.approx(6.0)
    assert set(df.distance_unit) == {"px"}
    summary = pd.read_csv(tmp_path / "eval_summary.csv")
    assert set(summary[summary.metric == "hd95_mm"].unit) == {"px"}
