"""The server's durable state in SQLite (WAL): received instances, series, jobs and what was sent.

Job life cycle: ``queued`` -> ``running`` (a lease owned by one worker, extended by heartbeats) ->
``done``; a failure makes it ``failed`` (waiting for a retry after exponential back-off) until
``max_attempts`` is reached, then it is ``parked`` with the reason. A ``running`` job whose lease has expired (its
server was killed) is claimed again, so a crash never loses work. The ``sent`` table holds one row
per (job, output, destination): the sender checks it first, so a re-run never sends twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    sop_uid TEXT NOT NULL, instance TEXT NOT NULL, series_uid TEXT NOT NULL, study_uid TEXT, path TEXT NOT NULL,
    sop_class_uid TEXT, calling_ae TEXT, called_ae TEXT, received_at REAL NOT NULL, PRIMARY KEY (sop_uid, instance));
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT NOT NULL, instance TEXT NOT NULL, study_uid TEXT, first_at REAL, last_at REAL, n INTEGER DEFAULT 0,
    revision INTEGER DEFAULT 0, queued_revision INTEGER DEFAULT -1, PRIMARY KEY (series_uid, instance));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, series_uid TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER DEFAULT 0,
    next_try REAL DEFAULT 0, lease_owner TEXT, lease_until REAL, reason TEXT, model_version TEXT, shadow_version TEXT,
    created REAL, last_image_at REAL, started REAL, finished REAL, result TEXT);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_try);
CREATE TABLE IF NOT EXISTS sent (
    job_id TEXT NOT NULL, output TEXT NOT NULL, destination TEXT NOT NULL, sop_uid TEXT, sent_at REAL,
    PRIMARY KEY (job_id, output, destination));
CREATE TABLE IF NOT EXISTS outbox (
    job_id TEXT NOT NULL, output TEXT NOT NULL, destination TEXT NOT NULL, path TEXT NOT NULL, sop_uid TEXT, state TEXT NOT NULL,
    attempts INTEGER DEFAULT 0, next_try REAL DEFAULT 0, created REAL, last_error TEXT, sent_at REAL,
    PRIMARY KEY (job_id, output, destination));
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(destination, state, next_try);
CREATE TABLE IF NOT EXISTS unrouted (
    sop_uid TEXT NOT NULL, path TEXT NOT NULL, reason TEXT, sop_class_uid TEXT, calling_ae TEXT, called_ae TEXT, peer TEXT,
    received_at REAL, expires_at REAL, purged_at REAL, PRIMARY KEY (sop_uid, path));
""" + """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, sop_uid TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, reader TEXT, job_id TEXT NOT NULL,
    instance TEXT, model TEXT, model_version TEXT, ai_output TEXT, ai_sop_uid TEXT, ai_path TEXT, source_series_uid TEXT,
    study_uid TEXT, linked_by TEXT, via TEXT, calling_ae TEXT, received_at REAL NOT NULL, corrected_at REAL,
    state TEXT NOT NULL, reason TEXT, scored_at REAL, label_map TEXT, image TEXT);
CREATE INDEX IF NOT EXISTS feedback_state ON feedback(state);
CREATE TABLE IF NOT EXISTS feedback_scores (
    feedback_id TEXT NOT NULL, segment_number INTEGER NOT NULL, structure TEXT, corrected_segment INTEGER, geometry TEXT,
    dice REAL, hd95_mm REAL, ai_voxels INTEGER, corrected_voxels INTEGER, added_voxels INTEGER, removed_voxels INTEGER,
    voxel_mm3 REAL, ai_ml REAL, corrected_ml REAL, added_ml REAL, removed_ml REAL,
    ai_mm2 REAL, corrected_mm2 REAL, added_mm2 REAL, removed_mm2 REAL, PRIMARY KEY (feedback_id, segment_number));
CREATE TABLE IF NOT EXISTS feedback_unlinked (
    sop_uid TEXT NOT NULL, path TEXT NOT NULL, kind TEXT, study_uid TEXT, reason TEXT NOT NULL, via TEXT, calling_ae TEXT,
    received_at REAL, PRIMARY KEY (sop_uid, path));
"""

