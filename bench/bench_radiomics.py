"""Radiomics speed: nmkit vs mirp and pictologics (and pyradiomics where it installs), same run, same machine.

For the IBSI-1 digital phantom and CT phantom configs A-E (all feature families) it prints
  * cold: wall time of a fresh Python process that imports the library, reads the files and extracts once (best
    of 3 fresh processes, with compiled bytecode as after an install: see ``_cold``);
  * warm: best of ``--repeat`` extractions in an already warm process (files already read for nmkit), as wall
    time and, for nmkit, as CPU time of this process (robust when other jobs share the machine).

    .venv/bin/python bench/bench_radiomics.py [--data ../shared/data] [--repeat 5] [--mirp-repeat 2] [--only C]
        [--no-mirp] [--mirp-python /tmp/mirp/bin/python] [--no-peer-check] [--pictologics-python /tmp/picto/bin/python]

mirp: ``pip install mirp`` in this environment, or (to leave the project's environment alone) in its own
(``python3 -m venv /tmp/mirp && /tmp/mirp/bin/pip install mirp``) given by ``--mirp-python`` or ``$MIRP_PYTHON``;
it always runs in a subprocess: cold (start to first result) and best of ``--mirp-repeat`` warm extractions. pictologics (IBSI config C only: it has no 2D configs A/B) runs in its own virtual
environment, given by ``--pictologics-python`` or ``$PICTOLOGICS_PYTHON``, in a subprocess with one numba thread
(``PICTOLOGICS_NUM_THREADS=1``, so that its CPU time compares with nmkit's): cold (a fresh process: import,
numba's cached compiled code, reading, one extraction) and warm (best of ``--repeat`` more, wall and CPU time),
in ``--rounds`` rounds alternated with nmkit's warm runs of config C (the speed of a shared machine drifts);
a table gives each round's best nmkit and pictologics times, their ratio and the load average, then the best of
rounds and the per-round spread. BLAS/OpenMP pools are limited to one thread (one thread each). The machine's
load average is printed at the start, after each round and at the end.
Every pictologics release declares Requires-Python >= 3.12, but 0.9.0 imports and runs on Python 3.11 when pip
is told to ignore that (its code has no 3.12-only syntax; its dependencies have 3.11 builds)::

    python3 -m venv /tmp/picto
    /tmp/picto/bin/pip install "Pillow>=11.1" "PyWavelets>=1.6" "nibabel>=5.2" "numba>=0.62.1" "numpy>=2" \
        "pandas>=2.2.2" "pydicom>=3.0.1" "python-gdcm>=3.0.10" "pyyaml>=6" "scipy>=1.16.3" "tqdm>=4.66"
    /tmp/picto/bin/pip install --no-deps --ignore-requires-python pictologics==0.9.0

(a plain ``pip install pictologics`` fails on 3.11: pip refuses every release, and with
``--ignore-requires-python`` alone it picks PyWavelets 1.10, whose source build requires Python >= 3.12; a
Python >= 3.12 virtual environment with a plain ``pip install pictologics`` works as well). The first import
compiles its numba kernels (minutes, once; numba caches them on disk). Without a pictologics interpreter, and
unless ``--no-peer-check``, the benchmark asks pip why pictologics / pyradiomics are absent (``pip download
--no-deps pictologics`` and ``pip download --no-deps --only-binary=:all: pyradiomics``, index look-ups only)
and prints pip's exact reason next to the table.
Recorded by hand on 2026-11-23 (Python 3.11, pip 25): ``pip download --no-deps pyradiomics`` builds the sdists:
3.1.0 is discarded ("inconsistent version: expected '3.1.0', but metadata has '3.0.1a1'") and 3.0.1 fails in
"Getting requirements to build wheel" with ``ModuleNotFoundError: No module named 'numpy'``.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread each, like pictologics'
    os.environ.setdefault(_var, "1")
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ["digital_phantom", "A", "B", "C", "D", "E"]


def _paths(data: Path, case: str) -> tuple[Path, Path, str]:
    if case == "digital_phantom":
        d = data / "ibsi/ibsi_1_digital_phantom/nifti"
        return d / "image/phantom.nii.gz", d / "mask/mask.nii.gz", "ibsi-digital-phantom"
    d = data / "ibsi/ibsi_1_ct_radiomics_phantom/nifti"
    return d / "image/phantom.nii.gz", d / "mask/mask.nii.gz", f"ibsi-{case.lower()}"


NMKIT_COLD = """
import sys
from nmkit.io.volume_files import read_volume, read_label_map
from nmkit.radiomics.engine import extract
f = extract(read_volume(sys.argv[1]), read_label_map(sys.argv[2]), sys.argv[3])
print(len(f))
"""


def _mirp_settings(case: str) -> dict:
    common = dict(intensity_normalisation="none", base_feature_families="all", ibsi_compliant=True,
                  glcm_distance=1.0, ngtdm_distance=1.0, ngldm_distance=1.0, ngldm_difference_level=0.0,
                  anti_aliasing=False)
    if case == "digital_phantom":
        return dict(common, by_slice=False, base_discretisation_method="none",
                    ivh_discretisation_method="none")
    s = dict(common, image_modality="CT")
    if case in ("A", "B"):
        s.update(by_slice=True, resegmentation_intensity_range=[-500.0, 400.0], ivh_discretisation_method="none")
        if case == "A":
            s.update(base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0)
        else:
            s.update(new_spacing=2.0, spline_order=1, base_discretisation_method="fixed_bin_number",
                     base_discretisation_n_bins=32)
    else:
        s.update(by_slice=False, new_spacing=2.0, spline_order=3 if case == "E" else 1)
        if case == "C":
            s.update(resegmentation_intensity_range=[-1000.0, 400.0], base_discretisation_method="fixed_bin_size",
                     base_discretisation_bin_width=25.0, ivh_discretisation_method="fixed_bin_size",
                     ivh_discretisation_bin_width=2.5)
        elif case == "D":
            s.update(resegmentation_sigma=3.0, base_discretisation_method="fixed_bin_number",
                     base_discretisation_n_bins=32, ivh_discretisation_method="none")
        else:
            s.update(resegmentation_intensity_range=[-1000.0, 400.0], resegmentation_sigma=3.0,
                     base_discretisation_method="fixed_bin_number", base_discretisation_n_bins=32,
                     ivh_discretisation_method="fixed_bin_number", ivh_discretisation_n_bins=1000)
    return s


MIRP_RUN = """
import json, logging, sys, time, warnings
t0 = float(sys.argv[5])
warnings.filterwarnings("ignore")
from mirp import extract_features
settings = json.loads(sys.argv[3])
out = extract_features(image=sys.argv[1], mask=sys.argv[2], **settings)
cold = time.time() - t0
logging.disable(logging.INFO)  # mirp logs every job at INFO
warm = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter()
    extract_features(image=sys.argv[1], mask=sys.argv[2], **settings)
    warm.append(time.perf_counter() - t)
