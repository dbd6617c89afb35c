"""`nmkit index DIR --db catalog.sqlite`: index DICOM headers into an SQLite catalog (incremental)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index", help="index a DICOM folder into an SQLite catalog (patient/study/series/instance, tracer, ROI links)",
        description="Walk DIR reading headers only; files already indexed with the same mtime/size are skipped; "
                    "unreadable files are recorded in the `errors` table with the reason.")
    p.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="folder(s) to index")
    p.add_argument("--db", required=True, type=Path, help="catalog database (created when missing)")
    p.add_argument("--no-prune", action="store_true", help="keep entries of files that no longer exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..catalog.index import index_folder

    for folder in args.folders:
        stats = index_folder(folder, args.db, prune=not args.no_prune,
                             progress=lambda xs: tqdm(xs, desc=f"index {folder.name}", unit="file", disable=None))
        print(f"{folder}: {stats.seen} file(s) seen, {stats.indexed} indexed, {stats.skipped_unchanged} unchanged, "
              f"{stats.errors} unreadable (see the errors table), {stats.removed} removed -> {args.db}")
    return 0