#: feedback (expert corrections of AI results, serve.feedback): pending -> scored | failed (reason kept)
FEEDBACK_STATES = ("pending", "scored", "failed")
#: columns of one feedback_scores row, in order (units in the names: mm, ml, mm2, mm3)
SCORE_COLUMNS = ("segment_number", "structure", "corrected_segment", "geometry", "dice", "hd95_mm", "ai_voxels", "corrected_voxels",
                 "added_voxels", "removed_voxels", "voxel_mm3", "ai_ml", "corrected_ml", "added_ml", "removed_ml", "ai_mm2",
                 "corrected_mm2", "added_mm2", "removed_mm2")

STATES = ("queued", "running", "done", "failed", "parked", "cancelled")
OUTBOX_STATES = ("pending", "sent", "parked", "cancelled")


@dataclass
class Job:
    id: str
    instance: str
    series_uid: str
    state: str
    attempts: int
    lease_owner: str | None
    model_version: str | None
    shadow_version: str | None
    created: float
    last_image_at: float | None
    reason: str | None = None
    result: dict[str, Any] | None = None


def job_id_for(instance: str, series_uid: str, revision: int) -> str:
    """Deterministic job id without patient identifiers: instance + hash of the series UID + revision."""
    h = hashlib.sha256(series_uid.encode()).hexdigest()[:16]
    return f"{instance}-{h}-r{revision}"