print(json.dumps({"cold_s": cold, "warm_s": min(warm), "n_features": int(out[0].shape[1])}))
"""


def _run_json(cmd: list[str], env: dict, timeout_s: float, failed_to_start: str, error_width: int,
              cwd: Path | None = None) -> dict:
    """Run a peer library's script in its own interpreter; its result is the last JSON line it prints, else an error."""
    import json

    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{failed_to_start} ({exc})"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:error_width]}
    return json.loads(lines[-1])


def _mirp(python: str, img_p: Path, mask_p: Path, case: str, repeat: int, timeout_s: float = 1800.0) -> dict:
    """mirp on one case in a fresh process of ``python``: cold (start to first result) and best warm wall time."""
    import json

    t0 = time.time()
    return _run_json([python, "-c", MIRP_RUN, str(img_p), str(mask_p), json.dumps(_mirp_settings(case)),
                      str(max(1, repeat)), repr(t0)], {**os.environ, "PYTHONWARNINGS": "ignore"}, timeout_s,
                     cwd=ROOT, failed_to_start="mirp could not run", error_width=80)


PICTOLOGICS_RUN = """
import json, sys, time
t0 = float(sys.argv[4])
from pictologics import RadiomicsPipeline, load_image, __version__
steps = [  # IBSI-1 config C as pictologics' IBSI compliance page sets it up, masks interpolated trilinearly
    {"step": "binarize_mask", "params": {"threshold": 0.5}},
    {"step": "resample", "params": {"new_spacing": (2.0, 2.0, 2.0), "interpolation": "linear",
                                    "mask_interpolation": "linear", "mask_threshold": 0.5, "round_intensities": True}},
    {"step": "resegment", "params": {"range_min": -1000, "range_max": 400}},
    {"step": "discretise", "params": {"method": "FBS", "bin_width": 25.0, "min_val": -1000}},
    {"step": "extract_features", "params": {"families": ["intensity", "morphology", "texture", "histogram", "ivh"],
        "include_spatial_intensity": True, "include_local_intensity": True,
        "ivh_discretisation": {"method": "FBS", "bin_width": 2.5, "min_val": -1000},
        "ivh_params": {"target_range_max": 400}}},
]
pipe = RadiomicsPipeline(load_standard=False)
pipe.add_config("c", steps)
image, mask = load_image(sys.argv[1]), load_image(sys.argv[2])
res = pipe.run(image, mask, config_names=["c"])["c"]
cold = time.time() - t0
warm, cpu = [], []
for _ in range(int(sys.argv[3])):
    t, c = time.perf_counter(), time.process_time()
    pipe.run(image, mask, config_names=["c"])
    warm.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
pick = {k.rsplit("_", 1)[-1]: float(v) for k, v in res.items() if k.rsplit("_", 1)[-1] in ("RNU0", "N365", "0F91")}
print(json.dumps({"version": __version__, "python": sys.version.split()[0], "n_features": len(res), "cold_s": cold,
                  "warm_s": min(warm), "cpu_s": min(cpu), "check": pick}))
"""


