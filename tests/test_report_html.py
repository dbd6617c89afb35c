"""Self-contained HTML reports: figures embedded, no network references, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from nmkit.report.html import Report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render_with_chromium(html_path, tmp_path, width=1200, height=2000):
    """Screenshot (PNG) and serialised DOM of a page rendered by headless Chromium, offline."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (Debian package chromium; .ci/run installs it)")
    profile = tmp_path / "profile"
    shot = tmp_path / "shot.png"
    common = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*common, f"--screenshot={shot}", f"--window-size={width},{height}", html_path.as_uri()],
                   check=True, timeout=120, capture_output=True)
    dom = subprocess.run([*common, "--dump-dom", html_path.as_uri()], check=True, timeout=120, capture_output=True, text=True).stdout
    return shot, dom


def sample_report() -> Report:
    report = Report("Sample report")
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(np.arange(10), np.arange(10) ** 2, "o-", color="tab:red")
    report.section("Figures").text("A figure follows.").figure(fig, "quadratic")
    report.section("Tables").table(pd.DataFrame({"case": ["a", "b"], "dice": [0.95, 0.93]}), "metrics")
    return report


def test_report_is_self_contained(tmp_path):
    path = sample_report().write(tmp_path / "report.html")
    text = path.read_text()
    assert text.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
    assert "<td>0.95</td>" in text and "quadratic" in text


def test_report_renders_in_headless_chromium(tmp_path):
    path = sample_report().write(tmp_path / "report.html")
    shot, dom = render_with_chromium(path, tmp_path)
    assert dom.count("<img") == 1 and "Sample report" in dom
    from PIL import Image as PILImage

    pixels = np.asarray(PILImage.open(shot).convert("RGB"), dtype=float)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    assert red.sum() > 50, "the embedded figure (red curve) is not visible in the rendered page"
