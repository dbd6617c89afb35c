"""Synthetic studies and tiny models for trying the server (and its tests/benchmark) without patient data.

Thyroid scintigraphy studies come from the thyroid phantom (``nmkit.phantoms.thyroid``) written as NM
DICOM; the model is a small 2D U-Net trained for a few seconds on phantom cases to segment the gland.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np


def thyroid_study(out_dir: str | Path, seed: int, pathology: str = "normal", matrix: int = 64, total_counts: float = 100_000,
                  tag: str = "demo") -> dict[str, Any]:
    """Write one anterior planar thyroid scan (one NM file); returns its path, UIDs and the true gland mask."""
    from ..phantoms.nm_dicom import deterministic_uid, write_nm_planar
    from ..phantoms.thyroid import simulate_thyroid

    case = simulate_thyroid((seed, 17), pathology, "Tc99m", "pinhole", total_counts, matrix=matrix)
    info = dict(patient_name=f"Phantom^{tag}{seed}", patient_id=f"{tag.upper()}{seed:04d}",
                study_uid=deterministic_uid(tag, seed, "study"), series_uid=deterministic_uid(tag, seed, "series"),
                sop_uid=deterministic_uid(tag, seed, "sop"), acquisition_datetime=dt.datetime(2024, 5, 6, 9, 30) + dt.timedelta(minutes=seed),
                activity_mbq=80.0, frame_duration_ms=300000)
    path = write_nm_planar(case.counts, Path(out_dir) / f"{tag}_{seed:04d}.dcm", case.params, info)
    return {"path": path, "study_uid": info["study_uid"], "series_uid": info["series_uid"], "sop_uid": info["sop_uid"],
            "gland": case.truth["gland"], "counts": case.counts, "spacing": case.spacing}


def thyroid_cases(seeds: range | list[int], matrix: int = 64) -> list:
    from ..io.image import Image
    from ..phantoms.thyroid import simulate_thyroid
    from ..segment.data import Case

    cases = []
    for s in seeds:
        c = simulate_thyroid((s, 17), "normal", "Tc99m", "pinhole", 100_000, matrix=matrix)
        cases.append(Case(f"thyroid{s}", Image(c.counts.astype(np.float32), spacing=c.spacing, modality="NM", units="counts"),
                          c.truth["gland"].astype(np.int64)))
    return cases


def train_thyroid_bundle(out_dir: str | Path, epochs: int = 20, version: str = "1.0.0", seed: int = 3, n_train: int = 16) -> Path:
    """A small gland-segmentation bundle trained on phantom scans (seconds on one CPU core)."""
    import json

    import torch

    from ..segment.preprocess import Preprocessing
    from ..segment.train import TrainConfig, train

    torch.set_num_threads(1)
    cases = thyroid_cases(range(1000, 1000 + n_train + 4))
    prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(32, 32))
    config = TrainConfig(network="unet", network_options={"channels": (8, 16, 32)}, epochs=epochs, batch_size=8, learning_rate=1e-2,
                         seed=seed, labels={1: "thyroid"}, patience=max(epochs, 1), num_threads=1)
    out = train(cases[:n_train], cases[n_train:], prep, config, out_dir, progress=False)
    desc = json.loads((out / "bundle.json").read_text())
    desc["name"], desc["version"] = "thyroid", version
    (out / "bundle.json").write_text(json.dumps(desc, indent=2))
    return out


def untrained_bundle(out_dir: str | Path, like: str | Path, version: str = "0.0.1") -> Path:
    """A bundle with the same network but freshly initialised weights (a deliberately bad candidate)."""
    import json

    import torch

    from ..segment.bundle import DESCRIPTION, WEIGHTS, save_weights
    from ..segment.nets import build_network

    like, out_dir = Path(like), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = json.loads((like / DESCRIPTION).read_text())
    net = desc["network"]
    torch.manual_seed(0)
    model = build_network(net["name"], net["spatial_dims"], net["in_channels"], net["out_channels"], img_size=net.get("img_size"),
                          **dict(net.get("options") or {}))
    save_weights(model.state_dict(), out_dir / WEIGHTS)
    desc["version"] = version
    (out_dir / DESCRIPTION).write_text(json.dumps(desc, indent=2))
    return out_dir


def validation_manifest(out_dir: str | Path, seeds: range | list[int]) -> Path:
    """A manifest (image DICOM, mask NIfTI, split=val) of phantom scans for the promotion gate."""
    import SimpleITK as sitk

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["case_id,image,mask,split"]
    for s in seeds:
        st = thyroid_study(out_dir, s, tag="val")
        mask = sitk.GetImageFromArray(st["gland"].astype(np.uint8))
        mask.SetSpacing(tuple(float(v) for v in st["spacing"]))
        mpath = out_dir / f"val_{s:04d}_mask.nii.gz"
        sitk.WriteImage(mask, str(mpath))
        lines.append(f"val{s},{Path(st['path']).name},{mpath.name},val")
    path = out_dir / "validation.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
