"""Two `qc iq` results of the same phantom scan (e.g. two reconstructions) side by side: recovery curves with the
EARL bands, background variability, and a table of differences (B - A)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError

#: measures compared per sphere, with their units
MEASURES = {"rc_max": "1", "rc_mean": "1", "rc_peak": "1", "contrast_q_h_percent": "%",
            "background_variability_n_percent": "%", "fwhm_mm": "mm"}


def read_iq_folder(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """iq_spheres.csv and iq_summary.json of a `qc iq` output folder (clear errors naming what is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder (give two `nmkit qc iq` output folders)")
    csv, js = folder / "iq_spheres.csv", folder / "iq_summary.json"
    for f in (csv, js):
        if not f.is_file():
            raise InputError(folder, f"no {f.name}: not a `nmkit qc iq` output folder")
    try:
        table = pd.read_csv(csv)
        record = json.loads(js.read_text(encoding="utf-8"))
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(folder, f"unreadable qc iq results: {exc}") from None
    missing = [c for c in ("diameter_mm", *MEASURES) if c not in table]
    if missing or "summary" not in record:
        raise InputError(csv, f"lacks {', '.join(missing) or 'the summary'}: written by an older nmkit?")
    return table, record


def difference_table(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Long table: diameter_mm, measure, unit, value_a, value_b, difference (b - a), relative_difference_percent."""
    da, db = list(a["diameter_mm"]), list(b["diameter_mm"])
    if sorted(da) != sorted(db):
        raise InputError(None, f"the two results have different sphere diameters ({da} vs {db} mm): not the same phantom")
    rows = []
    for d in sorted(da, reverse=True):
        ra, rb = a[a["diameter_mm"] == d].iloc[0], b[b["diameter_mm"] == d].iloc[0]
        for m, unit in MEASURES.items():
            va, vb = float(ra[m]), float(rb[m])
            rows.append({"diameter_mm": d, "measure": m, "unit": unit, "value_a": va, "value_b": vb, "difference": vb - va,
                         "relative_difference_percent": 100.0 * (vb - va) / va if va else math.nan})
    return pd.DataFrame(rows)


def compare_figure(a: pd.DataFrame, b: pd.DataFrame, labels: tuple[str, str], note: str = ""):
    """RCmax, RCmean (A50), RCpeak with the EARL1/EARL2 bands and the background variability N_j, both results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .qc_iq import EARL_BANDS

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.3), sharex=True)
    colours = {"EARL1": "tab:orange", "EARL2": "tab:green"}
    panels = (("rc_max", "RCmax (1)"), ("rc_mean", "RCmean A50 (1)"), ("rc_peak", "RCpeak 1 ml (1)"),
              ("background_variability_n_percent", "background variability N_j (%)"))
    for ax, (measure, label) in zip(axes, panels):
        for version, bands in EARL_BANDS.items():
            band = bands.get(measure)
            if band:
                ds = sorted(band)
                ax.fill_between(ds, [band[d][0] for d in ds], [band[d][1] for d in ds], color=colours[version],
                                alpha=0.2, label=f"{version} band")
        ax.plot(a["diameter_mm"], a[measure], "o-", color="black", label=labels[0])
        ax.plot(b["diameter_mm"], b[measure], "s--", color="tab:red", label=labels[1])
        ax.set_xlabel("sphere diameter (mm)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig
