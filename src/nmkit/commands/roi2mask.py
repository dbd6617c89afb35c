"""`nmkit roi2mask IN_DIR OUT_DIR`: every RTSTRUCT / SEG / polygon ROI in a folder -> NIfTI image + one NIfTI mask per
structure, and the case table ``OUT_DIR/dataset.csv`` (``nmkit.dataset`` contract) that cohort commands read."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roi2mask", help="convert every RTSTRUCT, DICOM SEG and polygon JSON in a folder to NIfTI masks + dataset.csv",
                       description="Finds every RTSTRUCT, DICOM SEG and nmkit-polygons/1 JSON file under IN_DIR, reads the image "
                                   "series each refers to (in the same folder), and writes OUT_DIR/<patient>/<date>_<series "
                                   "description>[_TPn]/image.nii.gz with one binary mask per structure (<name>.nii.gz; a name "
                                   "repeated in its file gets the ROI/segment number, e.g. Neoplasm_Secondary__seg03.nii.gz; no "
                                   "file is ever overwritten), the case table OUT_DIR/dataset.csv (one row per image, its masks "
                                   "with segment number, structure name and label value), roi_summary.csv (voxels, volume_ml) and "
                                   "roi_summary.json (provenance, SUV factors, failures). Files that cannot be converted are "
                                   "reported and skipped.")
    p.add_argument("in_dir", help="folder with DICOM images and ROI files, or a case table (nmkit-dataset/1 CSV, e.g. from "
                                  "`nmkit query --format dataset` or `nmkit manifest --db`) whose rows name the images "
                                  "and their RTSTRUCT/SEG files")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--roi", action="append", dest="rois", metavar="SELECTOR",
                   help="convert only these structures: an ROI/segment number (3), a glob (GTV*) or a name (exact, else "
                        "case-insensitive; a repeated name selects all its structures); repeatable")
    p.add_argument("--suv", choices=("bw", "lbm"), default=None,
                   help="write PT images in SUV (g/ml): bw = body weight, lbm = lean body mass (SUL); the factor is recorded "
                        "in roi_summary.json and dataset.provenance.json. Other modalities keep their stored units")
    p.set_defaults(func=run)


def case_table(cases: list[dict]):
    """The ``nmkit.dataset`` case table of the converted images (one row per image, masks as MaskRef lists)."""
    from ..dataset import new_table

    return new_table(cases)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..dataset import read_dataset, write_dataset
    from ..io.roi import convert_cases, convert_folder

    source = Path(args.in_dir)
    if source.is_file() and source.suffix.lower() in (".csv", ".json"):
        table = read_dataset(source)
        summary = convert_cases(table.to_dict(orient="records"), args.out_dir, selector=args.rois, suv=args.suv,
                                source=source)
    else:
        summary = convert_folder(args.in_dir, args.out_dir, selector=args.rois, suv=args.suv)
    rows, failed, cases = summary["converted"], summary["failed"], summary["cases"]
    for row in rows:
        print(f"{row['case'] + '/' + row['roi_name']:<50} #{row['segment']:<3} {row['voxels']:>10d} voxels {row['volume_ml']:>12.3f} ml  "
              f"{row['mask_file']}")
    for item in failed:
        print(f"FAILED {item['file']}: {item['error']}")
    out = Path(args.out_dir)
    table_file = out / "dataset.csv"
    if cases:
        provenance = {"producer": "nmkit roi2mask", **summary["provenance"], "suv": args.suv,
                      "suv_factors": summary.get("suv_factors", {})}
        write_dataset(case_table(cases), table_file, provenance)
    written = len({r["mask_file"] for r in rows})
    print(f"{written} mask file(s) for {len(cases)} image(s) written to {out}"
          + (f" (case table {table_file})" if cases else "") + f"; {len(failed)} file(s) failed")
    if not rows and failed:
        return 1
    return 0
