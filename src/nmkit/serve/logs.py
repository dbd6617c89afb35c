"""Structured JSON logs for the server, free of patient identifiers.

Every record is one JSON object per line (``ts``, ``level``, ``event`` and key/value fields). DICOM UIDs
are never logged in clear: :func:`uid_hash` turns them into a short, stable hash so that operators can
still correlate events of one series without the log revealing who was scanned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import time
from typing import Any

log = logging.getLogger("nmkit.serve")

# Fields that must never reach a log line in clear text.
_FORBIDDEN = {"PatientName", "PatientID", "PatientBirthDate", "patient_name", "patient_id", "AccessionNumber"}


def uid_hash(uid: str | None) -> str:
    """A short stable pseudonym for a DICOM UID (SHA-256, 12 hex digits)."""
    if not uid:
        return ""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    """Formats records as JSON lines; fields given via ``extra={"fields": {...}}`` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                                "event": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: v for k, v in fields.items() if k not in _FORBIDDEN})
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(data, default=str)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event (``fields`` must not hold patient identifiers; hash UIDs first)."""
    log.log(level, name, extra={"fields": fields})


class _SafeRotatingHandler(logging.handlers.RotatingFileHandler):
    """Rotating JSON log that never prints "Logging error" tracebacks (e.g. disk full): failed lines are counted
    in ``dropped`` (shown in /status and /metrics) and writing resumes when space returns."""

    dropped = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        type(self).dropped += 1


def configure(path: str | None = None, level: int = logging.INFO, max_mb: float = 50.0, backups: int = 5) -> logging.Handler:
    """Send the server's events as JSON lines to ``path`` (rotated at ``max_mb``, ``backups`` old files kept) or stderr."""
    import logging.handlers  # noqa: F401 - RotatingFileHandler

    if path:
        handler: logging.Handler = _SafeRotatingHandler(path, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups, delay=True)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler


def dropped_lines() -> int:
    """Log lines lost because the log could not be written (disk full, permissions)."""
    return _SafeRotatingHandler.dropped


def now() -> float:
    return time.time()
