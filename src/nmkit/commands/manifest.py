"""`nmkit manifest --db catalog.sqlite --out manifest.csv --split 0.7 0.15 0.15 --seed 1`: dataset manifests."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "manifest", help="dataset manifest (images + ROI files) with patient-level train/val/test splits",
        description="Build a manifest from a catalog (image series and the RTSTRUCT/SEG referencing them) or from a "
                    "folder of NIfTI image/mask pairs, assign patient-level splits (and optionally k folds), and "
                    "write it with a <name>.provenance.json sidecar.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", type=Path, help="catalog built by `nmkit index`")
    src.add_argument("--nifti-dir", type=Path, help="folder of *image*.nii.gz files with matching *mask* files")
    p.add_argument("--out", required=True, type=Path, help="manifest.csv or manifest.json")
    p.add_argument("--modality", nargs="*", default=None, help="image modalities to include (catalog), e.g. PT")
    p.add_argument("--tracer", default=None, help="tracer filter (catalog), e.g. FDG")
    p.add_argument("--require-roi", action="store_true", help="only images with at least one ROI")
    p.add_argument("--split", nargs="+", type=float, default=[0.7, 0.15, 0.15], metavar="FRACTION",
                   help="split fractions (train val test by default names), default 0.7 0.15 0.15")
    p.add_argument("--names", nargs="+", default=None, help="split names (default train/val/test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stratify", default=None, help="manifest column to stratify by (patient level), e.g. modality")
    p.add_argument("--folds", type=int, default=0, help="also assign k folds (patient level) to non-test rows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..catalog.manifest import assign_folds, manifest_from_catalog, manifest_from_nifti, split_by_patient, write_manifest
    from ..errors import InputError
    from ..provenance import provenance

    if args.db:
        criteria = {"tracer": args.tracer} if args.tracer else {}
        df = manifest_from_catalog(args.db, modality=args.modality or None, require_roi=args.require_roi, **criteria)
        source = str(args.db.resolve())
    else:
        df = manifest_from_nifti(args.nifti_dir)
        if args.require_roi:
            df = df[df.roi != ""].reset_index(drop=True)
        source = str(args.nifti_dir.resolve())
    if df.empty:
        raise InputError(args.db or args.nifti_dir, "no images match the given criteria; manifest not written")
    df = split_by_patient(df, args.split, seed=args.seed, stratify=args.stratify, names=args.names)
    if args.folds:
        df = assign_folds(df, args.folds, seed=args.seed, stratify=args.stratify, where=(df.split != "test").to_numpy())
    config = {"source": source, "seed": args.seed, "fractions": args.split, "names": args.names, "stratify": args.stratify,
              "folds": args.folds, "modality": args.modality, "tracer": args.tracer, "require_roi": args.require_roi}
    side = write_manifest(df, args.out, provenance(config, [source]))
    counts = df.groupby("split").patient_id.nunique().to_dict()
    print(f"{len(df)} image(s) of {df.patient_id.nunique()} patient(s) -> {args.out} (patients per split: {counts}); "
          f"provenance: {side}")
    return 0
