"""`nmkit train`: train a segmentation network from a dataset manifest and write a model bundle."""

from __future__ import annotations

import argparse

from ..devices import DEVICE_HELP, device_option
from ..segment.augment import AUGMENTATIONS, DEFAULT_AUGMENTATIONS
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
    p.add_argument("--normalisation", nargs="+", default=None, choices=NORMALISATIONS, metavar="KIND",
                   help=f"intensity normalisation, one per channel ({', '.join(NORMALISATIONS)}); default counts (Anscombe + "
                        "percentile, for count images), with --channels per modality: suv for PT, window for CT, zscore "
                        "for MR, counts for NM")
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
    p.add_argument("--device", default=None, type=device_option, help=DEVICE_HELP)
    p.add_argument("--heads", nargs="+", default=None, metavar="HEAD",
                   help="one output head per reader, e.g. R1 R2 R3 consensus: masks from the manifest columns mask_<HEAD>")
    p.add_argument("--default-head", default=None, help="head used when predict names none (default: consensus if present, else the first)")
    p.add_argument("--pretrained-diffusion", default=None, help="initialise the encoder from a diffusion model (nmkit synth train)")
    p.add_argument("--channels", nargs="+", default=None, metavar="MODALITY",
                   help="input channels, e.g. PT CT: one case table row per channel image of a study (matched by the "
                        "modality column); the first channel's row carries the label map and its grid, the others are "
                        "resampled onto it (default: one channel, one row per case)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations (batches) per epoch (default: one pass over the training cases; nnU-Net 250)")
    p.add_argument("--folds", nargs="+", type=int, default=None, metavar="FOLD",
                   help="folds to train (own engine: with --kfold or the case table's fold column, one model per fold, "
                        "ensembled by predict; nnU-Net default 0: train/val splits, with a fold column fold k validates on fold k)")
    o = p.add_argument_group("own engine, 3D (--engine nmkit --dims 3)")
    o.add_argument("--spacing", nargs="+", default=None, metavar="MM",
                   help="target voxel spacing X Y Z in mm, or auto (the median of the training cases, nnU-Net's "
                        "fingerprint rule); cases are resampled to it and predictions back to the image's grid "
                        "(default: each case's own grid)")
    o.add_argument("--interpolation", default="linear", choices=("linear", "bspline"),
                   help="image interpolation when resampling to --spacing (label maps: label-aware); default linear")
    o.add_argument("--width", type=int, default=None, help="network width: channels of the first level, doubling deeper "
                                                            "(default: the network's own, 16 for unet)")
    o.add_argument("--kfold", type=int, default=None, metavar="K",
                   help="k-fold training over the train and val rows: the fold column when every row has one, else a "
                        "patient-level split into K folds; one model per fold (--folds picks some), ensembled by predict")
    o.add_argument("--augment", nargs="+", default=None, metavar="KIND",
                   help=f"3D augmentation set ({', '.join(AUGMENTATIONS)}, or none); default {' '.join(DEFAULT_AUGMENTATIONS)}")
    o.add_argument("--augment-prob", type=float, default=0.2,
                   help="probability of each augmentation per patch (flips: 0.5 per axis); default 0.2")
    g = p.add_argument_group("nnU-Net engine (--engine nnunet)")
    g.add_argument("--engine", default="nmkit", choices=("nmkit", "nnunet"),
                   help="nmkit: the own networks (default); nnunet: nnU-Net v2 fingerprint, plans, preprocessing and "
                        "training, wrapped as an nmkit bundle")
    g.add_argument("--configuration", default="3d_fullres", choices=("2d", "3d_fullres", "3d_lowres"),
                   help="nnU-Net configuration (default 3d_fullres)")
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


