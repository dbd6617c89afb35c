"""`nmkit harmonize`: ComBat harmonisation of a feature table across scanners/sites/reconstructions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "harmonize",
        help="ComBat-harmonise a feature CSV across batches (fit and apply, or apply stored estimates)",
        description="Fits ComBat (empirical Bayes, with covariates to preserve) on --features and writes the harmonised "
                    "table plus the estimates (JSON) so that new data of the same batches can be harmonised later with "
                    "--estimates. All numeric columns other than the batch, covariates and --id columns are features.",
    )
    p.add_argument("--features", required=True, help="CSV: one row per sample, feature columns, batch and covariate columns")
    p.add_argument("--manifest", default=None,
                   help="case table (nmkit-dataset/1) to take the batch/covariate columns from, joined on case_id "
                        "(e.g. a 'centre' or 'series_description' column the feature table lacks)")
    p.add_argument("--batch-col", required=True, help="column naming the batch (scanner, site, reconstruction)")
    p.add_argument("--categorical", nargs="*", default=[], help="categorical covariates to preserve (e.g. sex)")
    p.add_argument("--continuous", nargs="*", default=[], help="continuous covariates to preserve (e.g. age)")
    p.add_argument("--id", nargs="*", default=[], help="identifier columns copied unchanged (e.g. case_id)")
    p.add_argument("--non-parametric", action="store_true", help="non-parametric empirical Bayes priors")
    p.add_argument("--no-eb", action="store_true", help="no empirical Bayes shrinkage")
    p.add_argument("--mean-only", action="store_true", help="adjust only the location")
    p.add_argument("--estimates", default=None, help="apply stored estimates (JSON from an earlier run) instead of fitting")
    p.add_argument("--out", required=True, help="output CSV; estimates go to <out>.estimates.json, provenance to <out>.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..errors import InputError
    from ..provenance import provenance
    from ..stats.combat import ComBat

    path = Path(args.features)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable CSV ({exc})") from exc
    needed = [args.batch_col, *args.categorical, *args.continuous, *args.id]
    if args.manifest:
        from ..dataset import read_dataset

        cases = read_dataset(args.manifest, check_files=False)
        if "case_id" not in table.columns:
            raise InputError(path, "--manifest joins on case_id, which the feature table lacks")
        join = [c for c in needed if c not in table.columns and c in cases.columns]
        unknown = sorted(set(table.case_id.astype(str)) - set(cases.case_id.astype(str)))
        if unknown:
            raise InputError(args.manifest, f"{len(unknown)} case_id(s) of the feature table are not in the case table "
                                            f"(first: {unknown[0]!r})")
        table = table.merge(cases[["case_id", *join]].astype({"case_id": str}), how="left",
                            left_on=table.case_id.astype(str), right_on="case_id", suffixes=("", "_table"))
        table = table.drop(columns=[c for c in ("key_0", "case_id_table") if c in table.columns])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(path, f"column(s) {missing} not found; columns are {list(table.columns)}")
    skip = set(needed)
    if args.estimates:
        try:
            est = json.loads(Path(args.estimates).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(args.estimates, f"not a readable estimates JSON ({exc})") from exc
        model = ComBat.from_estimates(est, batch_col=args.batch_col)
        features = list(model.features_)
        absent = [f for f in features if f not in table.columns]
        if absent:
            raise InputError(path, f"feature column(s) {absent[:10]} of the estimates are missing")
    else:
        from ..dataset import COLUMNS as CASE_COLUMNS

        # identifiers from the case table and structure numbers are not measurements: never harmonised
        skip |= set(CASE_COLUMNS) | {"segment_number", "label_value", "suv_factor", "case_index", "seed"}
        features = [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])]
        model = ComBat(batch_col=args.batch_col, categorical=args.categorical, continuous=args.continuous,
                       eb=not args.no_eb, parametric=not args.non_parametric, mean_only=args.mean_only)
    if not features:
        raise InputError(path, "no numeric feature columns to harmonise")
    frame = table[[args.batch_col, *args.categorical, *args.continuous, *features]]
    try:
        if not args.estimates:
            model.fit(frame)
        values = model.transform(frame)
    except ValueError as exc:
        raise InputError(path, str(exc)) from exc
    out = table.copy()
    out[features] = values
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(dest, index=False)
    est_path = Path(str(dest) + ".estimates.json")
    if not args.estimates:
        est_path.write_text(json.dumps(model.estimates(), indent=1))
    config = {"command": "harmonize", "batch_col": args.batch_col, "categorical": args.categorical, "continuous": args.continuous,
              "eb": model.eb, "parametric": model.parametric, "mean_only": model.mean_only, "estimates": args.estimates}
    record = provenance(config, [str(path)] + ([args.estimates] if args.estimates else []),
                        n_samples=len(table), n_features=len(features), batches=model.batches_.tolist())
    Path(str(dest) + ".json").write_text(json.dumps(record, indent=2, default=str))
    print(f"{len(table)} sample(s), {len(features)} feature(s), {len(model.batches_)} batch(es) -> {dest}")
    return 0
