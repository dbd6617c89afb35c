"""`nmkit train`: train a segmentation network from a dataset manifest and write a model bundle."""

from __future__ import annotations

import argparse

from ..segment.names import BOUNDARY_SCHEDULES, LOSS_NAMES, NETWORK_NAMES, NORMALISATIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a segmentation network from a case table (writes a model bundle)",
                       description="Train a 2D/3D segmentation network on the train split of a case table (nmkit dataset: "
                                   "image, a label-map mask, split), validate on the val split, and write a bundle "
                                   "(safetensors + bundle.json + training log).")
    p.add_argument("manifest", help="case table CSV (dataset.csv / manifest.csv: image, masks or mask, split)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--network", default="unet", choices=NETWORK_NAMES, help="network (default unet)")
    p.add_argument("--loss", default="dice-ce", choices=LOSS_NAMES, help="loss (default dice-ce)")
    p.add_argument("--boundary-schedule", default="increase", choices=BOUNDARY_SCHEDULES,
                   help="weight schedule of the boundary term (dice-boundary only; default increase)")
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--size", type=int, nargs="+", default=None, help="2D: input size (e.g. 128 128); 3D: patch size")
    p.add_argument("--normalisation", default="counts", choices=NORMALISATIONS,
                   help="intensity normalisation (default counts: Anscombe + percentile, for count images)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training cases (learning curves)")
    p.add_argument("--labels", nargs="+", default=["1=roi"], type=label_item, metavar="VALUE=NAME",
                   help="label values and names, e.g. 1=thyroid 2=nodule (names travel to predictions and evaluate)")
    p.add_argument("--name", default=None, help="bundle name recorded in bundle.json (default: the last part of --out)")
    p.add_argument("--version", default="1.0.0", help="bundle version")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--heads", nargs="+", default=None, metavar="HEAD",
                   help="one output head per reader, e.g. R1 R2 R3 consensus: masks from the manifest columns mask_<HEAD>")
    p.add_argument("--default-head", default=None, help="head used when predict names none (default: consensus if present, else the first)")
    p.add_argument("--pretrained-diffusion", default=None, help="initialise the encoder from a diffusion model (nmkit synth train)")
    g = p.add_argument_group("nnU-Net engine (--engine nnunet)")
    g.add_argument("--engine", default="nmkit", choices=("nmkit", "nnunet"),
                   help="nmkit: the own networks (default); nnunet: nnU-Net v2 fingerprint, plans, preprocessing and "
                        "training, wrapped as an nmkit bundle")
    g.add_argument("--channels", nargs="+", default=None, metavar="MODALITY",
                   help="input channels, e.g. PT CT: one case table row per channel image of a study (matched by the "
                        "modality column); the first channel's row carries the label map and its grid (default: one "
                        "channel, one row per case)")
    g.add_argument("--configuration", default="3d_fullres", choices=("2d", "3d_fullres", "3d_lowres"),
                   help="nnU-Net configuration (default 3d_fullres)")
    g.add_argument("--folds", nargs="+", type=int, default=[0], metavar="FOLD",
                   help="folds to train (default 0: train/val splits; with a fold column, fold k validates on fold k)")
    g.add_argument("--iterations", type=int, default=250, help="training iterations per epoch (nnU-Net default 250)")
    g.add_argument("--val-iterations", type=int, default=50, help="validation iterations per epoch (default 50)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for nnU-Net (default: up to 4)")
    p.set_defaults(func=run)


