"""`nmkit evaluate`: segmentation metrics per case and structure (Dice, IoU, HD, HD95, ASSD, NSD, volumes, lesions)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="compare predicted masks with true masks (NIfTI pairs matched by file name) and write a metrics CSV",
        description="Overlap, surface-distance (on real spacing, columns in mm) and optional lesion-wise metrics, one "
                    "row per case and structure, named from label sidecars (<stem>.labels.json) when present. Writes "
                    "the CSV, <out stem>_summary.csv (per structure: mean/median of the finite values and how many are "
                    "infinite - one mask empty - or undefined) and a provenance JSON sidecar (<out>.json). Bad pairs "
                    "are logged and skipped.",
    )
    p.add_argument("--pred", required=True, help="predicted label map file, folder of them, or a case table (dataset.csv "
                                                 "from predict/roi2mask/manifest)")
    p.add_argument("--truth", required=True, help="reference label map file, folder (files matched by name), or a case "
                                                  "table (rows matched by series UID, else patient/modality/time point)")
    p.add_argument("--pred-roi", default=None, metavar="SELECTOR", help="case tables: prediction structures (number, glob, name)")
    p.add_argument("--truth-roi", default=None, metavar="SELECTOR", help="case tables: truth structures (number, glob, name)")
    p.add_argument("--out", required=True, help="output CSV path")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="tolerance of the normalised surface Dice (default 2 mm)")
    p.add_argument("--method", choices=("surface-distance", "voxel"), default="surface-distance",
                   help="surface definition: surfel-area weighted (DeepMind surface-distance, default) or voxel borders (MONAI/medpy)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="label values to evaluate (default: all present)")
    p.add_argument("--lesions", action="store_true", help="add lesion-wise detection metrics and FP/FN volumes (autoPET style)")
    p.add_argument("--connectivity", type=int, default=None, help="lesion connectivity: 6/18/26 (3D), 4/8 (2D); autoPET uses 18")
    p.add_argument("--lesion-table", default=None, help="with --lesions: also write one row per true/predicted lesion to this CSV")
    p.add_argument("--resample", action="store_true",
                   help="resample a prediction on another grid onto the truth grid (nearest neighbour) instead of skipping it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..metrics.evaluate import (evaluate_cases, is_case_table, pair_case_tables, pair_files, read_mask_or_ref, summarise,
                                    summary_table)
    from ..provenance import library_versions, provenance

    if is_case_table(args.pred) or is_case_table(args.truth):
        pairs = pair_case_tables(args.pred, args.truth, pred_roi=args.pred_roi, truth_roi=args.truth_roi)
    else:
        pairs = pair_files(args.pred, args.truth)
    options = {"tolerance_mm": args.tolerance_mm, "method": args.method, "lesions": args.lesions, "connectivity": args.connectivity}
    if args.labels:
        options["labels"] = args.labels
    details: list | None = [] if (args.lesions and args.lesion_table) else None
    df = evaluate_cases(pairs, reader=read_mask_or_ref, resample=args.resample, **options, **({"lesion_details": details} if details is not None else {}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    if details is not None:
        import pandas as pd

        Path(args.lesion_table).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(details).to_csv(args.lesion_table, index=False)
    summary_path = out.with_name(f"{out.stem}_summary.csv")
    summary_table(df).to_csv(summary_path, index=False)
    summary = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in summarise(df).items()}
    config = {"command": "evaluate", "pred": str(args.pred), "truth": str(args.truth), "resample": args.resample, **options}
    record = provenance(config, [str(getattr(p, "file", p)) for _, p, t in pairs] + [str(getattr(t, "file", t)) for _, p, t in pairs],
                        skipped=df.attrs.get("skipped", {}), summary=summary, summary_file=str(summary_path), libraries=library_versions(("numpy", "scipy", "SimpleITK", "pandas")))
    Path(str(out) + ".json").write_text(json.dumps(record, indent=2, default=str))
    n_ok = df["case"].nunique() if len(df) else 0
    skipped = df.attrs.get("skipped", {})
    if not n_ok and skipped:  # nothing to summarise: one error line naming the first bad file
        from ..errors import InputError

        case, reason = next(iter(skipped.items()))
        raise InputError(None, f"no case could be evaluated ({len(skipped)} skipped, reasons in {out}.json); "
                               f"case {case}: {reason}")
    # case-table rows of several structures are labelled "<case>:<structure>": count the cases themselves
    cases = {c[: -len(st) - 1] if c.endswith(f":{st}") else c for c, st in zip(df["case"].astype(str), df["structure"].astype(str))} if len(df) else set()
    print(f"{len(cases)} case(s) evaluated ({len(df)} case x structure row(s)), {len(df.attrs.get('skipped', {}))} skipped "
          f"-> {out} (summary: {summary_path.name})")
    if summary.get("dice_mean") is not None:
        print(summary_line(summary))
    return 0 if n_ok else 1


def summary_line(summary: dict) -> str:
    """One line: mean Dice, mean HD95 over the finite values with how many rows were infinite/undefined, misses."""
    missed = summary.get("missed_share")
    line = f"mean Dice {summary['dice_mean']:.4f} over {summary.get('dice_n_finite', summary.get('n_rows'))} row(s)"
    if "hd95_mm_n_finite" in summary:
        hd95, n_fin = summary.get("hd95_mm_mean"), summary["hd95_mm_n_finite"]
        unit = summary.get("distance_unit", "mm")
        unit = "px (no pixel spacing in the files)" if unit == "px" else unit
        n_inf, n_nan = summary.get("hd95_mm_n_infinite", 0), summary.get("hd95_mm_n_undefined", 0)
        line += f"; mean HD95 {'n/a' if hd95 is None else f'{hd95:.2f} {unit}'} over the {n_fin} finite row(s)"
        if n_inf or n_nan:
            line += f" ({n_inf} infinite: prediction or truth empty; {n_nan} undefined; left out of the mean)"
    if summary.get("n_both_empty"):
        line += f"; {summary['n_both_empty']} row(s) with the structure in neither mask (Dice 1, distances 0)"
    return line + f"; structures missed {'n/a' if missed is None else f'{missed:.1%}'}"
