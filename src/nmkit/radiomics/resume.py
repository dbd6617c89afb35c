"""Resumable cohort extraction: a durable append log of finished cases next to the output table.

``<out>.partial.jsonl`` holds one JSON line per finished case: ``{"key", "config_hash", "index", "rows",
"errors"}``. The parent process (never a worker, so it works the same for a local pool and for Dask) appends the
line, flushes and fsyncs it as soon as the case's result arrives: a crash or SIGKILL loses at most the case being
written (a truncated last line is ignored on reading). A re-run with the same configuration reads the log, takes the
finished cases from it and computes only the others; the final table is built from the same rows in case order, so
it equals an uninterrupted run's.

The key of a case is a hash of everything its rows depend on: the case record (every column of the case table,
masks included), the size and modification time of its image and mask files, the configuration hash, the extraction
options (``--roi``, ``--diagnostics``) and the nmkit version. A changed case, file, configuration or option is therefore
recomputed; a case that failed as a whole is not
logged and is retried on the next run. A case whose single structures failed is logged with its per-structure
errors (those are deterministic failures of the data: a re-run reports them again without recomputing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

SCHEMA = "nmkit-radiomics-partial/1"


def partial_path(out: str | Path) -> Path:
    """The append log of an output table: ``<out>.partial.jsonl`` in the same folder."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


def _plain(value: Any) -> Any:
    """A JSON-able equivalent of a cell: numpy scalars as Python numbers, mask references as dicts, else text."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def case_key(case: Mapping[str, Any], config_hash: str, options: Mapping[str, Any]) -> str:
    """A stable hash of what a case's rows depend on (case record, config hash, options, nmkit version)."""
    from .. import __version__

    def norm(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None  # NaN and None both mean "blank" in a case table
        return v

    record = {str(k): norm(v) for k, v in case.items()}
    text = json.dumps({"case": record, "config": config_hash, "options": dict(options), "version": __version__,
                       "files": files_fingerprint(case)}, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _case_files(case: Mapping[str, Any]) -> list[str]:
    """The image and every mask file a case names (the cells its rows are read from)."""
    files = [str(case.get("image") or "")]
    for ref in case.get("masks") or []:
        files.append(str(getattr(ref, "file", None) or (ref.get("file") if isinstance(ref, Mapping) else "") or ""))
    for column, value in case.items():
        if (column == "mask" or str(column).startswith("mask_")) and isinstance(value, str):
            files.append(value)
    return sorted({f for part in files for f in part.split(";") if f})


def files_fingerprint(case: Mapping[str, Any]) -> list[list[Any]]:
    """Size and modification time of the case's files (every file of a DICOM folder): a file edited in place
    after a failed or finished run makes the case's key change, so the re-run recomputes it."""
    out: list[list[Any]] = []
    for name in _case_files(case):
        path = Path(name)
        if path.is_dir():
            for folder, _, files in os.walk(path):
                for f in sorted(files):
                    try:
                        st = os.stat(os.path.join(folder, f))
                    except OSError:
                        continue
                    out.append([os.path.join(folder, f), st.st_size, st.st_mtime_ns])
        elif path.exists():
            st = path.stat()
            out.append([name, st.st_size, st.st_mtime_ns])
    return out


class PartialStore:
    """The append log of one cohort output: ``done`` maps case key -> ``{"rows", "errors"}`` read from earlier runs."""

    def __init__(self, path: str | Path, config_hash: str):
        self.path = Path(path)
        self.config_hash = config_hash
        self.done: dict[str, dict[str, Any]] = self._read()
        self._fh = None

    def _read(self) -> dict[str, dict[str, Any]]:
        """Finished cases of this configuration; other configurations' lines and a torn last line are skipped."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return done
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    log.info("%s: line %d is incomplete (an interrupted write) - that case is recomputed", self.path, number)
                    continue
                if isinstance(entry, dict) and entry.get("config_hash") == self.config_hash and "key" in entry:
                    done[entry["key"]] = {"rows": entry.get("rows", []), "errors": entry.get("errors", [])}
        return done

    def open(self) -> None:
        """Open the log for appending, holding an exclusive lock (POSIX ``flock``) until :meth:`close`: a second run
        writing the same log at the same time would interleave lines, so it fails at once instead."""
        if self._fh is not None:
            return
        from ..errors import InputError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a", encoding="utf-8")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                fh.close()
                raise InputError(self.path, "another nmkit radiomics run is writing this log of finished cases; "
                                            "wait for it to end or write to another --out") from exc
        if fh.tell() == 0:
            fh.write(json.dumps({"schema": SCHEMA}) + "\n")
            fh.flush()
        self._fh = fh

    def append(self, key: str, index: int, result: Mapping[str, Any]) -> None:
        """Log one finished case durably (flushed and fsynced before returning)."""
        self.open()
        entry = {"key": key, "config_hash": self.config_hash, "index": index, "rows": result["rows"],
                 "errors": result.get("errors", [])}
        self._fh.write(json.dumps(entry, default=_plain) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[key] = {"rows": json.loads(json.dumps(entry["rows"], default=_plain)), "errors": entry["errors"]}

    def close(self) -> None:
        """Close the log (releasing its lock)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def clear(self) -> None:
        """Forget every logged case (a fresh run)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.done = {}
