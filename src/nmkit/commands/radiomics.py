"""`nmkit radiomics`: IBSI-1 features for one image + mask, or for a cohort from a manifest CSV.

Examples::

    nmkit radiomics --image ct.nii.gz --mask gtv.nii.gz --preset ibsi-c --out features.csv
    nmkit radiomics --manifest cases.csv --config my.yaml --workers 4 --out cohort.csv
    nmkit radiomics --manifest cases.csv --preset lifex-pet --scheduler dask-local --out cohort.parquet

A provenance JSON (config, hash, inputs, nmkit version) is written next to the output as ``<out>.provenance.json``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("radiomics", help="IBSI radiomics features (single case or cohort manifest)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file (NIfTI/NRRD) or DICOM series folder")
    src.add_argument("--manifest", help="CSV with columns image, mask[, patient_id, study_uid, series_uid, roi, suv, ...]")
    p.add_argument("--mask", help="label map on the image grid (with --image)")
    p.add_argument("--roi", help="label name or value of the ROI (default: any foreground)")
    cfg = p.add_mutually_exclusive_group()
    cfg.add_argument("--preset", help="shipped preset: ibsi-a..ibsi-e, ibsi-digital-phantom, lifex-pet")
    cfg.add_argument("--config", help="YAML config file (may start from a preset with 'base: ibsi-c')")
    p.add_argument("--suv", choices=["bw", "lbm"], help="convert a DICOM PET image to SUV")
    p.add_argument("--format", choices=["wide", "long"], default="wide", help="single-case table layout")
    p.add_argument("--workers", type=int, default=1, help="local worker processes for a manifest")
    p.add_argument("--scheduler", help="Dask scheduler address, or 'dask-local' for a LocalCluster")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, help="output table (.csv, or .parquet with pyarrow)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from ..errors import InputError
    from ..provenance import provenance
    from ..radiomics.cohort import extract_cohort, read_manifest, run_case, write_table
    from ..radiomics.presets import load_config

    log = logging.getLogger("nmkit.radiomics")
    config = load_config(args.config or args.preset or "ibsi-c")
    out = Path(args.out)
    if args.image:
        if not args.mask:
            raise InputError(None, "--mask is required with --image")
        import pandas as pd

        case = {"image": args.image, "mask": args.mask, "roi": args.roi, "suv": args.suv}
        row = run_case(case, config.to_dict())
        if args.format == "long":
            from ..radiomics.engine import long_table

            ids = {k: row[k] for k in ("image", "mask", "roi_name", "config_name", "config_hash", "nmkit_version")}
            feats = {k: v for k, v in row.items() if k not in ids and k not in case}
            table = long_table(feats, **ids)
        else:
            table = pd.DataFrame([row])
        inputs = [args.image, args.mask]
        failures: list = []
    else:
        cases = read_manifest(args.manifest)
        if args.suv and "suv" not in cases.columns:
            cases["suv"] = args.suv
        result = extract_cohort(cases, config, n_workers=args.workers, scheduler=args.scheduler,
                                progress=not args.no_progress)
        table, failures = result.table, result.failures
        inputs = [args.manifest]
        for f in failures:
            log.warning("failed case %s: %s", f["image"], f["error"])
    write_table(table, out)
    prov = provenance(config.to_dict(), inputs, n_rows=int(len(table)), failures=failures)
    Path(str(out) + ".provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    print(f"wrote {len(table)} row(s) to {out}" + (f"; {len(failures)} case(s) failed (see log)" if failures else ""))
    return 0 if not failures or len(table) else 1
