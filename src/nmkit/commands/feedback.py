"""`nmkit feedback import|report|export --server-dir DIR`: expert corrections of the server's AI results.

``import`` links corrected SEG/RTSTRUCT files (pulled from a PACS rather than sent to the server) to the AI results
they correct and scores them; ``report`` shows how much experts edit per model version and week (HTML + CSV);
``export`` writes the corrected cases as a dataset case table for ``nmkit train``.
"""

from __future__ import annotations

_SERVER_HELP = "the server's storage folder (holding server.sqlite), or its YAML configuration"


def register(subparsers) -> None:
    p = subparsers.add_parser("feedback", help="expert corrections of the AI server's results: import, report, export as a dataset")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("import", help="link corrected SEG/RTSTRUCT files (e.g. pulled from a PACS) to the AI results they correct, score them")
    s.add_argument("path", metavar="FILE_OR_FOLDER", help="a corrected SEG/RTSTRUCT file, or a folder searched for them")
    s.add_argument("--server-dir", required=True, metavar="DIR", help=_SERVER_HELP)
    s.add_argument("--reader", default=None, help="the expert's name (default: the header's ContentCreatorName / OperatorsName)")
    s = sub.add_parser("report", help="how much experts edit, per model version and per week: HTML report plus CSV tables")
    s.add_argument("--server-dir", required=True, metavar="DIR", help=_SERVER_HELP)
    s.add_argument("--out", required=True, help="HTML report to write (CSV tables next to it: <stem>.csv, <stem>_by_version.csv ...)")
    s = sub.add_parser("export", help="the corrected cases as a dataset case table (image, corrected label map, reader, split)")
    s.add_argument("--server-dir", required=True, metavar="DIR", help=_SERVER_HELP)
    s.add_argument("--out", required=True, help="case table CSV to write (images/ and masks/ are written next to it)")
    s.add_argument("--model", default=None, help="only corrections of this model (registry name)")
    s.add_argument("--model-version", default=None, help="only corrections of this model version")
    s.add_argument("--val-fraction", type=float, default=0.2, help="fraction of patients in split 'val' (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..serve.feedback import import_path, relink_unlinked, score_pending
    from ..serve.feedback_report import export_dataset, open_store, write_report

    store, storage = open_store(args.server_dir)
    try:
        if args.action == "import":
            from pathlib import Path

            if not Path(args.path).exists():
                raise InputError(args.path, "file or folder does not exist")
            results = import_path(store, storage, args.path, reader=args.reader)
            counts = score_pending(store)
            linked = [r for r in results if r["linked"]]
            for r in results:
                if not r["linked"]:
                    print(f"{r['file']}: not linked, kept in the unlinked list: {r['reason']}")
            failed = {r["id"]: r["reason"] for r in store.feedback_rows("failed")}
            for r in linked:
                if r["id"] in failed:
                    print(f"{r['file']}: linked to job {r['job']} but not scored: {failed[r['id']]}")
            print(f"{len(results)} correction(s): {len(linked)} linked ({counts['scored']} scored, {counts['failed']} not scored), "
                  f"{len(results) - len(linked)} unlinked")
            if not results:
                raise InputError(args.path, "no corrected SEG or RTSTRUCT found (DICOM SEG/RTSTRUCT not made by nmkit)")
            if not linked:
                raise InputError(args.path, "no correction matches an AI result of this server (unknown study or series); "
                                            "nothing was added to the labelled cases")
            return 0
        relink_unlinked(store, storage)  # quarantined corrections whose AI result has finished since
        score_pending(store)  # corrections received while no server ran its scorer
        if args.action == "report":
            paths = write_report(store, args.out, storage)
            print(f"report written to {paths['html']} (tables: {paths['segments'].name}, {paths['by_version'].name}, {paths['by_week'].name})")
            return 0
        out = export_dataset(store, args.out, storage, val_fraction=args.val_fraction, seed=args.seed, model=args.model,
                             version=args.model_version)
        labels = " ".join(f"{k}={v}" for k, v in sorted(out["labels"].items()))
        splits = ", ".join(f"{n} {s}" for s, n in sorted(out["splits"].items()))
        print(f"{out['rows']} corrected case(s) written to {out['path']} ({splits}); labels: {labels} "
              f"(train with: nmkit train {out['path']} --labels {labels} ...)")
        return 0
    finally:
        store.close()
