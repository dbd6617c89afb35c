"""`nmkit study learning-curve|compare`: how many labelled images are enough; which network/loss is best."""

from __future__ import annotations

import argparse

from ..segment.names import LOSS_NAMES, NETWORK_NAMES, NORMALISATIONS
from .train import label_item, parse_labels


def variant_item(text: str) -> str:
    """argparse type of one ``NETWORK[:LOSS]`` variant: both names from the registries (fails at parse time)."""
    network, _, loss = text.partition(":")
    if network not in NETWORK_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r}: network {network!r} is not one of {', '.join(NETWORK_NAMES)}")
    if loss and loss not in LOSS_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r}: loss {loss!r} is not one of {', '.join(LOSS_NAMES)}")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="learning curves and network/loss comparisons")
    ss = p.add_subparsers(dest="study", metavar="STUDY")

    def common(q: argparse.ArgumentParser, manifest_optional: bool = False) -> None:
        if manifest_optional:
            q.add_argument("manifest", nargs="?", default=None, help="dataset manifest CSV (image, mask, split); not with --evaluations")
        else:
            q.add_argument("manifest", help="dataset manifest CSV (image, mask, split)")
        q.add_argument("--out", required=True)
        q.add_argument("--network", default="unet", choices=NETWORK_NAMES)
        q.add_argument("--loss", default="dice-ce", choices=LOSS_NAMES)
        q.add_argument("--size", type=int, nargs="+", default=[128, 128])
        q.add_argument("--normalisation", default="counts", choices=NORMALISATIONS)
        q.add_argument("--epochs", type=int, default=30)
        q.add_argument("--batch-size", type=int, default=8)
        q.add_argument("--seed", type=int, default=1)
        q.add_argument("--labels", nargs="+", default=["1=roi"], type=label_item, metavar="VALUE=NAME")
        q.add_argument("--test-limit", type=int, default=None, help="evaluate on at most N test cases")

    lc = ss.add_parser("learning-curve", help="Dice vs number of training images, with bootstrap CIs")
    common(lc)
    lc.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    lc.add_argument("--repeats", type=int, default=1)
    lc.set_defaults(func=run_learning_curve)
    cp = ss.add_parser("compare", help="several networks/losses: Dice, HD95, ASSD, parameters, training time; or models of "
                                       "any engine from their evaluate tables (--evaluations)")
    common(cp, manifest_optional=True)
    cp.add_argument("--evaluations", nargs="+", type=variant_table, default=None, metavar="NAME=EVALUATION_CSV",
                    help="compare already evaluated models of any engine (own, nnU-Net, MONAI, a reader) instead of training "
                         "variants: the same as `nmkit study evaluations` (means, bootstrap CIs, paired differences)")
    cp.add_argument("--reference", default=None, help="with --evaluations: the model the others are compared with")
    cp.add_argument("--metrics", nargs="+", default=None, help="with --evaluations: columns to compare")
    cp.add_argument("--variants", nargs="+", default=["unet:dice-ce", "attention-unet:dice-ce", "hrnet:dice-ce", "unet:dice-boundary"],
                    type=variant_item, help="NETWORK:LOSS pairs")
    cp.add_argument("--limit", type=int, default=None, help="training cases to use")
    cp.set_defaults(func=run_compare)
    ev = ss.add_parser("evaluations", help="compare models of any engine from their `nmkit evaluate` tables: means, "
                                          "bootstrap CIs and paired differences (Dice, HD95, lesion-wise F1 ...)",
                       description="Reads one `nmkit evaluate` per-case table per model (own engine, nnU-Net, MONAI bundle, "
                                   "an expert...), matched by case and structure. Writes OUT/evaluations.csv (per model and "
                                   "metric: mean, 95 % bootstrap CI over cases, count of non-finite values; then each model "
                                   "minus the reference, paired), evaluations.png and evaluations.provenance.json.")
    ev.add_argument("tables", nargs="+", type=variant_table, metavar="NAME=EVALUATION_CSV",
                    help="a model's name and its `nmkit evaluate --out` table (add --lesions there for lesion_f1)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--reference", default=None, help="model the others are compared with, paired (default: the last one)")
    ev.add_argument("--metrics", nargs="+", default=None,
                    help="columns to compare (default: dice, hd95_mm, assd_mm, nsd, lesion_f1/recall/precision, "
                         "abs_volume_difference_ml where every table has them)")
    ev.set_defaults(func=run_evaluations)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def variant_table(text: str) -> tuple[str, str]:
    """``NAME=EVALUATION_CSV`` -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=EVALUATION_CSV, got {text!r}")
    return name, path


def run_evaluations(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..provenance import provenance
    from ..segment.study import compare_evaluations, plot_evaluations

    tables = {}
    for name, path in args.tables:
        if name in tables:
            raise InputError(None, f"model name {name!r} given twice")
        if not Path(path).is_file():
            raise InputError(path, "no such evaluation table")
        try:
            tables[name] = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not a CSV table ({exc})") from exc
        if "case" not in tables[name].columns:
            raise InputError(path, "not an `nmkit evaluate` table (no 'case' column)")
    summary = compare_evaluations(tables, args.metrics, args.reference)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "evaluations.csv", index=False)
    plot_evaluations(summary, out / "evaluations.png")
    (out / "evaluations.provenance.json").write_text(json.dumps(provenance(
        {"reference": args.reference or list(tables)[-1], "metrics": args.metrics, "bootstrap": "percentile, 2000 resamples, 95 %"},
        [path for _, path in args.tables], n_rows=int(len(summary))), indent=2, default=str))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _setup(args: argparse.Namespace, networks: list[str] | None = None):
    from ..errors import InputError
    from ..segment.data import load_split, read_manifest
    from ..segment.preprocess import Preprocessing
    from ..segment.train import TrainConfig
    from .train import check_network

    dims = len(args.size)
    if dims not in (2, 3):
        raise InputError(None, f"--size needs 2 (2D) or 3 (3D) values; got {len(args.size)}")
    n_classes = 1 + max(parse_labels(args.labels))
    for network in dict.fromkeys(networks or [args.network]):  # every network buildable before any data is read
        check_network(network, dims, tuple(args.size), n_classes)
    table = read_manifest(args.manifest, require=("image", "split"))
    prep = Preprocessing(normalisation=args.normalisation, spatial_dims=dims, target_size=tuple(args.size) if dims == 2 else None,
                         patch_size=tuple(args.size) if dims == 3 else None)
    config = TrainConfig(network=args.network, loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         labels=parse_labels(args.labels))
    return table, prep, config, load_split(table, "val"), load_split(table, "test", args.test_limit)


def run_learning_curve(args: argparse.Namespace) -> int:
    from ..segment.data import load_split
    from ..segment.study import learning_curve

    table, prep, config, val, test = _setup(args)
    train_cases = load_split(table, "train", max(args.sizes))
    summary = learning_curve(train_cases, val, test, args.sizes, prep, config, args.out, repeats=args.repeats)
    print(summary.to_string(index=False))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..segment.data import load_split
    from ..segment.study import compare

    if args.evaluations:
        if args.manifest:
            raise InputError(None, "give a manifest (train and compare variants) or --evaluations (compare evaluated models), not both")
        args.tables = args.evaluations
        return run_evaluations(args)
    if not args.manifest:
        raise InputError(None, "study compare needs a manifest CSV (or --evaluations NAME=EVALUATION_CSV ...)")

    table, prep, config, val, test = _setup(args, [item.partition(":")[0] for item in args.variants])
    variants = []
    for item in args.variants:
        network, _, loss = item.partition(":")
        variants.append({"network": network, "loss": loss or args.loss})
    summary = compare(variants, load_split(table, "train", args.limit), val, test, prep, config, args.out)
    print(summary.to_string(index=False))
    return 0
