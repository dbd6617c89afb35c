"""The DICOM listener under hostile or careless peers: half-open associations, idle TLS sockets, per-IP limits,
the IP allow-list, objects no instance takes (wrong AE, our own SEG sent back), disk-full guard, UID validation,
object size limit and re-sent images. Everything on 127.0.0.1."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from nmkit.serve.demo import thyroid_study
from nmkit.serve.logs import JsonFormatter, log
from test_serve_node import _self_signed, echo, make_node, scu_send


@pytest.fixture
def events():
    """The server's log events (name -> list of field dicts) while the test runs."""
    import json

    records: list[dict] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(json.loads(JsonFormatter().format(record)))

    h = Keep(level=logging.DEBUG)
    old = log.level
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    yield records
    log.removeHandler(h)
    log.setLevel(old)


def named(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r["event"] == name]


def associate_rq_prefix() -> bytes:
    """The first 20 bytes of a real A-ASSOCIATE-RQ (type 0x01, a length promising much more)."""
    body = struct.pack(">HH", 1, 0) + b"NMKIT".ljust(16) + b"ATTACKER".ljust(16) + b"\x00" * 32
    return struct.pack(">BBL", 0x01, 0, len(body) + 200) + body[:14]


def half_open(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(associate_rq_prefix())
        socks.append(s)
    return socks


def is_closed(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(100) == b""
    except (TimeoutError, socket.timeout):
        return False
    except OSError:
        return True


def test_half_open_associations_do_not_lock_out_a_sender(tmp_path, events):
    node, store, cfg = make_node(tmp_path, association_timeout_seconds=1.5, max_associations=32, max_associations_per_ip=8)
    try:
        attackers = half_open(node.port, 33)
        st = thyroid_study(tmp_path / "in", 1)
        t0 = time.time()
        if shutil.which("storescu"):
            r = subprocess.run(["storescu", "-to", "10", "-aet", "SCU", "-aec", "NMKIT_THYR", "127.0.0.1", str(node.port), str(st["path"])],
                               capture_output=True, text=True, timeout=15)
            assert r.returncode == 0, r.stderr
        else:
            assert scu_send(node.port, [st["path"]], called="NMKIT_THYR") == [0]
        assert time.time() - t0 < 10
        assert len(store.series_files("thyroid", st["series_uid"])) == 1
        # a second sender (pynetdicom) while the attacker keeps its connections
        assert echo(node.port)[1] == 0x0000
        # the limits held: the half-open connections beyond the per-IP limit were dropped at once, the rest at the deadline
        assert sum(is_closed(s) for s in attackers[:20]) == 20
        time.sleep(2.0)
        assert all(is_closed(s) for s in attackers)
        assert node.guard.active()["pending"] == 0
        assert named(events, "connection_dropped") and named(events, "association_timeout")
        assert all(e["peer"] == "127.0.0.1" for e in named(events, "association_timeout"))
        for s in attackers:
            s.close()
    finally:
        node.stop()


def test_idle_tls_socket_does_not_block_tls_clients(tmp_path, events):
    cert, key = _self_signed(tmp_path)
    node, store, cfg = make_node(tmp_path, tls={"cert": str(cert), "key": str(key)}, tls_handshake_timeout_seconds=2.0)
    try:
        idle = socket.create_connection(("127.0.0.1", node.port), timeout=5)  # connects, never says hello
        garbage = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ctx.check_hostname = False
        t0 = time.time()
        assert echo(node.port, tls=(ctx, None))[1] == 0x0000
        assert time.time() - t0 < 2.0  # not delayed by the idle socket at all (limit: the handshake timeout)
        time.sleep(2.5)
        assert is_closed(idle)
        failed = named(events, "tls_handshake_failed")
        assert len(failed) == 2 and all(e["peer"] == "127.0.0.1" for e in failed)
        idle.close()
        garbage.close()
    finally:
        node.stop()


def test_ip_allow_list_refuses_and_logs(tmp_path, events):
    node, store, cfg = make_node(tmp_path, allowed_ips=["10.20.0.0/16"])
    try:
        assoc, status = echo(node.port)
        assert status is None and not assoc.is_established
        (e,) = named(events, "connection_refused")
        assert e["peer"] == "127.0.0.1" and "allowed_ips" in e["reason"]
    finally:
        node.stop()
    node, store, cfg = make_node(tmp_path / "b", allowed_ips=["127.0.0.0/8"])
    try:
        assert echo(node.port)[1] == 0x0000
    finally:
        node.stop()


def _nmkit_seg_like(src: Path, out: Path) -> Path:
    """An object as nmkit sends it back (SEG SOP class, ContentCreatorName nmkit^...)."""
    ds = pydicom.dcmread(str(src))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.Modality = "SEG"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.ContentCreatorName = "nmkit^thyroid^1.0.0"
    ds.save_as(str(out))
    return out


def test_wrong_ae_and_seg_sent_back_are_tracked_not_forgotten(tmp_path, events):
    node, store, cfg = make_node(tmp_path, unrouted_retention_days=1.0)
    try:
        st = thyroid_study(tmp_path / "in", 2)
        seg = _nmkit_seg_like(st["path"], tmp_path / "seg.dcm")
        assert scu_send(node.port, [st["path"]], called="NOBODY_HERE") == [0]  # NM to an AE no instance has
        assert scu_send(node.port, [seg], called="NMKIT_THYR") == [0]  # our own result comes back
        rows = store.query("SELECT * FROM unrouted ORDER BY received_at")
        assert len(rows) == 2 and all(Path(r["path"]).is_file() for r in rows)
        assert "NOBODY_HERE" in rows[0]["reason"] and "nmkit result" in rows[1]["reason"]
        assert all(r["expires_at"] - r["received_at"] == pytest.approx(86400) for r in rows)
        assert pydicom.dcmread(rows[0]["path"]).SOPInstanceUID == st["sop_uid"]
        assert store.query("SELECT COUNT(*) AS n FROM received")[0]["n"] == 0  # nothing interpreted, nothing loops
        assert len(named(events, "unrouted")) == 2
        # retention: purged after its period (row kept, file gone)
        assert store.purge_unrouted(now=time.time() + 2 * 86400) == 2
        assert not any(Path(r["path"]).exists() for r in rows)
        assert store.counts()["unrouted"] == {"total": 2, "kept": 0}
    finally:
        node.stop()
    node, store, cfg = make_node(tmp_path / "refuse", unrouted_policy="refuse")
    try:
        assert scu_send(node.port, [st["path"], seg], called="NOBODY_HERE") == [0x0124, 0x0124]
        assert store.query("SELECT COUNT(*) AS n FROM unrouted")[0]["n"] == 0
    finally:
        node.stop()


def test_disk_guard_uid_validation_size_limit_and_resent_images(tmp_path, events, monkeypatch):
    node, store, cfg = make_node(tmp_path, min_free_disk_mb=100.0, max_object_mb=0.05)
    try:
        st = thyroid_study(tmp_path / "in", 3)  # 64x64 16-bit: ~8 kB
        monkeypatch.setattr(node, "free_bytes", lambda: 50 * 1024 * 1024)  # simulated: 50 MB left
        assert scu_send(node.port, [st["path"]], called="NMKIT_THYR") == [0xA700]
        assert "min_free_disk_mb" in named(events, "store_refused")[-1]["reason"]
        assert not list((cfg.storage / "incoming").rglob("*.dcm")) if (cfg.storage / "incoming").exists() else True
        monkeypatch.undo()  # space again: full recovery
        assert scu_send(node.port, [st["path"]], called="NMKIT_THYR") == [0]
        # invalid UIDs are refused
        ds = pydicom.dcmread(str(st["path"]))
        ds.SeriesInstanceUID = "1.2.03.x/../etc"
        ds.save_as(str(tmp_path / "baduid.dcm"))
        assert scu_send(node.port, [tmp_path / "baduid.dcm"], called="NMKIT_THYR") == [0xC000]
        # an object above max_object_mb
        big = thyroid_study(tmp_path / "big", 4, matrix=256)  # 128 kB
        assert scu_send(node.port, [big["path"]], called="NMKIT_THYR") == [0xA700]
        assert "max_object_mb" in named(events, "store_refused")[-1]["reason"]
        # a corrected image re-sent with the same SOP Instance UID: a new revision of the series (a new job)
        assert store.enqueue_quiet_series(0.0)
        ds = pydicom.dcmread(str(st["path"]))
        ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(str(tmp_path / "fixed.dcm"))
        assert scu_send(node.port, [tmp_path / "fixed.dcm"], called="NMKIT_THYR") == [0]
        (new_job,) = store.enqueue_quiet_series(0.0)
        assert new_job.endswith("-r1")
        (path,) = store.series_files("thyroid", st["series_uid"])
        assert (pydicom.dcmread(path).pixel_array == ds.pixel_array).all()
        assert named(events, "resent_image")
        # the identical file again: nothing new
        assert scu_send(node.port, [tmp_path / "fixed.dcm"], called="NMKIT_THYR") == [0]
        assert store.enqueue_quiet_series(0.0) == []
    finally:
        node.stop()


def test_idle_association_is_closed(tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node, store, cfg = make_node(tmp_path, idle_timeout_seconds=0.5)
    try:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="NMKIT")
        assert assoc.is_established
        time.sleep(1.5)  # says nothing after associating
        assert not assoc.is_established and (assoc.is_aborted or assoc.is_released)
        assert node.guard.active()["connections"] == 0
    finally:
        node.stop()
