"""`nmkit radiomics`: IBSI-1 features for one image + mask, or for a cohort from a manifest CSV or a DICOM catalog.

Examples::

    nmkit radiomics --image ct.nii.gz --mask gtv.nii.gz --preset ibsi-c --out features.csv
    nmkit radiomics --image ct_dicom/ --mask rtstruct.dcm --roi GTV-1 --preset ibsi-c --out features.csv
    nmkit radiomics --manifest cases.csv --config my.yaml --workers 4 --out cohort.csv
    nmkit radiomics --manifest cases.csv --preset lifex-pet --scheduler dask-local --out cohort.parquet
    nmkit radiomics --catalog archive.sqlite --modality PT --roi GTV --suv bw --preset lifex-pet --out pet.csv

Masks may be label maps or DICOM RTSTRUCT/SEG files (rasterised on the image grid); without ``--roi`` (or a
manifest ``roi`` value) every structure of an RTSTRUCT/SEG gets its own row. ``--catalog`` takes a catalog
built by ``nmkit index`` and extracts every image series (``--modality``) with an RTSTRUCT/SEG referencing it.
A provenance JSON (config, hash, inputs, failures, nmkit version) is written next to the output as
``<out>.provenance.json``. Failing cases are logged and skipped; the exit status is 1 only when nothing worked.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("radiomics", help="IBSI radiomics features (single case, cohort manifest or DICOM catalog)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file (NIfTI/NRRD) or DICOM series folder")
    src.add_argument("--manifest", help="CSV with columns image, mask[, patient_id, study_uid, series_uid, roi, suv, ...]")
    src.add_argument("--catalog", metavar="DB", help="catalog database from `nmkit index`: every image series with an RTSTRUCT/SEG")
    p.add_argument("--mask", help="label map on the image grid, or DICOM RTSTRUCT/SEG (with --image)")
    p.add_argument("--roi", help="ROI: label name or value (label maps), structure name (RTSTRUCT/SEG; exact, else "
                                 "case-insensitive); with --image or --catalog. Default: every structure / any foreground")
    p.add_argument("--modality", action="append", help="with --catalog: image modality to keep (CT, PT, MR, NM; repeatable)")
    cfg = p.add_mutually_exclusive_group()
    cfg.add_argument("--preset", help="shipped preset: ibsi-a..ibsi-e, ibsi-digital-phantom, lifex-pet")
    cfg.add_argument("--config", help="YAML config file (may start from a preset with 'base: ibsi-c')")
    p.add_argument("--suv", choices=["bw", "lbm"], help="convert DICOM PET images to SUV (other modalities are left as they are with --catalog)")
    p.add_argument("--format", choices=["wide", "long"], default="wide", help="single-case table layout")
    p.add_argument("--workers", type=int, default=1, help="local worker processes for a manifest or catalog")
    p.add_argument("--scheduler", help="Dask scheduler address, or 'dask-local' for a LocalCluster")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, help="output table (.csv, or .parquet with pyarrow)")
    p.set_defaults(func=run)


def _single(args: argparse.Namespace, config):
    """The single-case table (wide: one row per ROI; long: one row per ROI and feature)."""
    import pandas as pd

    from ..errors import InputError
    from ..radiomics.cohort import run_case_rows

    if not args.mask:
        raise InputError(None, "--mask is required with --image")
    case = {"image": args.image, "mask": args.mask, "roi": args.roi, "suv": args.suv}
    rows = run_case_rows(case, config.to_dict())
    if args.format == "wide":
        return pd.DataFrame(rows)
    from ..radiomics.engine import long_table

    id_keys = ("image", "mask", "patient_id", "study_uid", "series_uid", "roi_name", "config_name", "config_hash", "nmkit_version")
    tables = []
    for row in rows:
        ids = {k: row[k] for k in id_keys if k in row}
        feats = {k: v for k, v in row.items() if k not in ids and k not in case}
        tables.append(long_table(feats, **ids))
    return pd.concat(tables, ignore_index=True)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from ..errors import InputError
    from ..provenance import provenance
    from ..radiomics.cohort import cases_from_catalog, extract_cohort, read_manifest, write_table
    from ..radiomics.presets import load_config

    log = logging.getLogger("nmkit.radiomics")
    if args.modality and not args.catalog:
        raise InputError(None, "--modality filters a catalog: use it with --catalog")
    config = load_config(args.config or args.preset or "ibsi-c")
    out = Path(args.out)
    failures: list = []
    selection: dict = {}
    if args.image:
        table = _single(args, config)
        inputs = [args.image, args.mask]
    else:
        if args.catalog:
            cases = cases_from_catalog(args.catalog, modality=args.modality, roi=args.roi, suv=args.suv)
            inputs = [args.catalog]
            selection = {"catalog": args.catalog, "modality": args.modality, "roi": args.roi, "suv": args.suv, "cases": int(len(cases))}
        else:
            cases = read_manifest(args.manifest)
            if args.suv and "suv" not in cases.columns:
                cases["suv"] = args.suv
            inputs = [args.manifest]
        result = extract_cohort(cases, config, n_workers=args.workers, scheduler=args.scheduler,
                                progress=not args.no_progress)
        table, failures = result.table, result.failures
        for f in failures:
            log.warning("failed case %s%s: %s", f["image"], f" ROI {f['roi']!r}" if f.get("roi") else "", f["error"])
    write_table(table, out)
    prov = provenance(config.to_dict(), inputs, n_rows=int(len(table)), failures=failures, **({"selection": selection} if selection else {}))
    Path(str(out) + ".provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    print(f"wrote {len(table)} row(s) to {out}" + (f"; {len(failures)} case(s) failed (see log)" if failures else ""))
    return 0 if not failures or len(table) else 1
