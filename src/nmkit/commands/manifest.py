"""`nmkit manifest --db catalog.sqlite --out manifest.csv --split 0.7 0.15 0.15 --seed 1`: dataset case tables."""

from __future__ import annotations

import argparse
from pathlib import Path


def glob_to_like(pattern: str | None) -> str | None:
    """A shell glob (``*xSPECT*``) as an SQL LIKE pattern (``%xSPECT%``); LIKE's own wildcards are kept."""
    if not pattern:
        return None
    return pattern.replace("*", "%").replace("?", "_")


def add_catalog_filters(p: argparse.ArgumentParser) -> None:
    """The cohort filters shared by the commands that read a catalog."""
    p.add_argument("--modality", nargs="*", default=None, help="image modalities to include, e.g. PT")
    p.add_argument("--tracer", default=None, help="radiopharmaceutical or radionuclide, e.g. FDG, PSMA, Lu177")
    p.add_argument("--series-description", default=None, metavar="GLOB",
                   help="series description / reconstruction, shell glob, case-insensitive, e.g. '*xSPECT*'")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "manifest", help="dataset case table (images + ROI files) with patient-level train/val/test splits",
        description="Build a case table (schema nmkit-dataset/1, see nmkit.dataset) from a catalog (image series and "
                    "the RTSTRUCT/SEG referencing them), from a folder of NIfTI image/mask pairs (or the dataset.csv "
                    "that roi2mask/predict/phantom wrote there), or from an existing case table; assign patient-level "
                    "splits (and optionally k folds) and write it with a <name>.provenance.json sidecar.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", type=Path, help="catalog built by `nmkit index`")
    src.add_argument("--nifti-dir", type=Path, help="folder of *image*.nii.gz files with matching *mask* files, or a "
                                                    "roi2mask output folder (its dataset.csv)")
    src.add_argument("--dataset", type=Path, help="an existing case table (e.g. roi2mask's dataset.csv) to split")
    src.add_argument("--image-dir", type=Path, help="folder of 2D images (PNG/JPEG/TIFF/DICOM radiographs); masks with the "
                                                    "same file stem in --mask-dir")
    p.add_argument("--out", required=True, type=Path, help="manifest.csv or manifest.json")
    add_catalog_filters(p)
    g = p.add_argument_group("2D image folders (--image-dir)")
    g.add_argument("--mask-dir", type=Path, default=None, help="folder of label-map images named like the images")
    g.add_argument("--patients", type=Path, default=None,
                   help="CSV giving each image's patient (default: a manifest.csv beside the image folder with a patient column)")
    g.add_argument("--patient-column", default=None, help="patient column of --patients (default: patient_id/patientid)")
    g.add_argument("--patient-key", default=None,
                   help="column of --patients matching the image file stem or name (default: case_id/id/image/file)")
    g.add_argument("--labels", nargs="+", default=None, metavar="VALUE=NAME",
                   help="label names of the masks, e.g. 1=right_lung 2=left_lung (default: the mask folder's labels.json)")
    g.add_argument("--image-modality", default="", help="modality written for the images, e.g. DX (default blank)")
    p.add_argument("--require-roi", action="store_true", help="only images with at least one ROI")
    p.add_argument("--blank-patient", choices=("error", "skip", "study"), default="error",
                   help="series without a Patient ID: fail (default), leave out, or one pseudo-patient per study")
    p.add_argument("--split", nargs="+", type=float, default=[0.7, 0.15, 0.15], metavar="FRACTION",
                   help="split fractions (train val test by default names), default 0.7 0.15 0.15")
    p.add_argument("--names", nargs="+", default=None, help="split names (default train/val/test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stratify", default=None, help="manifest column to stratify by (patient level), e.g. modality")
    p.add_argument("--folds", type=int, default=0, help="also assign k folds (patient level) to non-test rows")
    p.add_argument("--add-train", nargs="+", type=Path, default=None, metavar="TABLE",
                   help="case tables whose rows join the train split after the split (e.g. the synthetic image/mask "
                        "pairs of `nmkit synth sample --mask`): never validation or test; their patients must be new")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..catalog.manifest import (_split_names, assign_folds, manifest_from_catalog, manifest_from_nifti, split_by_patient,
                                    split_report, write_manifest)
    from ..dataset import read_dataset
    from ..errors import InputError
    from ..provenance import provenance

    if args.db:
        if not args.db.is_file():
            raise InputError(args.db, "catalog database does not exist (build it with `nmkit index DIR --db FILE`)")
        criteria = {"tracer": args.tracer, "description_like": glob_to_like(args.series_description)}
        df = manifest_from_catalog(args.db, modality=args.modality or None, require_roi=args.require_roi,
                                   blank_patient=args.blank_patient, **{k: v for k, v in criteria.items() if v})
        source = args.db
    else:
        source = args.nifti_dir or args.dataset or args.image_dir
        if args.image_dir:
            from ..catalog.manifest import manifest_from_image_folders, parse_labels

            df = manifest_from_image_folders(args.image_dir, args.mask_dir, args.patients, args.patient_column,
                                             args.patient_key, parse_labels(args.labels), args.image_modality)
            args.patients_used = df.attrs.get("patients_csv")
        else:
            df = manifest_from_nifti(args.nifti_dir) if args.nifti_dir else read_dataset(args.dataset)
        if args.modality:
            df = df[df.modality.str.upper().isin([m.upper() for m in args.modality])]
        if args.tracer:
            df = df[df.tracer.str.contains(args.tracer, case=False, regex=False)]
        if args.series_description:
            import fnmatch

            df = df[[fnmatch.fnmatch(str(d).lower(), args.series_description.lower()) for d in df.series_description]]
        if args.require_roi:
            df = df[[len(m) > 0 for m in df.masks]]
        df = df.reset_index(drop=True)
    if df.empty:
        raise InputError(source, "no images match the given criteria; manifest not written")
    names = _split_names(len(args.split), args.names)
    df = split_by_patient(df, args.split, seed=args.seed, stratify=args.stratify, names=args.names)
    if args.folds:
        df = assign_folds(df, args.folds, seed=args.seed, stratify=args.stratify, where=(df.split != "test").to_numpy())
    inputs = [str(Path(source).resolve())]
    if args.add_train:
        df = add_training_rows(df, args.add_train)
        inputs += [str(t.resolve()) for t in args.add_train]
    config = {"command": "manifest", "source": str(Path(source).resolve()), "add_train": [str(t) for t in args.add_train or []], "seed": args.seed, "fractions": args.split,
              "names": args.names, "stratify": args.stratify, "folds": args.folds, "modality": args.modality,
              "tracer": args.tracer, "series_description": args.series_description, "require_roi": args.require_roi,
              "blank_patient": args.blank_patient}
    if args.image_dir:
        config.update(mask_dir=str(args.mask_dir.resolve()) if args.mask_dir else None, labels=args.labels,
                      patients=getattr(args, "patients_used", None), patient_column=args.patient_column,
                      patient_key=args.patient_key)
    side = write_manifest(df, args.out, provenance(config, inputs))
    counts, warnings = split_report(df, names)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    per_split = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"{len(df)} image(s) of {df.patient_id.nunique()} patient(s) -> {args.out}; patients per split: {per_split}; "
          f"with ROI: {sum(len(m) > 0 for m in df.masks)}; provenance: {side}")
    return 0


def add_training_rows(df, tables):
    """``df`` followed by every row of ``tables`` with split ``train`` (and no fold): extra training data that must
    never land in validation or test. A patient already in ``df`` (or in two tables) is refused: patient-level
    splits would no longer hold."""
    import pandas as pd

    from ..dataset import read_dataset
    from ..errors import InputError

    seen = set(df.patient_id.astype(str))
    parts = [df]
    for table in tables:
        extra = read_dataset(table)
        clash = sorted(seen & set(extra.patient_id.astype(str)))
        if clash:
            raise InputError(table, f"patient(s) {', '.join(clash[:3])} already in the case table; --add-train rows must be "
                                    "other patients (e.g. synthetic pseudo-patients)")
        seen |= set(extra.patient_id.astype(str))
        extra = extra.copy()
        extra["split"] = "train"
        if "fold" in extra.columns:
            extra["fold"] = ""
        parts.append(extra)
    return pd.concat(parts, ignore_index=True)

