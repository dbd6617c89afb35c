"""`nmkit evaluate`: infinite distances counted (not silently dropped), units in column names, label names from sidecars."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import surface_distance as sd

from nmkit.cli import main
from nmkit.io.image import Mask
from nmkit.io.volume_files import write_volume
from nmkit.metrics.evaluate import read_mask, summarise

SPACING = (0.98, 0.98, 2.5)  # (x, y, z) mm


def sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """A ball on the (z, y, x) grid with SPACING, radius in mm."""
    zz, yy, xx = np.indices(shape).astype(float)
    d2 = ((zz - centre[0]) * SPACING[2]) ** 2 + ((yy - centre[1]) * SPACING[1]) ** 2 + ((xx - centre[2]) * SPACING[0]) ** 2
    return d2 <= radius_mm**2


def write_case(root, name: str, pred: np.ndarray, truth: np.ndarray, pred_names=None, truth_names=None,
               sidecar: str = ".labels.json") -> None:
    for side, arr, names in (("pred", pred, pred_names), ("truth", truth, truth_names)):
        write_volume(Mask(array=arr.astype(np.uint8), spacing=SPACING, labels={1: "label_1"}), root / side / f"{name}.nii.gz")
        if names:
            (root / side / f"{name}{sidecar}").write_text(json.dumps(names))


def test_empty_prediction_counts_one_infinite_hd95(tmp_path, capsys):
    shape = (16, 40, 40)
    truth_a = sphere(shape, (8, 20, 20), 9.0)
    pred_a = sphere(shape, (8, 22, 19), 8.0)  # a smaller, shifted prediction: finite distances
    truth_b = sphere(shape, (8, 18, 22), 7.0)
    write_case(tmp_path, "a", pred_a, truth_a)
    write_case(tmp_path, "b", np.zeros(shape, bool), truth_b)  # the network found nothing
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out).set_index("case")
    assert {"hd_mm", "hd95_mm", "assd_mm", "msd_pred_to_truth_mm", "nsd"} <= set(df.columns)
    assert np.isinf(df.loc["b", "hd95_mm"]) and df.loc["b", "dice"] == 0.0
    # the finite HD95 agrees with DeepMind's surface-distance on the same arrays (spacing in z, y, x order)
    ref = sd.compute_robust_hausdorff(sd.compute_surface_distances(truth_a, pred_a, SPACING[::-1]), 95)
    assert df.loc["a", "hd95_mm"] == pytest.approx(ref, rel=1e-6) and 1.0 < ref < 10.0  # NIfTI stores float32 spacing
    summary = pd.read_csv(tmp_path / "metrics_summary.csv")
    hd95 = summary[(summary.structure == "all") & (summary.metric == "hd95_mm")].iloc[0]
    assert hd95["unit"] == "mm" and hd95["n_rows"] == 2
    assert hd95["n_infinite"] == 1 and hd95["n_finite"] == 1 and hd95["n_undefined"] == 0
    assert hd95["mean_of_finite"] == pytest.approx(ref, rel=1e-6)  # the mean of the one finite case, not of both
    dice = summary[(summary.structure == "all") & (summary.metric == "dice")].iloc[0]
    assert dice["n_finite"] == 2 and dice["mean_of_finite"] == pytest.approx(df["dice"].mean())
    assert f"mean HD95 {ref:.2f} mm over the 1 finite row(s) (1 infinite" in printed
    record = json.loads((tmp_path / "metrics.csv.json").read_text())
    assert record["summary"]["hd95_mm_n_infinite"] == 1 and record["summary"]["hd95_mm_mean"] == pytest.approx(ref, rel=1e-6)


def test_both_empty_is_counted_apart():
    empty = Mask(array=np.zeros((4, 8, 8), np.uint8), spacing=SPACING, labels={1: "gtv"})
    from nmkit.metrics.evaluate import evaluate_cases

    s = summarise(evaluate_cases([("none", empty, empty)], labels=[1]))
    assert s["n_both_empty"] == 1 and s["hd95_mm_n_finite"] == 1 and s["hd95_mm_mean"] == 0.0


@pytest.mark.parametrize("side, sidecar", [("pred", ".labels.json"), ("truth", ".labels.json"), ("pred", ".json")])
def test_label_name_from_sidecar_reaches_the_rows(tmp_path, side, sidecar):
    """``nmkit predict`` writes ``<case>.json`` ({"1": "gtv"} from the bundle's labels) next to each mask."""
    shape = (8, 24, 24)
    truth = sphere(shape, (4, 12, 12), 6.0)
    pred = sphere(shape, (4, 12, 13), 6.0)
    names = {"1": "gtv"}
    write_case(tmp_path, "p1", pred, truth, sidecar=sidecar, **{f"{side}_names": names})
    assert read_mask(tmp_path / side / "p1.nii.gz").labels == {1: "gtv"}
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert df["structure"].tolist() == ["gtv"] and df["label"].tolist() == [1]
    assert set(pd.read_csv(tmp_path / "m_summary.csv")["structure"]) == {"all", "gtv"}


def test_unreadable_sidecar_keeps_default_names(tmp_path, caplog):
    shape = (8, 24, 24)
    truth = sphere(shape, (4, 12, 12), 6.0)
    write_case(tmp_path, "p1", truth, truth)
    (tmp_path / "pred" / "p1.json").write_text('{"model": "not a label file"}')  # e.g. some other JSON next to it
    mask = read_mask(tmp_path / "pred" / "p1.nii.gz")
    assert mask.labels == {1: "label_1"} and "label names" in caplog.text


def test_all_cases_bad_is_one_error_naming_the_file(tmp_path, capsys):
    from PIL import Image as PILImage

    PILImage.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / "mask.png")  # no voxel spacing: no mm distances
    write_volume(Mask(array=np.ones((2, 4, 4), np.uint8), spacing=SPACING), tmp_path / "truth.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "mask.png"), "--truth", str(tmp_path / "truth.nii.gz"),
                 "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "mask.png" in err and "--pred is not a label-map volume" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.nii.gz").write_text("not a volume")
    assert main(["evaluate", "--pred", str(tmp_path / "bad.nii.gz"), "--truth", str(tmp_path / "truth.nii.gz"),
                 "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "no case could be evaluated (1 skipped" in err and "bad.nii.gz" in err
