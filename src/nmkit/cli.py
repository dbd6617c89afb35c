"""The single `nmkit` command line. Sub-commands live in `nmkit.commands.<name>` modules.

Each command module defines ``register(subparsers)`` which adds one or more sub-parsers and sets
``func`` (called with the parsed namespace, returns an exit code). Modules import heavy dependencies
inside their run functions so that `nmkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

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
    except NmkitError as exc:
        print(f"nmkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