def _pictologics(python: str, img_p: Path, mask_p: Path, repeat: int, timeout_s: float = 1800.0) -> dict:
    """pictologics on config C in its own interpreter (one numba thread): cold, warm and a few feature values."""
    env = {**os.environ, "PICTOLOGICS_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    return _run_json([python, "-c", PICTOLOGICS_RUN, str(img_p), str(mask_p), str(max(1, repeat)), repr(t0)], env,
                     timeout_s, failed_to_start=f"{python} could not run pictologics", error_width=120)


COLD_RUNS = 3
PYCACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "nmkit-bench-pycache"


def _cold(code: str, args: list[str]) -> tuple[float, str]:
    """Best wall time of ``COLD_RUNS`` fresh processes, after one priming run.

    With compiled bytecode available, as after ``pip install`` (which compiles every module): an editable
    checkout run with ``PYTHONDONTWRITEBYTECODE`` set (as in some sandboxes) would otherwise recompile every nmkit
    module in every process, while the peers' installed packages load theirs. The bytecode goes to a cache
    folder outside the source tree (``PYTHONPYCACHEPREFIX``); the priming run fills it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONWARNINGS="ignore", PYTHONPYCACHEPREFIX=str(PYCACHE))
    best, err = float("inf"), ""
    for k in range(COLD_RUNS + 1):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            return float("nan"), (p.stderr.strip().splitlines() or ["failed"])[-1][:80]
        if k:  # the first run only primes the bytecode cache
            best = min(best, dt)
    return best, err


def _have(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


PICTOLOGICS_WARM_C_S = 0.04  # issue 5: pictologics, config C, warm (after a numba compile of minutes on first use)


def _pip_reason(args: list[str]) -> str:
    """pip's own reason why ``pip download --no-deps <args>`` finds nothing for this Python (index look-up only)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                                "-d", tmp, *args], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip download could not run ({exc})"
    if p.returncode == 0:
        return "downloads (installable: pip install it to benchmark it)"
    err = [ln.strip() for ln in p.stderr.splitlines() if ln.startswith("ERROR")]
    py = "Requires-Python"
    req = sorted({m.group(1) for ln in err for m in re.finditer(py + r" ([^;]+)", ln)})
    versions = re.findall(r"([0-9][0-9.]*) " + py, " ".join(err))
    if req:
        span = f"{versions[0]}..{versions[-1]}" if versions else "all versions"
        return (f"pip: every release ({span}) has {py} {' / '.join(r.strip() for r in req)}; "
                f"this is Python {sys.version.split()[0]}")
    return "pip: " + (err[-1].removeprefix("ERROR: ") if err else (p.stderr.strip().splitlines() or ["failed"])[-1])