class Store:
    """Thread-safe access to the server database (one SQLite connection per thread)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._timeout = busy_timeout_s
        self._batch_lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._leading = False
        self._conn().executescript(SCHEMA)  # executescript manages its own transaction
        self._add_columns()

    #: columns added to existing tables after their first release (additive migrations: ALTER TABLE ... ADD COLUMN)
    ADDED_COLUMNS = (("feedback", "image", "TEXT"),)

    def _add_columns(self) -> None:
        conn = self._conn()
        for table, column, kind in self.ADDED_COLUMNS:
            have = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction (takes the write lock at once, so claims never race)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return list(self._conn().execute(sql, args))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ----- reception ----------------------------------------------------------------------------
    def record_received(self, **kw: Any) -> list[str]:
        """Record a durably written file for each routed instance and touch its series (quiet-period clock).

        Keywords: sop_uid, instances, series_uid, study_uid, path, sop_class_uid, calling_ae, called_ae, when,
        resend_policy. An identical duplicate (same SOP Instance UID and file) changes nothing. A *re-sent* image (same
        UID, other content, hence another path) replaces the stored one and makes a new series revision (a new job)
        under ``resend_policy="new_revision"``; under ``"ignore"`` the first version is kept. Returns what happened
        per instance: ``new``, ``duplicate``, ``resent`` or ``ignored``.

        Group commit: records arriving at the same time from several associations share one transaction (one WAL
        fsync); each caller returns only once its record is committed, or raises if the shared commit failed."""
        item: dict[str, Any] = {"kw": kw, "done": threading.Event(), "result": None, "error": None}
        with self._batch_lock:
            self._pending.append(item)
            lead = not self._leading
            self._leading = True
        if lead:
            while True:
                with self._batch_lock:
                    batch, self._pending = self._pending, []
                    if not batch:
                        self._leading = False
                        break
                try:
                    with self.tx() as c:
                        results = [self._record(c, **it["kw"]) for it in batch]
                    for it, r in zip(batch, results):
                        it["result"] = r
                except BaseException as exc:  # noqa: BLE001 - every caller of the failed commit gets the error
                    for it in batch:
                        it["error"] = exc
                for it in batch:
                    it["done"].set()
        item["done"].wait()
        if item["error"] is not None:
            raise item["error"]
        return item["result"]

    @staticmethod
    def _record(c: sqlite3.Connection, *, sop_uid: str, instances: list[str], series_uid: str, study_uid: str, path: str,
                sop_class_uid: str, calling_ae: str, called_ae: str, when: float | None = None,
                resend_policy: str = "new_revision") -> list[str]:
        when = time.time() if when is None else when
        outcome = []
        for inst in instances:
            old = c.execute("SELECT path FROM received WHERE sop_uid=? AND instance=?", (sop_uid, inst)).fetchone()
            if old is not None and old["path"] == path:
                outcome.append("duplicate")  # nothing new to interpret
                continue
            if old is not None and resend_policy == "ignore":
                outcome.append("ignored")
                continue
            if old is None:
                c.execute("INSERT INTO received VALUES (?,?,?,?,?,?,?,?,?)",
                          (sop_uid, inst, series_uid, study_uid, path, sop_class_uid, calling_ae, called_ae, when))
            else:
                c.execute("UPDATE received SET path=?, received_at=?, calling_ae=? WHERE sop_uid=? AND instance=?",
                          (path, when, calling_ae, sop_uid, inst))
            outcome.append("new" if old is None else "resent")
            c.execute("""INSERT INTO series(series_uid, instance, study_uid, first_at, last_at, n, revision) VALUES (?,?,?,?,?,1,0)
                         ON CONFLICT(series_uid, instance) DO UPDATE SET last_at=excluded.last_at, n=n+?,
                         revision = CASE WHEN queued_revision = revision THEN revision + 1 ELSE revision END""",
                      (series_uid, inst, study_uid, when, when, 1 if old is None else 0))
        return outcome

    def record_unrouted(self, *, sop_uid: str, path: str, reason: str, sop_class_uid: str, calling_ae: str, called_ae: str,
                        peer: str, retention_s: float, when: float | None = None) -> None:
        """Track an object no instance takes (kept for ``retention_s``, then purged by :meth:`purge_unrouted`)."""
        when = time.time() if when is None else when
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO unrouted VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                      (sop_uid, path, reason, sop_class_uid, calling_ae, called_ae, peer, when, when + retention_s))

    def purge_unrouted(self, now: float | None = None) -> int:
        """Delete unrouted files past their retention (rows kept, marked purged); returns how many."""
        now = time.time() if now is None else now
        rows = self.query("SELECT sop_uid, path FROM unrouted WHERE purged_at IS NULL AND expires_at <= ?", (now,))
        for r in rows:
            try:
                os.unlink(r["path"])
            except FileNotFoundError:
                pass
            with self.tx() as c:
                c.execute("UPDATE unrouted SET purged_at=? WHERE sop_uid=? AND path=?", (now, r["sop_uid"], r["path"]))
        return len(rows)

    def purge_finished(self, older_than_s: float, storage: Path, now: float | None = None) -> int:
        """Retention of finished work: delete inputs and results of jobs done/cancelled more than ``older_than_s`` ago
        whose results were all delivered (or parked/cancelled); returns how many jobs were cleaned."""
        import shutil

        now = time.time() if now is None else now
        rows = self.query("""SELECT id, instance, series_uid FROM jobs j WHERE state IN ('done', 'cancelled') AND finished <= ?
                             AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id=j.id AND o.state='pending')
                             AND (result IS NULL OR json_extract(result, '$.purged') IS NULL)""", (now - older_than_s,))
        for r in rows:
            for f in self.series_files(r["instance"], r["series_uid"]):
                Path(f).unlink(missing_ok=True)
            shutil.rmtree(storage / "results" / r["id"], ignore_errors=True)
            with self.tx() as c:
                c.execute("UPDATE jobs SET result=json_set(COALESCE(result, '{}'), '$.purged', json('true')) WHERE id=?", (r["id"],))
            for f in self._finished_companion_files(r["instance"], r["series_uid"]):
                Path(f).unlink(missing_ok=True)
        return len(rows)

    def _finished_companion_files(self, instance: str, series_uid: str) -> list[str]:
        """Files of the series of a study that made no job of their own (companion channels of a multi-channel
        instance), once every job of that study for the instance is finished and purged; none for single-channel use."""
        row = self.series_row(instance, series_uid)
        if row is None or not row["study_uid"]:
            return []
        study = self.query("SELECT series_uid FROM series WHERE instance=? AND study_uid=? AND queued_revision >= revision",
                           (instance, row["study_uid"]))  # handled (quiet) series only: one still arriving may yet make a job
        jobs = self.query("""SELECT j.series_uid, j.state, json_extract(j.result, '$.purged') AS purged FROM jobs j JOIN series s
                             ON s.series_uid=j.series_uid AND s.instance=j.instance WHERE j.instance=? AND s.study_uid=?""",
                          (instance, row["study_uid"]))
        if any(j["state"] not in ("done", "cancelled") or not j["purged"] for j in jobs):
            return []
        with_jobs = {j["series_uid"] for j in jobs}
        return [f for s in study if s["series_uid"] not in with_jobs for f in self.series_files(instance, s["series_uid"])]

    def series_files(self, instance: str, series_uid: str) -> list[str]:
        return [r["path"] for r in self.query("SELECT path FROM received WHERE instance=? AND series_uid=? ORDER BY path", (instance, series_uid))]

    def enqueue_quiet_series(self, quiet_seconds: float, now: float | None = None,
                             wants_job: Callable[[sqlite3.Row], bool] | None = None) -> list[str]:
        """Queue a job for every series with no new instance for ``quiet_seconds``; returns the new job ids.

        ``wants_job(series_row)``: False for a series that makes no job of its own (a companion channel of a
        multi-channel instance: it is used by its study's job); it is marked handled all the same."""
        now = time.time() if now is None else now
        created = []
        with self.tx() as c:
            rows = list(c.execute("SELECT * FROM series WHERE queued_revision < revision AND last_at <= ?", (now - quiet_seconds,)))
            for r in rows:
                if wants_job is not None and not wants_job(r):
                    c.execute("UPDATE series SET queued_revision=? WHERE series_uid=? AND instance=?", (r["revision"], r["series_uid"], r["instance"]))
                    continue
                jid = job_id_for(r["instance"], r["series_uid"], r["revision"])
                c.execute("INSERT OR IGNORE INTO jobs(id, instance, series_uid, state, created, last_image_at, next_try) VALUES (?,?,?,?,?,?,0)",
                          (jid, r["instance"], r["series_uid"], "queued", now, r["last_at"]))
                c.execute("UPDATE series SET queued_revision=? WHERE series_uid=? AND instance=?", (r["revision"], r["series_uid"], r["instance"]))
                created.append(jid)
        return created

    # ----- jobs ---------------------------------------------------------------------------------
    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(id=row["id"], instance=row["instance"], series_uid=row["series_uid"], state=row["state"], attempts=row["attempts"],
                   lease_owner=row["lease_owner"], model_version=row["model_version"], shadow_version=row["shadow_version"],
                   created=row["created"], last_image_at=row["last_image_at"], reason=row["reason"],
                   result=json.loads(row["result"]) if row["result"] else None)

    def claim(self, owner: str, lease_seconds: float, max_attempts: int, now: float | None = None) -> Job | None:
        """Take the oldest runnable job (queued and due, or running with an expired lease) under a lease."""
        now = time.time() if now is None else now
        with self.tx() as c:
            # expired leases whose attempts are used up: park them (poison jobs that kill their server)
            for r in c.execute("SELECT id, attempts FROM jobs WHERE state='running' AND lease_until < ? AND attempts >= ?", (now, max_attempts)).fetchall():
                c.execute("UPDATE jobs SET state='parked', reason=?, finished=?, lease_owner=NULL WHERE id=?",
                          (f"lease expired {r['attempts']} times (worker died during the job)", now, r["id"]))
            row = c.execute("""SELECT * FROM jobs WHERE (state IN ('queued', 'failed') AND next_try <= ?) OR (state='running' AND lease_until < ?)
                               ORDER BY created, id LIMIT 1""", (now, now)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state='running', lease_owner=?, lease_until=?, attempts=attempts+1, started=? WHERE id=?",
                      (owner, now + lease_seconds, now, row["id"]))
            row = c.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
        return self._job(row)

    def defer(self, job_id: str, owner: str, until: float, reason: str) -> bool:
        """Put a claimed job back to wait (``queued`` until ``until``, the claim's attempt not counted), with the
        reason shown in /status and ``nmkit jobs`` (e.g. a multi-channel job waiting for its study's CT)."""
        with self.tx() as c:
            n = c.execute("""UPDATE jobs SET state='queued', next_try=?, reason=?, attempts=MAX(attempts - 1, 0), lease_owner=NULL
                             WHERE id=? AND lease_owner=? AND state='running'""", (until, reason[:500], job_id, owner)).rowcount
        return n == 1

    def series_row(self, instance: str, series_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM series WHERE instance=? AND series_uid=?", (instance, series_uid))
        return rows[0] if rows else None

    def study_series(self, instance: str, study_uid: str) -> list[sqlite3.Row]:
        """Every series of one study received for an instance (candidates for a multi-channel job's companions)."""
        return self.query("SELECT * FROM series WHERE instance=? AND study_uid=? ORDER BY first_at, series_uid", (instance, study_uid))

    def heartbeat(self, job_ids: list[str], owner: str, lease_seconds: float) -> None:
        if not job_ids:
            return
        until = time.time() + lease_seconds
        with self.tx() as c:
            c.executemany("UPDATE jobs SET lease_until=? WHERE id=? AND lease_owner=? AND state='running'", [(until, j, owner) for j in job_ids])

    def set_versions(self, job_id: str, model_version: str | None, shadow_version: str | None) -> None:
        with self.tx() as c:
            c.execute("UPDATE jobs SET model_version=?, shadow_version=? WHERE id=?", (model_version, shadow_version, job_id))

    def complete(self, job_id: str, owner: str, result: dict[str, Any]) -> bool:
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET state='done', finished=?, result=?, lease_owner=NULL, reason=NULL WHERE id=? AND lease_owner=? AND state='running'",
                          (time.time(), json.dumps(result, default=str), job_id, owner)).rowcount
        return n == 1

    def fail(self, job_id: str, owner: str, reason: str, max_attempts: int, retry_base_seconds: float, permanent: bool = False) -> str:
        """``failed`` (retried after exponential back-off), or ``parked`` after ``max_attempts`` (or when ``permanent``)."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT attempts FROM jobs WHERE id=? AND lease_owner=?", (job_id, owner)).fetchone()
            if row is None:
                return "lost"
            if permanent or row["attempts"] >= max_attempts:
                c.execute("UPDATE jobs SET state='parked', reason=?, finished=?, lease_owner=NULL WHERE id=?", (reason, now, job_id))
                return "parked"
            delay = retry_base_seconds * 2 ** (row["attempts"] - 1)
            c.execute("UPDATE jobs SET state='failed', reason=?, next_try=?, lease_owner=NULL WHERE id=?", (reason, now + delay, job_id))
            return "failed"

    def requeue(self, job_id: str) -> str:
        """Operator action. A job whose results wait in the outbox (parked or pending deliveries): its deliveries are
        retried now, without re-running the model. A parked/failed/cancelled job: a fresh set of attempts.
        Returns what was done (``deliveries``, ``job``, or ``nothing``)."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return "nothing"
            n = c.execute("UPDATE outbox SET state='pending', next_try=0, created=? WHERE job_id=? AND state IN ('parked', 'pending', 'cancelled')",
                          (now, job_id)).rowcount
            if row["state"] == "done":
                return "deliveries" if n else "nothing"
            if row["state"] in ("parked", "failed", "cancelled"):
                c.execute("UPDATE jobs SET state='queued', attempts=0, next_try=0, reason=NULL, lease_owner=NULL WHERE id=?", (job_id,))
                return "job"
        return "nothing"

    def cancel(self, job_id: str, reason: str = "cancelled by operator") -> bool:
        """Operator action: a job that has not finished will not run; its undelivered results are not sent."""
        with self.tx() as c:
            n = c.execute("UPDATE jobs SET state='cancelled', reason=?, finished=?, lease_owner=NULL WHERE id=? AND state NOT IN ('done', 'cancelled')",
                          (reason, time.time(), job_id)).rowcount
            m = c.execute("UPDATE outbox SET state='cancelled', last_error=? WHERE job_id=? AND state IN ('pending', 'parked')", (reason, job_id)).rowcount
        return bool(n or m)

    def job(self, job_id: str) -> Job | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return self._job(rows[0]) if rows else None

    def jobs(self, state: str | None = None) -> list[Job]:
        sql, args = ("SELECT * FROM jobs WHERE state=? ORDER BY created, id", (state,)) if state else ("SELECT * FROM jobs ORDER BY created, id", ())
        return [self._job(r) for r in self.query(sql, args)]

    # ----- sending ------------------------------------------------------------------------------
    def was_sent(self, job_id: str, output: str, destination: str) -> bool:
        return bool(self.query("SELECT 1 FROM sent WHERE job_id=? AND output=? AND destination=?", (job_id, output, destination)))

    def mark_sent(self, job_id: str, output: str, destination: str, sop_uid: str) -> None:
        with self.tx() as c:
            c.execute("INSERT OR IGNORE INTO sent VALUES (?,?,?,?,?)", (job_id, output, destination, sop_uid, time.time()))

    # ----- outbox -------------------------------------------------------------------------------
    def add_outbox(self, job_id: str, items: list[tuple[str, str, str, str]], when: float | None = None) -> None:
        """Queue results for delivery: (output, destination, path, sop_uid) each; already queued ones are kept as they are."""
        when = time.time() if when is None else when
        with self.tx() as c:
            c.executemany("INSERT OR IGNORE INTO outbox(job_id, output, destination, path, sop_uid, state, attempts, next_try, created) "
                          "VALUES (?,?,?,?,?,'pending',0,0,?)", [(job_id, o, d, p, u, when) for o, d, p, u in items])

    def due_deliveries(self, destination: str, now: float | None = None, limit: int = 50) -> list[sqlite3.Row]:
        now = time.time() if now is None else now
        return self.query("""SELECT o.* FROM outbox o JOIN jobs j ON j.id=o.job_id WHERE o.destination=? AND o.state='pending'
                             AND o.next_try <= ? AND j.state != 'cancelled' ORDER BY o.created, o.job_id, o.output LIMIT ?""",
                          (destination, now, limit))

    def delivered(self, job_id: str, output: str, destination: str, sop_uid: str) -> None:
        now = time.time()
        with self.tx() as c:
            c.execute("UPDATE outbox SET state='sent', sent_at=?, attempts=attempts+1, last_error=NULL WHERE job_id=? AND output=? AND destination=?",
                      (now, job_id, output, destination))
            c.execute("INSERT OR IGNORE INTO sent VALUES (?,?,?,?,?)", (job_id, output, destination, sop_uid, now))

    def delivery_failed(self, job_id: str, output: str, destination: str, error: str, next_try: float, horizon_s: float,
                        permanent: bool = False) -> str:
        """Record a failed try: ``pending`` (retried at ``next_try``) or ``parked`` (past the horizon, or ``permanent``)."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT created FROM outbox WHERE job_id=? AND output=? AND destination=?", (job_id, output, destination)).fetchone()
            if row is None:
                return "lost"
            parked = permanent or now - float(row["created"]) >= horizon_s
            c.execute("UPDATE outbox SET state=?, attempts=attempts+1, next_try=?, last_error=? WHERE job_id=? AND output=? AND destination=?",
                      ("parked" if parked else "pending", next_try, error[:500], job_id, output, destination))
        return "parked" if parked else "pending"

    def outbox(self, job_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM outbox" + (" WHERE job_id=?" if job_id else "") + " ORDER BY created, job_id, output, destination"
        return [dict(r) for r in self.query(sql, (job_id,) if job_id else ())]

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Per destination: deliveries by state."""
        out: dict[str, dict[str, int]] = {}
        for r in self.query("SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY destination, state"):
            out.setdefault(r["destination"], {s: 0 for s in OUTBOX_STATES})[r["state"]] = r["n"]
        return out

    # ----- expert feedback (tables feedback, feedback_scores, feedback_unlinked) -----------------
    def record_feedback(self, row: dict[str, Any]) -> str:
        """Record a linked correction (its file already written durably) as ``pending``; returns ``new``, ``duplicate``
        (same object and file) or ``replaced`` (same SOP Instance UID, new content: scored again). A quarantined
        (unlinked) copy of the same object leaves the unlinked list in the same transaction."""
        with self.tx() as c:
            c.execute("DELETE FROM feedback_unlinked WHERE sop_uid=?", (row["sop_uid"],))
            old = c.execute("SELECT path FROM feedback WHERE id=?", (row["id"],)).fetchone()
            if old is not None and old["path"] == row["path"]:
                return "duplicate"
            c.execute("DELETE FROM feedback_scores WHERE feedback_id=?", (row["id"],))
            cols = list(row) + ["state"]
            c.execute(f"INSERT OR REPLACE INTO feedback({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                      [row[k] for k in row] + ["pending"])
        return "new" if old is None else "replaced"

    def record_unlinked(self, *, sop_uid: str, path: str, kind: str, study_uid: str, reason: str, via: str, calling_ae: str,
                        when: float | None = None) -> None:
        """Quarantine a correction that no AI result of this server matches (kept with its reason, never scored)."""
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO feedback_unlinked VALUES (?,?,?,?,?,?,?,?)",
                      (sop_uid, path, kind, study_uid, reason, via, calling_ae, time.time() if when is None else when))

    def save_scores(self, feedback_id: str, rows: list[dict[str, Any]], label_map: str | None, image: str | None = None) -> None:
        """Store a correction's per-segment scores, its label map and its kept source image (a file or a folder of the
        case's own links to the source series) and mark it scored, in one transaction."""
        with self.tx() as c:
            c.execute("DELETE FROM feedback_scores WHERE feedback_id=?", (feedback_id,))
            c.executemany(f"INSERT INTO feedback_scores(feedback_id, {', '.join(SCORE_COLUMNS)}) VALUES ({', '.join('?' * (len(SCORE_COLUMNS) + 1))})",
                          [[feedback_id] + [r.get(k) for k in SCORE_COLUMNS] for r in rows])
            c.execute("UPDATE feedback SET state='scored', reason=NULL, scored_at=?, label_map=?, image=? WHERE id=?",
                      (time.time(), label_map, image, feedback_id))

    def feedback_failed(self, feedback_id: str, reason: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE feedback SET state='failed', reason=?, scored_at=? WHERE id=?", (reason[:500], time.time(), feedback_id))

    def feedback_rows(self, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM feedback" + (" WHERE state=?" if state else "") + " ORDER BY received_at, id"
        return [dict(r) for r in self.query(sql, (state,) if state else ())]

    def feedback_scores(self) -> list[dict[str, Any]]:
        """Every scored segment joined with its correction (reader, model, version, dates)."""
        return [dict(r) for r in self.query("""SELECT f.id AS feedback_id, f.reader, f.model, f.model_version, f.job_id, f.instance,
                f.kind, f.linked_by, f.via, f.received_at, f.corrected_at, s.* FROM feedback_scores s JOIN feedback f ON f.id=s.feedback_id
                WHERE f.state='scored' ORDER BY f.corrected_at, f.id, s.segment_number""")]

    def unlinked_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM feedback_unlinked ORDER BY received_at")]

    # ----- status -------------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        queue = {s: 0 for s in STATES}
        for r in self.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            queue[r["state"]] = r["n"]
        per: dict[str, dict[str, Any]] = {}
        for r in self.query("""SELECT instance, state, COUNT(*) AS n, AVG(finished - last_image_at) AS lat FROM jobs GROUP BY instance, state"""):
            d = per.setdefault(r["instance"], {s: 0 for s in STATES})
            d[r["state"]] = r["n"]
            if r["state"] == "done" and r["lat"] is not None:
                d["mean_latency_s"] = round(float(r["lat"]), 3)
        received = {r["instance"]: r["n"] for r in self.query("SELECT instance, COUNT(*) AS n FROM received GROUP BY instance")}
        for inst, n in received.items():
            per.setdefault(inst, {s: 0 for s in STATES})["received"] = n
        unrouted = self.query("SELECT COUNT(*) AS n, SUM(purged_at IS NULL) AS kept FROM unrouted")[0]
        return {"queue": queue, "instances": per, "sent": self.query("SELECT COUNT(*) AS n FROM sent")[0]["n"],
                "outbox": self.outbox_counts(), "unrouted": {"total": unrouted["n"], "kept": unrouted["kept"] or 0}}


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a power cut."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(folder: Path) -> None:
    """Create missing folders and fsync each new one's parent, so that a new folder survives a power cut too."""
    if folder.is_dir():
        return
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    for new in reversed(missing):
        fsync_dir(new.parent)


def write_durably(data: bytes | list, final: Path) -> None:
    """Write ``data`` (bytes, or a list of byte buffers written in turn) to ``final`` atomically and durably:
    temp file, fsync, rename, fsync folder."""
    _make_dirs_durably(final.parent)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for part in data if isinstance(data, list) else [data]:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(final.parent)
