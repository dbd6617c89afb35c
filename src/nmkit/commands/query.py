"""`nmkit query --db catalog.sqlite [--modality PT --tracer FDG --has-roi ...]`: cohort questions on a catalog."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_COLUMNS = ["patient_id", "study_date", "modality", "series_number", "description", "radiopharmaceutical",
                   "radionuclide", "n_instances", "n_frames", "roi_modalities", "series_uid"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("query", help="query a catalog built by `nmkit index` (series by modality, tracer, ROI...)",
                              description="Select series by criteria (all must match) or run a read-only --sql query.")
    p.add_argument("--db", required=True, type=Path, help="catalog database")
    p.add_argument("--modality", nargs="*", default=None, help="e.g. PT NM CT")
    p.add_argument("--tracer", help="radiopharmaceutical / radionuclide, e.g. FDG, PSMA, Lu177")
    p.add_argument("--description-like", help="SQL LIKE pattern on series description/reconstruction, e.g. %%xSPECT%%")
    p.add_argument("--series-description", metavar="GLOB", help="the same as a shell glob, e.g. '*xSPECT*' (case-insensitive)")
    roi = p.add_mutually_exclusive_group()
    roi.add_argument("--has-roi", dest="has_roi", action="store_const", const=True, default=None,
                     help="only series referenced by an RTSTRUCT or SEG")
    roi.add_argument("--no-roi", dest="has_roi", action="store_const", const=False, help="only series without ROI")
    p.add_argument("--roi-modality", choices=("RTSTRUCT", "SEG"), help="only series referenced by this ROI kind")
    p.add_argument("--patient", help="patient ID (exact) or name (substring)")
    p.add_argument("--sql", help='raw read-only SQL, e.g. "SELECT modality, COUNT(*) FROM series GROUP BY modality"')
    p.add_argument("--columns", nargs="*", default=None, help="columns to show (default: a short selection; 'all')")
    p.add_argument("--format", choices=("table", "csv", "json", "dataset"), default="table",
                   help="dataset: the matching image series as a case table (nmkit-dataset/1) for roi2mask, radiomics ... "
                        "(needs --out)")
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of standard output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..catalog.query import Catalog
    from ..errors import InputError
    from .manifest import glob_to_like

    if not args.db.is_file():
        raise InputError(args.db, "catalog database does not exist (build it with `nmkit index DIR --db FILE`)")
    description_like = args.description_like or glob_to_like(args.series_description)
    if args.format == "dataset":
        return _write_dataset(args, description_like)
    with Catalog(args.db) as cat:
        if args.sql:
            df = cat.sql(args.sql)
        else:
            df = cat.series(modality=args.modality or None, tracer=args.tracer, description_like=description_like,
                            has_roi=args.has_roi, roi_modality=args.roi_modality, patient=args.patient)
            cols = args.columns
            if cols is None:
                df = df[[c for c in DEFAULT_COLUMNS if c in df.columns]]
            elif cols != ["all"]:
                missing = [c for c in cols if c not in df.columns]
                if missing:
                    from ..errors import InputError

                    raise InputError(args.db, f"unknown column(s) {missing}; available: {list(df.columns)}")
                df = df[cols]
    if args.format == "csv":
        text = df.to_csv(index=False)
    elif args.format == "json":
        text = df.to_json(orient="records", indent=1)
    else:
        text = df.to_string(index=False, max_colwidth=40) if len(df) else "(no matching rows)"
    if args.out:
        args.out.write_text(text)
        print(f"{len(df)} row(s) -> {args.out}")
    else:
        print(text)
    return 0


def _write_dataset(args: argparse.Namespace, description_like: str | None) -> int:
    """The query's image series as a case table, with their RTSTRUCT/SEG files as masks."""
    from ..catalog.manifest import manifest_from_catalog, write_manifest
    from ..errors import InputError
    from ..provenance import provenance

    if args.sql or not args.out:
        raise InputError(None, "--format dataset needs --out FILE and the criteria options (not --sql)")
    criteria = {"tracer": args.tracer, "description_like": description_like, "roi_modality": args.roi_modality,
                "patient": args.patient}
    table = manifest_from_catalog(args.db, modality=args.modality or None, require_roi=bool(args.has_roi),
                                  blank_patient="skip", **{k: v for k, v in criteria.items() if v})
    if args.has_roi is False:
        table = table[[len(m) == 0 for m in table.masks]].reset_index(drop=True)
    if table.empty:
        raise InputError(args.db, "no image series match the criteria; nothing written")
    config = {"command": "query", "db": str(args.db.resolve()), "modality": args.modality, "tracer": args.tracer,
              "series_description": description_like, "has_roi": args.has_roi, "patient": args.patient}
    side = write_manifest(table, args.out, provenance(config, [str(args.db.resolve())]))
    print(f"{len(table)} image series of {table.patient_id.nunique()} patient(s), {sum(len(m) > 0 for m in table.masks)} "
          f"with ROI -> {args.out} (case table nmkit-dataset/1; provenance {side})")
    return 0
