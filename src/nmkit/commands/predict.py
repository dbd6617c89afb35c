"""`nmkit predict`: run a model bundle on images and write masks (NIfTI and optionally DICOM SEG)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with a model bundle",
                       description="Apply a model bundle to images (NIfTI/NRRD files, DICOM files or series folders, or a manifest's "
                                   "test split) and write one NIfTI label map per image (and a DICOM SEG for DICOM input with --seg).")
    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("inputs", nargs="+", help="image files/folders, or one manifest CSV")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="test", help="manifest split to predict (default test)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time left-right flip (averaged probabilities); default: what the bundle recommends")
    p.add_argument("--largest", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected component per label; default: the bundle's recommendation")
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                   help="fill enclosed holes in each label; default: the bundle's recommendation")
    p.add_argument("--head", nargs="+", default=None, metavar="HEAD",
                   help="multi-reader bundles: whose delineation to write (e.g. R2, or several, or 'all'); default: the bundle's "
                        "default head. With several heads each mask is written as <case>_<head>.nii.gz")
    p.add_argument("--seg", action="store_true", help="also write DICOM SEG referencing the source series (DICOM input)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    if len(args.inputs) == 1 and args.inputs[0].endswith(".csv"):
        from ..segment.data import read_manifest

        table = read_manifest(args.inputs[0])
        rows = table[table["split"] == args.split]
        return [(str(r.case_id), Path(r.image)) for r in rows.itertuples()]
    return [(Path(p).name.replace(".nii.gz", "").replace(".nii", "").replace(".dcm", ""), Path(p)) for p in args.inputs]


def run(args: argparse.Namespace) -> int:
    import json

    from ..io.volume_files import write_volume
    from ..provenance import provenance
    from ..segment.bundle import load_bundle
    from ..segment.data import load_image
    from ..segment.infer import predict_image

    bundle = load_bundle(args.bundle, device=args.device)
    heads: list[str | None] = [None]
    if args.head:
        heads = list(bundle.heads or ()) if args.head == ["all"] else list(args.head)
        for head in heads:
            bundle.resolve_head(head)  # unknown head: a clear error before any case runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    from tqdm.auto import tqdm

    for case_id, path in tqdm(_inputs(args), desc="predict"):
        try:
            image = load_image(path)
            for head in heads:
                mask = predict_image(bundle, image, flips=None if args.tta is None else ((-1,) if args.tta else ()),
                                     keep_largest=args.largest, fill=args.fill_holes, head=head)
                stem = case_id if len(heads) == 1 else f"{case_id}_{head}"
                write_volume(mask, out / f"{stem}.nii.gz")
                if args.seg and not str(path).endswith((".nii", ".nii.gz", ".nrrd")):
                    from ..io.seg import write_seg

                    algorithm = bundle.name if head is None else f"{bundle.name} ({head})"
                    write_seg(mask, image, out / f"{stem}_seg.dcm", algorithm_name=algorithm, algorithm_version=bundle.version)
            done.append(str(path))
        except Exception as exc:  # log and skip a bad case
            log.error("%s: %s", path, exc)
            failed.append({"input": str(path), "error": str(exc)})
    record = provenance(config={"bundle": str(args.bundle), "heads": [bundle.resolve_head(h) for h in heads], "tta": args.tta, "largest": args.largest, "fill_holes": args.fill_holes,
                                                "bundle_postprocessing": bundle.description.get("postprocessing", {})}, inputs=done,
                        model={"name": bundle.name, "version": bundle.version}, failed=failed)
    (out / "provenance.json").write_text(json.dumps(record, indent=2))
    print(f"{len(done)} predicted, {len(failed)} failed -> {out}")
    return 0 if done or not failed else 1
