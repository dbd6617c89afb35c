"""`nmkit anonymize IN OUT --map mapping.csv --salt ... [--profile research|basic]`: de-identify a folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

PROFILE_HELP = ("research (default): PS3.15 basic profile + retain patient characteristics (weight, size, sex, age: "
                "SUV stays computable) + modified dates (one per-patient whole-day shift; times and intervals kept) "
                "+ clean descriptors (series/study descriptions kept). basic: the PS3.15 basic profile alone "
                "(dates, weight and descriptions removed; SUV from Bq/ml is no longer possible)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "anonymize", help="de-identify DICOM files (PS3.15 profiles, consistent pseudonyms and UIDs)",
        description="De-identify every DICOM file under IN into OUT/<pseudonym>/<study>/<series>/<sop>.dcm. "
                    "The mapping (original -> pseudonym, UID map, date offsets) goes to --map, which must lie "
                    "outside OUT; it is re-used when it exists, so the same patient keeps the same pseudonym. "
                    "The profile and options are recorded in each file (DeidentificationMethod and its code "
                    "sequence, PatientIdentityRemoved=YES).")
    p.add_argument("input", type=Path, help="folder (or file) of DICOM files")
    p.add_argument("output", type=Path, help="output folder")
    p.add_argument("--map", required=True, type=Path, help="mapping CSV (kept secret, outside OUT)")
    p.add_argument("--salt", default=os.environ.get("NMKIT_DEID_SALT", ""),
                   help="secret salt for pseudonyms/UIDs/date offsets (default: $NMKIT_DEID_SALT)")
    p.add_argument("--profile", choices=("research", "basic"), default="research", help=PROFILE_HELP)
    p.add_argument("--dates", choices=("shift", "remove"), default=None,
                   help="override the profile: shift dates by a per-patient offset (times kept) or empty them")
    p.add_argument("--retain-patient-characteristics", action="store_true",
                   help="keep sex/age/weight/size also with --profile basic (PS3.15 option; needed for SUV)")
    p.add_argument("--retain-device-identity", action="store_true", help="keep device serial numbers/station names")
    p.add_argument("--keep-safe-private", action="store_true", help="keep known-safe private tags (e.g. SUV factors)")
    p.add_argument("--keep", nargs="*", default=[], metavar="KEYWORD",
                   help="extra attributes to keep verbatim (e.g. ProtocolName), after review")
    p.add_argument("--report", type=Path, default=None,
                   help="JSON run report (default: next to --map); lists errors, DICOM warnings and burned-in flags")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: only when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import InputError
    import logging

    from ..io.deid import _inside, anonymize_tree, profile_options
    from ..io.dicom_warnings import DicomWarnings
    from ..provenance import provenance

    if not args.salt:
        raise InputError(None, "a secret --salt (or $NMKIT_DEID_SALT) is required for reproducible pseudonyms")
    overrides: dict[str, object] = {"retain_device_identity": args.retain_device_identity,
                                    "keep_safe_private": args.keep_safe_private, "keep": tuple(args.keep)}
    if args.dates:
        overrides["date_mode"] = args.dates
    if args.retain_patient_characteristics:
        overrides["retain_patient_characteristics"] = True
    try:
        options = profile_options(args.profile, **overrides)
    except ValueError as exc:  # e.g. an unknown keyword in --keep
        raise InputError(None, f"--keep: {exc}") from exc
    report_path = args.report or args.map.with_suffix(".report.json")
    if _inside(report_path, args.output):
        raise InputError(report_path, "the run report names original files and must be kept outside OUT")
    disable = None if args.progress is None else not args.progress
    collected = DicomWarnings()
    results = anonymize_tree(args.input, args.output, args.map, args.salt, options,
                             progress=lambda xs: tqdm(xs, desc="anonymize", unit="file", disable=disable),
                             dicom_warnings=collected)
    collected.report(logging.getLogger("nmkit.anonymize"), verbose=getattr(args, "verbose", 0) > 0)
    config = {k: v for k, v in vars(options).items()}
    report = provenance(config, [str(args.input)], files=[vars(r) for r in results])
    report_path.write_text(json.dumps(report, indent=1, default=str))
    n_other = sum(1 for r in results if r.not_dicom)
    n_err = sum(1 for r in results if r.error and not r.not_dicom)
    n_ok = len(results) - n_err - n_other
    n_burn = sum(1 for r in results if r.burned_in_annotation)
    if n_ok == 0 and n_err == 0:
        raise InputError(args.input, "no DICOM files found")
    print(f"{n_ok} file(s) de-identified into {args.output} (profile {options.profile}), {n_err} failed, "
          f"{n_other} non-DICOM file(s) ignored; {collected.n_files} with DICOM warnings (listed in the report); "
          f"{n_burn} flagged for possible burned-in annotation; mapping: {args.map}; report: {report_path}")
    return 0 if n_err == 0 else 1
