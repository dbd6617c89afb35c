"""`nmkit predict`: run a model bundle on images and write masks (NIfTI, optionally DICOM SEG) and their case table.

Output folder: one label map per image and head (``<case>.nii.gz``, or ``<case>_<head>.nii.gz`` with several heads),
each with a label-name sidecar ``<case>.json`` (``{"1": "gtv"}``, read by ``nmkit.io.roi.read_named_label_map``), the
case table ``dataset.csv`` (``nmkit.dataset``, one row per image; its predicted masks as mask references whose
``reader`` is ``model:<bundle>@<version>[/<head>]``), and ``provenance.json``. So ``predict -> evaluate`` and
``predict -> radiomics`` chain without editing a file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..devices import DEVICE_HELP, device_option
from ._args import at_least

log = logging.getLogger(__name__)

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with a model bundle",
                       description="Apply a model bundle to images (NIfTI/NRRD files, DICOM files or series folders, or a case "
                                   "table's split) and write one NIfTI label map per image with its label names, the case "
                                   "table dataset.csv (for nmkit evaluate/radiomics), and a DICOM SEG for DICOM input with --seg.")
    p.add_argument("bundle", help="model bundle folder, the name of a shipped bundle (e.g. thyroid-unet2d), an nnU-Net v2 "
                                  "results folder or exported zip, or a MONAI bundle folder (run offline, never downloaded)")
    p.add_argument("inputs", nargs="+", help="image files/folders, or one case table CSV (nmkit dataset / manifest)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default=None,
                   help="case table input: the split to predict ('all' for every row); default: test when the table has "
                        "splits, else every row")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time left-right flip (averaged probabilities); default: what the bundle recommends")
    p.add_argument("--largest", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected component per label; default: the bundle's recommendation")
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                   help="fill enclosed holes in each label; default: the bundle's recommendation")
    p.add_argument("--head", nargs="+", default=None, metavar="HEAD",
                   help="multi-reader bundles: whose delineation to write (e.g. R2, or several, or 'all'; all heads come from "
                        "one forward pass); default: the bundle's default head. With several heads each mask is written "
                        "as <case>_<head>.nii.gz")
    p.add_argument("--suv", choices=("bw", "lbm", "none"), default=None,
                   help="read DICOM PET in SUV (body weight / lean body mass) or as stored; default: bw for a bundle trained "
                        "on SUV (normalisation suv), else as stored; a case table's suv column wins")
    p.add_argument("--seg", action="store_true", help="also write DICOM SEG referencing the source series (DICOM input)")
    p.add_argument("--device", default=None, type=device_option, help=DEVICE_HELP)
    p.add_argument("--folds", nargs="+", default=None, metavar="FOLD",
                   help="k-fold models (nnU-Net, nmkit ensembles): the folds to ensemble (e.g. 0 1 2 3 4, or all); default: all "
                        "folds present (softmax averaged)")
    p.add_argument("--checkpoint-name", default=None,
                   help="nnU-Net models: checkpoint file name in each fold_N (default checkpoint_final.pth)")
    p.add_argument("--overlap", type=_overlap, default=None, metavar="FRACTION",
                   help="3D sliding window: overlap of neighbouring windows, 0 <= FRACTION < 1 (default: 0.25 for nmkit "
                        "bundles; nnU-Net models: tile step 1 - FRACTION, their default 0.5; MONAI bundles: their inferer's)")
    p.add_argument("--sw-batch", type=at_least(1), default=None, metavar="N",
                   help="3D sliding window: windows per forward pass (default 2; memory grows with N x window size; "
                        "MONAI bundles: sw_batch_size; nnU-Net runs one window at a time)")
    p.set_defaults(func=run)


def _overlap(text: str) -> float:
    """An argparse type: a window overlap fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: the overlap is a fraction of the window, 0 <= overlap < 1")
    return value


