"""`nmkit synth train|sample|audit`: diffusion models for synthetic 2D images (marked synthetic), and their audit."""

from __future__ import annotations

import argparse

from ..devices import DEVICE_HELP, device_option
from ._args import at_least, positive_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="diffusion models: train, sample synthetic images, audit for memorisation",
                       description="Train a denoising diffusion model on unlabelled 2D images (optionally mask-conditioned), "
                                   "sample synthetic images (DICOM secondary capture / NIfTI / PNG, marked SYNTHETIC) and audit "
                                   "them against the training set.")
    s = p.add_subparsers(dest="synth_command", metavar="ACTION")

    t = s.add_parser("train", help="train a diffusion model (writes diffusion.safetensors + diffusion.json)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", help="folder of 2D images (NIfTI/NRRD/PNG/planar DICOM)")
    src.add_argument("--manifest", help="manifest CSV (image, mask, split): its train split, with masks for --conditioned")
    src.add_argument("--phantom-thyroid", type=at_least(1), metavar="N", help="train on N simulated thyroid scans (with masks)")
    t.add_argument("--out", required=True, help="checkpoint folder")
    t.add_argument("--conditioned", action="store_true", help="mask-conditioned model (label maps as extra input channels)")
    t.add_argument("--labels", nargs="+", default=None, help="conditioning label names, e.g. 1=gland 2=cold_nodule (default: thyroid)")
    t.add_argument("--normalisation", default="counts", choices=("counts", "percentile"))
    t.add_argument("--size", type=at_least(8), default=64, help="square model size in pixels")
    t.add_argument("--channels", type=at_least(1), nargs="+", default=[32, 64, 64])
    t.add_argument("--timesteps", type=at_least(1), default=1000, help="training diffusion timesteps")
    t.add_argument("--iterations", type=at_least(1), default=2000)
    t.add_argument("--batch-size", type=at_least(1), default=16)
    t.add_argument("--lr", type=positive_float, default=2e-4)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--matrix", type=at_least(16), default=64, help="phantom matrix size")
    t.add_argument("--device", default=None, type=device_option, help=DEVICE_HELP)
    t.add_argument("--checkpoint-every", type=at_least(1), default=None, metavar="N",
                   help="write the checkpoint and the training state every N iterations (so the run can be resumed)")
    t.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this diffusion checkpoint's weights (same network; e.g. an unconditional model "
                        "pre-trained on unlabelled images, fine-tuned here with --conditioned)")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (same options; --iterations may be larger)")
    t.set_defaults(func=run_train)

    m = s.add_parser("sample", help="sample synthetic images from a checkpoint")
    m.add_argument("checkpoint")
    m.add_argument("--out", required=True)
    m.add_argument("-n", "--number", type=at_least(1), default=16)
    m.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    m.add_argument("--steps", type=at_least(1), default=None, help="DDIM sampling steps (default 50); DDPM always runs all training timesteps (slower, often cleaner)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--counts", type=positive_float, default=None, help="Poisson-resample every sample at this total count level")
    m.add_argument("--mask", nargs="+", default=None, help="conditioning label maps (one per sample, cycled)")
    m.add_argument("--nodule-mm", type=positive_float, default=None, help="conditioned thyroid model: simulated glands with a cold nodule of this size")
    m.add_argument("--formats", nargs="+", default=["dcm", "nii.gz", "png"], choices=("dcm", "nii.gz", "png"))
    m.add_argument("--device", default=None, type=device_option, help=DEVICE_HELP)
    m.set_defaults(func=run_sample)

    a = s.add_parser("audit", help="nearest training image, memorised-copy flags and Fréchet distance, as an HTML report")
    a.add_argument("checkpoint", help="the diffusion checkpoint (its recorded training source is reloaded unless --training)")
    a.add_argument("--synthetic", required=True, help="folder of synthetic images (e.g. the nifti/ folder of nmkit synth sample)")
    a.add_argument("--training", default=None, help="folder of training images (default: the checkpoint's training source)")
    a.add_argument("--out", required=True, help="report folder (audit.html, audit.csv, audit.json)")
    a.add_argument("--threshold", type=positive_float, default=None, help="copy threshold (default: 0.5 x 5th percentile of training NN distances)")
    a.add_argument("--features", default="diffusion", choices=("diffusion", "radiomics"), help="feature space of the Fréchet distance")
    a.set_defaults(func=run_audit)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _labels(items: list[str] | None) -> dict[int, str]:
    from ..generate.data import THYROID_LABELS

    if not items:
        return dict(THYROID_LABELS)
    out = {}
    for item in items:
        value, _, name = item.partition("=")
        out[int(value)] = name or f"label_{value}"
    return out


