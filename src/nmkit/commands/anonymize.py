"""`nmkit anonymize IN OUT --map mapping.csv --salt ...`: PS3.15 basic-profile de-identification of a folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "anonymize", help="de-identify DICOM files (PS3.15 basic profile, consistent pseudonyms and UIDs)",
        description="De-identify every DICOM file under IN into OUT/<pseudonym>/<study>/<series>/<sop>.dcm. "
                    "The mapping (original -> pseudonym, UID map, date offsets) goes to --map, which must lie "
                    "outside OUT; it is re-used when it exists, so the same patient keeps the same pseudonym.")
    p.add_argument("input", type=Path, help="folder (or file) of DICOM files")
    p.add_argument("output", type=Path, help="output folder")
    p.add_argument("--map", required=True, type=Path, help="mapping CSV (kept secret, outside OUT)")
    p.add_argument("--salt", default=os.environ.get("NMKIT_DEID_SALT", ""),
                   help="secret salt for pseudonyms/UIDs (default: $NMKIT_DEID_SALT)")
    p.add_argument("--dates", choices=("shift", "remove"), default="shift",
                   help="shift dates by a per-patient offset (times kept) or empty them (default: shift)")
    p.add_argument("--retain-patient-characteristics", action="store_true",
                   help="keep sex/age/weight/size (PS3.15 option; needed for SUV)")
    p.add_argument("--retain-device-identity", action="store_true", help="keep device serial numbers/station names")
    p.add_argument("--keep-safe-private", action="store_true", help="keep known-safe private tags (e.g. SUV factors)")
    p.add_argument("--keep", nargs="*", default=[], metavar="KEYWORD",
                   help="extra attributes to keep verbatim (e.g. SeriesDescription), after review")
    p.add_argument("--report", type=Path, default=None,
                   help="JSON run report (default: next to --map); lists errors and burned-in-annotation flags")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import InputError
    from ..io.deid import DeidOptions, anonymize_tree, _inside
    from ..provenance import provenance

    if not args.salt:
        raise InputError(None, "a secret --salt (or $NMKIT_DEID_SALT) is required for reproducible pseudonyms")
    options = DeidOptions(date_mode=args.dates, retain_patient_characteristics=args.retain_patient_characteristics,
                          retain_device_identity=args.retain_device_identity, keep_safe_private=args.keep_safe_private,
                          keep=tuple(args.keep))
    results = anonymize_tree(args.input, args.output, args.map, args.salt, options,
                             progress=lambda xs: tqdm(xs, desc="anonymize", unit="file", disable=None))
    report_path = args.report or args.map.with_suffix(".report.json")
    if _inside(report_path, args.output):
        raise InputError(report_path, "the run report names original files and must be kept outside OUT")
    config = {k: v for k, v in vars(options).items()}
    report = provenance(config, [str(args.input)], files=[vars(r) for r in results])
    report_path.write_text(json.dumps(report, indent=1, default=str))
    n_err = sum(1 for r in results if r.error)
    n_burn = sum(1 for r in results if r.burned_in_annotation)
    print(f"{len(results) - n_err} file(s) de-identified into {args.output}, {n_err} skipped; "
          f"{n_burn} flagged for possible burned-in annotation; mapping: {args.map}; report: {report_path}")
    return 0 if n_err == 0 else 1
