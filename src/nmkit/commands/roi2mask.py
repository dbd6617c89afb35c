"""`nmkit roi2mask IN_DIR OUT_DIR`: every RTSTRUCT / SEG / polygon ROI in a folder -> NIfTI image + one NIfTI mask per ROI."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roi2mask", help="convert every RTSTRUCT, DICOM SEG and polygon JSON in a folder to NIfTI masks",
                       description="Finds every RTSTRUCT, DICOM SEG and nmkit-polygons/1 JSON file under IN_DIR, reads the image "
                                   "series each refers to (in the same folder), and writes OUT_DIR/<case>/image.nii.gz, one "
                                   "OUT_DIR/<case>/<roi>.nii.gz per ROI, roi_summary.csv and roi_summary.json (provenance, failures). "
                                   "Files that cannot be converted are reported and skipped.")
    p.add_argument("in_dir", help="folder with DICOM images and ROI files")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--roi", action="append", dest="rois", metavar="NAME", help="convert only this ROI name (repeatable; case-insensitive)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.roi import convert_folder

    summary = convert_folder(args.in_dir, args.out_dir, roi_names=args.rois)
    rows, failed = summary["converted"], summary["failed"]
    for row in rows:
        print(f"{row['roi_name']:<30} {row['voxels']:>10d} voxels {row['volume_ml']:>12.3f} ml  {row['mask_file']}")
    for item in failed:
        print(f"FAILED {item['file']}: {item['error']}")
    print(f"{len(rows)} mask(s) written to {args.out_dir}; {len(failed)} file(s) failed")
    if not rows and failed:
        return 1
    return 0
