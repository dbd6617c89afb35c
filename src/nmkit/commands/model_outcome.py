"""`nmkit model-outcome`: response classification or survival model from a feature table and a clinical table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "model-outcome",
        help="nested-CV outcome model (logistic / random forest / Cox) from features + clinical data, with a TRUE-checklist report",
        description="Joins --features and --clinical on --id, then runs nested cross-validation (scaling, univariate "
                    "feature selection and tuning inside the folds). Classification: --target (two classes). Survival: "
                    "--time and --event. --covariates adds clinical columns to the model and fits a clinical-only "
                    "baseline for comparison. Writes summary.json, predictions.csv, importance.csv, report.html.",
    )
    p.add_argument("--features", required=True, help="CSV of image features, one row per case")
    p.add_argument("--clinical", required=True, help="CSV of clinical data (outcome columns, covariates)")
    p.add_argument("--id", default="case_id", help="case identifier column in both tables (default case_id)")
    p.add_argument("--target", default=None, help="binary outcome column (classification)")
    p.add_argument("--time", default=None, help="survival time column")
    p.add_argument("--event", default=None, help="event indicator column (1 = event, 0 = censored)")
    p.add_argument("--covariates", nargs="*", default=[], help="numeric clinical columns added to the model and used as baseline")
    p.add_argument("--batch-col", default=None, metavar="COLUMN",
                   help="ComBat-harmonise the features by this column (centre, scanner) inside every training fold of "
                        "the nested CV (from the feature or the clinical table)")
    p.add_argument("--model", choices=("logistic", "random_forest", "cox"), default=None,
                   help="model (default: logistic for --target, cox for --time/--event)")
    p.add_argument("--k-features", type=int, nargs="+", default=[5, 10], help="candidate numbers of selected features")
    p.add_argument("--outer-folds", type=int, default=5)
    p.add_argument("--inner-folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _read(path: str, what: str):
    import pandas as pd

    from ..errors import InputError

    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the {what} CSV ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from ..errors import InputError
    from ..provenance import library_versions, provenance
    from ..stats.outcome import nested_cv, write_outcome_report

    feats, clin = _read(args.features, "feature"), _read(args.clinical, "clinical")
    for path, table in ((args.features, feats), (args.clinical, clin)):
        if args.id not in table.columns:
            raise InputError(path, f"no id column {args.id!r}; columns are {list(table.columns)[:20]}")
    survival = args.time is not None or args.event is not None
    if survival == (args.target is not None):
        raise InputError(args.clinical, "give either --target (classification) or --time and --event (survival)")
    outcome_cols = [args.time, args.event] if survival else [args.target]
    if survival and None in outcome_cols:
        raise InputError(args.clinical, "survival needs both --time and --event")
    missing = [c for c in outcome_cols + list(args.covariates) if c not in clin.columns]
    if missing:
        raise InputError(args.clinical, f"column(s) {missing} not found")
    batch_from_clinical = bool(args.batch_col) and args.batch_col not in feats.columns
    if batch_from_clinical and args.batch_col not in clin.columns:
        raise InputError(args.clinical, f"--batch-col {args.batch_col!r} is a column of neither table")
    extra = [args.batch_col] if batch_from_clinical else []
    data = feats.merge(clin[[args.id, *outcome_cols, *args.covariates, *extra]], on=args.id, how="inner",
                       suffixes=("", "_clinical"))
    data = data.dropna(subset=outcome_cols)
    if len(data) < 2 * args.outer_folds:
        raise InputError(args.features, f"only {len(data)} case(s) with features and outcome; too few for {args.outer_folds}-fold CV")
    feature_cols = [c for c in feats.columns if c not in (args.id, args.batch_col) and pd.api.types.is_numeric_dtype(feats[c])]
    X = data[feature_cols + list(args.covariates)]
    task = "survival" if survival else "classification"
    model = args.model or ("cox" if survival else "logistic")
    y = data[outcome_cols].to_numpy(float) if survival else data[args.target].to_numpy()
    options = dict(task=task, model=model, k_features=tuple(args.k_features), outer_folds=args.outer_folds,
                   inner_folds=args.inner_folds, seed=args.seed)
    batch = data[args.batch_col].astype(str).to_numpy() if args.batch_col else None
    try:
        result = nested_cv(X, y, **options, batch=batch)
        baseline = nested_cv(data[list(args.covariates)], y, **{**options, "k_features": (len(args.covariates),)}) if args.covariates else None
    except ValueError as exc:
        raise InputError(args.clinical, str(exc)) from exc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if baseline is not None:
        summary["baseline"] = baseline.summary()
    pred = pd.DataFrame({args.id: data[args.id].to_numpy(), "oof_prediction": result.oof_prediction})
    pred.to_csv(out / "predictions.csv", index=False)
    result.importance.to_csv(out / "importance.csv", index=False)
    config = {"command": "model-outcome", **{k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
              "target": args.target, "time": args.time, "event": args.event, "covariates": args.covariates, "id": args.id,
              "batch_col": args.batch_col}
    record = provenance(config, [args.features, args.clinical], n_cases=len(data), n_features=len(feature_cols),
                        libraries=library_versions(("numpy", "scipy", "pandas", "scikit-learn")))
    (out / "summary.json").write_text(json.dumps({"summary": summary, "provenance": record}, indent=2, default=str))
    write_outcome_report(result, out / "report.html", baseline=baseline, provenance_record=record)
    name = "AUC" if task == "classification" else "C-index"
    lo, hi = result.score_ci
    print(f"{len(data)} case(s), {len(feature_cols)} feature(s): {model} {name} {result.score:.3f} "
          f"(95% CI {lo:.3f}-{hi:.3f}) -> {out}" + ("" if np.isfinite(result.score) else " (score undefined)"))
    return 0
