"""``nmkit train --engine nnunet``: case table -> nnU-Net raw dataset -> fingerprint, plans, preprocessing, training
(nnU-Net's own code, in an offline child process) -> an nmkit bundle wrapping the results folder.

One row per case (single channel), or one row per channel image of a study (``channels`` matched to the ``modality``
column, e.g. PT and CT; the first channel's row carries the label map and its grid is the case's grid, the other
channels are resampled onto it). Splits: ``train``/``val`` rows make fold 0; with a ``fold`` column, fold k validates on
the rows of fold k.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...devices import device_name
from ...errors import InputError

log = logging.getLogger(__name__)


def _case_groups(table, channels: Sequence[str], where: str | Path) -> list[list[dict[str, Any]]]:
    rows = table.to_dict(orient="records")
    if len(channels) == 1:
        return [[r] for r in rows]
    from .channels import group_rows

    return group_rows(rows, channels, where)


def _case_image_and_label(group: list[dict[str, Any]], where: str | Path):
    """Stacked channels (C, *grid) and the label map on the first channel's grid, for one case."""
    from ...dataset import single_label_map
    from ...io.image import resample_to
    from ...io.volume_files import read_label_map
    from ..data import load_image
    from .channels import stack_channels

    images = [load_image(r["image"], suv=str(r.get("suv") or "").strip() or None) for r in group]
    stacked = stack_channels(images)
    label_file = single_label_map(group[0], where)
    if label_file is None:
        raise InputError(where, f"case {group[0].get('case_id')!r} has no label map (training needs one per case)")
    label = read_label_map(label_file)
    if label.spatial_shape != images[0].spatial_shape or not np.allclose(label.spacing, images[0].spacing):
        label = resample_to(label, images[0])
    return stacked, label


def write_raw_dataset(table, raw_root: Path, dataset_id: int, dataset_name: str, channels: Sequence[str],
                      labels: dict[int, str], where: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """Write ``DatasetNNN_<name>/`` (imagesTr, labelsTr, dataset.json) and return its folder name and the cases
    (``{"id", "split", "fold"}``) in order."""
    from ...io.image import Image
    from ...io.volume_files import write_volume

    folder_name = f"Dataset{dataset_id:03d}_{dataset_name}"
    root = raw_root / folder_name
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases = []
    for i, group in enumerate(_case_groups(table, channels, where)):
        case_id = f"case_{i:04d}"
        stacked, label = _case_image_and_label(group, where)
        unknown = sorted(set(np.unique(label.array).tolist()) - {0} - set(labels))
        if unknown:
            raise InputError(group[0].get("image"), f"label map holds values {unknown} not in --labels {sorted(labels)}")
        arr = np.asarray(stacked.array)
        for c in range(arr.shape[0]):
            write_volume(Image(array=arr[c], spacing=stacked.spacing, origin=stacked.origin, direction=stacked.direction),
                         root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz")
        write_volume(label, root / "labelsTr" / f"{case_id}.nii.gz")
        first = group[0]
        cases.append({"id": case_id, "case_id": str(first.get("case_id")), "split": str(first.get("split") or ""),
                      "fold": str(first.get("fold") or "")})
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)},
               "labels": {"background": 0, **{name: int(v) for v, name in sorted(labels.items())}},
               "numTraining": len(cases), "file_ending": ".nii.gz", "name": dataset_name}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder_name, cases