def _peer_status(check: bool, picto: dict | None) -> list[str]:
    lines = []
    for name, module, args in (("pictologics", "pictologics", ["pictologics"]),
                               ("pyradiomics", "radiomics", ["--only-binary=:all:", "pyradiomics"])):
        if name == "pictologics" and picto is not None:
            lines.append(f"pictologics: {picto['error']}" if "error" in picto else
                         f"pictologics {picto['version']} on Python {picto['python']} (own venv, 1 numba thread): "
                         f"config C, {picto['n_features']} features")
        elif _have(module):
            lines.append(f"{name}: installed but not wired into this benchmark")
        elif check:
            lines.append(f"{name}: not installable here: {_pip_reason(args)}")
        else:
            lines.append(f"{name}: not installed (peer check skipped)")
    if check and not _have("radiomics"):
        lines[1] = lines[1].replace("pip: ", f"no wheel for Python {sys.version.split()[0]} (pip --only-binary: ", 1) + ")"
        lines[1] += "; its sdists do not build either (see this script's docstring)"
    return lines


def _reference(data: Path, dataset: str) -> dict[str, str]:
    """``{IBSI code: "value +- tolerance"}`` of one dataset of the IBSI-1 reference table (empty when absent)."""
    import csv

    path = data / "ibsi" / "ibsi1_reference.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["ibsi_code"]: f"{r['value']} +- {r['tolerance']}" for r in csv.DictReader(fh)
                if r["dataset"] == dataset and not r["aggregation"]}


