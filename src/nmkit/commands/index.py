"""`nmkit index DIR --db catalog.sqlite`: index DICOM headers into an SQLite catalog (incremental)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("nmkit.index")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index", help="index a DICOM folder into an SQLite catalog (patient/study/series/instance, tracer, ROI links)",
        description="Walk DIR reading headers only; files already indexed with the same mtime/size are skipped; "
                    "unreadable DICOM files are recorded in the `errors` table with the reason; files that are not "
                    "DICOM (README, CSV, PNG, NIfTI, ...) are counted apart. pydicom warnings are printed as one line "
                    "per file (every message with -v).")
    p.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="folder(s) to index")
    p.add_argument("--db", required=True, type=Path, help="catalog database (created when missing)")
    p.add_argument("--no-prune", action="store_true", help="keep entries of files that no longer exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown on a terminal only anyway)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..catalog.index import index_folder
    from ..io.dicom_warnings import DicomWarnings

    collector = DicomWarnings()
    for folder in args.folders:
        def progress(xs, name=folder.name):
            return tqdm(xs, desc=f"index {name}", unit="file", disable=True if args.no_progress else None, leave=False)

        stats = index_folder(folder, args.db, prune=not args.no_prune, progress=progress, collector=collector)
        print(f"{folder}: {stats.line()} -> {args.db}")
    collector.report(log, verbose=getattr(args, "verbose", 0) > 0)
    return 0
