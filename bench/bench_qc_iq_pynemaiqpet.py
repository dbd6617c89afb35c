"""Cross-check `nmkit qc iq` against pynemaiqpet (PyPI 0.5.4) on the real Siemens mCT IEC scan, in one run.

pynemaiqpet needs pydicom<3, lmfit and pymirc, so it lives in its own throwaway venv:
    python3 -m venv /tmp/nemavenv && /tmp/nemavenv/bin/pip install pynemaiqpet==0.5.4
    .venv/bin/python bench/bench_qc_iq_pynemaiqpet.py [--pynema-python /tmp/nemavenv/bin/python] [--data DIR]

Both tools get the same true sphere concentration (pynemaiqpet's fitted signal of the largest sphere, its default),
so RCs compare the image measurements only. Printed: sphere max and A50 mean from both, and nmkit again with the A50
background set to pynemaiqpet's background value (isolates the one definition that differs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "qc_phantoms" / "linaqa_pet_spect_qc" / "EARL-Anon"


def run_pynema(python: str, data: Path, out: Path) -> pd.DataFrame:
    code = (
        "import sys, matplotlib; matplotlib.use('Agg');"
        "import pymirc.fileio as pmf; from pynemaiqpet.nema_wb import fit_WB_NEMA_sphere_profiles;"
        f"dcm = pmf.DicomVolume({str(data / '*')!r}); vol = dcm.get_data();"
        "fr, res = fit_WB_NEMA_sphere_profiles(vol, dcm.voxsize, sameSignal=True, Rfix=[18.5,14.,11.,8.5,6.5,5.], dfix=1.5);"
        f"res.to_csv({str(out)!r})"
    )
    subprocess.run([python, "-c", code], check=True, capture_output=True)
    return pd.read_csv(out, index_col=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pynema-python", default="/tmp/nemavenv/bin/python")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    from nmkit.io.reader import read_image
    from nmkit.quality.qc_iq import IQSettings, analyse_iq

    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        ref = run_pynema(args.pynema_python, data, Path(tmp) / "fit_results.csv")
    conc = float(ref["signal"].iloc[0])
    image = read_image(data)
    ours, summary = analyse_iq(image, IQSettings(sphere_conc=conc, bg_conc=conc / 10))
    same_bg, _ = analyse_iq(image, IQSettings(sphere_conc=conc, bg_conc=conc / 10, a50_background=float(ref["background_mean"].iloc[0])))
    rows = []
    for i in range(6):
        r, o, b = ref.iloc[i], ours.iloc[i], same_bg.iloc[i]
        rows.append({"diameter_mm": o.diameter_mm, "pyn_R_mm": r.R, "pyn_max": r["max"], "nmkit_max": o["max"],
                     "pyn_rc_max": r["max"] / conc, "nmkit_rc_max": o.rc_max, "rc_max_diff_%": 100 * (o.rc_max * conc / r["max"] - 1),
                     "pyn_rc_a50": r.mean_a50 / conc, "nmkit_rc_mean": o.rc_mean,
                     "rc_mean_diff_%": 100 * (o.rc_mean * conc / r.mean_a50 - 1),
                     "nmkit_rc_mean_pyn_bg": b.rc_mean, "diff_pyn_bg_%": 100 * (b.rc_mean * conc / r.mean_a50 - 1),
                     "pyn_fwhm_mm": r.FWHM, "nmkit_fwhm_mm": o.fwhm_mm})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(f"true sphere concentration used by both: {conc:.1f} Bq/ml (pynemaiqpet fitted signal, wall 1.5 mm)")
    print(f"background: pynemaiqpet {ref['background_mean'].iloc[0]:.1f} Bq/ml (its ROI CoV {ref['background_cov'].iloc[0]:.2f}); "
          f"nmkit NEMA 37 mm ROIs {summary['background_37mm_mean']:.1f} Bq/ml")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
