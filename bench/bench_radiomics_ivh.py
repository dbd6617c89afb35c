"""The intensity-volume histogram (IVH) with a half-open re-segmentation range: nmkit vs MIRP on PET in SUV.

IBSI defines the IVH intensity range G for a closed re-segmentation range and for none; a PET range of [0, inf)
(``reseg_range: [0, null]``, MIRP's ``resegmentation_intensity_range=[0.0, nan]``) is not defined. Both tools keep
the given lower bound (bins of 0.1 SUV from 0) and take the upper end from the ROI maximum, but place it apart:

* nmkit: G ends at the centre of the bin holding the ROI maximum (gamma = 1 at the hottest voxel's bin);
* MIRP 2.x: ``ceil(max / w) + 1`` bins, i.e. G ends one (empty) bin above the maximum's bin.

So gamma differs by about w / SUVmax, and V90 (a small volume fraction near the maximum) can change by a large
relative amount when a few voxels sit near 0.9 x max. This script measures it on the three PET scans of
``pet_sts`` (native grid, no resampling, IVH only) and on synthetic PET lesions, and recomputes both definitions
from the voxel values (``nmkit-as-mirp``: nmkit's code with MIRP's upper end) to show the definition explains the
gap. It needs MIRP in its own environment (``python3 -m venv /tmp/mirp && /tmp/mirp/bin/pip install mirp``)::

    .venv/bin/python bench/bench_radiomics_ivh.py --mirp-python /tmp/mirp/bin/python [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("ivh_v10", "ivh_v90", "ivh_i10", "ivh_i90", "ivh_auc")  # MIRP 2.7 gives no ivh_auc (n/a)
BIN_SUV = 0.1

MIRP_RUN = """
import json, sys, warnings, logging
import numpy as np
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from mirp import extract_features
out = {}
for image, mask in json.loads(sys.argv[1]):
    df = extract_features(image=image, mask=mask, image_modality="PT", by_slice=False, ibsi_compliant=True,
                          intensity_normalisation="none", resegmentation_intensity_range=[0.0, np.nan],
                          base_feature_families="intensity_volume_histogram", base_discretisation_method="fixed_bin_size",
                          base_discretisation_bin_width=0.3125, ivh_discretisation_method="fixed_bin_size",
                          ivh_discretisation_bin_width=%r)[0]
    out[image] = {c: float(df[c].iloc[0]) for c in df.columns if c.startswith("ivh_")}
print(json.dumps(out))
""" % BIN_SUV


def synthetic_lesions(folder: Path, n: int = 6) -> list[tuple[Path, Path]]:
    """PET-like lesions in SUV (4 mm voxels): background ~1, a sphere of 4-14 SUV with a hotter core."""
    import nibabel as nib

    pairs = []
    shape = (24, 24, 24)
    z, y, x = np.indices(shape) - 11.5
    r = np.sqrt(x * x + y * y + z * z)
    for k in range(n):
        rng = np.random.default_rng(100 + k)
        peak = 4 + 2 * k
        img = np.where(r <= 6, peak * (1 - 0.5 * (r / 6) ** 2), 1.0) + rng.normal(0, 0.05 * peak, shape)
        img = img.clip(0).astype(np.float32)
        lab = (r <= 6).astype(np.int16)
        aff = np.diag([4.0, 4.0, 4.0, 1.0])
        pi, pm = folder / f"lesion{k}_pet.nii.gz", folder / f"lesion{k}_mask.nii.gz"
        nib.save(nib.Nifti1Image(img, aff), pi)
        nib.save(nib.Nifti1Image(lab, aff), pm)
        pairs.append((pi, pm))
    return pairs


def nmkit_ivh(image: Path, mask: Path) -> tuple[dict, dict]:
    """nmkit's IVH ([0, inf) range, 0.1 SUV bins from 0, native grid) and the same code with MIRP's upper end."""
    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics import intensity
    from nmkit.radiomics.config import Discretisation, RadiomicsConfig
    from nmkit.radiomics.engine import extract

    cfg = RadiomicsConfig(name="ivh-open", reseg_range=(0.0, None), families=("intensity_volume_histogram",),
                          ivh=Discretisation(method="FBS", bin_width=BIN_SUV, min=0.0))
    img, msk = read_volume(image), read_label_map(mask)
    ours = extract(img, msk, cfg)
    values = np.sort(img.array[msk.binary(None)] if hasattr(msk, "binary") else img.array[msk.array > 0])
    values = values[values >= 0]
    # MIRP's G: ceil(max / w) + 1 bins from 0, i.e. a closed range whose upper bound is (ceil(max / w) + 1) w
    upper = (np.ceil(values.max() / BIN_SUV) + 1.0) * BIN_SUV
    as_mirp = intensity.ivh_features(values, cfg.ivh, (0.0, upper), True, sorted_values=values)
    return {t: ours[t] for t in TAGS}, {t: as_mirp[t] for t in TAGS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("NMKIT_EXTERNAL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--mirp-python", default=os.environ.get("MIRP_PYTHON", "/tmp/mirp/bin/python"))
    args = ap.parse_args()
    flat = Path(args.data) / "pet_sts/sts_images_flat/nifti"
    cases = [(f"STS_00{k} PET", flat / f"STS_00{k}_PET_image.nii.gz", flat / f"STS_00{k}_PET_mask.nii.gz")
             for k in (1, 2, 3) if (flat / f"STS_00{k}_PET_image.nii.gz").is_file()]
    tmp = Path(tempfile.mkdtemp(prefix="nmkit_ivh_"))
    cases += [(f"synthetic {k}", i, m) for k, (i, m) in enumerate(synthetic_lesions(tmp))]
    p = subprocess.run([args.mirp_python, "-c", MIRP_RUN, json.dumps([[str(i), str(m)] for _, i, m in cases])],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        print(f"MIRP failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        return 1
    mirp = json.loads(lines[-1])
    version = subprocess.run([args.mirp_python, "-c", "from importlib.metadata import version; print(version('mirp'))"],
                             capture_output=True, text=True).stdout.strip()
    print(f"IVH, re-segmentation [0, inf) SUV, 0.1 SUV bins from 0, native grid; MIRP {version}")
    print("| case | feature | nmkit | MIRP | nmkit / MIRP - 1 | nmkit code, MIRP's upper end | that / MIRP - 1 |")
    print("|---|---|---|---|---|---|---|")
    worst = {t: 0.0 for t in TAGS}
    worst_as = {t: 0.0 for t in TAGS}
    for name, image, mask in cases:
        ours, as_mirp = nmkit_ivh(image, mask)
        theirs = mirp[str(image)]
        for t in TAGS:
            m = theirs.get(t, float("nan"))
            if m != m:
                print(f"| {name} | {t} | {ours[t]:.5g} | n/a | | {as_mirp[t]:.5g} | |")
                continue
            rel = ours[t] / m - 1 if m else float("nan")
            rel_as = as_mirp[t] / m - 1 if m else float("nan")
            worst[t] = max(worst[t], abs(rel)) if rel == rel else worst[t]
            worst_as[t] = max(worst_as[t], abs(rel_as)) if rel_as == rel_as else worst_as[t]
            print(f"| {name} | {t} | {ours[t]:.5g} | {m:.5g} | {100 * rel:+.2f} % | {as_mirp[t]:.5g} | {100 * rel_as:+.3f} % |")
    print("\nlargest |relative difference| over the cases: " + ", ".join(
        f"{t} {100 * worst[t]:.1f} % (MIRP's end: {100 * worst_as[t]:.2f} %)" for t in TAGS if t != "ivh_auc"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
