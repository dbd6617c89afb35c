"""`nmkit network ORGAN_TABLE OUT_DIR`: inter-organ metabolic network across a cohort (nmkit.petwb.network)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ._args import at_least

    p = sub.add_parser("network", help="inter-organ metabolic network (Spearman, partial correlation, graphical lasso)",
                       description="Reads the organ table of `nmkit organs` (one row per patient x organ) and writes "
                                   "OUT_DIR/edges.csv (organ pair, weight, p and BH-FDR q values, bootstrap stability, "
                                   "selected), network.graphml, network.png and node_scores.csv (per-patient z-scores "
                                   "node_<organ>, features for `nmkit model-outcome`).")
    p.add_argument("features", help="organ table CSV (patient_id, organ and the feature column)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--feature", default="suv_mean", help="column of the organ table to correlate (default suv_mean)")
    p.add_argument("--id-col", default="patient_id", help="column identifying a patient/scan (default patient_id; "
                                                           "case_id for one node set per scan)")
    p.add_argument("--method", choices=("spearman", "partial", "glasso"), default="partial", help="edge definition")
    p.add_argument("--bootstrap", type=at_least(0), default=100, help="bootstrap resamples for edge stability (default 100)")
    p.add_argument("--fdr", type=float, default=0.05, help="FDR level for spearman/partial edges (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    p.add_argument("--batch-col", metavar="COLUMN", help="ComBat-harmonise the organ values by this column (e.g. centre), "
                                                          "refitted inside every bootstrap resample; kept in node_scores.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..petwb.network import batch_of, build_network, node_scores, plot_network, wide_matrix, write_graphml
    from ..provenance import provenance

    src, out = Path(args.features), Path(args.out_dir)
    if not src.is_file():
        raise InputError(src, "organ table not found")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    try:
        table = pd.read_csv(src)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:  # parser errors, bad gzip/zip, binary files
        raise InputError(src, f"not a readable CSV ({type(exc).__name__})") from None
    try:
        wide = wide_matrix(table, args.feature, patient_col=args.id_col)
        batch = batch_of(table, wide, args.batch_col, patient_col=args.id_col) if args.batch_col else None
    except InputError as exc:
        raise InputError(src, exc.problem) from None
    net = build_network(wide, args.method, args.bootstrap, args.fdr, args.seed, batch=batch)
    out.mkdir(parents=True, exist_ok=True)
    edges = net.edges()
    edges.to_csv(out / "edges.csv", index=False)
    write_graphml(net, wide, out / "network.graphml")
    plot_network(net, out / "network.png")
    scores = node_scores(wide)
    if batch is not None:
        scores.insert(1, args.batch_col, batch)
    scores.to_csv(out / "node_scores.csv", index=False)
    (out / "network.provenance.json").write_text(json.dumps(
        provenance({k: v for k, v in vars(args).items() if k != "func"}, [str(src)]), indent=1, default=str))
    print(f"{len(wide)} patients x {wide.shape[1]} organs: {int(edges.selected.sum())} of {len(edges)} edges selected "
          f"({args.method}) -> {out}")
    return 0
