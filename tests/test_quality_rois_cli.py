"""`nmkit quality` ROI and cohort modes on the real Lu-177 xSPECT: per-lesion values with units, checked with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from conftest import need
from nmkit.cli import main


def _raw_bq_per_ml(folder: Path) -> tuple[np.ndarray, float]:
    """The series as Bq/ml straight from the tags (slices sorted along the normal), and the voxel volume in ml."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    slices.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    volume = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    dz = abs(float(np.dot(normal, np.subtract(slices[1].ImagePositionPatient, slices[0].ImagePositionPatient))))
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    assert slices[0].Units == "BQML"
    return volume, dx * dy * dz / 1000.0


def test_quality_roi_mode_reports_lesion_activity_with_units(external_data: Path, tmp_path: Path, capsys):
    scan = need(external_data, "spect_lu177/SCAN_001")
    rtstruct = next((scan / "mask").glob("*.dcm"))
    out = tmp_path / "q.csv"
    assert main(["quality", str(scan / "image"), "--rois", str(rtstruct), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert set(table.segment_number) == {1, 2}
    units = dict(zip(table.metric, table.unit))
    assert units["mean"] == "Bq/ml" and units["volume_ml"] == "ml" and units["activity_mbq"] == "MBq" and units["cov"] == "1"
    # independent check: the same voxels summed from the raw pixel data and rescale tags
    from nmkit.io.reader import read_image
    from nmkit.io.roi import load_rois

    image = read_image(scan / "image")
    mask = load_rois(rtstruct, image)
    raw, voxel_ml = _raw_bq_per_ml(scan / "image")
    assert raw.shape == image.array.shape
    for number in (1, 2):
        sel = mask.binary(number)
        mbq = raw[sel].sum() * voxel_ml / 1e6
        got = table[(table.segment_number == number) & (table.metric == "activity_mbq")].value.item()
        assert abs(got - mbq) <= 1e-6 * mbq
        assert table[(table.segment_number == number) & (table.metric == "max")].value.item() == np.float32(raw[sel].max())
    assert 50 < table[(table.segment_number == 1) & (table.metric == "activity_mbq")].value.item() < 500  # a Lu-177 liver lesion
    # one structure by number, and provenance next to the CSV
    assert main(["quality", str(scan / "image"), "--rois", str(rtstruct), "--roi", "2", "--out", str(out)]) == 0
    assert set(pd.read_csv(out).segment_number) == {2} and Path(str(out) + ".json").is_file()


def test_quality_cohort_mode_reads_the_case_table(external_data: Path, tmp_path: Path):
    root = need(external_data, "spect_lu177")
    db, table = tmp_path / "lu.sqlite", tmp_path / "lu.csv"
    assert main(["index", str(root), "--db", str(db)]) == 0
    assert main(["query", "--db", str(db), "--has-roi", "--format", "dataset", "--out", str(table)]) == 0
    out = tmp_path / "quality.csv"
    assert main(["quality", "--manifest", str(table), "--roi", "lesion1*", "--out", str(out)]) == 0
    result = pd.read_csv(out)
    assert result.case_id.nunique() == 2 and set(result.structure) == {"lesion1 liver R lobe"}
    assert sorted(result.time_point.unique()) == ["TP1", "TP2"]
    assert (result[result.metric == "activity_mbq"].unit == "MBq").all()
    # the same case table feeds compare: the two time points paired by patient, TP1's RTSTRUCT as the ROIs
    cmp_dir = tmp_path / "cmp"
    assert main(["compare", "--manifest", str(table), "--pair-by", "time_point", "--a", "TP1", "--b", "TP2",
                 "--out", str(cmp_dir)]) == 0
    per_roi = pd.read_csv(cmp_dir / "per_roi.csv")
    a_mean = per_roi[(per_roi.roi == "lesion1 liver R lobe") & (per_roi.metric == "mean")]
    tp1 = result[(result.time_point == "TP1") & (result.metric == "mean")].value.item()
    assert a_mean.A.item() == pytest.approx(tp1, rel=1e-9) and a_mean.unit.item() == "Bq/ml"
    assert main(["compare", "--manifest", str(table), "--a", "TP1", "--b", "TP9", "--pair-by", "time_point",
                 "--out", str(cmp_dir)]) == 2
