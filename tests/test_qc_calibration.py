"""`nmkit qc calibrate` (SPECT sensitivity / Bq/ml factor from a uniform phantom) and `nmkit quality --calibration`.

The synthetic SPECT: a known activity spread uniformly over an object's voxels, total counts = sensitivity x activity x
acquisition time, blurred (FWHM 12 mm) and Poisson-noised, written as NIfTI in counts.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.cli import main
from nmkit.io.image import Image, Mask
from nmkit.io.volume_files import write_volume

SENS_CPS_PER_MBQ = 80.0  # the simulated camera's sensitivity


def _grid(shape: tuple[int, int, int], spacing: float):
    """Physical z, y, x (mm) of the voxel centres, centred on the volume."""
    return [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]


def _spect(region: np.ndarray, spacing: float, activity_mbq: float, seconds: float, seed: int) -> np.ndarray:
    """Counts of ``activity_mbq`` uniform in ``region`` seen for ``seconds``: blurred (FWHM 12 mm) and Poisson-noised."""
    from scipy.ndimage import gaussian_filter

    counts = region / region.sum() * SENS_CPS_PER_MBQ * activity_mbq * seconds
    counts = gaussian_filter(counts, 12.0 / 2.3548 / spacing)
    return np.random.default_rng(seed).poisson(counts).astype(np.float32)


def _write(array: np.ndarray, spacing: float, path) -> str:
    write_volume(Image(array=array, spacing=(spacing,) * 3, origin=(0.0, 0.0, 0.0)), path)
    return str(path)


@pytest.fixture
def phantom(tmp_path):
    """Uniform cylinder (r 80 mm, 120 mm long) of 200 MBq, 4 mm voxels, 120 views x 20 s; its voxelised volume (ml)."""
    z, y, x = np.meshgrid(*_grid((48, 64, 64), 4.0), indexing="ij")
    region = ((x ** 2 + y ** 2) <= 80.0 ** 2) & (np.abs(z) <= 60.0)
    image = _write(_spect(region.astype(float), 4.0, 200.0, 120 * 20.0, 1), 4.0, tmp_path / "cyl.nii.gz")
    return image, float(region.sum()) * 0.064


def _calibrate(image: str, volume_ml: float, out, *extra: str) -> dict:
    assert main(["qc", "calibrate", image, "--activity-mbq", extra[0] if extra else "200", "--volume-ml", f"{volume_ml}",
                 "--frame-duration-s", "20", "--views", "120", "--units", "counts", "--out", str(out), *extra[1:]]) == 0
    return json.loads((out / "calibration.json").read_text())


def test_calibrate_then_quality_recovers_a_known_activity(phantom, tmp_path, capsys):
    image, volume_ml = phantom
    cal = _calibrate(image, volume_ml, tmp_path / "cal")
    assert cal["sensitivity_cps_per_mbq"] == pytest.approx(SENS_CPS_PER_MBQ, rel=0.01)
    assert cal["bq_per_ml_per_cps_per_ml"] == pytest.approx(1e6 / SENS_CPS_PER_MBQ, rel=0.02)  # (A/V) / (S A / V)
    assert cal["bq_per_ml_per_cps_per_voxel"] == pytest.approx(cal["bq_per_ml_per_cps_per_ml"] / 0.064, rel=1e-9)
    assert cal["region_volume_ml"] == pytest.approx(volume_ml, rel=0.05)  # the 50 % threshold finds the cylinder
    assert cal["timing"]["acquisition_s"] == 2400 and cal["units"]["sensitivity_cps_per_mbq"] == "cps/MBq"
    assert cal["decay"] == {"decay_corrected": False}
    # a second object: a 40 mm sphere of 50 MBq off centre, 3 mm voxels, 60 views x 30 s
    z, y, x = np.meshgrid(*_grid((60, 80, 80), 3.0), indexing="ij")
    r = np.sqrt((x - 20) ** 2 + (y + 10) ** 2 + z ** 2)
    sphere = r <= 40.0
    spect = _write(_spect(sphere.astype(float), 3.0, 50.0, 60 * 30.0, 2), 3.0, tmp_path / "sphere.nii.gz")
    labels = np.where(r <= 25.0, 1, np.where(r <= 75.0, 2, 0)).astype(np.int16)  # 1 interior, 2 the rest (spill-out)
    rois = tmp_path / "rois.nii.gz"
    write_volume(Mask(array=labels, spacing=(3.0,) * 3, origin=(0.0, 0.0, 0.0), labels={1: "interior", 2: "shell"}), rois)
    out = tmp_path / "q.csv"
    assert main(["quality", spect, "--rois", str(rois), "--calibration", str(tmp_path / "cal" / "calibration.json"),
                 "--frame-duration-s", "30", "--views", "60", "--units", "counts", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    value = {(int(r.segment_number), r.metric): (r.value, r.unit) for r in t.itertuples()}
    conc = 50e6 / (sphere.sum() * 0.027)
    assert value[(1, "mean")][1] == "Bq/ml" and value[(1, "mean")][0] == pytest.approx(conc, rel=0.05)
    total = value[(1, "activity_mbq")][0] + value[(2, "activity_mbq")][0]
    assert value[(1, "activity_mbq")][1] == "MBq" and total == pytest.approx(50.0, rel=0.05)
    prov = json.loads((tmp_path / "q.csv.json").read_text())
    assert "calibration" in json.dumps(prov) and "30 s x 60 views" in json.dumps(prov)


def test_decay_correction_by_hand(phantom, tmp_path):
    """Tc-99m measured 6 h before the scan: 200 MBq at the scan is 200 / 0.5^(21600 / 21624.12) MBq at calibration."""
    image, volume_ml = phantom
    factor = 0.5 ** (21600.0 / 21624.12)  # 0.50039
    assert factor == pytest.approx(0.500387, abs=1e-6)
    cal = _calibrate(image, volume_ml, tmp_path / "cal", f"{200 / factor}", "--calibration-time", "20250101080000",
                     "--scan-time", "20250101140000", "--isotope", "Tc-99m")
    assert cal["decay"]["decay_factor"] == pytest.approx(factor, rel=1e-9) and cal["decay"]["elapsed_s"] == 21600
    assert cal["activity_mbq"] == pytest.approx(200.0, rel=1e-9)
    assert cal["sensitivity_cps_per_mbq"] == pytest.approx(SENS_CPS_PER_MBQ, rel=0.01)


def _one_line(capsys, *words: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_bad_input_one_line(phantom, tmp_path, capsys):
    image, _ = phantom
    base = ["qc", "calibrate", image, "--units", "counts", "--out", str(tmp_path / "o")]
    assert main(base + ["--activity-mbq", "0", "--frame-duration-s", "20", "--views", "120"]) == 2
    _one_line(capsys, "--activity-mbq")
    assert main(base + ["--activity-mbq", "100"]) == 2  # NIfTI: no frame duration in a header
    _one_line(capsys, "--frame-duration-s", "cyl.nii.gz")
    empty = _write(np.zeros((20, 20, 20), np.float32), 4.0, tmp_path / "empty.nii.gz")
    assert main(["qc", "calibrate", empty, "--activity-mbq", "100", "--frame-duration-s", "1", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "empty", "empty.nii.gz")
    with pytest.raises(SystemExit):  # argparse: --activity-mbq is required
        main(["qc", "calibrate", image, "--out", str(tmp_path / "o")])
    assert "--activity-mbq" in capsys.readouterr().err
    not_cal = tmp_path / "x.json"
    not_cal.write_text("{}")
    assert main(["quality", image, "--rois", image, "--calibration", str(not_cal), "--out", str(tmp_path / "q.csv")]) == 2
    _one_line(capsys, "x.json", "qc calibrate")
    bqml = _write(np.ones((20, 20, 20), np.float32), 4.0, tmp_path / "pet.nii.gz")
    assert main(["qc", "calibrate", bqml, "--units", "BQML", "--activity-mbq", "100", "--frame-duration-s", "1",
                 "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "pet.nii.gz", "Bq/ml, not counts")


def test_real_jaszczak_header_timing(external_data, tmp_path, capsys):
    """Mediso Jaszczak recon: 45 s per view x 128 views (ScanArc 360 / AngularStep 2.8125), Tc-99m decay to 18:45:21."""
    image = need(external_data, "qc_phantoms/nmqc_mediso_gammacamera/images/Jaszack.dcm")
    out = tmp_path / "cal"
    assert main(["qc", "calibrate", str(image), "--activity-mbq", "400", "--calibration-time", "20141114180000",
                 "--isotope", "Tc-99m", "--out", str(out)]) == 0
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["timing"]["frame_duration_s"] == 45 and cal["timing"]["views"] == 128
    assert cal["decay"]["elapsed_s"] == 2721 and cal["activity_mbq"] == pytest.approx(400 * math.exp(-math.log(2) * 2721 / 21624.12))
    assert 5000 < cal["region_volume_ml"] < 7500  # a Jaszczak tank holds ~6-7 l
    # independent check with pydicom: all of the image's counts per view-second per MBq, >= the region's
    import pydicom

    ds = pydicom.dcmread(str(image))
    image_cps = ds.pixel_array.astype(float).sum() * float(getattr(ds, "RescaleSlope", 1) or 1) / (45 * 128)
    assert cal["image_total_cps"] == pytest.approx(image_cps, rel=1e-6)
    assert 0.85 * image_cps < cal["total_cps"] <= image_cps
    # quality --calibration on the DICOM itself (header timing): a whole-image ROI holds image cps x factor
    from nmkit.io.reader import read_image

    ref = read_image(str(image))
    rois = tmp_path / "all.nii.gz"
    write_volume(Mask.like(ref, np.ones(ref.array.shape, np.int16), {1: "all"}), rois)
    assert main(["quality", str(image), "--rois", str(rois), "--calibration", str(out / "calibration.json"),
                 "--out", str(tmp_path / "q.csv")]) == 0
    t = pd.read_csv(tmp_path / "q.csv").set_index("metric")
    assert t.loc["activity_mbq", "unit"] == "MBq" and t.loc["mean", "unit"] == "Bq/ml"
    assert t.loc["activity_mbq", "value"] == pytest.approx(image_cps * cal["bq_per_ml_per_cps_per_ml"] / 1e6, rel=1e-3)
    assert t.loc["activity_mbq", "value"] == pytest.approx(cal["activity_mbq"], rel=0.15)  # 400 vs 367 MBq: the Jaszczak is not uniform (cold inserts), 6 % of counts outside


def test_calibrate_with_a_mask(phantom, tmp_path):
    """--mask: the given region is used for the total and the mean; a mask of the true cylinder gives the same factor."""
    image, volume_ml = phantom
    z, y, x = np.meshgrid(*_grid((48, 64, 64), 4.0), indexing="ij")
    inner = (((x ** 2 + y ** 2) <= 60.0 ** 2) & (np.abs(z) <= 40.0)).astype(np.int16)
    mask = tmp_path / "m.nii.gz"
    write_volume(Mask(array=inner, spacing=(4.0,) * 3, origin=(0.0, 0.0, 0.0), labels={1: "inner"}), mask)
    cal = _calibrate(image, volume_ml, tmp_path / "cal", "200", "--mask", str(mask))
    assert cal["region"] == "given mask" and cal["interior_voxels"] == int(inner.sum())
    assert cal["bq_per_ml_per_cps_per_ml"] == pytest.approx(1e6 / SENS_CPS_PER_MBQ, rel=0.02)
    assert cal["sensitivity_cps_per_mbq"] < 0.7 * SENS_CPS_PER_MBQ  # only the inner part's counts: a smaller total
