"""Model registry: versions of each interpretation instance's model, atomic promotion, gate, shadow, rollback.

Bundles are copied into ``<registry>/<model>/<version>/`` and described in ``registry.sqlite``. The
*current* version of a model is one row, changed in a single transaction, so a running server (which
resolves the version at the start of each job) switches on the next job without restart and without
touching an open association. Promotion is refused when the candidate scores worse than the current
version on the instance's validation set by more than the tolerance (the regression gate). A *shadow*
version runs on every job next to the current one; its results are kept but never sent.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (model TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, registered REAL,
    metric REAL, note TEXT, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS current (model TEXT PRIMARY KEY, version TEXT, shadow TEXT, changed REAL);
CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT, action TEXT, version TEXT,
    previous TEXT, at REAL, detail TEXT);
"""


class PromotionRefused(InputError):
    """The regression gate refused a promotion."""


@dataclass
class Resolved:
    model: str
    version: str | None
    path: Path | None
    shadow_version: str | None
    shadow_path: Path | None


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "registry.sqlite"
        conn = sqlite3.connect(str(self.db), timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        finally:
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(str(self.db), timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(str(self.db), timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    # ----- versions -------------------------------------------------------------------------------
    def register(self, model: str, bundle: str | Path, version: str | None = None, note: str = "") -> str:
        """Copy a bundle folder into the registry; the version defaults to the bundle's own ``version``."""
        bundle = Path(bundle)
        desc_path = bundle / "bundle.json"
        if not desc_path.exists():
            raise InputError(bundle, "not a model bundle (bundle.json missing)")
        try:
            desc = json.loads(desc_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(desc_path, f"not a readable bundle description ({exc})") from None
        check_bundle(bundle)
        version = str(version or desc.get("version") or "")
        if not version or "/" in version or version.startswith("."):
            raise InputError(bundle, f"invalid model version {version!r}")
        if self._read("SELECT 1 FROM versions WHERE model=? AND version=?", (model, version)):
            raise InputError(bundle, f"model {model!r} already has a version {version}; versions are immutable")
        dest = self.root / model / version
        tmp = self.root / model / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # training leftovers stay behind; an nnU-Net bundle's fold_N/checkpoint_final.pth is its weights and is kept
        leftovers = shutil.ignore_patterns("checkpoint_best*", "checkpoint_last*", "checkpoint_latest*", "training_log.*")
        shutil.copytree(bundle, tmp, ignore=leftovers)
        desc["version"] = version  # the registry's version is the one recorded in results
        (tmp / "bundle.json").write_text(json.dumps(desc, indent=2))
        tmp.rename(dest)
        with self._tx() as c:
            c.execute("INSERT INTO versions VALUES (?,?,?,?,?,?)", (model, version, str(dest), time.time(), None, note))
            c.execute("INSERT INTO history(model, action, version, at) VALUES (?,?,?,?)", (model, "register", version, time.time()))
        return version

    def versions(self, model: str | None = None) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM versions" + (" WHERE model=?" if model else "") + " ORDER BY model, registered", (model,) if model else ())
        cur = {r["model"]: (r["version"], r["shadow"]) for r in self._read("SELECT * FROM current")}
        out = []
        for r in rows:
            c, s = cur.get(r["model"], (None, None))
            out.append({"model": r["model"], "version": r["version"], "path": r["path"], "metric": r["metric"], "note": r["note"],
                        "current": r["version"] == c, "shadow": r["version"] == s})
        return out

    def path(self, model: str, version: str) -> Path:
        rows = self._read("SELECT path FROM versions WHERE model=? AND version=?", (model, version))
        if not rows:
            raise InputError(None, f"model {model!r} has no registered version {version!r}")
        return Path(rows[0]["path"])

    def current(self, model: str) -> Resolved:
        """The version to use now (resolved by a worker at the start of each job)."""
        rows = self._read("SELECT version, shadow FROM current WHERE model=?", (model,))
        version, shadow = (rows[0]["version"], rows[0]["shadow"]) if rows else (None, None)
        return Resolved(model, version, self.path(model, version) if version else None, shadow, self.path(model, shadow) if shadow else None)

    def history(self, model: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read("SELECT * FROM history WHERE model=? ORDER BY id", (model,))]

    # ----- promotion ------------------------------------------------------------------------------
    def promote(self, model: str, version: str, validation: str | None = None, tolerance: float = 0.02, force: bool = False,
                split: str | None = None, head: str | None = None, min_dice: float = 0.5) -> dict[str, Any]:
        """Make ``version`` current (one transaction). With a validation manifest, refuse a regression against the
        current version, or (first promotion) a Dice below ``min_dice``. Every refusal - gate, unknown version,
        a bundle or manifest that fails - is recorded in the history and raised as :class:`PromotionRefused`."""
        cur = Resolved(model, None, None, None, None)
        try:
            self.path(model, version)
            cur = self.current(model)
            return self._promote(model, version, cur, validation, tolerance, force, split, head, min_dice)
        except PromotionRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing gate is a refusal with its reason, never a traceback
            problem = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            self._refused(model, version, cur.version, {"error": problem[:500]})
            raise PromotionRefused(getattr(exc, "path", None) or validation, f"promotion of {model} {version} refused: {problem}") from None

    def _refused(self, model: str, version: str, previous: str | None, detail: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO history(model, action, version, previous, at, detail) VALUES (?,?,?,?,?,?)",
                      (model, "refused", version, previous, time.time(), json.dumps(detail, default=str)))

    def _promote(self, model: str, version: str, cur: Resolved, validation: str | None, tolerance: float, force: bool,
                 split: str | None, head: str | None, min_dice: float) -> dict[str, Any]:
        detail: dict[str, Any] = {"tolerance": tolerance}
        if validation and cur.version != version and not force:
            cand = evaluate_bundle(self.path(model, version), validation, split, head=head)
            detail["candidate"] = cand
            with self._tx() as c:
                c.execute("UPDATE versions SET metric=? WHERE model=? AND version=?", (cand["dice"], model, version))
            if cur.version is None:  # first promotion: an absolute floor, since there is nothing to compare with
                detail["min_dice"] = min_dice
                if cand["dice"] < min_dice:
                    self._refused(model, version, None, detail)
                    raise PromotionRefused(validation, f"promotion of {model} {version} refused: Dice {cand['dice']:.4f} is below "
                                                       f"gate_min_dice {min_dice} (first promotion)")
            else:
                base = evaluate_bundle(self.path(model, cur.version), validation, split, head=head)
                detail["current"] = base
                with self._tx() as c:
                    c.execute("UPDATE versions SET metric=? WHERE model=? AND version=?", (base["dice"], model, cur.version))
                if cand["dice"] < base["dice"] - tolerance:
                    self._refused(model, version, cur.version, detail)
                    raise PromotionRefused(validation, f"promotion of {model} {version} refused: Dice {cand['dice']:.4f} is worse than "
                                                       f"current {cur.version} ({base['dice']:.4f}) by more than {tolerance}")
        with self._tx() as c:
            c.execute("INSERT INTO current(model, version, shadow, changed) VALUES (?,?,NULL,?) ON CONFLICT(model) DO UPDATE SET "
                      "version=excluded.version, shadow=CASE WHEN shadow=excluded.version THEN NULL ELSE shadow END, changed=excluded.changed",
                      (model, version, time.time()))
            c.execute("INSERT INTO history(model, action, version, previous, at, detail) VALUES (?,?,?,?,?,?)",
                      (model, "promote", version, cur.version, time.time(), json.dumps(detail, default=str)))
        return {"model": model, "version": version, "previous": cur.version, **detail}

    def rollback(self, model: str) -> str:
        """Go back to the version that was current before the last promotion."""
        steps = [h for h in self.history(model) if h["action"] in ("promote", "rollback")]
        if not steps or not steps[-1]["previous"]:
            raise InputError(None, f"model {model!r} has no earlier version to roll back to")
        target, cur = steps[-1]["previous"], steps[-1]["version"]
        with self._tx() as c:
            c.execute("UPDATE current SET version=?, changed=? WHERE model=?", (target, time.time(), model))
            c.execute("INSERT INTO history(model, action, version, previous, at) VALUES (?,?,?,?,?)", (model, "rollback", target, cur, time.time()))
        return target

    def set_shadow(self, model: str, version: str | None) -> None:
        """Run ``version`` in shadow mode (``None`` stops shadowing)."""
        if version:
            self.path(model, version)
        with self._tx() as c:
            c.execute("INSERT INTO current(model, version, shadow, changed) VALUES (?,NULL,?,?) ON CONFLICT(model) DO UPDATE SET shadow=excluded.shadow",
                      (model, version, time.time()))
            c.execute("INSERT INTO history(model, action, version, at) VALUES (?,?,?,?)", (model, "shadow", version, time.time()))


def check_bundle(bundle: str | Path) -> None:
    """Load the bundle on the CPU (network built, weights read): a bundle that cannot be served is
    refused at registration with the reason, not found out by the first patient's job."""
    try:
        from ..segment.bundle import load_bundle

        loaded = load_bundle(bundle, device="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure is the refusal's reason
        problem = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        raise InputError(bundle, f"model bundle cannot be loaded: {problem}"[:500]) from None
    if not getattr(loaded, "labels", None):
        raise InputError(bundle, "model bundle has no labels (nothing to segment)")


def evaluate_bundle(bundle_path: str | Path, manifest: str | Path, split: str | None = None, keep_largest: bool = False,
                    head: str | None = None) -> dict[str, Any]:
    """Mean Dice of a bundle on a validation manifest (CSV with image, mask, split columns; all rows when ``split`` is None).

    ``head``: for multi-reader bundles, the head the instance sends (a single-head bundle ignores it, so a gate can
    compare an old single-head version with a new multi-head one).
    """
    import numpy as np

    from ..segment.bundle import load_bundle
    from ..segment.data import load_case, read_manifest
    from ..segment.infer import predict_image
    from ..segment.train import dice_per_class

    table = read_manifest(manifest)
    if split is not None:
        table = table[table["split"] == split]
    if table.empty:
        raise InputError(manifest, "the validation manifest has no cases" + (f" in split {split!r}" if split else ""))
    bundle = load_bundle(bundle_path, device="cpu")
    scores = []
    for row in table.itertuples():
        case = load_case(row.image, row.mask, str(row.case_id))
        pred = predict_image(bundle, case.image, keep_largest=keep_largest, head=head if bundle.heads else None).array
        scores.append(dice_per_class(np.asarray(pred).reshape(case.label.shape), case.label, sorted(bundle.labels)))
    return {"dice": float(np.mean(scores)), "n": len(scores), "version": bundle.version}
