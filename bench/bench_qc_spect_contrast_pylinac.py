"""Cross-check `nmkit qc spect-contrast` against pylinac's TomographicContrast (PyPI 3.49.0) on the real Mediso
Jaszczak SPECT scan, in one run.

pylinac pins pydicom<3, so it lives in its own throwaway venv:
    python3 -m venv /tmp/pylinacvenv && /tmp/pylinacvenv/bin/pip install pylinac==3.49.0
    .venv/bin/python bench/bench_qc_spect_contrast_pylinac.py [--pylinac-python /tmp/pylinacvenv/bin/python] [--data FILE]

pylinac (its defaults, made for this sample image: diameters 38, 31.8, 25.4, 19.1, 15.9, 12.7 mm at fixed ring angles,
Nelder-Mead search of each 3D ball's position for the lowest mean) reports per sphere the mean in a 3D ball of the
sphere radius and a Michelson contrast against the mean of its "most uniform" slice. Printed: both tools' sphere
centres in pylinac's voxel indices (column, row, frame), the cold contrast 1 - mean/baseline of each tool with its own
ROI and baseline, and nmkit's disc ROI against pylinac's baseline (isolates the ROI definition from the baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "qc_phantoms" / "nmqc_mediso_gammacamera" / "images" / "Jaszack.dcm"


def run_pylinac(python: str, data: Path) -> dict:
    code = ("import json, sys, warnings; warnings.filterwarnings('ignore');"
            "from pylinac.nuclear import TomographicContrast;"
            f"tc = TomographicContrast({str(data)!r}); tc.analyze();"
            "r = tc.results_data(as_dict=True); r['uniformity_frame'] = tc.uniformity_frame;"
            "print(json.dumps(r, default=float))")
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pylinac-python", default="/tmp/pylinacvenv/bin/python")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    import pydicom

    from nmkit.io.reader import read_image
    from nmkit.quality.qc_spect_contrast import analyse_contrast

    data = Path(args.data)
    ref = run_pylinac(args.pylinac_python, data)
    image = read_image(str(data))
    table, summary = analyse_contrast(image)
    # pylinac indexes the frames in file order; nmkit orders slices by increasing z: map through the physical centre
    ds = pydicom.dcmread(str(data), stop_before_pixels=True)
    ipp = [float(v) for v in ds.DetectorInformationSequence[0].ImagePositionPatient]
    px = [float(v) for v in ds.PixelSpacing]
    dz = float(ds.SpacingBetweenSlices)
    base = float(ref["uniformity_baseline"])
    arr = np.asarray(image.array, float)
    from nmkit.quality.qc_iq import _xyz_axes, disc_weights

    xs, ys, zs = _xyz_axes(image)
    rows = []
    for (key, sph), (_, r) in zip(sorted(ref["spheres"].items(), key=lambda kv: int(kv[0])), table.iterrows()):
        col, row, frame = (r.x_mm - ipp[0]) / px[1], (r.y_mm - ipp[1]) / px[0], (r.z_mm - ipp[2]) / dz
        k = int(r.roi_slice)
        w = disc_weights(xs, ys, r.x_mm, r.y_mm, r.diameter_mm)
        disc = float((arr[k] * w).sum() / w.sum())
        rows.append({"diameter_mm": r.diameter_mm, "pylinac_col_row_frame": f"{sph['x']:.2f},{sph['y']:.2f},{sph['z']:.2f}",
                     "nmkit_col_row_frame": f"{col:.2f},{row:.2f},{frame:.2f}",
                     "centre_diff_mm": float(np.linalg.norm([(sph['x'] - col) * px[1], (sph['y'] - row) * px[0], (sph['z'] - frame) * abs(dz)])),
                     "pylinac_contrast_%": 100 * (1 - sph["mean"] / base),
                     "nmkit_contrast_%": r.contrast_percent,
                     "nmkit_disc_vs_pylinac_baseline_%": 100 * (1 - disc / base)})
    out = pd.DataFrame(rows)
    print(f"pylinac baseline (mean of its most uniform frame {ref['uniformity_frame']}): {base:.1f} counts; "
          f"nmkit background around the sphere plane: {summary['background_mean']:.1f} counts")
    print("| " + " | ".join(out.columns) + " |")
    print("|" + "---|" * len(out.columns))
    for _, r in out.iterrows():
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
