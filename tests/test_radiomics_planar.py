"""Radiomics of planar scintigraphy from the CLI: the thyroid cohort's 2D NM images give IBSI 2D texture, planar
shape features in mm and summed counts that numpy reproduces from the DICOM pixels; the default preset follows the
modality; a re-run recomputes a case whose mask file changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nmkit.io.image import Image
from nmkit.radiomics.planar import planar_features

NMKIT = [sys.executable, "-m", "nmkit"]


@pytest.fixture(scope="module")
def thyroid(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("thyroid")
    subprocess.run(NMKIT + ["phantom", "thyroid", "--out", str(out), "--n", "3", "--workers", "1", "--no-progress"],
                   check=True, capture_output=True)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(NMKIT + list(args), capture_output=True, text=True)


def test_planar_nm_cohort_from_the_cli(thyroid: Path, tmp_path: Path):
    import nibabel as nib
    import pydicom

    out = tmp_path / "rad.csv"
    run = _cli("radiomics", "--manifest", str(thyroid / "dataset.csv"), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "relative-64 for modality NM" in run.stderr  # the default preset is said
    table = pd.read_csv(out)
    assert len(table) == 3
    assert not [c for c in table.columns if c.startswith(("morph_", "loc_"))]  # 3D-only families left out
    assert any(c.endswith("_2D_avg") for c in table.columns) and not any(c.endswith("_3D_avg") for c in table.columns)
    assert table["config_name"].str.endswith("(planar 2D)").all()
    cases = pd.read_csv(thyroid / "dataset.csv")
    for (_, row), (_, case) in zip(table.iterrows(), cases.iterrows()):
        ds = pydicom.dcmread(thyroid / case["image"])
        counts = ds.pixel_array.astype(float) * float(getattr(ds, "RescaleSlope", 1) or 1)
        gland = np.asarray(nib.load(thyroid / case["mask"]).dataobj)
        gland = gland.reshape(gland.shape[:2]).T > 0  # NIfTI data order is (x, y)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        assert row["planar_pixels"] == gland.sum()
        assert row["planar_integrated"] == pytest.approx(counts[gland].sum(), rel=1e-9)
        assert row["stat_mean"] == pytest.approx(counts[gland].mean(), rel=1e-9)
        assert row["planar_area_mm2"] == pytest.approx(gland.sum() * dx * dy, rel=1e-9)
    units = json.loads(Path(str(out) + ".units.json").read_text())["columns"]
    assert units["planar_area_mm2"] == "mm^2" and units["planar_integrated"] == "counts x pixels"


def test_planar_shape_features_of_a_rectangle():
    roi = np.zeros((30, 40), bool)
    roi[5:15, 8:28] = True  # 10 rows x 20 columns
    image = Image(array=np.ones((30, 40)), spacing=(2.0, 3.0))  # x 2 mm, y 3 mm
    f = planar_features(image, roi)
    assert f["planar_area_mm2"] == pytest.approx(200 * 6.0)
    assert f["planar_feret_max_mm"] == pytest.approx(np.hypot(20 * 2.0, 10 * 3.0))
    assert f["planar_perimeter_mm"] == pytest.approx(2 * (20 * 2.0 + 10 * 3.0))  # pixel edges on a non-square grid
    square = Image(array=np.ones((30, 40)), spacing=(2.0, 2.0))
    assert f["planar_equivalent_diameter_mm"] == pytest.approx(2 * np.sqrt(1200 / np.pi))
    assert planar_features(square, roi)["planar_perimeter_mm"] == pytest.approx(2 * (20 + 10) * 2.0, rel=0.1)


def test_default_preset_by_modality_and_mixed_cohorts(thyroid: Path, tmp_path: Path):
    from nmkit.errors import InputError
    from nmkit.radiomics.presets import default_preset

    assert default_preset(set()) == "ibsi-c" and default_preset({"CT"}) == "ibsi-c"
    assert default_preset({"NM", "PT"}) == "relative-64"
    with pytest.raises(InputError, match="mixes CT with NM"):
        default_preset({"CT", "NM"})
    cases = pd.read_csv(thyroid / "dataset.csv")
    cases.loc[0, "modality"] = "CT"
    mixed = thyroid / "mixed.csv"
    cases.to_csv(mixed, index=False)
    run = _cli("radiomics", "--manifest", str(mixed), "--out", str(tmp_path / "x.csv"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "mixes CT with NM" in run.stderr and "--preset" in run.stderr


def test_rerun_recomputes_a_case_whose_file_changed(thyroid: Path, tmp_path: Path):
    import nibabel as nib

    work = tmp_path / "cohort"
    subprocess.run(["cp", "-r", str(thyroid), str(work)], check=True)
    out = work / "rad.csv"
    assert _cli("radiomics", "--manifest", str(work / "dataset.csv"), "--out", str(out)).returncode == 0
    before = pd.read_csv(out)
    mask_file = work / pd.read_csv(work / "dataset.csv").loc[1, "mask"]
    img = nib.load(mask_file)
    data = np.asarray(img.dataobj).copy()
    ys, xs = np.nonzero(data.reshape(data.shape[:2]) if data.ndim == 3 else data)
    data[ys[: len(ys) // 2], xs[: len(xs) // 2]] = 0  # the expert edits the mask in place
    nib.save(nib.Nifti1Image(data, img.affine, img.header), mask_file)
    run = _cli("radiomics", "--manifest", str(work / "dataset.csv"), "--out", str(out))
    assert run.returncode == 0 and "2 of 3 case(s) taken" in run.stdout
    after = pd.read_csv(out)
    assert after.loc[1, "planar_pixels"] < before.loc[1, "planar_pixels"]
    assert after.loc[0, "planar_pixels"] == before.loc[0, "planar_pixels"]


def test_feature_map_of_a_planar_scan(thyroid: Path, tmp_path: Path):
    """`nmkit featuremap` on a planar scintigraphy: a 2D map on the image's grid whose local mean is numpy's box mean."""
    import nibabel as nib
    import pydicom

    case = pd.read_csv(thyroid / "dataset.csv").iloc[0]
    run = _cli("featuremap", "--image", str(thyroid / case["image"]), "--mask", str(thyroid / case["mask"]),
               "--features", "mean,sd", "--radius-mm", "8", "--out", str(tmp_path / "maps"))
    assert run.returncode == 0, run.stderr
    ds = pydicom.dcmread(thyroid / case["image"])
    counts = ds.pixel_array.astype(float) * float(getattr(ds, "RescaleSlope", 1) or 1)
    mean_map = np.asarray(nib.load(tmp_path / "maps" / "featuremap_mean.nii.gz").dataobj)
    mean_map = mean_map.T  # NIfTI data order is (x, y); numpy's image order is (row, column)
    assert mean_map.shape == counts.shape
    r = int(np.floor(8.0 / float(ds.PixelSpacing[0]) + 0.5))
    inside = np.argwhere(np.isfinite(mean_map))
    assert len(inside) > 100
    for j, i in inside[:: len(inside) // 7]:
        assert mean_map[j, i] == pytest.approx(counts[max(j - r, 0):j + r + 1, max(i - r, 0):i + r + 1].mean(), rel=1e-5)