def _mirp_version(python: str) -> str:
    """mirp's version in the environment of ``python`` (its own venv or this one)."""
    code = "from importlib.metadata import version; print(version('mirp'))"
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    where = "" if python == sys.executable else f" ({python})"
    return (p.stdout.strip() or "?") + where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("NMKIT_EXTERNAL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--repeat", type=int, default=5, help="warm nmkit repetitions (best is reported)")
    ap.add_argument("--mirp-repeat", type=int, default=2, help="warm mirp repetitions (mirp takes seconds per case)")
    ap.add_argument("--only", nargs="*", help="subset of cases, e.g. C digital_phantom")
    ap.add_argument("--no-mirp", action="store_true")
    ap.add_argument("--mirp-python", default=os.environ.get("MIRP_PYTHON"),
                    help="interpreter of a virtual environment with mirp (default: this one, if it has mirp)")
    ap.add_argument("--no-peer-check", action="store_true", help="do not ask pip why pictologics/pyradiomics are absent")
    ap.add_argument("--pictologics-python", default=os.environ.get("PICTOLOGICS_PYTHON"),
                    help="interpreter of a virtual environment with pictologics (see above); config C is run with it")
    ap.add_argument("--rounds", type=int, default=5,
                    help="config C with pictologics: rounds of nmkit and pictologics warm runs, alternated")
    args = ap.parse_args()
    data = Path(args.data)
    cases = args.only or CASES
    print(f"machine load at the start: {_load_text()}")

    from nmkit.io.volume_files import read_label_map, read_volume
    from nmkit.radiomics.engine import extract

    mirp_python = None if args.no_mirp else (args.mirp_python or (sys.executable if _have("mirp") else None))
    has_mirp = mirp_python is not None
    rows = []
    for case in cases:
        img_p, mask_p, preset = _paths(data, case)
        cold, err = _cold(NMKIT_COLD, [str(img_p), str(mask_p), preset])
        image, mask = read_volume(img_p), read_label_map(mask_p)
        n_feat = len(extract(image, mask, preset))
        warm, cpu = [], []
        nmkit_rounds: list[tuple[float, float]] = []

        def nmkit_warm() -> None:
            w, c_ = [], []
            for _ in range(max(1, args.repeat)):
                t, c = time.perf_counter(), time.process_time()
                extract(image, mask, preset)
                w.append(time.perf_counter() - t)
                c_.append(time.process_time() - c)
            warm.extend(w)
            cpu.extend(c_)
            nmkit_rounds.append((min(w), min(c_)))

        nmkit_warm()
        picto_runs = []
        round_load = []
        if case == "C" and args.pictologics_python:
            # alternate the two libraries over a few rounds: on a shared machine the speed drifts over minutes,
            # and each library keeps its best round
            for k in range(max(1, args.rounds)):
                if k:
                    nmkit_warm()
                picto_runs.append(_pictologics(args.pictologics_python, img_p, mask_p, args.repeat))
                round_load.append(_load1())
        row = {"case": case, "n_features": n_feat, "nmkit_cold_s": cold, "nmkit_warm_s": min(warm),
               "nmkit_cpu_s": min(cpu), "err": err, "nmkit_rounds": nmkit_rounds, "picto_rounds": picto_runs,
               "round_load": round_load}
        if picto_runs:
            ok = [r for r in picto_runs if "error" not in r]
            row["picto"] = (dict(ok[0], cold_s=min(r["cold_s"] for r in ok), warm_s=min(r["warm_s"] for r in ok),
                                 cpu_s=min(r["cpu_s"] for r in ok), rounds=len(ok)) if ok else picto_runs[0])
        if mirp_python:
            got = _mirp(mirp_python, img_p, mask_p, case, args.mirp_repeat)
            row["mirp_cold_s"] = got.get("cold_s", float("nan"))
            row["mirp_warm_s"] = got.get("warm_s", float("nan"))
            if "error" in got:
                row["err"] = (row["err"] + " mirp: " + got["error"]).strip()
        rows.append(row)
        print(f"  done {case}", file=sys.stderr)

    c_row = next((r for r in rows if r["case"] == "C"), None)
    picto = c_row.get("picto") if c_row is not None else None
    peers = _peer_status(not args.no_peer_check, picto)
    load = _load_text()
    print(f"\nnmkit radiomics benchmark (python {sys.version.split()[0]}, {load} at the start of the table); "
          "seconds, lower is better")
    print(f"mirp: {_mirp_version(mirp_python) if mirp_python else 'not installed (or --no-mirp)'}")
    for line in peers:
        print(line)
    head = f"{'case':<16}{'features':>9}{'nmkit cold':>12}{'nmkit warm':>12}{'warm CPU':>10}"
    if has_mirp:
        head += f"{'mirp cold':>11}{'mirp warm':>11}{'speed-up warm':>15}"
    print(head)
    for r in rows:
        line = (f"{r['case']:<16}{r['n_features']:>9}{r['nmkit_cold_s']:>12.2f}{r['nmkit_warm_s']:>12.3f}"
                f"{r['nmkit_cpu_s']:>10.3f}")
        if has_mirp:
            sp = r["mirp_warm_s"] / r["nmkit_warm_s"] if r["nmkit_warm_s"] > 0 else float("nan")
            line += f"{r['mirp_cold_s']:>11.2f}{r['mirp_warm_s']:>11.3f}{sp:>14.1f}x"
        if r["err"]:
            line += f"   [{r['err']}]"
        print(line)
    if picto is not None and "error" not in picto:
        ref = _reference(data, "config_C")
        names = {"RNU0": "volume", "N365": "Moran's I", "0F91": "global peak"}
        checks = ", ".join(f"{names[k]} {v:.4g} (IBSI {ref.get(k, '?')})" for k, v in sorted(picto["check"].items()))
        print(f"pictologics, config C: cold {picto['cold_s']:.2f} s, warm {picto['warm_s']:.3f} s wall / "
              f"{picto['cpu_s']:.3f} s CPU (best of {picto['rounds']} rounds alternated with nmkit's, "
              f"{args.repeat} runs each); same setup as nmkit's: {checks}")
    if c_row is not None and c_row["picto_rounds"]:
        _print_rounds(c_row)
    if c_row is not None:
        if picto is not None and "error" not in picto:
            target, how = picto["cpu_s"], "measured here, CPU, 1 numba thread"
            mine = c_row["nmkit_cpu_s"]
        else:
            target, how = PICTOLOGICS_WARM_C_S, "quoted, not measured here"
            mine = c_row["nmkit_warm_s"]
        ratio = target / mine if mine > 0 else float("nan")
        print(f"goal (issue 21): warm config C >= 2x faster than pictologics' {target:.3f} s ({how}): nmkit "
              f"{c_row['nmkit_warm_s']:.3f} s wall / {c_row['nmkit_cpu_s']:.3f} s CPU -> {ratio:.2f}x "
              f"({'met' if ratio >= 2 else 'not met'}); cold config C (fresh process: imports, reading, one "
              f"extraction; best of {COLD_RUNS}, bytecode cached) <= 1 s: nmkit {c_row['nmkit_cold_s']:.2f} s -> {'met' if c_row['nmkit_cold_s'] <= 1 else 'not met'}")
    print(f"machine load at the end: {_load_text()}")
    return 0


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _load_text() -> str:
    try:
        return "load average %.2f %.2f %.2f (1, 5, 15 min) on %d CPUs" % (*os.getloadavg(), os.cpu_count() or 0)
    except OSError:
        return "load average n/a"


