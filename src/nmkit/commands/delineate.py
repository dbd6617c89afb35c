"""`nmkit delineate PET OUT_DIR`: lesion label maps (one label per lesion) from SUV thresholds, per-lesion relative or
background-adaptive thresholds, the PERCIST liver threshold, or region growing (nmkit.petwb.delineate)."""

from __future__ import annotations

import argparse


def _method(text: str) -> str:
    from ..errors import InputError
    from ..petwb.delineate import check_method

    try:
        return check_method(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def register(sub: argparse._SubParsersAction) -> None:
    from ._args import positive_float

    p = sub.add_parser("delineate", help="delineate PET lesions (SUV thresholds, %% SUVmax, PERCIST, adaptive, region growing)",
                       description="Writes OUT_DIR/<method>/lesions.nii.gz (one label per lesion, numbered by decreasing "
                                   "SUVmax, with lesions.labels.json), lesions_seg.dcm (DICOM SEG, when the PET is DICOM), "
                                   "OUT_DIR/lesions.csv (one row per method x lesion: volume_ml, suv_max, threshold_suv, "
                                   "touches_edge) and OUT_DIR/dataset.csv (nmkit-dataset/1, one row per method). Methods: "
                                   "suv<X> (fixed SUV, e.g. suv2.5, suv4.0), rel<P> (P % of each lesion's SUVmax, e.g. rel41), "
                                   "percist (1.5 x liver mean + 2 SD), adaptive (BG + 50 % of SUVmax - BG), grow (region "
                                   "growing). Per-lesion methods (rel, adaptive, grow) are seeded by --seed-roi, --seed or, "
                                   "by default, the components of SUV >= the PERCIST liver threshold (with a liver reference) or SUV >= 2.5.")
    p.add_argument("input", help="PET: DICOM folder/file (converted to SUV) or NIfTI in SUV (with --assume-suv)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--method", action="append", dest="methods", type=_method, metavar="NAME",
                   help="delineation method, repeatable (default: rel41)")
    p.add_argument("--suv", choices=("bw", "lbm"), default="bw", help="SUV kind for DICOM PET (lbm = SUL, as PERCIST asks)")
    p.add_argument("--assume-suv", action="store_true", help="a NIfTI/NRRD PET's values are SUV (it cannot say so itself)")
    p.add_argument("--voi", metavar="FILE", help="body or user VOI (label map, RTSTRUCT or SEG): lesions only inside it")
    p.add_argument("--voi-roi", action="append", metavar="SELECTOR", help="structures of --voi to use (default all)")
    p.add_argument("--exclude", metavar="FILE", help="organ label map / RTSTRUCT / SEG whose structures are physiological "
                                                     "uptake to remove (brain, bladder, kidneys, heart ...)")
    p.add_argument("--exclude-roi", action="append", metavar="SELECTOR", help="structures of --exclude to remove (default all)")
    p.add_argument("--exclude-margin-mm", type=float, default=10.0,
                   help="dilation of the removed organs, for spill-out of hot organs at PET resolution (mm, default 10)")
    p.add_argument("--seed-roi", metavar="FILE", help="existing ROI whose components seed the per-lesion methods")
    p.add_argument("--seed-roi-name", action="append", metavar="SELECTOR", help="structures of --seed-roi (default all)")
    p.add_argument("--seed", action="append", metavar="X,Y,Z", help="seed point in mm (LPS), repeatable")
    p.add_argument("--margin-mm", type=positive_float, default=10.0,
                   help="seed region: ROI bounding box dilated / sphere around a seed point (mm, default 10)")
    p.add_argument("--liver", metavar="FILE", help="liver mask (for percist: the 3 cm sphere is placed inside it)")
    p.add_argument("--liver-roi", action="append", metavar="SELECTOR", help="structures of --liver (default all)")
    p.add_argument("--liver-centre", metavar="X,Y,Z", help="liver sphere centre in mm (LPS) instead of --liver")
    p.add_argument("--liver-stats", metavar="MEAN,SD", help="liver mean and SD (image units) instead of a liver VOI")
    p.add_argument("--min-volume-ml", type=float, default=0.5, help="drop lesions smaller than this (ml, default 0.5)")
    p.add_argument("--no-seg", action="store_true", help="do not write DICOM SEG files")
    p.set_defaults(func=run)


def _liver_stats(args, pet) -> tuple[float, float] | None:
    from ..errors import InputError
    from ..petwb.inputs import parse_point, read_mask_on
    from ..petwb.reference import liver_reference

    if args.liver_stats:
        try:
            mean, sd = (float(v) for v in args.liver_stats.split(","))
        except ValueError:
            raise InputError(None, f"--liver-stats {args.liver_stats!r}: give MEAN,SD") from None
        return mean, sd
    if args.liver_centre:
        ref = liver_reference(pet, centre_mm=parse_point(args.liver_centre))
        return ref.mean, ref.sd
    if args.liver:
        ref = liver_reference(pet, read_mask_on(args.liver, pet, args.liver_roi, "liver mask").binary(None))
        return ref.mean, ref.sd
    return None


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import pandas as pd

    from ..dataset import MaskRef, new_table, write_dataset
    from ..errors import InputError
    from ..petwb.delineate import delineate, is_per_lesion, search_region, seed_regions
    from ..petwb.inputs import is_dicom_input, parse_point, read_mask_on, read_suv_pet, write_label_map
    from ..provenance import provenance

    log = logging.getLogger("nmkit.delineate")
    methods = args.methods or ["rel41"]
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    pet = read_suv_pet(args.input, suv=args.suv, assume_suv=args.assume_suv)
    voi = read_mask_on(args.voi, pet, args.voi_roi, "VOI").binary(None) if args.voi else None
    organs = read_mask_on(args.exclude, pet, args.exclude_roi, "organ map").binary(None) if args.exclude else None
    region = search_region(pet, voi, organs, args.exclude_margin_mm)
    if not region.any():
        raise InputError(args.voi or args.exclude, "nothing is left to search: the VOI minus the excluded organs is empty")
    liver = _liver_stats(args, pet)
    if "percist" in methods and liver is None:
        raise InputError(None, "method percist needs --liver, --liver-centre or --liver-stats")
    seed_mask = read_mask_on(args.seed_roi, pet, args.seed_roi_name, "seed ROI").binary(None) if args.seed_roi else None
    points = [parse_point(s) for s in args.seed or ()]
    candidate = 1.5 * liver[0] + 2.0 * liver[1] if liver else 2.5
    seeds = (seed_regions(pet, region, seed_mask, points, args.margin_mm, candidate, args.min_volume_ml)
             if any(map(is_per_lesion, methods)) else None)
    case = str(pet.meta.get("PatientID") or Path(args.input).name.split(".")[0])
    rows, cases = [], []
    for method in methods:
        result = delineate(pet, method, region=region, seeds=seeds, min_volume_ml=args.min_volume_ml, liver_reference=liver)
        folder = out / method
        nii = write_label_map(result.labels, folder / "lesions.nii.gz")
        if is_dicom_input(pet) and result.lesions and not args.no_seg:
            from ..io.dicom_warnings import DicomWarnings
            from ..io.seg import write_seg

            collector = DicomWarnings()
            with collector.capture(folder / "lesions_seg.dcm"):
                write_seg(result.labels, pet, folder / "lesions_seg.dcm", series_description=f"nmkit delineate {method}")
            if getattr(args, "verbose", 0):  # warnings about tags copied from the source series: details only with -v
                collector.report(log, verbose=True)
        for r in result.lesions:
            rows.append({"case_id": case, **r, "units": "volume ml, SUV g/ml"})
        cases.append({"case_id": f"{case}_{method}", "patient_id": case, "image": str(Path(args.input).resolve()),
                      "modality": "PT", "suv": args.suv if not args.assume_suv else "assumed",
                      "masks": [MaskRef(str(nii.resolve()), "labelmap", r["label"], r["structure"], r["label"], method)
                                for r in result.lesions]})
        total = sum(r["volume_ml"] for r in result.lesions)
        print(f"{method:<10} {len(result.lesions):>3} lesions {total:>10.2f} ml  ({result.threshold_note})  {nii}")
    columns = ["case_id", "label", "structure", "method", "threshold_suv", "background_suv", "voxels", "volume_ml",
               "suv_max", "suv_mean", "touches_edge", "units"]
    pd.DataFrame(rows, columns=columns).to_csv(out / "lesions.csv", index=False)
    write_dataset(new_table(cases), out / "dataset.csv",
                  provenance(vars(args) | {"func": None}, [str(args.input)]))
    log.info("wrote %s", out)
    return 0