def _window(args: argparse.Namespace):
    """The sliding-window settings the user asked for (None: each engine's default)."""
    if args.overlap is None and args.sw_batch is None:
        return None
    from ..segment.infer import DEFAULT_WINDOW, SlidingWindow

    return SlidingWindow(overlap=DEFAULT_WINDOW.overlap if args.overlap is None else args.overlap,
                         batch=DEFAULT_WINDOW.batch if args.sw_batch is None else args.sw_batch)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES + (".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):  # radiographs: gb_036.png -> gb_036
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _unique_ids(paths: list[Path]) -> list[str]:
    """One case id per input: the file's name without suffix; inputs of the same name (``case1/ANT.dcm``,
    ``case2/ANT.dcm``; ``STS_001/PET/dicom/image``, ``STS_002/PET/dicom/image``) get the nearest folder name that
    tells them apart in front (``case1_ANT``, ``STS_001_image``), and a number when nothing does."""
    stems = [_stem(p) for p in paths]
    ids = list(stems)
    for stem in {s for s in stems if stems.count(s) > 1}:
        group = [i for i, s in enumerate(stems) if s == stem]
        parents = [paths[i].resolve().parents for i in group]
        for level in range(min(len(p) for p in parents)):
            names = [p[level].name for p in parents]
            if len(set(names)) == len(names):
                for i, name in zip(group, names):
                    ids[i] = f"{name}_{stem}"
                break
    seen: dict[str, int] = {}
    out = []
    for case_id in ids:
        seen[case_id] = seen.get(case_id, 0) + 1
        out.append(case_id if ids.count(case_id) == 1 else f"{case_id}_{seen[case_id]}")
    return out


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(case id, image path, row of the input case table or {})`` per image to predict."""
    if len(args.inputs) == 1 and args.inputs[0].lower().endswith(".csv"):
        from ..errors import InputError
        from ..segment.data import read_manifest

        table = read_manifest(args.inputs[0], require=("image",))
        has_splits = "split" in table.columns and (table["split"] != "").any()
        split = args.split or ("test" if has_splits else "all")
        if split != "all":
            if not has_splits:
                raise InputError(args.inputs[0], f"--split {split}: the case table has no split column")
            table = table[table["split"] == split]
            if table.empty:
                raise InputError(args.inputs[0], f"no rows in split {split!r} (use --split all for every row)")
        rows = table.to_dict(orient="records")
        ids = [str(r["case_id"]) for r in rows]
        if len(set(ids)) != len(ids):
            ids = _unique_ids([Path(str(r["image"]).split(";")[0]) for r in rows])
        return [(i, Path(str(r["image"])), r) for i, r in zip(ids, rows)]
    paths = [Path(p) for p in args.inputs]
    return [(i, p, {}) for i, p in zip(_unique_ids(paths), paths)]


def reader_id(bundle, head: str | None) -> str:
    """How a prediction names its reader in a case table: ``model:<name>@<version>[/<head>]``."""
    return f"model:{bundle.name}@{bundle.version}" + (f"/{head}" if head else "")


def image_fields(image, source: dict[str, Any], case_id: str) -> dict[str, Any]:
    """Contract columns for a predicted image: from the input table's row, else from the DICOM header, else blank.

    ``patient_id`` falls back to the case id (one patient per image) when neither says who the patient is."""
    from ..io.dicom_dates import iso_datetime

    meta = image.meta or {}
    fields = {
        "patient_id": meta.get("PatientID"), "study_uid": meta.get("StudyInstanceUID"), "series_uid": meta.get("SeriesInstanceUID"),
        "study_date": meta.get("StudyDate"),
        "acquisition_datetime": iso_datetime(meta.get("AcquisitionDate") or meta.get("SeriesDate"), meta.get("AcquisitionTime") or meta.get("SeriesTime")),
        "modality": meta.get("Modality") or getattr(image, "modality", None), "tracer": meta.get("Radiopharmaceutical"),
        "series_description": meta.get("SeriesDescription"),
    }
    fields = {k: ("" if v is None else str(v).strip()) for k, v in fields.items()}
    for key in list(fields) + ["time_point", "split", "fold"]:
        value = source.get(key)
        if value is not None and str(value).strip() != "":
            fields[key] = value
    if not fields["patient_id"]:
        log.info("%s: no patient ID in the input; the case id stands for the patient", case_id)
        fields["patient_id"] = case_id
    return fields


def _default_suv(option: str | None, bundle) -> str | None:
    """SUV reading of DICOM PET: the option, else the model's rule (``segment.bundle.pet_suv_reading``, which the
    server follows too): ``bw`` for a model trained on SUV or a foreign engine with a PET channel."""
    from ..segment.bundle import pet_suv_reading

    if option is not None:
        return None if option == "none" else option
    suv = pet_suv_reading(bundle)
    if suv:
        log.info("model %s takes PET in SUV: DICOM PET is read in SUV (body weight); --suv none to read as stored", bundle.name)
    return suv


def _write_label_names(mask_path: Path, labels: dict[int, str]) -> Path:
    """The label-name sidecar ``<case>.json`` next to a label map (``{"1": "gtv"}``)."""
    import json

    sidecar = mask_path.with_name(_stem(mask_path) + ".json")
    sidecar.write_text(json.dumps({str(k): v for k, v in sorted(labels.items())}, indent=1))
    return sidecar


def model_identity(bundle, folds: list[str] | None = None) -> dict[str, Any]:
    """Which model predicted, for provenance and the SEG: the engine's identity (nnU-Net, MONAI: checksums of plans,
    configs and checkpoints), or for an nmkit bundle the SHA-256 of bundle.json and every weights file (all folds of an
    ensemble) and one digest over them (``model_sha256``); ``folds``: the ensemble folds used."""
    identity = dict(getattr(bundle, "identity", None) or {})
    if identity:
        return identity
    import hashlib
    import json

    from ..segment.engines import sha256

    folder = Path(bundle.path)
    members = [str(m) for m in ((bundle.description.get("ensemble") or {}).get("members") or [])]
    files = dict.fromkeys(["bundle.json", "model.safetensors", *members])
    checksums = {name: sha256(folder / name) for name in files if (folder / name).is_file()}
    digest = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    return {"engine": "nmkit", "bundle": str(folder), "name": bundle.name, "version": bundle.version,
            "models": len(getattr(bundle, "models", None) or [None]), **({"folds": folds} if folds else {}),
            "sha256": checksums, "model_sha256": digest}


def seg_algorithm_parameters(identity: dict[str, Any], window: dict[str, Any], flips: Any) -> dict[str, str]:
    """AlgorithmParameters of the SEG: the weights' digest, engine, ensemble size and inference settings (short text)."""
    params = {"model_sha256": str(identity.get("model_sha256") or ""), "engine": str(identity.get("engine") or "")}
    if identity.get("folds"):
        params["folds"] = "+".join(map(str, identity["folds"]))
    elif identity.get("models"):
        params["models"] = str(identity["models"])
    for key in ("overlap", "batch", "tile_step_size"):
        if window.get(key) is not None:
            params[f"sw_{key}"] = str(window[key])
    params["tta"] = "default" if flips is None else ("flip" if flips else "none")
    return {k: v for k, v in params.items() if v}


