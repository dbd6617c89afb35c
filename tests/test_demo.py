"""The main job end to end (quick settings): every step runs and the report shows its figures in Chromium."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from test_report_html import render_with_chromium


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    from nmkit.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, DemoConfig.quick())
    return out


def test_demo_writes_every_artefact(demo_output):
    for name in ("report.html", "manifest.csv", "test_metrics.csv", "radiomics.csv", "nema_recovery.csv", "provenance.json",
                 "model/bundle.json", "model/model.safetensors", "learning_curve/learning_curve.csv"):
        assert (demo_output / name).exists(), name
    manifest = pd.read_csv(demo_output / "manifest.csv")
    # patient-level split: no patient in two splits, all three splits present
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "val", "test"}
    metrics = pd.read_csv(demo_output / "test_metrics.csv")
    assert set(metrics["reference"]) == {"R1", "R2", "R3", "consensus"}
    assert metrics["dice"].between(0, 1).all()
    radiomics = pd.read_csv(demo_output / "radiomics.csv")
    assert len(radiomics) >= 1 and "stat_mean" in radiomics.columns and np.isfinite(radiomics["stat_mean"]).all()


def test_demo_report_is_offline_and_renders_its_figures(demo_output, tmp_path):
    html = (demo_output / "report.html").read_text()
    n_figures = html.count('src="data:image/png;base64,')
    assert n_figures >= 6  # overlays, metric distributions, reader variability, learning curve, training log, NEMA
    assert not re.search(r'(src|href)="(https?:)?//', html)
    for section in ("Overlays", "Reader variability", "Learning curve", "Radiomics", "Image quality", "Provenance"):
        assert f">{section}" in html
    assert "nmkit_version" in html
    shot, dom = render_with_chromium(demo_output / "report.html", tmp_path, height=6000)
    assert dom.count("<img") == n_figures
    from PIL import Image as PILImage

    pixels = np.asarray(PILImage.open(shot).convert("L"), dtype=float)
    # A page of figures is far from blank: many distinct grey levels and a good share of non-white pixels.
    assert len(np.unique(pixels)) > 64 and (pixels < 200).mean() > 0.05