def check_network(network: str, dims: int, size: tuple[int, ...], out_channels: int, options: dict | None = None,
                  in_channels: int = 1) -> None:
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
        model = build_network(network, dims, in_channels, out_channels, img_size=size, **options)
    except (ValueError, TypeError, ImportError, RuntimeError, AssertionError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(None, f"--network {network} cannot be built for {dims}D input {shape}: {detail}") from exc
    try:
        with torch.no_grad():
            model.train()(torch.zeros((1, in_channels, *size)))
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(None, f"--network {network} cannot run on {dims}D input {shape} (try a larger --size): {detail}") from exc


def run_nnunet(args: argparse.Namespace) -> int:
    """``--engine nnunet``: nnU-Net v2 trains on the case table; the result is an nmkit bundle."""
    from ..errors import InputError
    from ..segment.data import read_manifest
    from ..segment.engines.nnunet_train import train_nnunet

    args.iterations = 250 if args.iterations is None else args.iterations
    args.folds = [0] if args.folds is None else args.folds
    own = [o for o, v in (("--spacing", args.spacing), ("--width", args.width), ("--kfold", args.kfold), ("--augment", args.augment)) if v]
    if own:
        raise InputError(None, f"{', '.join(own)}: own-engine options; nnU-Net plans spacing, network, folds and augmentation itself")
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
    channels = tuple(args.channels) if args.channels and len(args.channels) > 1 else None
    normalisations = own_engine_checks(args, channels)
    spacing = parse_spacing(args.spacing)
    augmentation = None
    if args.dims == 3:
        kinds = DEFAULT_AUGMENTATIONS if args.augment is None else tuple(k for k in args.augment if k != "none")
        augmentation = {"kinds": kinds, "probability": args.augment_prob}
    prep = Preprocessing(normalisation=normalisations[0], spatial_dims=args.dims,
                         target_size=size if args.dims == 2 else None, patch_size=size if args.dims == 3 else None,
                         interpolation=args.interpolation, channels=channels,
                         channel_normalisations=tuple(normalisations) if channels else None)
    config = TrainConfig(network=args.network, loss=args.loss, boundary_schedule=args.boundary_schedule, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed,
                         labels=parse_labels(args.labels), device=args.device,
                         heads=tuple(args.heads) if args.heads else None, default_head=args.default_head,
                         iterations_per_epoch=args.iterations, augmentation=augmentation, width=args.width)
    try:
        config.resolved_default_head()  # a wrong --default-head fails before any training
    except ValueError as exc:
        raise InputError(None, f"--default-head: {exc}") from exc
    if args.width is not None:
        from ..segment.nets import width_options

        try:
            config.network_options = width_options(config.network, args.width)
        except ValueError as exc:
            raise InputError(None, f"--width: {exc}") from exc
    if args.pretrained_diffusion:
        if args.dims != 2:
            raise InputError(args.pretrained_diffusion, "diffusion pre-training is for 2D networks (use --dims 2)")
        from ..generate.pretrain import segnet_options

        config.network = "diffusion-unet"
        config.network_options = segnet_options(args.pretrained_diffusion)
        config.pretrained_diffusion = args.pretrained_diffusion
    check_network(config.network, args.dims, size, (1 + max(config.labels)) * config.n_heads, config.network_options,
                  in_channels=prep.n_channels)
    table = read_manifest(args.manifest, require=("image", "split"), heads=config.heads)  # data only after the options
    if args.channels and len(args.channels) == 1:  # one named channel: that modality's rows only
        table = modality_rows(table, args.channels[0], args.manifest)
    kfold = args.kfold is not None or (args.folds is not None and args.folds != [0]) or \
        (args.folds is not None and "fold" in table.columns and table["fold"].astype(str).str.strip().ne("").any())
    if kfold:
        return run_kfold(args, table, prep, config, spacing)
    train_cases = load_split(table, "train", args.limit, heads=config.heads, channels=channels)
    if not train_cases:
        raise InputError(args.manifest, "no readable cases in split 'train'")
    val_cases = load_split(table, "val", heads=config.heads, channels=channels)
    prep.target_spacing_mm = resolve_spacing(spacing, train_cases, args)
    train_cases, val_cases = resample_cases(train_cases, prep), resample_cases(val_cases, prep)
    print(f"training {config.network} ({args.dims}D, loss {args.loss}) on {len(train_cases)} cases, validating on {len(val_cases)}"
          + (f", spacing {' x '.join(f'{s:g}' for s in prep.target_spacing_mm)} mm" if prep.target_spacing_mm else ""))
    summary = {"manifest": str(args.manifest), "manifest_hash": config_hash(table.to_dict(orient="list"))}
    out = train(train_cases, val_cases, prep, config, args.out, data_summary=summary)
    rename_bundle(out, args)
    print(f"bundle written to {out}")
    return 0


def modality_rows(table, channel: str, where):
    """The rows of one modality (``--channels PT``: PET=PT as in multi-channel matching)."""
    from ..errors import InputError
    from ..segment.engines.channels import _modality_key

    if "modality" not in table.columns:
        raise InputError(where, f"--channels {channel}: the case table has no modality column")
    keep = table["modality"].map(lambda m: _modality_key(m or "")) == _modality_key(channel)
    if not keep.any():
        found = ", ".join(sorted({str(m) for m in table["modality"] if str(m).strip()})) or "none"
        raise InputError(where, f"--channels {channel}: no rows of that modality (modalities there: {found})")
    return table[keep]


def own_engine_checks(args: argparse.Namespace, channels: tuple[str, ...] | None) -> list[str]:
    """Option combinations of the own engine, checked before any data is read; returns one normalisation per channel."""
    from ..errors import InputError
    from ..segment.preprocess import default_normalisation

    n = len(channels) if channels else 1
    if args.dims == 2:
        for option, value in (("--spacing", args.spacing), ("--kfold", args.kfold), ("--augment", args.augment)):
            if value is not None:
                raise InputError(None, f"{option} is for 3D training (--dims 3)")
        if channels:
            raise InputError(None, "--channels with several channels is for 3D training (--dims 3)")
    if channels and args.heads:
        raise InputError(None, "--channels with several channels and --heads cannot be combined")
    for option, value, low in (("--iterations", args.iterations, 1), ("--width", args.width, 1), ("--kfold", args.kfold, 2),
                               ("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1)):
        if value is not None and value < low:
            raise InputError(None, f"{option} must be at least {low}; got {value}")
    if args.folds is not None:
        if any(f < 0 for f in args.folds):
            raise InputError(None, f"--folds must be non-negative; got {' '.join(map(str, args.folds))}")
        if args.kfold is not None and max(args.folds) >= args.kfold:
            raise InputError(None, f"--folds {' '.join(map(str, args.folds))}: --kfold {args.kfold} has folds 0..{args.kfold - 1}")
    if not 0.0 <= args.augment_prob <= 1.0:
        raise InputError(None, f"--augment-prob must be between 0 and 1; got {args.augment_prob}")
    if args.augment is not None:
        unknown = [k for k in args.augment if k not in (*AUGMENTATIONS, "none")]
        if unknown:
            raise InputError(None, f"--augment: unknown kind {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)} or none")
    if args.normalisation is None:
        return [default_normalisation(c) for c in channels] if channels else ["counts"]
    if len(args.normalisation) not in (1, n):
        raise InputError(None, f"--normalisation: give one kind, or one per channel ({n}); got {len(args.normalisation)}")
    return list(args.normalisation) * (n if len(args.normalisation) == 1 else 1)


def parse_spacing(values: list[str] | None) -> tuple[float, ...] | str | None:
    """``--spacing``: three positive millimetre values, ``auto``, or None."""
    from ..errors import InputError

    if values is None:
        return None
    if values == ["auto"]:
        return "auto"
    try:
        spacing = tuple(float(v) for v in values)
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or any(not (s > 0 and s < 1e4) for s in spacing):
        raise InputError(None, f"--spacing needs three positive values in mm (X Y Z) or auto; got {' '.join(values)}")
    return spacing


def resolve_spacing(spacing: tuple[float, ...] | str | None, cases: list, args: argparse.Namespace) -> tuple[float, ...] | None:
    """The target spacing: given, or (auto) the training cases' median (nnU-Net's rule for thick slices)."""
    from ..errors import InputError
    from ..segment.preprocess import median_spacing

    if spacing != "auto":
        return spacing  # type: ignore[return-value]
    spacings = [c.image.spacing for c in cases]
    if any(len(s) != 3 for s in spacings):
        raise InputError(args.manifest, "--spacing auto needs 3D images")
    return median_spacing(spacings)


def resample_cases(cases: list, prep) -> list:
    """Cases on the target spacing (no-op without one)."""
    from ..segment.data import resample_case

    return [resample_case(c, prep.target_spacing_mm, prep.interpolation) for c in cases]


def run_kfold(args: argparse.Namespace, table, prep, config, spacing) -> int:
    """``--kfold K`` / ``--folds``: one model per fold over the train and val rows, bundled as an ensemble."""
    from ..errors import InputError
    from ..provenance import config_hash
    from ..segment.data import load_split
    from ..segment.train import assign_folds, train_folds

    cases = load_split(table, ("train", "val"), args.limit, heads=config.heads, channels=prep.channels)
    if not cases:
        raise InputError(args.manifest, "no readable cases in splits 'train'/'val'")
    try:
        fold_of = assign_folds(cases, args.kfold, seed=args.seed)
    except ValueError as exc:
        raise InputError(args.manifest, str(exc)) from exc
    k = args.kfold or (max(fold_of) + 1)
    folds = list(args.folds) if args.folds is not None else list(range(k))
    missing = [f for f in folds if f not in fold_of]
    if missing:
        raise InputError(args.manifest, f"--folds {' '.join(map(str, folds))}: no cases in fold(s) {', '.join(map(str, missing))}")
    lonely = [f for f in folds if all(g == f for g in fold_of)]
    if lonely:
        raise InputError(args.manifest, f"fold {lonely[0]} holds every case: nothing left to train on (the fold column needs at least 2 folds)")
    prep.target_spacing_mm = resolve_spacing(spacing, cases, args)
    cases = resample_cases(cases, prep)
    print(f"training {config.network} ({args.dims}D, loss {args.loss}), {k}-fold on {len(cases)} cases: folds "
          f"{' '.join(map(str, folds))}" + (f", spacing {' x '.join(f'{s:g}' for s in prep.target_spacing_mm)} mm" if prep.target_spacing_mm else ""))
    summary = {"manifest": str(args.manifest), "manifest_hash": config_hash(table.to_dict(orient="list"))}
    out = train_folds(cases, fold_of, folds, prep, config, args.out, data_summary=summary)
    rename_bundle(out, args)
    print(f"bundle written to {out} ({len(folds)} fold models, ensembled by predict)")
    return 0


def rename_bundle(out, args: argparse.Namespace) -> None:
    """``--name``/``--version`` into bundle.json."""
    if args.name or args.version != "1.0.0":
        import json

        desc = json.loads((out / "bundle.json").read_text())
        desc["name"] = args.name or desc["name"]
        desc["version"] = args.version
        (out / "bundle.json").write_text(json.dumps(desc, indent=2))
