"""`nmkit pull PACS --out DIR --db catalog.sqlite [filters]`: fetch a cohort from a PACS (DIMSE or DICOMweb)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pull", help="query a PACS (C-FIND / QIDO-RS) and fetch a cohort (C-MOVE, C-GET or WADO-RS), resumable",
        description="Ask the PACS which series match the filters, fetch the instances not yet in --out (a re-run "
                    "fetches only what is missing; a killed pull leaves only complete files), optionally "
                    "de-identify them as they arrive, then index --out into the catalog --db. C-MOVE sends the "
                    "images to nmkit's own temporary store SCP: the PACS must know --aet at this host and "
                    "--store-port. Ends with a summary of what failed and why (exit 1 when something failed).")
    p.add_argument("pacs", help="AET@host:port (DIMSE) or http(s)://host:port/dicom-web (DICOMweb base URL)")
    p.add_argument("--out", required=True, type=Path, help="destination folder (OUT/<patient>/<study>/<series>/<sop>.dcm)")
    p.add_argument("--db", type=Path, default=None, help="catalog database to index OUT into (created when missing)")
    q = p.add_argument_group("filters (empty = any; combined with AND)")
    q.add_argument("--patient", default="", help="PatientID (DICOM wildcards * and ? allowed)")
    q.add_argument("--study", default="", help="StudyInstanceUID")
    q.add_argument("--accession", default="", help="AccessionNumber")
    q.add_argument("--modality", default="", help="series Modality, e.g. NM, PT, CT, SEG")
    q.add_argument("--date", default="", help="StudyDate: YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD")
    q.add_argument("--description", default="", help="glob on the series or study description, case-insensitive "
                                                     "(e.g. '*thyroid*')")
    r = p.add_argument_group("retrieval")
    r.add_argument("--method", choices=("move", "get", "wado"), default=None,
                   help="move (C-MOVE to our store SCP; default for DIMSE), get (C-GET) or wado (WADO-RS; DICOMweb)")
    r.add_argument("--aet", default="NMKIT", help="our AE title (calling AE and C-MOVE destination; default NMKIT)")
    r.add_argument("--move-aet", default="", help="C-MOVE destination AE title of our store SCP (default: --aet)")
    r.add_argument("--store-port", type=int, default=11113, help="port of our C-MOVE store SCP (default 11113)")
    r.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    r.add_argument("--dry-run", action="store_true", help="list the matching series and what is missing; fetch nothing")
    d = p.add_argument_group("de-identification on the fly (nmkit.io.deid; same salt = same pseudonyms as `anonymize`)")
    d.add_argument("--anonymize", choices=("research", "basic"), default=None,
                   help="profile (see `nmkit anonymize --help`); default: keep identities")
    d.add_argument("--salt", default=os.environ.get("NMKIT_DEID_SALT", ""), help="secret salt (default: $NMKIT_DEID_SALT)")
    d.add_argument("--map", type=Path, default=None, help="mapping CSV (kept secret, outside OUT; re-used when it exists)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal only anyway)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..catalog.pull import PullOptions, PullQuery, pull
    from ..catalog.schema import check_database_file
    from ..errors import InputError
    from ..io.dicom_warnings import DicomWarnings

    if args.out.exists() and not args.out.is_dir():
        raise InputError(args.out, "--out exists and is not a folder")
    if args.db is not None:
        check_database_file(args.db)
    if args.store_port is not None and not 0 < args.store_port < 65536:
        raise InputError(None, f"--store-port {args.store_port}: not a TCP port (1-65535)")
    query = PullQuery(patient=args.patient, study=args.study, accession=args.accession, modality=args.modality,
                      date=args.date, description=args.description)
    opts = PullOptions(out=args.out, db=args.db, method=args.method or "", calling_aet=args.aet, move_aet=args.move_aet,
                       store_port=args.store_port, deid_profile=args.anonymize or "", salt=args.salt,
                       map_path=args.map, timeout_s=args.timeout)
    disable = True if args.no_progress else None

    def progress(total: int):
        return tqdm(total=total, desc="pull", unit="file", disable=disable, leave=False)

    collected = DicomWarnings()
    report, plans = pull(args.pacs, query, opts, progress=progress, dry_run=args.dry_run, dicom_warnings=collected)
    collected.report(logging.getLogger("nmkit.pull"), verbose=getattr(args, "verbose", 0) > 0)
    if args.dry_run:
        for plan in plans:
            print(f"{plan.patient_id}\t{plan.study_uid}\t{plan.series_uid}\t{plan.modality}\t{plan.description}\t"
                  f"{len(plan.instances)} instance(s), {len(plan.missing)} missing")
    for series_uid, why in report.failures:
        print(f"FAILED series {series_uid}: {why}")
    where = f" -> {args.out}" + (f", catalog {args.db}" if args.db is not None and not args.dry_run else "")
    print(f"{'dry run: ' if args.dry_run else ''}{report.line()}{where}")
    return 1 if report.failures else 0
