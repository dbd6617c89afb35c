"""The DICOM node: C-ECHO and C-STORE SCP on pynetdicom, calling-AE whitelist, optional TLS.

A received object is written durably (temporary file, fsync, rename, fsync of the folder) and recorded in
the database *before* success (0x0000) is answered, so an acknowledged image is never lost. Objects that
cannot be decoded are refused with 0xC000 (cannot understand); storage failures with 0xA700 (out of
resources). A failing object never stops the node.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .config import ServerConfig
from .db import Store, write_durably
from .feedback import Scorer, accept, correction_kind
from .logs import event, uid_hash
from .routing import route, routing_attributes

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def ssl_server_context(tls: dict[str, Any]) -> ssl.SSLContext:
    """TLS context for the SCP from PEM ``cert``/``key`` (and ``ca`` to verify clients when ``require_client_cert``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert"], tls["key"])
    if tls.get("ca"):
        ctx.load_verify_locations(cafile=tls["ca"])
    if tls.get("require_client_cert"):
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def storage_contexts() -> list:
    """Every storage SOP class pynetdicom knows (NM, PT, CT, MR, SEG, SR, SC, RTSTRUCT, enhanced...) plus
    Verification, each with every transfer syntax (compressed ones included)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context
    from pynetdicom.sop_class import Verification

    contexts = [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    contexts.append(build_context(Verification))
    return contexts


STATUS_NOT_AUTHORIZED = 0x0124  # refused: no interpretation instance takes the object (unrouted_policy: refuse)
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(uid: str) -> bool:
    """A DICOM UID: digits and dots, components without leading zeros, at most 64 characters."""
    return 0 < len(uid) <= 64 and bool(_UID.match(uid))


def is_nmkit_result(ds: Any) -> bool:
    """A SEG/SR/overlay this server (or another nmkit server) produced: never interpreted again."""
    creator = str(getattr(ds, "ContentCreatorName", "") or "")
    return creator.startswith("nmkit^") or str(getattr(ds, "Manufacturer", "") or "") == "nmkit"


class DicomNode:
    """Receives objects, stores them durably, routes them to interpretation instances (or tracks them as unrouted)."""

    def __init__(self, config: ServerConfig, store: Store, on_received: Callable[[str, list[str]], None] | None = None):
        self.config = config
        self.store = store
        self.incoming = config.storage / "incoming"
        self.unrouted = config.storage / "unrouted"
        self.on_received = on_received
        self._server = None
        self._thread: threading.Thread | None = None
        self.guard: ConnectionGuard | None = None
        self.lock = threading.Lock()
        self.counts = {"received": 0, "refused": 0, "failed": 0, "unrouted": 0, "duplicates": 0, "resent": 0, "feedback": 0,
                       "feedback_unlinked": 0}
        self.scorer: Scorer | None = None  # scores expert corrections outside the C-STORE handler (serve.feedback)

    # ----- handlers -------------------------------------------------------------------------------
    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def handle_echo(self, event_: Any) -> int:
        return STATUS_SUCCESS

    def free_bytes(self) -> int:
        """Free space on the storage file system (a method so tests can simulate a full disk)."""
        return shutil.disk_usage(self.config.storage).free

    def _refuse(self, status: int, key: str, reason: str, **fields: Any) -> int:
        self._count(key)
        event("store_refused", logging.WARNING, status=f"0x{status:04X}", reason=reason[:200], **fields)
        return status

    def handle_store(self, ev: Any) -> int:
        t0 = time.perf_counter()
        calling = str(ev.assoc.requestor.ae_title).strip()
        called = str(ev.assoc.requestor.primitive.called_ae_title).strip() if ev.assoc.requestor.primitive else self.config.ae_title
        peer = str(ev.assoc.requestor.address)
        who = {"calling_ae": calling, "called_ae": called, "peer": peer}
        raw = ev.request.DataSet  # BytesIO of the received data set: parsed without its pixel data, written as it is
        size = raw.getbuffer().nbytes if raw is not None else 0
        if size > self.config.max_object_mb * 1024 * 1024:
            return self._refuse(STATUS_OUT_OF_RESOURCES, "refused", f"object of {size / 1e6:.1f} MB exceeds max_object_mb", **who)
        try:
            if self.free_bytes() - size < self.config.min_free_disk_mb * 1024 * 1024:
                return self._refuse(STATUS_OUT_OF_RESOURCES, "failed", f"free disk below min_free_disk_mb ({self.config.min_free_disk_mb:g} MB)", **who)
        except OSError as exc:
            return self._refuse(STATUS_OUT_OF_RESOURCES, "failed", f"storage not available: {exc}", **who)
        try:
            ds = _header(ev)
            sop_uid = str(ds.SOPInstanceUID)
            series_uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
            study_uid = str(getattr(ds, "StudyInstanceUID", "") or "")
            sop_class = str(getattr(ds, "SOPClassUID", "") or ev.request.AffectedSOPClassUID)
            if not series_uid:
                raise ValueError("no SeriesInstanceUID")
            for name, uid in (("SOPInstanceUID", sop_uid), ("SeriesInstanceUID", series_uid), ("StudyInstanceUID", study_uid)):
                if name != "StudyInstanceUID" or uid:
                    if not valid_uid(uid):
                        raise ValueError(f"invalid {name} (digits and dots, at most 64 characters)")
            attrs = routing_attributes(ds)
        except Exception as exc:  # malformed object: refuse it, keep serving
            return self._refuse(STATUS_CANNOT_UNDERSTAND, "refused", f"{type(exc).__name__}: {exc}", **who)
        if correction_kind(ds) is not None:  # a SEG/RTSTRUCT nmkit did not make: an expert correction of an AI result?
            return self._feedback(ev, ds, raw, who, sop_uid)
        instances = [] if is_nmkit_result(ds) else route(self.config.instances, called, attrs, self.config.ae_title)
        if not instances:
            return self._unrouted(ev, ds, raw, who, sop_uid, sop_class, attrs)
        try:
            digest = _digest(raw)
            folder = self.incoming / _h(study_uid) / _h(series_uid)
            path = folder / f"{_h(sop_uid, 24)}-{digest[:12]}.dcm"
            if not path.exists():
                write_dataset_durably(ev, raw, path)
            outcome = self.store.record_received(sop_uid=sop_uid, instances=instances, series_uid=series_uid, study_uid=study_uid,
                                                 path=str(path), sop_class_uid=sop_class, calling_ae=calling, called_ae=called,
                                                 resend_policy=self.config.resend_policy)
        except (OSError, sqlite3.Error) as exc:
            self._count("failed")
            event("store_failed", logging.ERROR, series=uid_hash(series_uid), reason=f"{type(exc).__name__}: {exc}"[:200], **who)
            return STATUS_OUT_OF_RESOURCES
        self._count("received")
        if "resent" in outcome:
            self._count("resent")
            event("resent_image", logging.WARNING, series=uid_hash(series_uid), sop=uid_hash(sop_uid), policy=self.config.resend_policy, **who)
        elif outcome and all(o in ("duplicate", "ignored") for o in outcome):
            self._count("duplicates")
        event("stored", logging.DEBUG, series=uid_hash(series_uid), instances=instances, outcome=outcome,
              ms=round(1000 * (time.perf_counter() - t0), 2), **who)
        if self.on_received:
            self.on_received(series_uid, instances)
        return STATUS_SUCCESS

    def _feedback(self, ev: Any, ds: Any, raw: Any, who: dict[str, str], sop_uid: str) -> int:
        """An expert correction: linked to the AI result it corrects and queued for scoring, or quarantined as unlinked
        (counted as unrouted too; refused with 0x0124 under ``unrouted_policy: refuse``). Durable before success."""
        from io import BytesIO

        from pydicom.filewriter import write_file_meta_info

        meta = BytesIO()
        meta.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(meta, ev.file_meta, enforce_standard=True)
        keep = self.config.unrouted_policy != "refuse"
        try:
            res = accept(self.store, self.config.storage, ds, [meta.getvalue(), raw.getbuffer()], digest=_digest(raw), via="c-store",
                         calling_ae=who["calling_ae"], default_reader=getattr(self.config, "feedback_reader", None), keep_unlinked=keep)
        except Exception as exc:  # noqa: BLE001 - storage or database failure: the sender may retry; the node keeps serving
            self._count("failed")
            event("store_failed", logging.ERROR, reason=f"feedback: {type(exc).__name__}: {exc}"[:200], **who)
            return STATUS_OUT_OF_RESOURCES
        if res["outcome"] == "refused":
            return self._refuse(STATUS_NOT_AUTHORIZED, "unrouted", f"correction not linked: {res['reason']}", sop=uid_hash(sop_uid), **who)
        if not res["linked"]:
            self._count("unrouted")
            self._count("feedback_unlinked")
            return STATUS_SUCCESS
        self._count("received")
        self._count("feedback")
        if self.scorer is not None:
            self.scorer.wake()
        return STATUS_SUCCESS

    def _unrouted(self, ev: Any, ds: Any, raw: Any, who: dict[str, str], sop_uid: str, sop_class: str, attrs: dict[str, str]) -> int:
        """An object no instance takes: refused (0x0124), or kept in ``unrouted/`` with a row, a log line and a retention."""
        if is_nmkit_result(ds):
            reason = f"nmkit result ({attrs.get('modality')}) sent back: never interpreted again"
        elif attrs.get("modality") in DERIVED_MODALITIES:
            reason = f"derived object ({attrs.get('modality')}): not interpreted"
        else:
            reason = f"no instance takes {attrs.get('modality') or '?'} objects sent to called AE {who['called_ae']!r}"
        if self.config.unrouted_policy == "refuse":
            return self._refuse(STATUS_NOT_AUTHORIZED, "unrouted", reason, sop=uid_hash(sop_uid), **who)
        try:
            path = self.unrouted / time.strftime("%Y%m%d") / f"{_h(sop_uid, 24)}-{_digest(raw)[:12]}.dcm"
            write_dataset_durably(ev, raw, path)
            retention = self.config.unrouted_retention_days * 86400
            self.store.record_unrouted(sop_uid=sop_uid, path=str(path), reason=reason, sop_class_uid=sop_class, calling_ae=who["calling_ae"],
                                       called_ae=who["called_ae"], peer=who["peer"], retention_s=retention)
        except (OSError, sqlite3.Error) as exc:
            self._count("failed")
            event("store_failed", logging.ERROR, reason=f"{type(exc).__name__}: {exc}"[:200], **who)
            return STATUS_OUT_OF_RESOURCES
        self._count("unrouted")
        event("unrouted", logging.WARNING, sop=uid_hash(sop_uid), reason=reason, retention_days=self.config.unrouted_retention_days, **who)
        return STATUS_SUCCESS

    def handle_rejected(self, ev: Any) -> None:
        rq = ev.assoc.requestor
        event("association_rejected", logging.WARNING, calling_ae=str(rq.ae_title).strip(), peer=str(rq.address),
              reason="calling AE title not in allowed_calling_aets" if self.config.allowed_calling_aets else "rejected")

    # ----- server ---------------------------------------------------------------------------------
    def start(self) -> int:
        """Start listening (non-blocking); returns the bound port."""
        from pynetdicom import AE, evt

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.supported_contexts = storage_contexts()
        ae.require_called_aet = False  # instance AE titles are routed, not rejected
        if cfg.allowed_calling_aets:
            ae.require_calling_aet = list(cfg.allowed_calling_aets)
        ae.maximum_pdu_size = cfg.max_pdu
        ae.network_timeout = cfg.idle_timeout_seconds
        ae.acse_timeout = cfg.association_timeout_seconds
        ae.maximum_associations = 2 * cfg.max_associations + 2  # the guard enforces the limits (before the request is read)
        ctx = ssl_server_context(cfg.tls) if cfg.tls else None
        self.guard = ConnectionGuard(cfg)
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store), (evt.EVT_REJECTED, self.handle_rejected)]
        server = ae.make_server((cfg.host, cfg.port), evt_handlers=handlers, server_class=_guarded_server_class())
        server.guard, server.tls_context = self.guard, ctx
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="nmkit-dicom", daemon=True)
        self._thread.start()
        ae._servers.append(server)
        self._server = server
        self.guard.start()
        self.scorer = Scorer(self.store, self.config.storage)
        self.scorer.start()
        self.port = int(server.server_address[1])
        event("dicom_node_started", ae_title=cfg.ae_title, port=self.port, tls=bool(ctx))
        return self.port

    def alive(self) -> bool:
        """The listener thread runs (for /health)."""
        return self._thread is not None and self._thread.is_alive() and self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.guard is not None:
            self.guard.stop()
        if self.scorer is not None:
            self.scorer.stop()
            self.scorer = None


DERIVED_MODALITIES = ("SEG", "SR", "PR", "RTSTRUCT", "KO", "REG")


def _header(ev: Any) -> Any:
    """The received data set without its pixel data (bounded memory; the file is written from the raw bytes)."""
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    ts = UID(str(ev.context.transfer_syntax))
    if ts.is_deflated:
        return ev.dataset
    raw = ev.request.DataSet
    raw.seek(0)
    try:
        ds = read_dataset(raw, is_implicit_VR=ts.is_implicit_VR, is_little_endian=ts.is_little_endian,
                          stop_when=lambda tag, vr, length: tag.group >= 0x7FE0)
    finally:
        raw.seek(0)
    return ds


def _digest(raw: Any) -> str:
    return hashlib.sha256(raw.getbuffer()).hexdigest()


def write_dataset_durably(ev: Any, raw: Any, final: Path) -> None:
    """Preamble + file meta + the received bytes, written without joining them in memory (temp, fsync, rename)."""
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info

    meta = BytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ev.file_meta, enforce_standard=True)
    write_durably([meta.getvalue(), raw.getbuffer()], final)


class ConnectionGuard:
    """Connection limits in front of pynetdicom: allow-list, per-IP and total limits, and deadlines.

    A connection must deliver its whole A-ASSOCIATE-RQ within ``association_timeout_seconds``, else its socket is
    shut (which also frees a thread blocked in a half-read PDU). When a limit is reached, the oldest connection
    that has not yet sent its request is dropped to make room (so half-open connections cannot lock out a real
    sender); if all are established associations, the new connection is refused. Every refusal is logged with
    the peer address and the reason."""

    def __init__(self, config: ServerConfig):
        import ipaddress

        self.config = config
        self.networks = [ipaddress.ip_network(str(n), strict=False) for n in (config.allowed_ips or [])]
        self.conns: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="nmkit-dicom-guard", daemon=True)
        self.counts = {"refused_ip": 0, "refused_limit": 0, "evicted": 0, "timeouts": 0, "tls_failed": 0}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def allowed(self, ip: str) -> bool:
        import ipaddress

        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self.networks)

    @staticmethod
    def _pending(c: dict[str, Any]) -> bool:
        a = c.get("assoc")
        return a is None or not (a.is_established or a.is_rejected or a.is_aborted or a.is_released)

    def admit(self, sock: Any, ip: str) -> bool:
        """Decide on a new connection (accept thread; never blocks on the peer)."""
        if not self.allowed(ip):
            self.counts["refused_ip"] += 1
            event("connection_refused", logging.WARNING, peer=ip, reason="address not in allowed_ips")
            return False
        with self.lock:
            mine = [c for c in self.conns.values() if c["ip"] == ip]
            full_ip = len(mine) >= self.config.max_associations_per_ip
            full_all = len(self.conns) >= self.config.max_associations
            if full_ip or full_all:
                pool = mine if full_ip else list(self.conns.values())
                pending = sorted((c for c in pool if self._pending(c)), key=lambda c: c["t0"])
                if not pending:
                    self.counts["refused_limit"] += 1
                    event("connection_refused", logging.WARNING, peer=ip,
                          reason=f"{'max_associations_per_ip' if full_ip else 'max_associations'} reached")
                    return False
                victim = pending[0]
                self.conns.pop(id(victim["sock"]), None)
                self.counts["evicted"] += 1
                event("connection_dropped", logging.WARNING, peer=victim["ip"], reason="limit reached; oldest connection without a request dropped")
                _shut(victim["sock"])
            self.conns[id(sock)] = {"sock": sock, "ip": ip, "t0": time.monotonic(), "assoc": None}
        return True

    def attach(self, sock: Any, new_sock: Any, assoc: Any = None) -> None:
        with self.lock:
            c = self.conns.pop(id(sock), None)
            if c is not None:
                c["sock"], c["assoc"] = new_sock, assoc
                self.conns[id(new_sock)] = c

    def release(self, sock: Any) -> None:
        with self.lock:
            self.conns.pop(id(sock), None)

    def active(self) -> dict[str, int]:
        with self.lock:
            pending = sum(1 for c in self.conns.values() if self._pending(c))
            return {"connections": len(self.conns), "pending": pending}

    def _watch(self) -> None:
        deadline = self.config.association_timeout_seconds
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self.lock:
                items = list(self.conns.items())
            for key, c in items:
                a = c.get("assoc")
                if a is not None and not a.is_alive() and not self._pending(c):
                    self.release(c["sock"])
                elif a is not None and not a.is_alive() and now - c["t0"] > deadline + 1:
                    self.release(c["sock"])
                elif self._pending(c) and now - c["t0"] > deadline:
                    self.counts["timeouts"] += 1
                    event("association_timeout", logging.WARNING, peer=c["ip"], reason=f"no complete A-ASSOCIATE-RQ within {deadline:g} s")
                    self.release(c["sock"])
                    _shut(c["sock"])


def _shut(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _guarded_server_class() -> type:
    """pynetdicom's threaded server with the guard at accept and TLS in the connection's own thread."""
    from pynetdicom.transport import ThreadedAssociationServer

    class GuardedServer(ThreadedAssociationServer):
        guard: ConnectionGuard
        tls_context: ssl.SSLContext | None = None
        daemon_threads = True
        request_queue_size = 128  # listen backlog: a burst of connections is accepted, then judged by the guard
        block_on_close = False

        def get_request(self) -> tuple[Any, Any]:
            return self.socket.accept()  # no TLS here: a silent peer must not block the accept loop

        def verify_request(self, request: Any, client_address: Any) -> bool:
            return self.guard.admit(request, str(client_address[0]))

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            ip = str(client_address[0])
            cfg = self.guard.config
            sock = request
            try:
                if self.tls_context is not None:
                    request.settimeout(cfg.tls_handshake_timeout_seconds)
                    try:
                        sock = self.tls_context.wrap_socket(request, server_side=True)
                    except (OSError, ssl.SSLError) as exc:
                        self.guard.counts["tls_failed"] += 1
                        event("tls_handshake_failed", logging.WARNING, peer=ip, reason=f"{type(exc).__name__}: {exc}"[:200])
                        self.guard.release(request)
                        _shut(request)
                        request.close()
                        return
                    self.guard.attach(request, sock)
                sock.settimeout(cfg.idle_timeout_seconds)  # a peer silent this long mid-PDU is cut off
                handler = self.RequestHandlerClass.__new__(self.RequestHandlerClass)
                handler.request, handler.client_address, handler.server = sock, client_address, self
                assoc = handler._create_association()
                self.guard.attach(sock, sock, assoc)
                from pynetdicom import evt

                evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": client_address})
                assoc.start()
            except Exception as exc:  # noqa: BLE001 - one bad connection never stops the listener
                event("connection_error", logging.WARNING, peer=ip, reason=f"{type(exc).__name__}: {exc}"[:200])
                self.guard.release(sock)
                _shut(sock)

        def handle_error(self, request: Any, client_address: Any) -> None:
            event("connection_error", logging.WARNING, peer=str(client_address[0]))

    return GuardedServer


def _h(uid: str, n: int = 16) -> str:
    """File and folder names from hashed UIDs (no identifiers in paths, safe characters)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:n]

