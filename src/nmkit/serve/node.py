"""The DICOM node: C-ECHO and C-STORE SCP on pynetdicom, calling-AE whitelist, optional TLS.

A received object is written durably (temporary file, fsync, rename, fsync of the folder) and recorded in
the database *before* success (0x0000) is answered, so an acknowledged image is never lost. Objects that
cannot be decoded are refused with 0xC000 (cannot understand); storage failures with 0xA700 (out of
resources). A failing object never stops the node.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import ssl
import threading
import time
from typing import Any, Callable

from .config import ServerConfig
from .db import Store, write_durably
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


class DicomNode:
    """Receives objects, stores them durably, routes them to interpretation instances."""

    def __init__(self, config: ServerConfig, store: Store, on_received: Callable[[str, list[str]], None] | None = None):
        self.config = config
        self.store = store
        self.incoming = config.storage / "incoming"
        self.on_received = on_received
        self._server = None
        self.lock = threading.Lock()
        self.counts = {"received": 0, "refused": 0, "failed": 0}

    # ----- handlers -------------------------------------------------------------------------------
    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def handle_echo(self, event_: Any) -> int:
        return STATUS_SUCCESS

    def handle_store(self, ev: Any) -> int:
        t0 = time.perf_counter()
        calling = str(ev.assoc.requestor.ae_title).strip()
        called = str(ev.assoc.requestor.primitive.called_ae_title).strip() if ev.assoc.requestor.primitive else self.config.ae_title
        try:
            ds = ev.dataset
            sop_uid = str(ds.SOPInstanceUID)
            series_uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
            study_uid = str(getattr(ds, "StudyInstanceUID", "") or "")
            sop_class = str(getattr(ds, "SOPClassUID", "") or ev.request.AffectedSOPClassUID)
            if not series_uid:
                raise ValueError("no SeriesInstanceUID")
            attrs = routing_attributes(ds)
            data = ev.encoded_dataset(include_meta=True)
        except Exception as exc:  # malformed object: refuse it, keep serving
            self._count("refused")
            event("store_refused", logging.WARNING, calling_ae=calling, reason=f"{type(exc).__name__}: {exc}"[:200])
            return STATUS_CANNOT_UNDERSTAND
        try:
            instances = route(self.config.instances, called, attrs, self.config.ae_title)
            folder = self.incoming / _h(study_uid) / _h(series_uid)
            path = folder / f"{_h(sop_uid, 24)}.dcm"
            write_durably(data, path)
            self.store.record_received(sop_uid=sop_uid, instances=instances, series_uid=series_uid, study_uid=study_uid, path=str(path),
                                       sop_class_uid=sop_class, calling_ae=calling, called_ae=called)
        except (OSError, sqlite3.Error) as exc:
            self._count("failed")
            event("store_failed", logging.ERROR, calling_ae=calling, series=uid_hash(series_uid), reason=f"{type(exc).__name__}: {exc}"[:200])
            return STATUS_OUT_OF_RESOURCES
        self._count("received")
        event("stored", logging.DEBUG, calling_ae=calling, called_ae=called, series=uid_hash(series_uid), instances=instances,
              ms=round(1000 * (time.perf_counter() - t0), 2))
        if self.on_received:
            self.on_received(series_uid, instances)
        return STATUS_SUCCESS

    def handle_rejected(self, ev: Any) -> None:
        event("association_rejected", logging.WARNING, calling_ae=str(ev.assoc.requestor.ae_title).strip())

    # ----- server ---------------------------------------------------------------------------------
    def start(self) -> int:
        """Start listening (non-blocking); returns the bound port."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = storage_contexts()
        ae.require_called_aet = False  # instance AE titles are routed, not rejected
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.maximum_pdu_size = self.config.max_pdu
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.maximum_associations = 32
        ctx = ssl_server_context(self.config.tls) if self.config.tls else None
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store), (evt.EVT_REJECTED, self.handle_rejected)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=ctx)
        self.port = int(self._server.server_address[1])
        event("dicom_node_started", ae_title=self.config.ae_title, port=self.port, tls=bool(ctx))
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _h(uid: str, n: int = 16) -> str:
    """File and folder names from hashed UIDs (no identifiers in paths, safe characters)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:n]

