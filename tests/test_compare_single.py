"""`nmkit compare` with a single case (one phantom, recon A vs recon B): a per-ROI report, no cohort statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from nmkit.cli import main
from nmkit.io.image import Image, Mask
from nmkit.io.volume_files import write_volume

VOXEL = 4.0
NAMES = {1: "background", 2: "sphere_22mm", 3: "sphere_13mm"}


def phantom_pair(seed: int, spheres: int = 2) -> tuple[Image, Image, Mask]:
    """A 5 kBq/ml cylinder with hot spheres (4:1), reconstructed as A (FWHM 14 mm) and B (FWHM 8 mm) with Poisson noise."""
    rng = np.random.default_rng(seed)
    shape = (24, 40, 40)
    zz, yy, xx = np.indices(shape).astype(float) * VOXEL
    c = np.array(shape) * VOXEL / 2
    act = np.zeros(shape)
    labels = np.zeros(shape, np.uint8)
    body = (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 70.0**2
    act[body] = 5000.0
    labels[body & ((yy - c[1] + 30) ** 2 + (xx - c[2] - 30) ** 2 <= 15.0**2)] = 1
    for value, (dy, diameter) in list(zip((2, 3), ((25.0, 22.0), (-25.0, 13.0))))[:spheres]:
        ball = (zz - c[0]) ** 2 + (yy - c[1] - dy) ** 2 + (xx - c[2] + 20) ** 2 <= (diameter / 2) ** 2
        act[ball] = 20000.0
        labels[ball] = value

    def recon(fwhm: float) -> np.ndarray:
        blurred = gaussian_filter(act, fwhm / 2.3548 / VOXEL)
        return (rng.poisson(blurred / 50.0) * 50.0).astype(np.float32)

    geo = dict(spacing=(VOXEL,) * 3, origin=(-80.0, -80.0, -48.0), modality="NM", units="BQML")
    a, b = Image(recon(14.0), **geo), Image(recon(8.0), **geo)
    names = {v: n for v, n in NAMES.items() if v in np.unique(labels)}
    return a, b, Mask.like(a, labels, labels=names)


def write_case(root: Path, name: str, a: Image, b: Image, mask: Mask) -> None:
    write_volume(a, root / "osem" / f"{name}.nii.gz")
    write_volume(b, root / "ctg" / f"{name}.nii.gz")
    write_volume(mask, root / "rois" / f"{name}.nii.gz")
    (root / "rois" / f"{name}.labels.json").write_text(json.dumps({str(k): v for k, v in mask.labels.items()}))


def compare(root: Path, out: Path, *extra: str) -> int:
    return main(["compare", str(root / "osem"), str(root / "ctg"), "--rois", str(root / "rois"), "--out", str(out), "--units", "Bq/ml",
                 "--labels", "OSEM", "CTG", *extra])


def test_single_pair_writes_per_roi_report(tmp_path, capsys):
    import SimpleITK as sitk

    write_case(tmp_path, "iec1", *phantom_pair(0))
    out = tmp_path / "out"
    assert compare(tmp_path, out, "--background", "background") == 0
    printed = capsys.readouterr().out
    assert "1 case compared" in printed and "no cohort statistics" in printed
    assert not (out / "paired_statistics.csv").exists()
    table = pd.read_csv(out / "per_roi.csv")
    assert {"roi", "metric", "unit", "OSEM", "CTG", "diff_b_minus_a"} <= set(table.columns)
    # independent check: ROI means straight from the files written, with SimpleITK + numpy
    arr = {k: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / k / "iec1.nii.gz"))).astype(float) for k in ("osem", "ctg", "rois")}
    means = table[table["metric"] == "mean"].set_index("roi")
    assert set(means.index) == {"sphere_22mm", "sphere_13mm"}  # the background ROI is the reference, not a lesion
    for value, name in ((2, "sphere_22mm"), (3, "sphere_13mm")):
        sel = arr["rois"] == value
        assert means.loc[name, "OSEM"] == pytest.approx(arr["osem"][sel].mean(), rel=1e-9)
        assert means.loc[name, "CTG"] == pytest.approx(arr["ctg"][sel].mean(), rel=1e-9)
        assert means.loc[name, "diff_b_minus_a"] == pytest.approx(arr["ctg"][sel].mean() - arr["osem"][sel].mean(), rel=1e-9)
        assert means.loc[name, "unit"] == "Bq/ml"
    # physics: the sharper reconstruction recovers more of the small sphere (partial volume)
    assert means.loc["sphere_13mm", "CTG"] > means.loc["sphere_13mm", "OSEM"]
    contrast = table[table["metric"] == "contrast"]
    assert contrast["unit"].str.startswith("1").all() and len(contrast) == 2
    html = (out / "report.html").read_text()
    assert "No cohort statistics" in html and "sphere_13mm" in html and "Bland-Altman needs" not in html
    record = json.loads((out / "provenance.json").read_text())
    assert record["n_cases"] == 1 and record["cohort_statistics"] is False


def test_two_pairs_keep_cohort_statistics_with_a_roi_in_one_case_only(tmp_path):
    write_case(tmp_path, "iec1", *phantom_pair(1))
    write_case(tmp_path, "iec2", *phantom_pair(2, spheres=1))  # sphere_13mm only in iec1: one pair for its metrics
    out = tmp_path / "out"
    assert compare(tmp_path, out, "--background", "background") == 0
    stats = pd.read_csv(out / "paired_statistics.csv").set_index("metric")
    assert stats.loc["sphere_22mm:mean", "n"] == 2 and stats.loc["sphere_13mm:mean", "n"] == 1
    assert stats.loc["sphere_22mm:mean", "unit"] == "Bq/ml"
    assert np.isfinite(stats.loc["sphere_22mm:mean", "ba_bias"]) and np.isnan(stats.loc["sphere_13mm:mean", "ba_bias"])
    per_roi = pd.read_csv(out / "per_roi.csv")
    assert set(per_roi["case"]) == {"iec1", "iec2"}
    assert "Bland-Altman plots" in (out / "report.html").read_text()
