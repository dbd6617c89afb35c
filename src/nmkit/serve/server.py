"""The headless AI server: DICOM node + quiet-period scheduler + durable job queue + workers + status.

Threads: the pynetdicom server (associations, behind a connection guard), one dispatcher (queues complete
series, claims jobs, renews leases, applies retention), a pool of job threads and one delivery thread per
destination. Each job thread resolves the model version from the registry at job start (so promotions apply
to the next job without restart), runs :func:`worker.compute_outputs` locally or on Dask, puts every output
for every destination into the durable *outbox* and marks the job done. Delivery is decoupled from inference:
a destination that is down is retried with exponential back-off (per destination) over a horizon (24 h by
default), then its results are parked (visible in /status, the log and ``nmkit jobs``); the model never runs
again for a delivery. Kill the process at any point: a running job's lease expires and it re-runs with the
same (pinned) model version and the same output UIDs; a delivered result is never queued again.
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

from ..errors import InputError
from .config import ServerConfig, prepare_folders
from .db import Job, Store
from .logs import event, uid_hash
from .node import DicomNode
from .registry import Registry
from .sender import try_send
from .worker import compute_outputs


class PermanentJobError(Exception):
    """A job that cannot succeed by retrying (e.g. no model version): parked at once."""


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        prepare_folders(config)
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
        self._senders: list[threading.Thread] = []
        self.destination_state: dict[str, dict[str, Any]] = {n: {"reachable": True, "failures": 0, "next_try": 0.0, "since": None,
                                                                 "last_error": None} for n in config.destinations}
        self._last_cleanup = 0.0

    # ----- life cycle ---------------------------------------------------------------------------
    def start(self) -> "Server":
        if self.config.dask:
            self._start_dask()
        self.port = self.node.start()
        if self.config.http_port is not None:
            from .status import StatusServer

            self.http = StatusServer(self.config.http_host, int(self.config.http_port), self.status, health_fn=self.health,
                                     metrics_fn=self.metrics, token=self.config.http_token, threads=self.config.http_threads)
            self.http_port = self.http.start()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="nmkit-dispatch", daemon=True)
        self._dispatcher.start()
        for name in self.config.destinations:
            t = threading.Thread(target=self._delivery_loop, args=(name,), name=f"nmkit-send-{name}", daemon=True)
            t.start()
            self._senders.append(t)
        event("server_started", owner=self.owner, port=self.port, http_port=self.http_port, workers=self.config.workers,
              dask=bool(self.config.dask), instances=[i.name for i in self.config.instances])
        return self

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        self.node.stop()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=30)
        for t in self._senders:
            t.join(timeout=self.config.send_timeout_seconds + 5)
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
                for jid in self.store.enqueue_quiet_series(cfg.quiet_seconds, wants_job=self._wants_job):
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
                if time.time() - self._last_cleanup > 60:
                    self._cleanup()
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
            channels = self._channels(inst, version)
            extra: dict[str, Any] = {}
            if channels:  # a multi-channel model (e.g. PET+CT): the study's other channels' series, or wait for them
                found = self._companion_inputs(job, inst, channels, files)
                if found is None:
                    return
                extra = found
            event("job_started", job=job.id, attempt=job.attempts, version=version, shadow=shadow, files=len(files),
                  **({"channels": channels} if channels else {}))
            base = {"job_id": job.id, "files": files, "model_name": inst.model_name, "outputs": list(inst.outputs),
                    "keep_largest": inst.keep_largest, "head": inst.head, "device": cfg.device, **extra}
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
            if extra:
                result["companions"] = extra["companions"]
            items = [(kind, dest, out["path"], out["sop_uid"]) for kind, out in result["outputs"].items() for dest in inst.destinations]
            self.store.add_outbox(job.id, items)  # durable before the job counts as done; delivery threads take it from here
            result["wall_seconds"] = round(time.time() - t0, 3)
            if self.store.complete(job.id, self.owner, result):
                event("job_done", job=job.id, version=version, seconds=result["wall_seconds"])
        except (PermanentJobError, InputError) as exc:  # an unchangeable input or set-up error: parked at once, not retried
            reason = str(exc) if isinstance(exc, PermanentJobError) else f"input error: {exc.problem}"
            self.store.fail(job.id, self.owner, reason, cfg.max_attempts, cfg.retry_base_seconds, permanent=True)
            event("job_parked", logging.ERROR, job=job.id, reason=reason[:300])
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            state = self.store.fail(job.id, self.owner, reason, cfg.max_attempts, cfg.retry_base_seconds)
            event("job_failed", logging.WARNING if state == "failed" else logging.ERROR, job=job.id, state=state, reason=reason[:300])

    # ----- multi-channel instances (serve.companions) -----------------------------------------------
    def _channels(self, inst: Any, version: str | None = None) -> list[str] | None:
        """The Modality of each channel of the instance's model (``version``, else the current one); None for a
        single-channel model (the usual one-series-one-job path)."""
        from .companions import instance_channels, model_channels

        try:
            path = self.registry.path(inst.model_name, version) if version else self.registry.current(inst.model_name).path
        except Exception:  # noqa: BLE001 - no model yet: the job itself says so
            path = None
        channels = instance_channels(inst, path)
        if channels and inst.channels and path is not None:
            names = model_channels(path)
            if names and len(names) != len(inst.channels):
                raise PermanentJobError(f"instance {inst.name!r}: channels {inst.channels} but model {inst.model_name} "
                                        f"{version or ''} has {len(names)} input channels ({', '.join(names)})")
        return channels

    def _wants_job(self, row: Any) -> bool:
        """Whether a quiet series makes a job: always for a single-channel model; for a multi-channel one, only a series
        of the model's first channel (the others are companions, used by their study's job)."""
        from .companions import series_info, starts_job

        try:
            inst = self.config.instance(row["instance"])
            channels = self._channels(inst)
            if not channels:
                return True
            files = self.store.series_files(row["instance"], row["series_uid"])[:1]
            info = series_info(row["series_uid"], row["study_uid"] or "", row["n"], row["last_at"], files)
            if starts_job(inst, channels, info):
                return True
        except Exception:  # noqa: BLE001 - unreadable header or configuration: a job, whose failure says why
            return True
        level = logging.DEBUG if info.modality in channels else logging.WARNING
        event("series_companion" if info.modality in channels else "series_not_a_channel", level, instance=inst.name,
              series=uid_hash(row["series_uid"]), modality=info.modality, channels=channels)
        return False

    def _companion_inputs(self, job: Job, inst: Any, channels: list[str], files: list[str]) -> dict[str, Any] | None:
        """The companion series of a multi-channel job (``channel_files`` in the model's order after the first), or
        None when the job was put back to wait for them. Past ``companion_wait_seconds`` without one: parked."""
        from .companions import find_companions, series_info, summary, takes

        row = self.store.series_row(job.instance, job.series_uid)
        study = str(row["study_uid"] or "") if row is not None else ""
        primary = series_info(job.series_uid, study, len(files), float(row["last_at"]) if row is not None else 0.0, files[:1])
        if not takes(inst, channels[0], primary):
            raise PermanentJobError(f"series is {primary.modality or 'of no modality'}; the model's first channel is {channels[0]} "
                                    f"(channels {'+'.join(channels)})")
        candidates = [series_info(r["series_uid"], study, r["n"], float(r["last_at"]), self.store.series_files(inst.name, r["series_uid"]))
                      for r in (self.store.study_series(inst.name, study) if study else []) if r["series_uid"] != job.series_uid]
        now = time.time()
        found, missing, receiving = find_companions(inst, channels, primary, candidates, now - self.config.quiet_seconds)
        if not missing and not receiving:
            for c in found.values():
                c.files = self.store.series_files(inst.name, c.series_uid)
            return {"channels": list(channels), "channel_files": [found[c].files for c in channels[1:]], "companions": summary(primary, found)}
        wait = float(inst.companion_wait_seconds)
        deadline = float(job.last_image_at or job.created or now) + wait
        globs = {k.upper(): v for k, v in (inst.channel_series or {}).items()}
        names = "/".join(f"{c} (SeriesDescription {globs[c]!r})" if c in globs else c for c in missing)
        if receiving or now < deadline:
            step = max(1.0, self.config.quiet_seconds) if receiving else min(max(1.0, self.config.quiet_seconds), 10.0, max(deadline - now, 0.2))
            what = "/".join(missing + receiving)
            self.store.defer(job.id, self.owner, now + step, f"waiting for the {what} series of the study (up to {wait:g} s "
                                                            f"after its {channels[0]} series; the model takes {'+'.join(channels)})")
            event("job_waiting", job=job.id, missing=missing, receiving=receiving, wait_left_s=round(max(deadline - now, 0.0), 1))
            return None
        raise PermanentJobError(f"no {names} series in study {uid_hash(study)} within {wait:g} s (the model takes "
                                f"{'+'.join(channels)}; once it is received: nmkit jobs requeue {job.id})")

    # ----- delivery (outbox) ---------------------------------------------------------------------
    def _backoff(self, failures: int) -> float:
        cfg = self.config
        return min(cfg.send_retry_base_seconds * 2 ** max(failures - 1, 0), cfg.send_max_backoff_seconds)

    def _delivery_loop(self, name: str) -> None:
        """Deliver the outbox rows of one destination, oldest first; a destination that is down is retried with
        exponential back-off (all its rows wait together), a refused object alone with its own back-off."""
        cfg = self.config
        dest = cfg.destinations[name]
        state = self.destination_state[name]
        horizon = cfg.send_horizon_hours * 3600
        while not self._stop.is_set():
            try:
                if time.time() >= state["next_try"]:
                    for row in self.store.due_deliveries(name):
                        if self._stop.is_set() or not self._deliver(dest, row, state, horizon):
                            break
            except Exception as exc:  # a busy database must not end delivery
                event("delivery_error", logging.ERROR, destination=name, error=f"{type(exc).__name__}: {exc}"[:300])
            self._stop.wait(cfg.poll_seconds)

    def _deliver(self, dest: Any, row: Any, state: dict[str, Any], horizon: float) -> bool:
        """One try of one outbox row; False when the destination is down (stop trying its other rows for now)."""
        cfg = self.config
        outcome, why = try_send(dest, Path(row["path"]), cfg.ae_title, cfg.send_timeout_seconds)
        now = time.time()
        if outcome == "ok":
            self.store.delivered(row["job_id"], row["output"], row["destination"], row["sop_uid"])
            if not state["reachable"]:
                event("destination_reachable", destination=dest.name, down_s=round(now - (state["since"] or now), 1))
            state.update(reachable=True, failures=0, next_try=0.0, since=None, last_error=None)
            event("sent", job=row["job_id"], output=row["output"], destination=dest.name, attempts=row["attempts"] + 1)
            return True
        if outcome == "retry":  # the destination is down or full: back off for all its results
            state["failures"] += 1
            delay = self._backoff(state["failures"])
            if state["reachable"]:
                state.update(reachable=False, since=now)
                event("destination_unreachable", logging.ERROR, destination=dest.name, error=why[:300])
            state.update(next_try=now + delay, last_error=why)
            new = self.store.delivery_failed(row["job_id"], row["output"], row["destination"], why, now + delay, horizon)
        else:
            delay = self._backoff(row["attempts"] + 1)
            new = self.store.delivery_failed(row["job_id"], row["output"], row["destination"], why, now + delay, horizon,
                                             permanent=outcome == "permanent")
        if new == "parked":
            event("delivery_parked", logging.ERROR, job=row["job_id"], output=row["output"], destination=dest.name, reason=why[:300])
        else:
            event("delivery_retry", logging.WARNING, job=row["job_id"], output=row["output"], destination=dest.name,
                  retry_in_s=round(delay, 2), reason=why[:200])
        return outcome != "retry"

    def _cleanup(self) -> None:
        """Retention: purge unrouted objects past their period, and finished jobs' inputs/results when configured."""
        self._last_cleanup = time.time()
        n = self.store.purge_unrouted()
        if n:
            event("unrouted_purged", count=n)
        if self.config.retention_days is not None:
            m = self.store.purge_finished(self.config.retention_days * 86400, self.config.storage)
            if m:
                event("retention_purged", jobs=m)

    # ----- health and metrics ---------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Liveness of the parts: DICOM listener, dispatcher, delivery threads, database, free disk."""
        checks: dict[str, Any] = {"dicom_listener": self.node.alive(),
                                  "dispatcher": self._dispatcher is not None and self._dispatcher.is_alive(),
                                  "delivery": all(t.is_alive() for t in self._senders)}
        try:
            self.store.query("SELECT 1")
            checks["database"] = True
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = f"{type(exc).__name__}: {exc}"[:200]
        try:
            free = self.node.free_bytes()
            checks["free_disk_mb"] = round(free / 2**20, 1)
            checks["disk"] = free >= self.config.min_free_disk_mb * 2**20
        except OSError as exc:
            checks["disk"] = str(exc)
        ok = all(v is True for k, v in checks.items() if k != "free_disk_mb")
        return {"status": "ok" if ok else "error", "checks": checks}

    def metrics(self) -> str:
        """Prometheus text exposition of counters and gauges."""
        from .logs import dropped_lines

        counts = self.store.counts()
        lines = ["# TYPE nmkit_uptime_seconds gauge", f"nmkit_uptime_seconds {time.time() - self.started_at:.1f}",
                 "# TYPE nmkit_objects_total counter"]
        lines += [f'nmkit_objects_total{{outcome="{k}"}} {v}' for k, v in sorted(self.node.counts.items())]
        if self.node.guard is not None:
            lines.append("# TYPE nmkit_connections_refused_total counter")
            lines += [f'nmkit_connections_refused_total{{reason="{k}"}} {v}' for k, v in sorted(self.node.guard.counts.items())]
            lines.append("# TYPE nmkit_connections gauge")
            lines += [f'nmkit_connections{{kind="{k}"}} {v}' for k, v in sorted(self.node.guard.active().items())]
        lines.append("# TYPE nmkit_jobs gauge")
        lines += [f'nmkit_jobs{{state="{k}"}} {v}' for k, v in sorted(counts["queue"].items())]
        lines.append("# TYPE nmkit_outbox gauge")
        lines += [f'nmkit_outbox{{destination="{d}",state="{k}"}} {v}' for d, per in sorted(counts["outbox"].items()) for k, v in sorted(per.items())]
        lines.append("# TYPE nmkit_destination_up gauge")
        lines += [f'nmkit_destination_up{{destination="{d}"}} {int(st["reachable"])}' for d, st in sorted(self.destination_state.items())]
        lines += ["# TYPE nmkit_unrouted_kept gauge", f"nmkit_unrouted_kept {counts['unrouted']['kept']}",
                  "# TYPE nmkit_log_dropped_lines_total counter", f"nmkit_log_dropped_lines_total {dropped_lines()}"]
        try:
            lines += ["# TYPE nmkit_free_disk_bytes gauge", f"nmkit_free_disk_bytes {self.node.free_bytes()}"]
        except OSError:
            pass
        return "\n".join(lines) + "\n"

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
        parked = [{"job": j.id, "instance": j.instance, "reason": j.reason} for j in self.store.jobs("parked")[-20:]]
        waiting = [{"job": j.id, "instance": j.instance, "reason": j.reason} for j in self.store.jobs("queued") if j.reason][-20:]
        parked_deliveries = [{"job": r["job_id"], "output": r["output"], "destination": r["destination"], "reason": r["last_error"]}
                             for r in self.store.query("SELECT * FROM outbox WHERE state='parked' ORDER BY created DESC LIMIT 20")]
        destinations = {n: {"reachable": st["reachable"], "down_since": st["since"], "last_error": st["last_error"],
                            "next_try_in_s": max(0.0, round(st["next_try"] - time.time(), 1)) if not st["reachable"] else 0.0,
                            **counts["outbox"].get(n, {})} for n, st in self.destination_state.items()}
        return {"status": "ok", "ae_title": self.config.ae_title, "port": self.port, "uptime_s": round(time.time() - self.started_at, 1),
                "node": dict(self.node.counts), "connections": self.node.guard.active() if self.node.guard else {},
                "queue": counts["queue"], "instances": counts["instances"], "sent": counts["sent"], "destinations": destinations,
                "parked_jobs": parked, "waiting_jobs": waiting, "parked_deliveries": parked_deliveries, "unrouted": counts["unrouted"],
                "models": models, "running_here": running}

