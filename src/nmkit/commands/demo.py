"""`nmkit demo`: the main job end to end on simulated default data, ending in an HTML report."""

from __future__ import annotations

import argparse

from ._args import at_least

#: fewest cases that give every split (train/validation/test) a case and the learning curve a point
MIN_CASES = 8


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole workflow on embedded default data and write an HTML report",
                       description="Simulate a thyroid scintigraphy cohort with three readers, convert ROIs to masks, train a "
                                   "small U-Net on CPU, evaluate it against the readers, run a learning curve and radiomics, "
                                   "compare two SPECT reconstructions of a NEMA phantom, and write OUT/report.html.")
    p.add_argument("--out", default="demo-output")
    p.add_argument("--cases", type=at_least(MIN_CASES), default=None,
                   help=f"cohort size (default 150, --quick 24; at least {MIN_CASES})")
    p.add_argument("--epochs", type=at_least(1), default=None, help="training epochs (default 30, --quick 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds) exercising the same steps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..demo import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    changes = {"seed": args.seed}
    if args.cases:
        changes["n_cases"] = args.cases
    if args.epochs:
        changes["epochs"] = args.epochs
    run_demo(args.out, replace(config, **changes))
    return 0
