"""`nmkit qc bars`: the real Mediso four-quadrant bar phantom image (../shared/data/qc_phantoms), and the Hander
modulation / equivalent-FWHM relation on a synthetic bar pattern of known blur."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.cli import main
from nmkit.quality.qc_bars import equivalent_fwhm_mm, hander_modulation

CAMERA = "qc_phantoms/nmqc_mediso_gammacamera/images"


def test_hander_relation_on_blurred_bar_patterns():
    """Poisson counts of bars (w = 3 mm) blurred by a Gaussian of 3.5 mm FWHM. A sinusoidal pattern: M is the MTF at
    1/(2w), exp(-2 pi^2 s^2 f^2), and the FWHM comes back within 5 %. Square bars: their harmonics add variance, so
    Hander's M is higher and the FWHM lower (the method's known bias), here by 5-20 %."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(0)
    w, px, fwhm = 3.0, 0.25, 3.5
    s = fwhm / (2 * math.sqrt(2 * math.log(2)))
    x = np.arange(4800) * px  # 200 periods
    mtf = math.exp(-2 * math.pi**2 * s**2 / (2 * w) ** 2)
    sine = 1.0 + mtf * np.sin(math.pi * x / w)  # the blurred sinusoid of unit modulation
    m = hander_modulation(rng.poisson(np.tile(sine * 200, (50, 1))).astype(float).ravel())
    assert m == pytest.approx(mtf, rel=0.03)
    assert equivalent_fwhm_mm(m, w) == pytest.approx(fwhm, rel=0.05)
    square = gaussian_filter1d(np.where((x // w) % 2 == 0, 2.0, 0.0), s / px, mode="wrap")
    m_sq = hander_modulation(rng.poisson(np.tile(square * 200, (50, 1))).astype(float).ravel())
    assert 0.80 * fwhm < equivalent_fwhm_mm(m_sq, w) < 0.95 * fwhm
    assert math.isnan(equivalent_fwhm_mm(1.2, w)) and math.isnan(equivalent_fwhm_mm(0.0, w))


@pytest.fixture(scope="module")
def bar_runs(tmp_path_factory):
    from conftest import external_data_root

    image = external_data_root() / CAMERA / "QuadrantBar.dcm"
    if not image.is_file():
        pytest.skip(f"external data item missing: {image}")
    outs = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"bars{i}")
        assert main(["qc", "bars", str(image), "--out", str(out)]) == 0
        outs.append(out)
    return outs


def test_quadrant_bar_phantom_from_cli(bar_runs):
    out = bar_runs[0]
    table = pd.read_csv(out / "bars.csv")
    record = json.loads((out / "bars.json").read_text())
    s = record["summary"]
    assert (out / "bars.png").stat().st_size > 10_000
    assert list(table["bar_width_mm"]) == [4.23, 3.18, 2.54, 2.12]
    # the bar periods measured in the image are the nominal widths (1/6 ... 1/12 inch) within 3 %
    assert ((table["measured_bar_width_mm"] / table["bar_width_mm"] - 1).abs() < 0.03).all()
    assert set(table["quadrant"]) == {"upper-left", "upper-right", "lower-left", "lower-right"}
    assert sorted(table["bar_direction"]) == ["horizontal", "horizontal", "vertical", "vertical"]
    # modulation falls with bar width, all four groups resolved
    assert table["modulation"].is_monotonic_decreasing and table["modulation"].between(0.1, 0.9).all()
    # one camera, one resolution: the equivalent FWHM of every group agrees within 0.5 mm and is that of a gamma
    # camera's intrinsic/contact resolution (2-6 mm)
    assert table["equivalent_fwhm_mm"].between(2.0, 6.0).all()
    assert table["equivalent_fwhm_mm"].max() - table["equivalent_fwhm_mm"].min() < 0.5
    assert record["units"]["equivalent_fwhm_mm_median"] == "mm" and not s["notes"]
    # independent check of one group's modulation from the raw pixels (pydicom + numpy)
    import pydicom

    from conftest import external_data_root

    ds = pydicom.dcmread(external_data_root() / CAMERA / "QuadrantBar.dcm")
    px = ds.pixel_array.astype(float).reshape(512, 512)
    r = table.iloc[0]
    box = px[int(r.y_px) - 40:int(r.y_px) + 40, int(r.x_px) - 40:int(r.x_px) + 40]
    assert math.sqrt(2 * (box.var(ddof=1) - box.mean())) / box.mean() == pytest.approx(r.modulation, abs=0.05)
    # identical on a re-run
    pd.testing.assert_frame_equal(table, pd.read_csv(bar_runs[1] / "bars.csv"))


def test_not_a_bar_phantom(external_data, tmp_path, capsys):
    for name in ("FourBar.dcm", "UNIFORMIDAD_1.dcm"):
        image = need(external_data, f"{CAMERA}/{name}")
        assert main(["qc", "bars", str(image), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert name in err and "bar phantom" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["qc", "bars", str(tmp_path), "--out", str(tmp_path / "o"), "--bar-widths-mm", "4", "3", "3", "2"]) == 2
    assert "--bar-widths-mm" in capsys.readouterr().err
