"""Running one job's computation: read the series, segment with a model bundle, write SEG/SR/overlay.

:func:`compute_outputs` is a plain top-level function of a JSON-like spec so that it can run in a
thread of the local pool or on a Dask worker (several machines/GPUs) alike. It never touches the job
database; the server records the outcome and sends the results.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..errors import InputError

_BUNDLES: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def cached_bundle(path: str, device: str = "cpu") -> Any:
    """Load a bundle once per process (registry versions are immutable, so the path is a safe key)."""
    from ..segment.bundle import load_bundle

    key = (str(path), device)
    with _LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = load_bundle(path, device=device)
        return _BUNDLES[key]


def read_series_image(files: list[str]) -> Any:
    """The image of a received series: PET in SUV (body weight) when the header allows it, else in its stored units."""
    import pydicom

    from ..errors import MissingTagError
    from ..io.reader import read_series_files

    if not files:
        raise InputError(None, "the series has no received files")
    paths = [Path(f) for f in files]
    modality = str(pydicom.dcmread(str(paths[0]), stop_before_pixels=True).get("Modality", ""))
    try:
        return read_series_files(paths, suv="bw") if modality == "PT" else read_series_files(paths)
    except MissingTagError:
        return read_series_files(paths)


def read_series(files: list[str]) -> tuple[Any, list[Any]]:
    """The image of a received series and its source datasets in slice order (planar: the one file)."""
    import pydicom

    image = read_series_image(files)
    ordered = image.meta.get("source_files") or files
    if image.ndim_spatial == 2:
        ordered = ordered[:1]
    from .outputs import _blank_invalid_dates

    datasets = [pydicom.dcmread(str(f)) for f in ordered]
    for ds in datasets:  # the results copy patient/study attributes; an impossible date would stop them being built
        _blank_invalid_dates(ds)
    return image, datasets


def planar_units(files: list[str]) -> list[list[str]]:
    """How a received series is interpreted: one unit for a volume (or a single file); one unit per image for a
    multi-image planar NM series (static views, whole-body passes: files without slice geometry), in
    InstanceNumber order, so that a 4-image series gives 4 results."""
    import pydicom

    from ..io.reader import _has_volume_geometry

    if len(files) < 2:
        return [list(files)]
    heads = [(pydicom.dcmread(str(f), stop_before_pixels=True), f) for f in files]
    if all(str(h.get("Modality", "")) == "NM" for h, _ in heads) and not all(_has_volume_geometry(h) for h, _ in heads):
        heads.sort(key=lambda hf: (int(hf[0].get("InstanceNumber", 0) or 0), str(hf[1])))
        return [[f] for _, f in heads]
    return [list(files)]


def compute_outputs(spec: dict[str, Any]) -> dict[str, Any]:
    """All results of one job: one unit (see :func:`planar_units`) gives outputs ``seg``, ``sr``, ``overlay``;
    several give ``seg-1``, ``sr-1``, ... (one set per image, with their own deterministic UIDs)."""
    units = [list(spec["files"])] if spec.get("channel_files") else planar_units(spec["files"])
    if len(units) == 1:
        return compute_unit(spec)
    result: dict[str, Any] = {"outputs": {}, "measurements": [], "images": len(units)}
    for k, files in enumerate(units, start=1):
        part = compute_unit(dict(spec, files=files, job_id=f"{spec['job_id']}-img{k}", out_dir=str(Path(spec["out_dir"]) / f"img{k}")))
        result["outputs"].update({f"{kind}-{k}": out for kind, out in part["outputs"].items()})
        result["measurements"] += [dict(row, image=k) for row in part["measurements"]]
        result.update(model=part["model"], version=part["version"])
    return result


def compute_unit(spec: dict[str, Any]) -> dict[str, Any]:
    """Segment and write the requested outputs under ``spec['out_dir']``; returns paths, UIDs and measurements.

    ``spec``: job_id, files, model_name, version, bundle_path, outputs (seg/sr/overlay), out_dir,
    keep_largest, head (multi-reader bundles; None: the bundle's default head), device.
    """
    import time

    from ..provenance import provenance
    from ..segment.infer import predict_image
    from .outputs import ModelTag, make_overlay, make_seg, make_sr, measurements

    t0 = time.perf_counter()
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    image, datasets = read_series(spec["files"])  # PET in SUV when the header allows: the SR reports SUV
    bundle = cached_bundle(spec["bundle_path"], spec.get("device", "cpu"))
    model = ModelTag(spec["model_name"], str(spec["version"]))
    mask = predict_image(bundle, model_input(bundle, as_model_reads(bundle, image, spec["files"]), spec), keep_largest=True if spec.get("keep_largest") else None,  # else: bundle's default
                         head=spec.get("head"))
    rows = measurements(mask, image)
    result: dict[str, Any] = {"outputs": {}, "measurements": rows, "model": model.name, "version": model.version}
    seg_ds = None
    if any(k in spec["outputs"] for k in ("seg", "sr")):
        seg_ds = make_seg(mask, image, datasets, out_dir / "seg.dcm", model, spec["job_id"])
        result["outputs"]["seg"] = {"path": str(out_dir / "seg.dcm"), "sop_uid": str(seg_ds.SOPInstanceUID)}
    if "sr" in spec["outputs"]:
        sr = make_sr(seg_ds, datasets, rows, out_dir / "sr.dcm", model, spec["job_id"], planar=image.ndim_spatial == 2)
        result["outputs"]["sr"] = {"path": str(out_dir / "sr.dcm"), "sop_uid": str(sr.SOPInstanceUID)}
    if "overlay" in spec["outputs"]:
        sc = make_overlay(mask, image, datasets, out_dir / "overlay.dcm", model, spec["job_id"])
        result["outputs"]["overlay"] = {"path": str(out_dir / "overlay.dcm"), "sop_uid": str(sc.SOPInstanceUID)}
    if "seg" not in spec["outputs"]:
        result["outputs"].pop("seg", None)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    import json

    inputs = [Path(f).name for f in spec["files"]] + [Path(f).name for fs in spec.get("channel_files") or [] for f in fs]
    (out_dir / "provenance.json").write_text(json.dumps(provenance(config={k: v for k, v in spec.items() if k not in ("files", "channel_files")},
                                                                   inputs=inputs, result=result), indent=2, default=str))
    return result


def model_input(bundle: Any, image: Any, spec: dict[str, Any]) -> Any:
    """What the network reads: the series' image, or for a multi-channel model (``spec['channel_files']``: the other
    channels' series, in the model's order) every channel stacked on this series' grid (others resampled, linear) -
    the same stacking as ``nmkit predict BUNDLE PT_DIR CT_DIR``."""
    companions = spec.get("channel_files") or []
    n_model = len(getattr(bundle, "channels", None) or []) or 1
    if n_model != 1 + len(companions):
        raise InputError(None, f"model {spec['model_name']} {spec['version']} takes {n_model} input channel(s) "
                               f"({', '.join(getattr(bundle, 'channels', None) or ['image'])}); the job has {1 + len(companions)} series")
    if not companions:
        return image
    from ..segment.engines.channels import stack_channels

    return stack_channels([image, *(as_model_reads(bundle, read_series_image(files), files) for files in companions)])


def as_model_reads(bundle: Any, image: Any, files: list[str]) -> Any:
    """``image`` in the units the model was trained on (``segment.bundle.pet_suv_reading``, the rule `nmkit predict`
    follows): a PET read in SUV is read again as stored for a model that does not take SUV; a model that takes SUV
    on a PET whose header cannot give it fails the job with the reason (never Bq/ml in place of SUV)."""
    from ..io.reader import read_series_files
    from ..segment.bundle import pet_suv_reading

    if image.modality != "PT":
        return image
    suv = image.meta.get("suv") or {}
    in_suv = bool(suv) or image.units == "g/ml"
    converted = bool(suv) and float(suv.get("factor", 1.0)) != 1.0  # stored Bq/ml made SUV (not stored as SUV, GML)
    wanted = pet_suv_reading(bundle)
    if wanted and not in_suv:
        return read_series_files([Path(f) for f in files], suv=wanted)  # raises the header's missing tag, named
    if not wanted and converted:
        return read_series_files([Path(f) for f in files])
    return image