def run_train(args: argparse.Namespace) -> int:
    from ..generate.data import load_source
    from ..generate.model import DiffusionConfig, read_description, train_diffusion

    if args.folder:
        source = {"kind": "folder", "path": str(args.folder)}
    elif args.manifest:
        source = {"kind": "manifest", "path": str(args.manifest), "split": "train"}
    else:
        source = {"kind": "thyroid_phantoms", "n": args.phantom_thyroid, "seed": args.seed, "matrix": args.matrix,
                  "pathologies": ["normal", "cold_nodules"]}
    if args.init:  # a wrong --init is reported before the training images are read
        read_description(args.init)
    images = load_source(source)
    config = DiffusionConfig(image_size=args.size, channels=tuple(args.channels),
                             num_train_timesteps=args.timesteps, normalisation=args.normalisation, iterations=args.iterations,
                             batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, device=args.device,
                             condition_labels=_labels(args.labels) if args.conditioned else None)
    print(f"training a {'mask-conditioned ' if args.conditioned else ''}diffusion model on {len(images)} images "
          f"({args.size}x{args.size}, {args.iterations} iterations)")
    train_diffusion(images, config, args.out, progress=True, source=source, checkpoint_every=args.checkpoint_every, resume=args.resume,
                    init_from=args.init)
    print(f"checkpoint written to {args.out}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from ..errors import InputError
    from ..generate.data import thyroid_nodule_conditions
    from ..generate.model import load_diffusion, synthesise
    from ..generate.writers import write_samples
    from ..io.volume_files import read_label_map
    from ..provenance import config_hash, provenance

    model, config = load_diffusion(args.checkpoint, device=args.device)
    if args.sampler == "ddpm" and args.steps not in (None, config.num_train_timesteps):
        raise InputError(None, f"--steps {args.steps}: --sampler ddpm runs all {config.num_train_timesteps} training timesteps of "
                               f"this model; leave --steps out, or use --sampler ddim for fewer steps")
    conditions, condition_text = None, ""
    if not config.n_condition and (args.mask or args.nodule_mm):
        raise InputError(args.checkpoint, f"{'--mask' if args.mask else '--nodule-mm'} needs a mask-conditioned model "
                                          "(nmkit synth train --conditioned); this one is not")
    if config.n_condition:
        if args.mask:
            maps = [np.asarray(read_label_map(m).array).squeeze() for m in args.mask]
            conditions = [maps[i % len(maps)] for i in range(args.number)]
            condition_text = "label maps " + ", ".join(Path(m).name for m in args.mask)
        elif args.nodule_mm:
            conditions, _ = thyroid_nodule_conditions(args.number, args.nodule_mm, args.seed, config.image_size)
            condition_text = f"simulated thyroid with a {args.nodule_mm:g} mm cold nodule"
        else:
            raise InputError(args.checkpoint, "this model is mask-conditioned: pass --mask FILES or --nodule-mm D")
    values = synthesise(model, config, args.number, args.seed, args.sampler, args.steps, conditions, args.counts, progress=True)
    out = Path(args.out)
    info = {"model": Path(args.checkpoint).resolve().name, "seed": args.seed, "sampler": f"{args.sampler}-{args.steps or 'default'}",
            "config_hash": config_hash(config.to_dict()), "condition": condition_text,
            "total_counts": args.counts}
    rows = write_samples(values, out, info, spacing=config.spacing, formats=tuple(args.formats), units=config.units)
    record = provenance(vars(args), inputs=[args.checkpoint], sampling=info)
    if conditions is not None:
        from ..generate.data import resize
        from ..generate.writers import write_nifti

        for row, cond in zip(rows, conditions):
            # the label map as the model saw it: on the sample's grid (nearest neighbour), so image and mask pair up
            on_grid = resize(np.asarray(cond), config.image_size, 0).astype(np.float32)
            row["condition_mask"] = str(write_nifti(on_grid, out / "conditions" / f"condition_{row['index']:04d}.nii.gz",
                                                    info, config.spacing))
            row["condition_source"] = str(args.mask[row["index"] % len(args.mask)]) if args.mask else condition_text
        table = write_pairs_table(rows, config, args, out, record)
        print(f"image/mask pairs: {table} (nmkit-dataset/1, split train; add them to a case table with "
              f"`nmkit manifest --dataset REAL.csv --add-train {table} --out ...`)")
    pd.DataFrame(rows).to_csv(out / "samples.csv", index=False)
    (out / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"{len(rows)} synthetic images written to {out}")
    return 0


def write_pairs_table(rows: list[dict], config, args: argparse.Namespace, out, record: dict):
    """The synthetic image / conditioning mask pairs as a case table (nmkit-dataset/1): one pseudo-patient per
    sample, split ``train`` (synthetic images are for training only), the model and the mask each came from."""
    from pathlib import Path

    from ..dataset import MaskRef, new_table, write_dataset

    model = Path(args.checkpoint).resolve().name
    table_rows = []
    for row in rows:
        image = row.get("nifti") or row.get("png") or row.get("dicom")
        case = f"synthetic_{args.seed}_{row['index']:04d}"
        masks = [MaskRef(file=row["condition_mask"], kind="labelmap", structure=name, label=int(value))
                 for value, name in sorted(config.condition_labels.items())]
        table_rows.append({"case_id": case, "patient_id": f"synthetic:{model}:{case}", "image": image, "masks": masks,
                           "modality": config.modality, "split": "train", "synthetic": True, "generator": model,
                           "condition_source": row.get("condition_source", "")})
    path = Path(out) / "dataset.csv"
    write_dataset(new_table(table_rows), path, record)
    return path


def run_audit(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..generate.audit import DiffusionFeatures, audit, write_audit_report
    from ..generate.data import load_folder, load_source
    from ..generate.model import load_diffusion, read_description

    model, config = load_diffusion(args.checkpoint, device="cpu")
    description = read_description(args.checkpoint)
    if args.training:
        training = load_folder(args.training)
    elif description.get("training_source"):
        training = load_source(description["training_source"])
    else:
        from ..errors import InputError

        raise InputError(args.checkpoint, "the checkpoint records no training source; pass --training FOLDER")
    synthetic = load_folder(args.synthetic)
    features = DiffusionFeatures(model, config) if args.features == "diffusion" else None
    kind = "diffusion-encoder" if features else "radiomics-like"
    train_arrays = [t.image.array for t in training]
    synth_arrays = [s.image.array for s in synthetic]
    result = audit(synth_arrays, train_arrays, size=config.image_size, normalisation=config.normalisation, threshold=args.threshold,
                   features=features, feature_kind=kind, training_names=[t.name for t in training])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.table.insert(1, "file", [s.name for s in synthetic])
    result.table.to_csv(out / "audit.csv", index=False)
    (out / "audit.json").write_text(json.dumps(result.summary, indent=2))
    write_audit_report(result, synth_arrays, train_arrays, out / "audit.html", training_names=[t.name for t in training],
                       config={"checkpoint": str(args.checkpoint), "synthetic": str(args.synthetic)})
    print(f"{result.summary['n_memorised']} of {len(synthetic)} synthetic images flagged as copies; "
          f"Fréchet distance {result.frechet:.3f} (unitless, {result.feature_kind} features, synthetic vs training); "
          f"report {out / 'audit.html'}")
    return 0
