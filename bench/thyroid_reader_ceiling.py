"""How well can any model mimic a simulated thyroid reader? The ceiling of a perfect per-reader model.

A reader's outline depends on the noisy image (which a model sees) and on hand randomness (which no model can
predict). The ideal predictor of reader R on an image is the majority of many of R's re-drawings of that same image
with new hand randomness; its Dice against R's actual drawing is the ceiling for a model that mimics R (and the
majority of all readers' re-drawings is the ceiling for a consensus model). Prints the ceilings per reader and per
pathology, for the test split of a cohort made with the same seed as bench/train_thyroid_bundle.py.

    .venv/bin/python bench/thyroid_reader_ceiling.py --cases 2000 --seed 101 --redraws 8 --limit 150
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cohort size (the split depends on it)")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--redraws", type=int, default=8)
    parser.add_argument("--limit", type=int, default=150, help="first N test cases")
    parser.add_argument("--out", default=None, help="CSV of per-case ceilings")
    args = parser.parse_args()

    from nmkit.catalog.manifest import split_by_patient
    from nmkit.metrics.overlap import dice
    from nmkit.metrics.readers import consensus
    from nmkit.phantoms.cohort import case_plan, simulate_case
    from nmkit.phantoms.readers import read_case, rois_to_masks

    ids = pd.DataFrame({"case_id": [f"case{i:05d}" for i in range(args.cases)],
                        "patient_id": [f"THY{args.seed}-{i:05d}" for i in range(args.cases)]})
    split = split_by_patient(ids, (0.7, 0.15, 0.15), seed=args.seed)
    test = sorted(int(c[4:]) for c in split.loc[split["split"] == "test", "case_id"])[: args.limit]
    rows = []
    for k, index in enumerate(test):
        plan, case, reads = simulate_case(args.seed, index)
        shape = case.counts.shape

        def gland(rois) -> np.ndarray:
            return rois_to_masks(rois, shape).get("thyroid", np.zeros(shape, bool))

        actual = {style.name: gland(rois) for style, rois in reads}
        redrawn = {style.name: [gland(read_case(case.counts, case.spacing[0], case.params, style,
                                                np.random.default_rng([args.seed, index, 7919, j])))
                                for j in range(args.redraws)] for style, _ in reads}
        consensus_actual, _ = consensus(list(actual.values()), method="majority")
        row = {"case": f"case{index:05d}", "pathology": plan["pathology"]}
        for name, draws in redrawn.items():
            ideal, _ = consensus(draws, method="majority")
            row[f"ceiling_{name}"] = float(dice(ideal, actual[name]))
        pooled, _ = consensus([d for draws in redrawn.values() for d in draws], method="majority")
        row["ceiling_consensus"] = float(dice(pooled, consensus_actual))
        rows.append(row)
        print(f"\r{k + 1}/{len(test)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    cols = [c for c in table.columns if c.startswith("ceiling_")]
    print(f"{len(table)} test cases of the {args.cases}-case cohort, seed {args.seed}, {args.redraws} re-drawings\n")
    print("| pathology | n | " + " | ".join(c.removeprefix("ceiling_") for c in cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for name, group in table.groupby("pathology"):
        print(f"| {name} | {len(group)} | " + " | ".join(f"{group[c].mean():.3f}" for c in cols) + " |")
    print(f"| **all** | {len(table)} | " + " | ".join(f"**{table[c].mean():.3f}**" for c in cols) + " |")
    print(json.dumps({c: round(float(table[c].mean()), 4) for c in cols}))


if __name__ == "__main__":
    main()