def make_splits(cases: list[dict[str, Any]], folds: Sequence[int], where: str | Path) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json: fold k validates on the rows whose ``fold`` is k, else (fold 0) on split ``val``."""
    if max(folds) > 0 and not any(c["fold"] for c in cases):
        raise InputError(where, f"--folds {' '.join(map(str, folds))}: folds other than 0 need a fold column in the case "
                                "table (fold 0 uses the train/val splits)")
    splits = []
    for k in range(max(folds) + 1):
        by_fold = [c["id"] for c in cases if c["fold"] == str(k)]
        if by_fold:
            val = by_fold
            train = [c["id"] for c in cases if c["fold"] not in ("", str(k)) and c["split"] != "test"]
        else:
            train = [c["id"] for c in cases if c["split"] == "train"]
            val = [c["id"] for c in cases if c["split"] == "val"]
        if k in folds and (not train or not val):
            raise InputError(where, f"fold {k}: needs training and validation cases (split train/val, or a fold column)")
        splits.append({"train": train, "val": val})
    return splits


def nnunet_mirroring(labels: dict[int, str]) -> bool:
    """Whether nnU-Net may mirror (training augmentation and test-time mirroring): not when a label names a body side -
    a mirrored left kidney would be learnt as a left kidney on the right. The worker then does what nnU-Net's
    ``nnUNetTrainerNoMirroring`` does, on the default trainer class, so the model loads in any nnU-Net install."""
    from ..names import sided_names

    sided = sided_names(labels.values())
    if sided:
        log.info("nnU-Net without mirroring: the labels %s name a body side", ", ".join(sided))
    return not sided


def train_nnunet(table, manifest: str | Path, out: str | Path, labels: dict[int, str], channels: Sequence[str] = ("image",),
                 configuration: str = "3d_fullres", folds: Sequence[int] = (0,), epochs: int = 1000, iterations: int = 250,
                 val_iterations: int = 50, device: str | None = None, name: str | None = None, version: str = "1.0.0",
                 threads: int | None = None, keep_work: bool = False) -> Path:
    """Train nnU-Net v2 on the case table and write an nmkit bundle (``bundle.json`` + ``nnunet/`` results folder)."""
    from ...provenance import config_hash, library_versions, provenance
    from . import sha256

    out = Path(out)
    work = out / "nnunet_work"
    if work.exists():
        shutil.rmtree(work)
    dataset_id = 900
    dataset_name = "".join(ch if ch.isalnum() else "_" for ch in (name or out.name))[:40] or "nmkit"
    folder_name, cases = write_raw_dataset(table, work / "raw", dataset_id, dataset_name, list(channels), labels, manifest)
    splits = make_splits(cases, list(folds), manifest)
    device = device_name(device)
    mirroring = nnunet_mirroring(labels)
    spec = {"mirroring": mirroring, "raw": str(work / "raw"), "preprocessed": str(work / "preprocessed"), "results": str(work / "results"),
            "dataset_id": dataset_id, "dataset_name": folder_name, "configuration": configuration, "folds": list(folds),
            "epochs": epochs, "iterations": iterations, "val_iterations": val_iterations, "device": device,
            "threads": threads or min(4, os.cpu_count() or 1), "splits": splits}
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    log_path = out / "nnunet_train.log"
    with open(log_path, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "nmkit.segment.engines.nnunet_worker", str(work / "spec.json")],
                              stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-1:] or ["no output"]
        raise InputError(log_path, f"nnU-Net training failed: {tail[0]}")
    results = next((work / "results" / folder_name).glob(f"*__{configuration}"))
    target = out / "nnunet"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(results, target, ignore=shutil.ignore_patterns("checkpoint_best.pth", "checkpoint_latest.pth"))
    checksums = {str(p.relative_to(out)): sha256(p) for p in sorted(target.rglob("*")) if p.is_file()
                 and p.name in ("plans.json", "dataset.json", "checkpoint_final.pth")}
    config = {"engine": "nnunet", "configuration": configuration, "folds": list(folds), "epochs": epochs,
              "iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations, "device": device,
              "channels": list(channels), "mirroring": mirroring}
    description = {
        "format": "nmkit-bundle/1", "engine": "nnunet", "name": name or out.name, "version": version,
        "labels": {str(k): v for k, v in sorted(labels.items())}, "channels": list(channels),
        "nnunet": {"results": "nnunet", "configuration": configuration, "folds": list(folds)},
        "postprocessing": {}, "training": config,
        "training_data": {"manifest": str(manifest), "manifest_hash": config_hash(table.to_dict(orient="list")),
                          "cases": [{"nnunet_id": c["id"], "case_id": c["case_id"]} for c in cases]},
        "checksums_sha256": checksums,
        "provenance": provenance(config=config, libraries=library_versions()),
    }
    (out / "bundle.json").write_text(json.dumps(description, indent=2, default=str))
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return out
