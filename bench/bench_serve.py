"""Benchmark of the nmkit DICOM AI server next to Orthanc on the same files (127.0.0.1).

1. Reception: images/s stored by C-STORE with 1 and 4 parallel associations (pynetdicom SCU as the sender
   for both receivers, each receiver in its own process), nmkit's node (durable write + SQLite record before
   success) vs Orthanc.
2. End to end: latency from the C-STORE response of the last image of a thyroid study to its SEG being
   stored in Orthanc (quiet period included; reported with and without it).
3. Memory: peak resident memory of a node process (``VmHWM``) while it receives one large object (200 MB by
   default), as a multiple of the object size (``--rss-mb 0`` skips it).

Usage: .venv/bin/python bench/bench_serve.py [--images 200] [--matrix 256] [--studies 3] [--quiet 1.0] [--rss-mb 200]
Needs the Debian package orthanc (skips the Orthanc columns without it).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pydicom

logging.disable(logging.WARNING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(port: int, called: str, datasets: list, n_assoc: int) -> float:
    """Send ``datasets`` over ``n_assoc`` parallel associations; returns images/s (all must succeed)."""
    from pynetdicom import AE

    chunks = [datasets[i::n_assoc] for i in range(n_assoc)]
    failures: list[str] = []

    def worker(chunk):
        ae = AE(ae_title="BENCH")
        for cx in {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in chunk}:
            ae.add_requested_context(*cx)
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            failures.append("association")
            return
        for d in chunk:
            st = assoc.send_c_store(d)
            if not st or int(st.Status) != 0:
                failures.append(str(st))
        assoc.release()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} failures: {failures[:3]}")
    return len(datasets) / dt


def make_files(folder: Path, n: int, matrix: int) -> list:
    """``n`` distinct planar thyroid images (one SOP instance each, 10 per series)."""
    import numpy as np

    from nmkit.phantoms.nm_dicom import deterministic_uid, write_nm_planar
    from nmkit.phantoms.thyroid import simulate_thyroid
    import datetime as dt

    case = simulate_thyroid(1, "normal", matrix=matrix)
    out = []
    for i in range(n):
        info = dict(patient_name="Bench^Phantom", patient_id="BENCH", study_uid=deterministic_uid("bench", "study"),
                    series_uid=deterministic_uid("bench", i // 10, "series"), sop_uid=deterministic_uid("bench", i, "sop"),
                    acquisition_datetime=dt.datetime(2024, 1, 1, 9, 0))
        p = write_nm_planar(np.roll(case.counts, i, axis=1), folder / f"b{i:05d}.dcm", case.params, info)
        out.append(pydicom.dcmread(str(p)))
    return out


class OrthancProc:
    def __init__(self, folder: Path, modalities: dict):
        self.dicom_port, self.http_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        conf = {"Name": "bench", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"), "DicomAet": "ORTHANC",
                "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                "DicomModalities": modalities, "DicomCheckCalledAet": False, "Plugins": []}
        (folder / "orthanc.json").write_text(json.dumps(conf))
        self.proc = subprocess.Popen([shutil.which("Orthanc"), str(folder / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 60
        while time.time() < end:
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def get(self, path: str):
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10).read())

    def post(self, path: str, body: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body.encode(), method="POST")
        return json.loads(urllib.request.urlopen(req, timeout=60).read())

    def delete_all(self) -> None:
        for s in self.get("/studies"):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.http_port}/studies/{s}", method="DELETE"), timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


_NODE = """
import sys, time, logging
logging.disable(logging.WARNING)
from pathlib import Path
from nmkit.serve.config import parse_config
from nmkit.serve.db import Store
from nmkit.serve.node import DicomNode
raw = {"ae_title": "NMKIT", "port": 0, "storage": sys.argv[1], "quiet_seconds": 1e9, "max_object_mb": 4096, "min_free_disk_mb": 100,
       "destinations": {"none": {"ae_title": "NONE", "port": 1}},
       "instances": [{"name": "big", "match": {"modality": "NM"}, "destinations": ["none"]}]}
