"""`nmkit train`: train a segmentation network from a dataset manifest and write a model bundle."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a segmentation network from a manifest (writes a model bundle)",
                       description="Train a 2D/3D segmentation network on the train split of a manifest (columns image, mask, split), "
                                   "validate on the val split, and write a bundle (safetensors + bundle.json + training log).")
    p.add_argument("manifest", help="dataset manifest CSV (image, mask, split[, case_id])")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--network", default="unet", help="unet | attention-unet | unetr | swin-unetr | hrnet")
    p.add_argument("--loss", default="dice-ce", help="dice | dice-ce | dice-boundary")
    p.add_argument("--boundary-schedule", default="increase", help="constant | increase | adaptive (dice-boundary only)")
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--size", type=int, nargs="+", default=None, help="2D: input size (e.g. 128 128); 3D: patch size")
    p.add_argument("--normalisation", default="counts", help="counts | zscore | suv | window | percentile")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training cases (learning curves)")
    p.add_argument("--labels", nargs="+", default=["1=roi"], help="label names, e.g. 1=thyroid 2=nodule")
    p.add_argument("--name", default=None, help="bundle name (default: folder name)")
    p.add_argument("--version", default="1.0.0", help="bundle version")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--heads", nargs="+", default=None, metavar="HEAD",
                   help="one output head per reader, e.g. R1 R2 R3 consensus: masks from the manifest columns mask_<HEAD>")
    p.add_argument("--default-head", default=None, help="head used when predict names none (default: consensus if present, else the first)")
    p.add_argument("--pretrained-diffusion", default=None, help="initialise the encoder from a diffusion model (nmkit synth train)")
    p.set_defaults(func=run)


def parse_labels(items: list[str]) -> dict[int, str]:
    labels = {}
    for item in items:
        value, _, name = item.partition("=")
        labels[int(value)] = name or f"label_{value}"
    return labels


def run(args: argparse.Namespace) -> int:
    from ..segment.data import load_split, read_manifest
    from ..segment.preprocess import Preprocessing
    from ..segment.train import TrainConfig, train
    from ..errors import InputError
    from ..provenance import config_hash

    table = read_manifest(args.manifest)
    size = tuple(args.size) if args.size else ((128, 128) if args.dims == 2 else (64, 64, 64))
    prep = Preprocessing(normalisation=args.normalisation, spatial_dims=args.dims,
                         target_size=size if args.dims == 2 else None, patch_size=size if args.dims == 3 else None)
    config = TrainConfig(network=args.network, loss=args.loss, boundary_schedule=args.boundary_schedule, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed,
                         labels=parse_labels(args.labels), device=args.device,
                         heads=tuple(args.heads) if args.heads else None, default_head=args.default_head)
    try:
        config.resolved_default_head()  # a wrong --default-head fails before any training
    except ValueError as exc:
        raise InputError(args.manifest, str(exc)) from exc
    if args.pretrained_diffusion:
        if args.dims != 2:
            raise InputError(args.pretrained_diffusion, "diffusion pre-training is for 2D networks (use --dims 2)")
        from ..generate.pretrain import segnet_options

        config.network = "diffusion-unet"
        config.network_options = segnet_options(args.pretrained_diffusion)
        config.pretrained_diffusion = args.pretrained_diffusion
    train_cases = load_split(table, "train", args.limit, heads=config.heads)
    val_cases = load_split(table, "val", heads=config.heads)
    print(f"training {args.network} ({args.dims}D, loss {args.loss}) on {len(train_cases)} cases, validating on {len(val_cases)}")
    summary = {"manifest": str(args.manifest), "manifest_hash": config_hash(table.to_dict(orient="list"))}
    out = train(train_cases, val_cases, prep, config, args.out, data_summary=summary)
    if args.name or args.version != "1.0.0":
        import json

        desc = json.loads((out / "bundle.json").read_text())
        desc["name"] = args.name or desc["name"]
        desc["version"] = args.version
        (out / "bundle.json").write_text(json.dumps(desc, indent=2))
    print(f"bundle written to {out}")
    return 0
