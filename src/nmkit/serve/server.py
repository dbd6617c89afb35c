"""The headless AI server: DICOM node + quiet-period scheduler + durable job queue + workers + status.

Threads: the pynetdicom server (associations), one dispatcher (queues complete series, claims jobs,
renews leases) and a pool of job threads. Each job thread resolves the model version from the registry
at job start (so promotions apply to the next job without restart), runs :func:`worker.compute_outputs`
locally or on Dask, then sends each output to each destination unless the ``sent`` table says it already
went, and marks the job done. Kill the process at any point: the job's lease expires and it re-runs
with the same (pinned) model version and the same output UIDs, and nothing already sent is sent again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .config import ServerConfig
from .db import Job, Store
from .logs import event
from .node import DicomNode
from .registry import Registry
from .sender import send_with_retry
from .worker import compute_outputs


class PermanentJobError(Exception):
    """A job that cannot succeed by retrying (e.g. no model version): parked at once."""


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        config.storage.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.storage / "server.sqlite")
        self.registry = Registry(config.registry_path)
        self.node = DicomNode(config, self.store)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="nmkit-job")
        self._active: dict[str, Future] = {}
        self._active_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._dask_client = None
        self._dask_cluster = None
        self.http = None
        self.started_at = time.time()
        self.port: int | None = None
        self.http_port: int | None = None

    # ----- life cycle ---------------------------------------------------------------------------
    def start(self) -> "Server":
        if self.config.dask:
            self._start_dask()
        self.port = self.node.start()
        if self.config.http_port is not None:
            from .status import StatusServer

            self.http = StatusServer(self.config.http_host, int(self.config.http_port), self.status)
            self.http_port = self.http.start()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="nmkit-dispatch", daemon=True)
        self._dispatcher.start()
        event("server_started", owner=self.owner, port=self.port, http_port=self.http_port, workers=self.config.workers,
              dask=bool(self.config.dask), instances=[i.name for i in self.config.instances])
        return self

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        self.node.stop()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=30)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if self.http is not None:
            self.http.stop()
        if self._dask_client is not None:
            self._dask_client.close()
        if self._dask_cluster is not None:
            self._dask_cluster.close()
        event("server_stopped", owner=self.owner)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM, then stop cleanly."""
        import signal

        def _handler(signum: int, frame: Any) -> None:
            self._stop.set()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        while not self._stop.is_set():
            time.sleep(0.2)
        self.stop()

    def _start_dask(self) -> None:
        from dask.distributed import Client, LocalCluster

        opts = dict(self.config.dask or {})
        if opts.get("scheduler"):
            self._dask_client = Client(opts["scheduler"])
        else:
            self._dask_cluster = LocalCluster(n_workers=int(opts.get("n_workers", 1)), threads_per_worker=int(opts.get("threads_per_worker", 1)),
                                              processes=bool(opts.get("processes", False)), dashboard_address=None)
            self._dask_client = Client(self._dask_cluster)

    # ----- dispatcher ---------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        cfg = self.config
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                for jid in self.store.enqueue_quiet_series(cfg.quiet_seconds):
                    event("job_queued", job=jid)
                with self._active_lock:
                    for jid in [j for j, f in self._active.items() if f.done()]:
                        del self._active[jid]
                    free = cfg.workers - len(self._active)
                while free > 0 and not self._stop.is_set():
                    job = self.store.claim(self.owner, cfg.lease_seconds, cfg.max_attempts)
                    if job is None:
                        break
                    with self._active_lock:
                        self._active[job.id] = self._pool.submit(self._run_job, job)
                    free -= 1
                if time.time() - last_beat > cfg.lease_seconds / 3:
                    with self._active_lock:
                        running = list(self._active)
                    self.store.heartbeat(running, self.owner, cfg.lease_seconds)
                    last_beat = time.time()
            except Exception as exc:  # the dispatcher must survive a busy database or a bad row
                event("dispatcher_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
            self._stop.wait(cfg.poll_seconds)

    # ----- one job ------------------------------------------------------------------------------
    def _compute(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self._dask_client is not None:
            return self._dask_client.submit(compute_outputs, spec, pure=False).result()
        return compute_outputs(spec)

    def _run_job(self, job: Job) -> None:
        cfg = self.config
        t0 = time.time()
        try:
            inst = cfg.instance(job.instance)
            resolved = self.registry.current(inst.model_name)
            version = job.model_version or resolved.version  # a re-run keeps the version of its first attempt
            if version is None:
                raise PermanentJobError(f"model {inst.model_name!r} has no current version in the registry")
            shadow = job.shadow_version if job.model_version else resolved.shadow_version
            self.store.set_versions(job.id, version, shadow)
            files = self.store.series_files(job.instance, job.series_uid)
            event("job_started", job=job.id, attempt=job.attempts, version=version, shadow=shadow, files=len(files))
            base = {"job_id": job.id, "files": files, "model_name": inst.model_name, "outputs": list(inst.outputs),
                    "keep_largest": inst.keep_largest, "head": inst.head, "device": cfg.device}
            out_root = cfg.storage / "results" / job.id
            spec = dict(base, version=version, bundle_path=str(self.registry.path(inst.model_name, version)), out_dir=str(out_root / version))
            result = self._compute(spec)
            if shadow and shadow != version:
                try:
                    sspec = dict(base, version=shadow, bundle_path=str(self.registry.path(inst.model_name, shadow)),
                                 out_dir=str(out_root / f"shadow-{shadow}"))
                    result["shadow"] = self._compute(sspec)  # kept, never sent
                except Exception as exc:
                    event("shadow_failed", logging.WARNING, job=job.id, shadow=shadow, error=f"{type(exc).__name__}: {exc}"[:300])
            for kind, out in result["outputs"].items():
                for dest_name in inst.destinations:
                    if self.store.was_sent(job.id, kind, dest_name):
                        continue
                    send_with_retry(cfg.destinations[dest_name], Path(out["path"]), cfg.ae_title, cfg.send_attempts)
                    self.store.mark_sent(job.id, kind, dest_name, out["sop_uid"])
                    event("sent", job=job.id, output=kind, destination=dest_name, version=version)
            result["wall_seconds"] = round(time.time() - t0, 3)
            if self.store.complete(job.id, self.owner, result):
                event("job_done", job=job.id, version=version, seconds=result["wall_seconds"])
        except PermanentJobError as exc:
            self.store.fail(job.id, self.owner, str(exc), cfg.max_attempts, cfg.retry_base_seconds, permanent=True)
            event("job_parked", logging.ERROR, job=job.id, reason=str(exc)[:300])
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            state = self.store.fail(job.id, self.owner, reason, cfg.max_attempts, cfg.retry_base_seconds)
            event("job_failed", logging.WARNING if state == "failed" else logging.ERROR, job=job.id, state=state, reason=reason[:300])

    # ----- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counts = self.store.counts()
        models = {}
        for inst in self.config.instances:
            try:
                r = self.registry.current(inst.model_name)
                models[inst.name] = {"model": inst.model_name, "version": r.version, "shadow": r.shadow_version}
            except Exception as exc:
                models[inst.name] = {"model": inst.model_name, "error": str(exc)}
        with self._active_lock:
            running = len([f for f in self._active.values() if not f.done()])
        return {"status": "ok", "ae_title": self.config.ae_title, "port": self.port, "uptime_s": round(time.time() - self.started_at, 1),
                "node": dict(self.node.counts), "queue": counts["queue"], "instances": counts["instances"], "sent": counts["sent"],
                "models": models, "running_here": running}

