"""Cohort radiomics throughput and memory: a synthetic PET cohort of ``--rois`` ROIs on disk, extracted serially
(``--workers 1``: in the parent process), by a pool of 2 local worker processes and on a Dask LocalCluster of 1 and
2 single-threaded worker processes.

    .venv/bin/python bench/bench_radiomics_cohort.py [--rois 1000] [--per-case 4] [--workers 1 2] [--folder /tmp/x]

The cohort (made once, reused from ``--folder``): PET-like NIfTI images in SUV (background ~1 g/ml with noise,
4 mm voxels, 40 x 40 x 32) with ``--per-case`` spherical lesions each (radius 2-5 voxels, uptake 3-12 g/ml) and one
label map per case; a case table (nmkit-dataset/1) lists one mask reference per lesion. Config: IBSI-C chain
resampled to 4 mm isotropic, FBN 16 bins, every IBSI-1 family (morphology, local intensity, statistics,
histograms, IVH, 3D texture). Every run writes its resumable log (``radiomics.resume``), as the CLI does.

For each mode it prints wall time, ROIs per second (and per worker), and the resident memory of the whole process
tree (parent + workers, sampled every 0.25 s with psutil): the median over the second and over the last quarter of
the run (the first holds the workers' start and imports) and the peak. Flat memory = the last quarter's median is
not above the second quarter's (no growth with the number of cases done). The local pool's wall time includes
starting its worker processes; the Dask cluster is started before the clock starts. The machine's load average before and after each run is printed too (a shared machine's
timings move with it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPE = (32, 40, 40)  # z, y, x
SPACING_MM = 4.0


def make_cohort(folder: Path, n_rois: int, per_case: int) -> Path:
    """Write the synthetic cohort (images, label maps, case table) unless it is there; returns the case table."""
    import nibabel as nib

    from nmkit.dataset import MaskRef, new_table, write_dataset

    table = folder / f"cases_{n_rois}x{per_case}.csv"
    if table.is_file():
        return table
    folder.mkdir(parents=True, exist_ok=True)
    n_cases = -(-n_rois // per_case)
    rows = []
    z, y, x = np.indices(SHAPE)
    for k in range(n_cases):
        rng = np.random.default_rng(k)
        img = rng.normal(1.0, 0.2, SHAPE).clip(0)
        lab = np.zeros(SHAPE, np.int16)
        count = min(per_case, n_rois - k * per_case)
        for label in range(1, count + 1):
            r = rng.uniform(2, 5)
            c = [rng.uniform(r + 1, s - r - 1) for s in SHAPE]
            inside = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r) & (lab == 0)
            suv = rng.uniform(3, 12)
            img[inside] = rng.normal(suv, 0.15 * suv, int(inside.sum())).clip(0)
            lab[inside] = label
        affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
        image, mask = folder / f"c{k:04d}_pet.nii.gz", folder / f"c{k:04d}_lesions.nii.gz"
        nib.save(nib.Nifti1Image(img.transpose(2, 1, 0).astype(np.float32), affine), image)
        nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0), affine), mask)
        labels = [v for v in range(1, count + 1) if (lab == v).any()]
        rows.append({"case_id": f"C{k:04d}", "patient_id": f"P{k:04d}", "image": str(image), "units": "g/ml",
                     "masks": [MaskRef(file=str(mask), kind="labelmap", label=v, structure=f"lesion{v}") for v in labels]})
    write_dataset(new_table(rows), table, {"made_by": "bench/bench_radiomics_cohort.py"})
    return table


def config():
    from nmkit.radiomics.presets import load_config

    cfg = load_config("ibsi-c")
    cfg.name = "bench-cohort"
    cfg.new_spacing = (SPACING_MM, SPACING_MM, SPACING_MM)
    cfg.reseg_range = None
    cfg.discretisation.method, cfg.discretisation.n_bins, cfg.discretisation.bin_width = "FBN", 16, None
    return cfg


class RSSSampler(threading.Thread):
    """Samples the resident memory (MiB) of this process and all its descendants every ``period`` seconds."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.samples, self._halt = period, [], threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._halt.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append(total / 2**20)
            time.sleep(self.period)

    def stop(self) -> list[float]:
        self._halt.set()
        self.join()
        return self.samples


def run_mode(table: Path, mode: str, workers: int, out_dir: Path) -> dict:
    """One cohort extraction; returns wall time, ROI count and memory figures."""
    from nmkit.radiomics.cohort import extract_cohort

    cluster = client_kw = None
    if mode == "dask":
        from dask.distributed import LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client_kw = {"scheduler": cluster.scheduler_address}
    else:
        client_kw = {"n_workers": workers}
    load_before = os.getloadavg()[0]
    sampler = RSSSampler()
    sampler.start()
    t0 = time.perf_counter()
    result = extract_cohort(table, config(), progress=False, partial=out_dir / f"{mode}{workers}.partial.jsonl",
                            restart=True, **client_kw)
    wall = time.perf_counter() - t0
    rss = sampler.stop()
    if cluster is not None:
        cluster.close()
    q = max(1, len(rss) // 4)
    label = "dask LocalCluster" if mode == "dask" else ("serial, in the parent" if workers == 1 else "local process pool")
    return {"mode": label, "workers": workers,
            "rois": len(result.table), "failures": len(result.failures), "wall_s": wall, "rois_per_s": len(result.table) / wall,
            "rss_first_q_mib": statistics.median(rss[q:2 * q] or rss), "rss_last_q_mib": statistics.median(rss[-q:]),
            "rss_peak_mib": max(rss), "load": (load_before, os.getloadavg()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rois", type=int, default=1000)
    ap.add_argument("--per-case", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["local", "dask"], choices=["local", "dask"])
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "nmkit_bench_cohort"))
    args = ap.parse_args()
    folder = Path(args.folder)
    t0 = time.perf_counter()
    table = make_cohort(folder, args.rois, args.per_case)
    print(f"cohort: {table} ({args.rois} ROIs, {args.per_case} per case; made/read in {time.perf_counter() - t0:.1f} s); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    results = [run_mode(table, mode, w, folder) for mode in args.modes for w in args.workers]
    print("\n| mode | workers | ROIs | failed cases | wall s | ROIs/s | ROIs/s per worker | RSS 2nd quarter MiB | "
          "RSS 4th quarter MiB | RSS peak MiB | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['workers']} | {r['rois']} | {r['failures']} | {r['wall_s']:.1f} | {r['rois_per_s']:.1f} | "
              f"{r['rois_per_s'] / r['workers']:.1f} | {r['rss_first_q_mib']:.0f} | {r['rss_last_q_mib']:.0f} | "
              f"{r['rss_peak_mib']:.0f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |")


if __name__ == "__main__":
    main()