def _print_rounds(row: dict) -> None:
    """Config C round by round (nmkit and pictologics alternated): best wall and CPU time of each library in each
    round, the ratio pictologics / nmkit per round (CPU time, robust on a shared machine) and its spread."""
    print("\nconfig C, warm, one thread each, alternated rounds (best of the round's runs, seconds):")
    print(f"{'round':>5}{'nmkit wall':>12}{'nmkit CPU':>11}{'picto wall':>12}{'picto CPU':>11}{'ratio CPU':>11}"
          f"{'ratio wall':>12}{'load 1 min':>12}")
    ratios_cpu, ratios_wall = [], []
    for k, ((nw, nc), p) in enumerate(zip(row["nmkit_rounds"], row["picto_rounds"]), 1):
        load = row["round_load"][k - 1] if k - 1 < len(row["round_load"]) else float("nan")
        if "error" in p:
            print(f"{k:>5}{nw:>12.4f}{nc:>11.4f}   pictologics failed: {p['error']}")
            continue
        rc, rw = p["cpu_s"] / nc, p["warm_s"] / nw
        ratios_cpu.append(rc)
        ratios_wall.append(rw)
        print(f"{k:>5}{nw:>12.4f}{nc:>11.4f}{p['warm_s']:>12.4f}{p['cpu_s']:>11.4f}{rc:>10.2f}x{rw:>11.2f}x{load:>12.2f}")
    if ratios_cpu:
        best_n = min(c for _, c in row["nmkit_rounds"])
        best_p = min(p["cpu_s"] for p in row["picto_rounds"] if "error" not in p)
        print(f"best of rounds: nmkit {best_n:.4f} s CPU, pictologics {best_p:.4f} s CPU -> ratio {best_p / best_n:.2f}x; "
              f"per-round ratio CPU min {min(ratios_cpu):.2f}x / median {sorted(ratios_cpu)[len(ratios_cpu) // 2]:.2f}x / "
              f"max {max(ratios_cpu):.2f}x, wall min {min(ratios_wall):.2f}x / max {max(ratios_wall):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