def label_item(text: str) -> str:
    """argparse type of one ``VALUE=NAME`` label: a positive integer value and a non-empty name."""
    value, sep, name = text.partition("=")
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0 or (sep and not name.strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected VALUE=NAME with a positive integer value, e.g. 1=gtv")
    return text


def parse_labels(items: list[str]) -> dict[int, str]:
    labels = {}
    for item in items:
        value, _, name = label_item(item).partition("=")
        labels[int(value)] = name.strip() or f"label_{value}"
    return labels


def check_network(network: str, dims: int, size: tuple[int, ...], out_channels: int, options: dict | None = None) -> None:
    """Build the network and run one training-mode forward pass on a blank input before any data is read: a listed
    network that cannot be trained on this input (size not divisible by its strides, feature maps shrinking to one
    voxel, a missing optional package, bad options) is one clear line naming ``--network`` and ``--size``."""
    import torch

    from ..errors import InputError
    from ..segment.nets import build_network, required_divisor

    options = dict(options or {})
    shape = "x".join(map(str, size))
    divisor = required_divisor(network, options)
    if any(s % divisor for s in size):
        raise InputError(None, f"--network {network} needs --size values divisible by {divisor}; got {' '.join(map(str, size))}")
    try:
        model = build_network(network, dims, 1, out_channels, img_size=size, **options)
    except (ValueError, TypeError, ImportError, RuntimeError, AssertionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(None, f"--network {network} cannot be built for {dims}D input {shape}: {detail}") from exc
    try:
        with torch.no_grad():
            model.train()(torch.zeros((1, 1, *size)))
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(None, f"--network {network} cannot run on {dims}D input {shape} (try a larger --size): {detail}") from exc


def run_nnunet(args: argparse.Namespace) -> int:
    """``--engine nnunet``: nnU-Net v2 trains on the case table; the result is an nmkit bundle."""
    from ..errors import InputError
    from ..segment.data import read_manifest
    from ..segment.engines.nnunet_train import train_nnunet

    for option, value in (("--epochs", args.epochs), ("--iterations", args.iterations), ("--val-iterations", args.val_iterations)):
        if value < 1:
            raise InputError(None, f"{option} must be at least 1; got {value}")
    if any(f < 0 for f in args.folds):
        raise InputError(None, f"--folds must be non-negative; got {' '.join(map(str, args.folds))}")
    table = read_manifest(args.manifest, require=("image", "split"))
    table = table[table["split"].astype(str).str.strip() != "test"]  # test rows never reach nnU-Net (nor its fingerprint)
    if table.empty:
        raise InputError(args.manifest, "no train/val rows (every row is in split 'test')")
    channels = list(args.channels or ["image"])
    print(f"training nnU-Net v2 ({args.configuration}, folds {' '.join(map(str, args.folds))}, channels {', '.join(channels)}) "
          f"for {args.epochs} epochs x {args.iterations} iterations")
    out = train_nnunet(table, args.manifest, args.out, parse_labels(args.labels), channels=channels,
                       configuration=args.configuration, folds=args.folds, epochs=args.epochs, iterations=args.iterations,
                       val_iterations=args.val_iterations, device=args.device, name=args.name, version=args.version,
                       threads=args.threads)
    print(f"bundle written to {out} (nnU-Net's log: {out / 'nnunet_train.log'})")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if getattr(args, "engine", "nmkit") == "nnunet":
        return run_nnunet(args)
    from ..provenance import config_hash
    from ..segment.data import load_split, read_manifest
    from ..segment.preprocess import Preprocessing
    from ..segment.train import TrainConfig, train

    size = tuple(args.size) if args.size else ((128, 128) if args.dims == 2 else (64, 64, 64))
    if len(size) != args.dims:
        raise InputError(None, f"--size needs {args.dims} values for --dims {args.dims}; got {' '.join(map(str, size))}")
    prep = Preprocessing(normalisation=args.normalisation, spatial_dims=args.dims,
                         target_size=size if args.dims == 2 else None, patch_size=size if args.dims == 3 else None)
    config = TrainConfig(network=args.network, loss=args.loss, boundary_schedule=args.boundary_schedule, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed,
                         labels=parse_labels(args.labels), device=args.device,
                         heads=tuple(args.heads) if args.heads else None, default_head=args.default_head)
    try:
        config.resolved_default_head()  # a wrong --default-head fails before any training
    except ValueError as exc:
        raise InputError(None, f"--default-head: {exc}") from exc
    if args.pretrained_diffusion:
        if args.dims != 2:
            raise InputError(args.pretrained_diffusion, "diffusion pre-training is for 2D networks (use --dims 2)")
        from ..generate.pretrain import segnet_options

        config.network = "diffusion-unet"
        config.network_options = segnet_options(args.pretrained_diffusion)
        config.pretrained_diffusion = args.pretrained_diffusion
    check_network(config.network, args.dims, size, (1 + max(config.labels)) * config.n_heads, config.network_options)
    table = read_manifest(args.manifest, require=("image", "split"), heads=config.heads)  # data only after the options
    train_cases = load_split(table, "train", args.limit, heads=config.heads)
    if not train_cases:
        raise InputError(args.manifest, "no readable cases in split 'train'")
    val_cases = load_split(table, "val", heads=config.heads)
    print(f"training {config.network} ({args.dims}D, loss {args.loss}) on {len(train_cases)} cases, validating on {len(val_cases)}")
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
