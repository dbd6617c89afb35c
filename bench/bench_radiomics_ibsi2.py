"""IBSI-2 phase 2 speed: nmkit vs pictologics on the 3D configurations 1.B-9.B of the IBSI CT phantom (no filter,
mean, LoG, Laws energy, Gabor, wavelets db3, Simoncelli), one thread each, alternated rounds.

Processing B of the IBSI-2 manual on both sides: 1 mm isotropic tricubic image rounded to integers, trilinear mask
at 0.5, re-segmentation [-1000, 400] HU, the filter (mirror boundary) in 3D, the intensity statistics of the response
in the ROI. Each round runs ``--repeat`` warm extractions of every config in nmkit (this process) and then in
pictologics (its own interpreter, one numba thread; see bench_radiomics.py for its venv); the best of the rounds, the
per-round spread of the ratio and the load average are printed, with each library's stat_mean against the IBSI-2
consensus (so both are known to compute the same thing).

    .venv/bin/python bench/bench_radiomics_ibsi2.py --pictologics-python /tmp/picto/bin/python [--rounds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread each
    os.environ.setdefault(_var, "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PI = 3.141592653589793
NMKIT_FILTERS = {
    "1.B": None,
    "2.B": dict(kind="mean", support=5, boundary="mirror"),
    "3.B": dict(kind="log", sigma_mm=1.5, boundary="mirror"),
    "4.B": dict(kind="laws", kernel="L5E5E5", rotation="max", energy=True, energy_delta=7, boundary="mirror"),
    "5.B": dict(kind="gabor", sigma_mm=5.0, lambda_mm=2.0, gamma=1.5, delta_theta=PI / 8, rotation="average",
                orthogonal_planes=True, boundary="mirror", dims="2D"),
    "6.B": dict(kind="wavelet", wavelet="db3", decomposition="LLH", rotation="average", boundary="mirror"),
    "7.B": dict(kind="wavelet", wavelet="db3", decomposition="HHH", level=2, rotation="average", boundary="mirror"),
    "8.B": dict(kind="simoncelli", level=1, boundary="periodic"),
    "9.B": dict(kind="simoncelli", level=2, boundary="periodic"),
}
PICTO_FILTERS = {
    "1.B": None,
    "2.B": {"type": "mean", "support": 5, "boundary": "mirror"},
    "3.B": {"type": "log", "sigma_mm": 1.5, "boundary": "mirror"},
    "4.B": {"type": "laws", "kernel": "L5E5E5", "rotation_invariant": True, "pooling": "max", "compute_energy": True,
            "energy_distance": 7, "boundary": "mirror"},
    "5.B": {"type": "gabor", "sigma_mm": 5.0, "lambda_mm": 2.0, "gamma": 1.5, "delta_theta": PI / 8,
            "rotation_invariant": True, "pooling": "average", "average_over_planes": True, "boundary": "mirror"},
    "6.B": {"type": "wavelet", "wavelet": "db3", "level": 1, "decomposition": "LLH", "rotation_invariant": True,
            "pooling": "average", "boundary": "mirror"},
    "7.B": {"type": "wavelet", "wavelet": "db3", "level": 2, "decomposition": "HHH", "rotation_invariant": True,
            "pooling": "average", "boundary": "mirror"},
    "8.B": {"type": "simoncelli", "level": 1, "boundary": "periodic"},
    "9.B": {"type": "simoncelli", "level": 2, "boundary": "periodic"},
}

PICTOLOGICS_RUN = """
import json, sys, time
from pictologics import RadiomicsPipeline, load_image
filters = json.loads(sys.argv[3])
pipe = RadiomicsPipeline(load_standard=False)
for cid, flt in filters.items():
    steps = [{"step": "binarize_mask", "params": {"threshold": 0.5}},
             {"step": "resample", "params": {"new_spacing": (1.0, 1.0, 1.0), "interpolation": "cubic",
                                             "mask_interpolation": "linear", "mask_threshold": 0.5,
                                             "round_intensities": True}},
             {"step": "resegment", "params": {"range_min": -1000, "range_max": 400}}]
    if flt:
        steps.append({"step": "filter", "params": flt})
    steps.append({"step": "extract_features", "params": {"families": ["intensity"]}})
    pipe.add_config(cid, steps)
