"""Collect pydicom's warnings per file and report them in at most one line per file (all details with ``-v``).

pydicom reports most header problems twice: ``warnings.warn`` *and* a record on the ``pydicom`` logger
(``pydicom.misc.warn_and_log``). Reading a few hundred imperfect files therefore floods stderr. Commands
that walk many files wrap each read in :meth:`DicomWarnings.capture` and print :meth:`DicomWarnings.report`
at the end::

    collector = DicomWarnings()
    for path in files:
        with collector.capture(path):
            ds = read_header(path)
    collector.report(log, verbose=args.verbose)   # one line per distinct message (with its file count);
                                                   # with -v one line per file listing all its messages
    print(collector.summary())                     # "12 file(s) with DICOM warnings (3 distinct messages)"

The same message seen twice for one file (warning + log record, or a header read before the pixel read) is
kept once. ``capture(key, known=paths)`` attributes messages to ``key`` (e.g. a series) but drops those
already recorded for any of ``known`` (its files). Records below WARNING are passed on to the root logger,
so ``-vv`` still shows pydicom's debug output.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

CAPTURED_LOGGERS = ("pydicom", "highdicom")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")


def looks_like_dicom(path: str | Path) -> bool:
    """True when a file claims to be DICOM: "DICM" at byte 128 (Part 10) or 0, or a DICOM file extension.

    Used to tell an unreadable DICOM file (worth an error) from a file that is simply something else
    (README, LICENSE, a text dump), which is only counted."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:4] == b"DICM"


class _Collect(logging.Handler):
    """Logging handler that hands WARNING+ records to a callback and passes the others to the root logger."""

    def __init__(self, sink) -> None:
        super().__init__(level=logging.NOTSET)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self._sink(record.getMessage())
        else:
            logging.getLogger().handle(record)


class DicomWarnings:
    """Warnings of DICOM reads, per file (or per any string key), in order of first appearance."""

    def __init__(self, loggers: Iterable[str] = CAPTURED_LOGGERS) -> None:
        self.loggers = tuple(loggers)
        self.by_file: dict[str, list[str]] = {}

    @contextmanager
    def capture(self, key: str | Path, known: Iterable[str | Path] = ()) -> Iterator[list[str]]:
        """Silence and record the warnings raised inside the block under ``key``; yields the key's message list."""
        key = str(key)
        seen = {m for k in known for m in self.by_file.get(str(k), ())}
        messages = self.by_file.setdefault(key, [])
        seen.update(messages)

        def add(message: str) -> None:
            message = " ".join(str(message).split())
            if message and message not in seen:
                seen.add(message)
                messages.append(message)

        handler = _Collect(add)
        saved = []
        for name in self.loggers:
            logger = logging.getLogger(name)
            saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers[:] = [handler]
            logger.propagate = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield messages
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers[:] = handlers
                logger.propagate = propagate
            for w in caught:
                add(str(w.message))
            if not messages:
                del self.by_file[key]

    @property
    def n_files(self) -> int:
        """Number of files (keys) with at least one warning."""
        return len(self.by_file)

    def distinct(self) -> list[str]:
        """Every distinct message, in order of first appearance."""
        return list(dict.fromkeys(m for msgs in self.by_file.values() for m in msgs))

    def lines(self, verbose: bool = False) -> list[str]:
        """Default: files grouped by their first message, one line per group with the number of files, the
        first file and how many other messages exist (never more lines than files). ``verbose``: one line per
        file with all its messages."""
        if verbose:
            return [f"{key}: {len(msgs)} DICOM warning(s): " + " | ".join(msgs) for key, msgs in self.by_file.items()]
        groups: dict[str, list[str]] = {}
        for key, msgs in self.by_file.items():
            groups.setdefault(msgs[0], []).append(key)
        out = []
        for first, keys in groups.items():
            others = {m for k in keys for m in self.by_file[k][1:]} - {first}
            more = f" (+{len(others)} other message(s); -v lists them)" if others else ""
            where = keys[0] if len(keys) == 1 else f"{len(keys)} files, first {keys[0]}"
            out.append(f"DICOM warning ({where}): {_short(first)}{more}")
        return out

    def report(self, logger: logging.Logger, verbose: bool = False) -> None:
        """Log :meth:`lines` at WARNING level (one call per file)."""
        for line in self.lines(verbose):
            logger.warning("%s", line)

    def summary(self) -> str:
        """A one-line count, empty when nothing was collected."""
        if not self.by_file:
            return ""
        return f"{self.n_files} file(s) with DICOM warnings ({len(self.distinct())} distinct message(s))"


def _short(message: str, width: int = 200) -> str:
    """The message without pydicom's standard-link boilerplate, cut to ``width`` characters."""
    cut = message.find(" Please see <")
    message = message[:cut] if cut > 0 else message
    return message if len(message) <= width else message[: width - 3] + "..."
