"""`nmkit jobs list|show|requeue|cancel --config server.yaml`: the server's jobs and their deliveries (outbox)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("jobs", help="jobs of the DICOM AI server: list, show, requeue (parked jobs or deliveries), cancel")
    p.add_argument("--config", required=True, help="server YAML configuration (its storage holds the job database)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("list", help="jobs with their state and delivery summary")
    s.add_argument("--state", choices=["queued", "running", "done", "failed", "parked", "cancelled"], default=None)
    s.add_argument("--undelivered", action="store_true", help="only jobs with results not yet delivered (pending or parked)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("show", help="one job: state, reason, model version, every result and where it was delivered")
    s.add_argument("job")
    s = sub.add_parser("requeue", help="retry now: a parked job runs again; a done job's parked deliveries are resent (no re-inference)")
    s.add_argument("job")
    s = sub.add_parser("cancel", help="a job that has not finished will not run; its undelivered results are not sent")
    s.add_argument("job")
    p.set_defaults(func=run)


def _store(config_path: str):
    from ..errors import InputError
    from ..serve.config import load_config
    from ..serve.db import Store

    config = load_config(config_path)
    db = config.storage / "server.sqlite"
    if not db.is_file():
        raise InputError(config_path, f"no job database at {db} (has the server run with this configuration?)")
    return Store(db)


def _summary(rows: list[dict]) -> str:
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "-"


def run(args) -> int:
    import datetime as dt

    from ..errors import InputError

    store = _store(args.config)
    if args.action == "list":
        jobs = store.jobs(args.state)
        outbox: dict[str, list[dict]] = {}
        for r in store.outbox():
            outbox.setdefault(r["job_id"], []).append(r)
        if args.undelivered:
            jobs = [j for j in jobs if any(r["state"] in ("pending", "parked") for r in outbox.get(j.id, []))]
        rows = [{"job": j.id, "instance": j.instance, "state": j.state, "attempts": j.attempts, "model_version": j.model_version,
                 "created": j.created, "deliveries": _summary(outbox.get(j.id, [])), "reason": j.reason} for j in jobs]
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
            return 0
        for r in rows:
            when = dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M:%S") if r["created"] else ""
            print(f"{r['job']:40s} {r['state']:9s} {when} v{r['model_version'] or '-':8s} deliveries: {r['deliveries']}"
                  + (f"  reason: {r['reason']}" if r["reason"] else ""))
        print(f"{len(rows)} job(s)")
        return 0
    job = store.job(args.job)
    if job is None:
        raise InputError(None, f"no job {args.job!r}; see `nmkit jobs --config {args.config} list`")
    if args.action == "show":
        out = {"job": job.id, "instance": job.instance, "state": job.state, "attempts": job.attempts, "reason": job.reason,
               "model_version": job.model_version, "shadow_version": job.shadow_version, "result": job.result,
               "deliveries": [{k: r[k] for k in ("output", "destination", "state", "attempts", "last_error", "sent_at")} for r in store.outbox(job.id)]}
        print(json.dumps(out, indent=2, default=str))
        return 0
    if args.action == "requeue":
        done = store.requeue(job.id)
        if done == "nothing":
            raise InputError(None, f"job {job.id} is {job.state} with nothing to requeue (only parked/failed/cancelled jobs or undelivered results)")
        print(f"{job.id}: " + ("deliveries queued again (the model does not run again)" if done == "deliveries" else "queued to run again"))
        return 0
    if args.action == "cancel":
        if not store.cancel(job.id):
            raise InputError(None, f"job {job.id} is {job.state} and has nothing undelivered: nothing to cancel")
        print(f"{job.id}: cancelled")
        return 0
    return 2
