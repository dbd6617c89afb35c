"""The single `nmkit` command line. Sub-commands live in `nmkit.commands.<name>` modules.

Each command module defines ``register(subparsers)`` which adds one or more sub-parsers and sets
``func`` (called with the parsed namespace, returns an exit code). Modules import heavy dependencies
inside their run functions so that `nmkit --help` stays fast.

Errors: no user mistake ends in a traceback. ``main`` turns every exception a command raises into one line on
stderr, ``nmkit COMMAND: error: ...`` (exit 2) for bad input, ``nmkit COMMAND: internal error: ...`` (exit 1) for
a bug, with the traceback only under ``-v``; Ctrl-C exits 130. Argparse reports bad arguments (usage, exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback

from . import __version__
from .errors import NmkitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmkit", description="AI toolkit for nuclear medicine and medical imaging.")
    parser.add_argument("--version", action="version", version=f"nmkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"nmkit {command_name(parser, args)}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error ends as one line; the traceback only with -v
        return report_error(command_name(parser, args), exc, verbose=args.verbose > 0)


def command_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The chosen (sub-)command words, e.g. ``synth train``, for the first word of an error line."""
    words: list[str] = []
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs and subs[0].dest != argparse.SUPPRESS else None
        if not chosen or chosen not in subs[0].choices:
            return " ".join(words) or "nmkit"
        words.append(chosen)
        parser = subs[0].choices[chosen]


def report_error(command: str, exc: BaseException, verbose: bool = False) -> int:
    """Print one line for ``exc`` on stderr (after its traceback when ``verbose``); return the exit code.

    User errors (exit 2): ``NmkitError``; a file that is missing, a folder where a file is expected (and the
    reverse), no permission, and other OS errors that name a file; a file pydicom cannot read as DICOM.
    Anything else is a bug (exit 1): ``internal error: Type: message`` and a hint to rerun with ``-v``.
    """
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    prefix = f"nmkit {command}: error:"
    if isinstance(exc, NmkitError):
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return 2
    if isinstance(exc, BrokenPipeError):  # `nmkit query ... | head`: the reader went away; nothing to report
        return 1
    if isinstance(exc, OSError) and (exc.filename is not None or isinstance(exc, _PATH_ERRORS)):
        print(f"{prefix} {_os_error_line(exc)}", file=sys.stderr)
        return 2
    if type(exc).__name__ == "InvalidDicomError" and type(exc).__module__.startswith("pydicom"):
        path = _dicom_path(exc)
        where = f"{path}: " if path else ""
        from .io.dicom_series import unreadable_reason

        print(f"{prefix} {where}{_one_line(unreadable_reason(exc))}", file=sys.stderr)
        return 2
    hint = "" if verbose else " (run with -v for the traceback)"
    print(f"nmkit {command}: internal error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
    return 1


_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def _one_line(value: object) -> str:
    """The message on a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(value).split())


def _os_error_line(exc: OSError) -> str:
    """``path: reason`` for an OS error (both file names when there are two, e.g. a failed rename)."""
    if exc.filename is None:
        return _one_line(exc)
    reason = exc.strerror or _one_line(exc)
    names = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{names}: {reason}"


def _dicom_path(exc: BaseException) -> str | None:
    """The file pydicom was reading when ``exc`` was raised (``dcmread``'s ``fp``), if it can be found."""
    tb = exc.__traceback__
    path = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "dcmread":
            fp = tb.tb_frame.f_locals.get("fp")
            name = getattr(fp, "name", fp)
            if isinstance(name, (str, os.PathLike)):
                path = os.fspath(name)
        tb = tb.tb_next
    return path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
