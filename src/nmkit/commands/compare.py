"""`nmkit compare`: paired comparison of two reconstructions of the same patients on the same ROIs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="paired comparison of two reconstructions (e.g. OSEM vs CT-guided) on the same ROIs, with statistics and a report",
        description="Cases are matched by name across RECON_A_DIR, RECON_B_DIR and --rois (NIfTI/NRRD files or DICOM "
                    "series folders; ROI files are label maps with name sidecars, SEG or RTSTRUCT). B and the ROIs are "
                    "resampled onto A's grid when needed. Writes metrics.csv (wide), per_roi.csv (one row per case, ROI "
                    "and metric: A, B, B - A, unit), paired_statistics.csv (two or more cases), report.html and "
                    "provenance.json to --out. With a single case the report lists every ROI's values and differences "
                    "and computes no cohort statistics. Bad cases are logged and skipped.",
    )
    p.add_argument("recon_a", nargs="?", help="folder of reconstruction A, one file or DICOM folder per case")
    p.add_argument("recon_b", nargs="?", help="folder of reconstruction B, same case names")
    p.add_argument("--rois", default=None, help="folder of ROI files per case (same case names)")
    p.add_argument("--manifest", default=None, help="instead of folders: a case table (nmkit-dataset/1) holding both "
                                                    "reconstructions of each patient/time point; see --pair-by")
    p.add_argument("--pair-by", default="series_description",
                   help="with --manifest: the column telling the reconstructions apart (default series_description)")
    p.add_argument("--a", dest="pick_a", default=None, metavar="GLOB", help="with --manifest: rows of reconstruction A")
    p.add_argument("--b", dest="pick_b", default=None, metavar="GLOB", help="with --manifest: rows of reconstruction B")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", nargs=2, default=("A", "B"), metavar=("NAME_A", "NAME_B"), help="names of the two reconstructions")
    p.add_argument("--units", default=None,
                   help="unit of the voxel values when the files do not state it (NIfTI/NRRD), e.g. Bq/ml; DICOM units win")
    p.add_argument("--background", default=None, help="background ROI name for contrast/CNR")
    p.add_argument("--uniform", nargs="*", default=[], help="uniform ROI names for noise CoV (e.g. l4_body liver)")
    p.add_argument("--lesions", nargs="*", default=None, help="lesion ROI names (default: every other ROI)")
    p.add_argument("--truth", default=None, help="CSV with columns case, roi, value: true concentrations for recovery")
    p.add_argument("--radiomics", default=None, help="radiomics preset name or YAML file: IBSI features on both")
    p.add_argument("--segment-threshold", type=float, default=None,
                   help="also segment lesions at this fraction of the ROI max on both reconstructions and report their Dice")
    p.set_defaults(func=run)


def case_entries(folder: str | Path) -> dict[str, Path]:
    """``{case name: path}`` for the volume files and sub-folders of ``folder``."""
    from ..errors import InputError

    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "is not a folder")
    out: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        name = entry.name
        if entry.is_file():
            for suffix in VOLUME_SUFFIXES:
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            else:
                continue
        out[name] = entry
    return out


def cases_from_table(path: str, column: str, pick_a: str | None, pick_b: str | None) -> tuple[dict, dict, dict]:
    """``(A, B, ROIs)`` case dicts from a case table: rows of one patient and time point (else study date) form a case;
    ``column`` matched against the globs ``pick_a``/``pick_b`` says which row is which; the ROIs are A's masks (else B's)."""
    import fnmatch

    from ..dataset import read_dataset
    from ..errors import InputError

    if not (pick_a and pick_b):
        raise InputError(None, "--manifest needs --a GLOB and --b GLOB to tell the two reconstructions apart")
    table = read_dataset(path)
    if column not in table.columns:
        raise InputError(path, f"--pair-by {column!r} is not a column of the case table")
    a_cases: dict[str, object] = {}
    b_cases: dict[str, object] = {}
    rois: dict[str, object] = {}
    for row in table.to_dict(orient="records"):
        when = "" if column == "time_point" else (row.get("time_point") or row.get("study_date") or "")
        name = "_".join(x for x in (str(row["patient_id"]), str(when)) if x)
        value = str(row.get(column, "")).lower()
        for pick, target in ((pick_a, a_cases), (pick_b, b_cases)):
            if fnmatch.fnmatch(value, pick.lower()):
                if name in target:
                    raise InputError(path, f"case {name}: several rows match {pick!r} in {column!r}")
                target[name] = row["image"]
                if row["masks"] and (pick is pick_a or name not in rois):
                    rois[name] = row["masks"][0].file
    if not a_cases or not b_cases:
        raise InputError(path, f"no row matches --a {pick_a!r} or --b {pick_b!r} in column {column!r}")
    return a_cases, b_cases, rois


def run(args: argparse.Namespace) -> int:
    import logging

    import pandas as pd

    from ..errors import InputError
    from ..io.reader import read_case_image
    from ..io.roi import load_rois
    from ..provenance import library_versions, provenance
    from ..quality.paired import (PairedCase, measure_cases, paired_statistics, per_roi_table, threshold_segmenter,
                                  write_case_report, write_report)

    log = logging.getLogger("nmkit.compare")
    if args.manifest:
        a_cases, b_cases, roi_cases = cases_from_table(args.manifest, args.pair_by, args.pick_a, args.pick_b)
    else:
        if not (args.recon_a and args.recon_b and args.rois):
            raise InputError(None, "give RECON_A RECON_B --rois DIR (folders), or --manifest TABLE --a GLOB --b GLOB")
        a_cases, b_cases, roi_cases = case_entries(args.recon_a), case_entries(args.recon_b), case_entries(args.rois)
    names = sorted(set(a_cases) & set(b_cases) & set(roi_cases))
    if not names:
        raise InputError(args.manifest or args.recon_a, "no case has reconstruction A, reconstruction B and ROIs"
                         + ("" if args.manifest else f" in all of {args.recon_a}, {args.recon_b} and {args.rois}"))
    missing = sorted((set(a_cases) | set(b_cases) | set(roi_cases)) - set(names))
    truth: dict[str, dict[str, float]] = {}
    if args.truth:
        t = pd.read_csv(args.truth)
        if not {"case", "roi", "value"} <= set(t.columns):
            raise InputError(args.truth, "needs columns case, roi, value")
        for row in t.itertuples():
            truth.setdefault(str(row.case), {})[str(row.roi)] = float(row.value)
    cases, skipped = [], {m: "not present in all three folders" for m in missing}
    for name in names:
        try:
            img_a = read_case_image(a_cases[name])  # a folder, a file, or a case table's ';'-separated series
            img_b = read_case_image(b_cases[name])
            for img in (img_a, img_b):
                if args.units and not img.units:
                    img.units = args.units
            mask = load_rois(roi_cases[name], reference=img_a)
            cases.append(PairedCase(name, img_a, img_b, mask, truth.get(name, {})))
        except Exception as exc:  # batch job: log and skip
            log.error("case %s skipped: %s", name, exc)
            skipped[name] = str(exc)
    labels = tuple(args.labels)
    segmenter = threshold_segmenter(args.segment_threshold) if args.segment_threshold else None
    table, failed = measure_cases(cases, background=args.background, uniform=args.uniform, lesions=args.lesions,
                                  radiomics=args.radiomics, segmenter=segmenter, labels=labels)
    skipped.update(failed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if table.empty:
        (out / "skipped.json").write_text(json.dumps(skipped, indent=2))
        raise InputError(args.manifest or args.recon_a, f"no case could be measured; see {out / 'skipped.json'}")
    table.to_csv(out / "metrics.csv", index=False)
    per_roi = per_roi_table(table, labels=labels)
    per_roi.to_csv(out / "per_roi.csv", index=False)
    n_cases = int(table["case"].nunique())
    config = {"command": "compare", "manifest": args.manifest, "pair_by": args.pair_by, "a": args.pick_a, "b": args.pick_b,
              "labels": list(labels), "units": args.units, "background": args.background, "uniform": args.uniform,
              "lesions": args.lesions, "radiomics": args.radiomics, "segment_threshold": args.segment_threshold, "truth": args.truth}
    inputs = [str(p) for n in names for p in (a_cases[n], b_cases[n], roi_cases[n])]
    record = provenance(config, inputs, skipped=skipped, n_cases=n_cases,
                        cohort_statistics=n_cases >= 2, libraries=library_versions(("numpy", "scipy", "SimpleITK", "pandas")))
    (out / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
    if n_cases < 2:
        write_case_report(per_roi, out / "report.html", labels=labels, provenance_record=record)
        print(f"1 case compared ({table['case'].iloc[0]}), {len(skipped)} skipped; {len(per_roi)} ROI value(s) on "
              f"{labels[0]} and {labels[1]} in per_roi.csv; no cohort statistics (they need at least 2 cases) -> {out}")
        return 0
    stats = paired_statistics(table, labels=labels)
    stats.to_csv(out / "paired_statistics.csv", index=False)
    write_report(table, stats, out / "report.html", labels=labels, provenance_record=record)
    n_sig = int((stats["p_holm"] < 0.05).sum()) if len(stats) else 0
    print(f"{n_cases} case(s) compared, {len(skipped)} skipped; {len(stats)} paired quantities, "
          f"{n_sig} with Holm p < 0.05 -> {out}")
    return 0