def seg_algorithm_version(bundle, identity: dict[str, Any] | None = None) -> str:
    """The SEG's algorithm version: the model's version, with the first 8 hex digits of its weights' SHA-256 when the
    engine records one (nnU-Net, MONAI bundles) and the version does not already carry them (DICOM LO: 64 characters)."""
    version = str(bundle.version)
    identity = identity or getattr(bundle, "identity", None) or {}
    digest = str(identity.get("model_sha256") or "")[:8]
    if digest and digest not in version:
        version = f"{version} sha256:{digest}"
    return version[:64]


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for foreign engines (nnU-Net folds and checkpoint); only those the user gave."""
    options: dict[str, Any] = {}
    if getattr(args, "folds", None):
        options["folds"] = args.folds
    if getattr(args, "checkpoint_name", None):
        options["checkpoint"] = args.checkpoint_name
    return options


def select_folds(bundle, folds: list[str] | None) -> list[str] | None:
    """``--folds`` for an own-engine k-fold bundle: keep those folds' models (``all``: every fold); nnU-Net models take
    the option at loading instead. A fold the bundle lacks, or --folds on a single-model bundle, is a clear error."""
    if getattr(bundle, "predict_labels", None) is not None:
        return None
    have = [str(f) for f in (getattr(bundle, "folds", None) or [])]
    if not folds:
        return have or None
    from ..errors import InputError

    if not have:
        raise InputError(bundle.path, f"--folds: bundle {bundle.name!r} is a single model, not a k-fold ensemble")
    if folds == ["all"]:
        return have
    missing = [f for f in folds if f not in have]
    if missing:
        raise InputError(bundle.path, f"--folds: fold(s) {', '.join(missing)} not in the bundle (folds: {', '.join(have)})")
    bundle.models = [m for f, m in zip(have, bundle.models) if f in folds]
    bundle.model = bundle.models[0]
    return [f for f in have if f in folds]


def _channel_inputs(inputs: list[tuple[str, Path, dict[str, Any]]], bundle, args: argparse.Namespace) -> list[tuple[str, Path, dict[str, Any]]]:
    """For a model with several input channels (e.g. PET+CT): one input per case with its channel images.

    A case table gives each channel as a row of the same study (matched by modality); files are taken in groups, in the
    model's channel order (``pet1 ct1 pet2 ct2``)."""
    channels = list(getattr(bundle, "channels", None) or [])
    if len(channels) < 2:
        return inputs
    from ..errors import InputError
    from ..segment.engines.channels import group_rows

    if any(source for _, _, source in inputs):
        groups = group_rows([{**source, "_path": path, "_id": case_id} for case_id, path, source in inputs], channels, args.inputs[0])
        return [(g[0]["_id"], g[0]["_path"], {**g[0], "_channel_paths": [r["_path"] for r in g]}) for g in groups]
    if len(inputs) % len(channels):
        raise InputError(None, f"model {bundle.name} takes {len(channels)} channels ({', '.join(channels)}): give the images "
                               f"in groups of {len(channels)} in that order; got {len(inputs)} inputs")
    grouped = [inputs[i:i + len(channels)] for i in range(0, len(inputs), len(channels))]
    return [(g[0][0], g[0][1], {"_channel_paths": [p for _, p, _ in g]}) for g in grouped]