cfg = parse_config(raw, None, Path(sys.argv[1]))
cfg.storage.mkdir(parents=True, exist_ok=True)
node = DicomNode(cfg, Store(cfg.storage / "server.sqlite"))
print(node.start(), flush=True)
sys.stdin.readline()
node.stop()
"""


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_rows(tmp: Path, size_mb: float) -> list[tuple[str, str, str]]:
    """Peak RSS of a node process receiving one object of ``size_mb`` MB (NM, one frame, 16-bit)."""
    import numpy as np

    from nmkit.serve.demo import thyroid_study

    side = int((size_mb * 1e6 / 2) ** 0.5)
    ds = pydicom.dcmread(str(thyroid_study(tmp / "big_src", 1)["path"]))
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = 1
    ds.PixelData = (np.arange(side * side, dtype=np.uint16) % 997).tobytes()
    size = len(ds.PixelData)
    proc = subprocess.Popen([sys.executable, "-c", _NODE, str(tmp / "big_node")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        time.sleep(1.0)
        base = _rss_kb(proc.pid)
        send(port, "NMKIT", [ds], 1)
        peak = _hwm_kb(proc.pid)
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    extra = (peak - base) * 1024
    return [(f"node peak RSS receiving one {size / 1e6:.0f} MB object", f"+{extra / 1e6:.0f} MB", ""),
            ("  as a multiple of the object size", f"{extra / size:.2f}x", "")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--quiet", type=float, default=1.0, help="quiet period (s) of the end-to-end server")
    ap.add_argument("--rss-mb", type=float, default=200.0, help="size (MB) of the object for the memory measurement (0: skip)")
    ap.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end latency (trains a small model)")
    args = ap.parse_args()

    from nmkit.serve import demo
    from nmkit.serve.config import parse_config
    from nmkit.serve.db import Store
    from nmkit.serve.node import DicomNode
    from nmkit.serve.registry import Registry
    from nmkit.serve.server import Server

    tmp = Path(tempfile.mkdtemp(prefix="nmkit-bench-serve-"))
    have_orthanc = shutil.which("Orthanc") is not None
    rows = []
    try:
        datasets = make_files(tmp / "files", args.images, args.matrix)
        # ---- reception ------------------------------------------------------------------------------
        orthanc = OrthancProc(tmp / "orthanc", {}) if have_orthanc else None
        for n_assoc in (1, 4):
            # the node runs in its own process, as Orthanc does (a sender in the same process would share its GIL)
            proc = subprocess.Popen([sys.executable, "-c", _NODE, str(tmp / f"node{n_assoc}")], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            try:
                ours = send(int(proc.stdout.readline()), "NMKIT", datasets, n_assoc)
            finally:
                proc.stdin.write("\n")
                proc.stdin.flush()
                proc.wait(timeout=60)
            theirs = None
            if orthanc:
                orthanc.delete_all()
                theirs = send(orthanc.dicom_port, "ORTHANC", datasets, n_assoc)
            rows.append((f"C-STORE {args.images} x {args.matrix}^2 NM, {n_assoc} assoc", f"{ours:.0f} img/s", f"{theirs:.0f} img/s" if theirs else "n/a"))
        if orthanc:
            orthanc.stop()
        # ---- end to end -------------------------------------------------------------------------------
        if args.rss_mb > 0:
            rows += rss_rows(tmp, args.rss_mb)
        if have_orthanc and not args.skip_e2e:
            t0 = time.perf_counter()
            bundle = demo.train_thyroid_bundle(tmp / "bundle", epochs=12)
            train_s = time.perf_counter() - t0
            reg = Registry(tmp / "reg")
            reg.register("thyroid", bundle)
            reg.promote("thyroid", "1.0.0")
            port = free_port()
            orthanc = OrthancProc(tmp / "orthanc_e2e", {"nmkit": ["NMKIT_THYR", "127.0.0.1", port]})
            raw = {"ae_title": "NMKIT", "port": port, "storage": str(tmp / "e2e"), "registry": str(tmp / "reg"), "quiet_seconds": args.quiet,
                   "poll_seconds": 0.05, "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}},
                   "instances": [{"name": "thyroid", "ae_title": "NMKIT_THYR", "match": {"modality": "NM"}, "outputs": ["seg", "sr", "overlay"],
                                  "destinations": ["pacs"]}]}
            lat = []
            with Server(parse_config(raw, None, tmp)):
                for s in range(args.studies):
                    st = demo.thyroid_study(tmp / "e2e_in", 900 + s, matrix=args.matrix)
                    ds = pydicom.dcmread(str(st["path"]))
                    send(port, "NMKIT_THYR", [ds], 1)
                    t_last = time.perf_counter()
                    end = time.time() + 120
                    while time.time() < end:
                        mods = [orthanc.get(f"/series/{x}")["MainDicomTags"].get("Modality") for x in orthanc.get("/series")]
                        if "SEG" in mods:
                            break
                        time.sleep(0.02)
                    seg_at = time.perf_counter()
                    lat.append(seg_at - t_last)
                    orthanc.delete_all()
            orthanc.stop()
            rows.append((f"last image -> SEG in Orthanc (quiet {args.quiet:g} s), median of {args.studies}", f"{statistics.median(lat):.2f} s", ""))
            rows.append(("  same, minus the quiet period", f"{statistics.median(lat) - args.quiet:.2f} s", ""))
            rows.append(("  (tiny thyroid model trained for the bench)", f"{train_s:.0f} s training", ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    w = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{w}}  {'nmkit serve':>14}  {'Orthanc':>10}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>14}  {r[2]:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