image, mask = load_image(sys.argv[1]), load_image(sys.argv[2])
out = {}
for cid in filters:
    res = pipe.run(image, mask, config_names=[cid])[cid]
    cpu = []
    for _ in range(int(sys.argv[4])):
        c = time.process_time()
        pipe.run(image, mask, config_names=[cid])
        cpu.append(time.process_time() - c)
    mean = [float(v) for k, v in res.items() if k.rsplit("_", 1)[-1] == "Q4LE"]
    out[cid] = {"cpu_s": min(cpu), "stat_mean": mean[0] if mean else float("nan")}
print(json.dumps(out))
"""


def _load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("NMKIT_EXTERNAL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--pictologics-python", default=os.environ.get("PICTOLOGICS_PYTHON", "/tmp/picto/bin/python"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=[c for c in NMKIT_FILTERS if c != "5.B"],
                    help="IBSI-2 3D configs (default all but 5.B, whose Gabor filter takes seconds per run on each side)")
    args = ap.parse_args()
    import dataclasses

    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics.engine import extract
    from nmkit.radiomics.presets import load_config

    data = Path(args.data)
    img_p = data / "ibsi/ibsi_1_ct_radiomics_phantom/nifti/image/phantom.nii.gz"
    mask_p = data / "ibsi/ibsi_1_ct_radiomics_phantom/nifti/mask/mask.nii.gz"
    with (data / "ibsi/ibsi2/phase2/reference_values.csv").open() as fh:
        consensus = {r["filter_id"]: (r["consensus_value"], r["tolerance"]) for r in csv.DictReader(fh, delimiter=";")
                     if r["feature_tag"] == "stat_mean"}
    image, mask = read_volume(img_p), read_label_map(mask_p)
    base = load_config("ibsi2-3d")
    configs = {cid: dataclasses.replace(base, filter=NMKIT_FILTERS[cid]) for cid in args.configs}
    print(f"load average at the start: {_load():.2f} on {os.cpu_count()} CPUs")
    rounds = []
    for _ in range(max(1, args.rounds)):
        ours = {}
        for cid, cfg in configs.items():
            feats = extract(image, mask, cfg)
            cpu = []
            for _ in range(max(1, args.repeat)):
                c = time.process_time()
                extract(image, mask, cfg)
                cpu.append(time.process_time() - c)
            ours[cid] = {"cpu_s": min(cpu), "stat_mean": float(feats["stat_mean"])}
        p = subprocess.run([args.pictologics_python, "-c", PICTOLOGICS_RUN, str(img_p), str(mask_p),
                            json.dumps({c: PICTO_FILTERS[c] for c in configs}), str(max(1, args.repeat))], capture_output=True, text=True,
                           env={**os.environ, "PICTOLOGICS_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode or not lines:
            print(f"pictologics failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            return 1
        rounds.append((ours, json.loads(lines[-1]), _load()))
    print("| config | nmkit CPU s (best) | pictologics CPU s (best) | ratio best | per-round ratio min-max | "
          "nmkit stat_mean | pictologics stat_mean | IBSI-2 consensus |")
    print("|---|---|---|---|---|---|---|---|")
    for cid in configs:
        n_best = min(r[0][cid]["cpu_s"] for r in rounds)
        p_best = min(r[1][cid]["cpu_s"] for r in rounds)
        ratios = [r[1][cid]["cpu_s"] / r[0][cid]["cpu_s"] for r in rounds]
        v, tol = consensus.get(cid, ("?", "?"))
        print(f"| {cid} | {n_best:.3f} | {p_best:.3f} | {p_best / n_best:.2f}x | {min(ratios):.2f}x-{max(ratios):.2f}x | "
              f"{rounds[0][0][cid]['stat_mean']:.4g} | {rounds[0][1][cid]['stat_mean']:.4g} | {v} +- {tol} |")
    print(f"load average per round: {', '.join(f'{r[2]:.2f}' for r in rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