def _load_input(path: Path, source: dict[str, Any], suv: str | None):
    """The image to predict: one file/series, or the model's channels stacked on the first channel's grid."""
    from ..segment.data import load_image

    paths = source.get("_channel_paths")
    if not paths:
        return load_image(path, suv=suv)
    from ..segment.engines.channels import stack_channels

    return stack_channels([load_image(p, suv=suv) for p in paths])


def run(args: argparse.Namespace) -> int:
    import json

    from ..dataset import MaskRef, new_table, write_dataset
    from ..io.volume_files import write_volume
    from ..provenance import provenance
    from ..segment.bundle import load_bundle
    from ..segment.data import load_image
    from ..segment.infer import predict_heads, window_settings

    inputs = _inputs(args)  # a bad case table fails here, before the network is built
    bundle = load_bundle(args.bundle, device=args.device, **_engine_options(args))
    own_folds = select_folds(bundle, args.folds)
    inputs = _channel_inputs(inputs, bundle, args)
    wanted: list[str | None] = [None]  # None: the bundle's default head (the only one of a single-head bundle)
    if args.head:
        wanted = list(bundle.heads or [None]) if args.head == ["all"] else list(args.head)
    heads = list(dict.fromkeys(bundle.resolve_head(h) for h in wanted))  # unknown head: a clear error before any case runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flips = None if args.tta is None else ((-1,) if args.tta else ())
    default_suv = _default_suv(args.suv, bundle)
    window = _window(args)
    window_used = window_settings(bundle, window)  # applied to nnU-Net / MONAI engines here; recorded in the provenance
    identity = model_identity(bundle, own_folds)
    done, failed, rows = [], [], []
    from tqdm.auto import tqdm

    for case_id, path, source in tqdm(inputs, desc="predict", unit="image", disable=None):
        try:
            suv = str(source.get("suv") or "").strip() or default_suv
            image = _load_input(path, source, suv)
            suv = suv if image.modality == "PT" and not str(path).lower().endswith(_VOLUME_SUFFIXES) else None
            masks = predict_heads(bundle, image, heads, flips=flips, keep_largest=args.largest, fill=args.fill_holes,
                                  window=window)
            refs, head_columns = [], {}
            for head, mask in masks.items():
                stem = case_id if len(heads) == 1 else f"{case_id}_{head}"
                mask_path = write_volume(mask, out / f"{stem}.nii.gz")
                _write_label_names(mask_path, bundle.labels)
                refs += [MaskRef(file=str(mask_path.resolve()), kind="labelmap", label=value, structure=name,
                                 reader=reader_id(bundle, head)) for value, name in sorted(bundle.labels.items())]
                if args.head and head:
                    head_columns[f"mask_{head}"] = str(mask_path.resolve())
                if args.seg and not str(path).lower().endswith(_VOLUME_SUFFIXES):
                    from ..io.seg import write_seg

                    algorithm = bundle.name if head is None else f"{bundle.name} ({head})"
                    write_seg(mask, load_image(path, suv=suv) if image.array.ndim > image.ndim_spatial else image,
                              out / f"{stem}_seg.dcm", algorithm_name=algorithm, algorithm_version=seg_algorithm_version(bundle, identity),
                              series_description=f"{algorithm} {bundle.version}", algorithm_source=f"nmkit {identity.get('engine', '')}".strip(),
                              algorithm_parameters=seg_algorithm_parameters(identity, window_used, flips))
            rows.append({"case_id": case_id, **image_fields(image, source, case_id), "image": str(path.resolve()),
                         "masks": refs, "reader": reader_id(bundle, heads[0] if len(heads) == 1 else None), "suv": suv or "",
                         **head_columns})
            done.append(str(path))
        except Exception as exc:  # log and skip a bad case
            log.error("%s: %s", path, exc)
            failed.append({"input": str(path), "error": str(exc)})
    config = {"bundle": str(bundle.path), "heads": heads, "folds": args.folds, "suv": default_suv, "tta": args.tta, "largest": args.largest, "fill_holes": args.fill_holes,
              "bundle_postprocessing": bundle.description.get("postprocessing", {}), "sliding_window": window_used}
    model = {"name": bundle.name, "version": bundle.version, "labels": {str(k): v for k, v in bundle.labels.items()},
             "identity": identity}
    record = provenance(config=config, inputs=done, model=model, failed=failed)
    (out / "provenance.json").write_text(json.dumps(record, indent=2))
    if rows:
        write_dataset(new_table(rows), out / "dataset.csv", {"producer": "nmkit predict", "config": config, "model": model})
    print(f"{len(done)} predicted, {len(failed)} failed -> {out}" + (f" (case table {out / 'dataset.csv'})" if rows else ""))
    return 0 if done or not failed else 1
