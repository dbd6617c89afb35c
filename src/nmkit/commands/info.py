"""`nmkit info PATH`: what is in a DICOM folder/file or NIfTI/NRRD file (series, modality, size, spacing, units)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="list the image series in a folder or file and how they load",
                                   description="Read every image series under PATH with read_image and print modality, "
                                               "description, size, spacing and units (non-image series are listed too).")
    parser.add_argument("path", help="DICOM folder or file, or a NIfTI/NRRD file")
    parser.add_argument("--suv", choices=["bw", "lbm"], default=None, help="show PT series in SUV (body weight or lean body mass)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def describe(path: str, suv: str | None = None) -> list[dict[str, Any]]:
    """One record per series (or one for a NIfTI/NRRD file); series that fail carry their error."""
    from pathlib import Path

    from ..errors import NmkitError
    from ..io.reader import list_series, read_image
    from ..io.volume_files import is_volume_file

    target = Path(path)
    if target.is_file() and is_volume_file(target):
        image = read_image(target)
        return [_record(image, {"series_uid": "", "modality": image.modality, "description": target.name})]
    records = []
    for info in list_series(target):
        base = {"series_uid": info.series_uid, "modality": info.modality, "description": info.description, "files": info.n_files}
        if not info.is_image:
            records.append({**base, "status": "not an image"})
            continue
        try:
            image = read_image(target, series_uid=info.series_uid, suv=suv if info.modality == "PT" else None)
        except NmkitError as exc:
            records.append({**base, "status": f"error: {exc}"})
            continue
        records.append(_record(image, base))
    return records


def _record(image, base: dict[str, Any]) -> dict[str, Any]:
    record = dict(base)
    record.update(status="ok", shape=list(image.array.shape), size=list(image.size), spacing=[round(s, 4) for s in image.spacing],
                  units=image.units or "-", modality=image.modality or base.get("modality", ""))
    if "frames" in image.meta:
        record["frames"] = len(image.meta["frames"])
    if "suv" in image.meta:
        record["suv_factor"] = image.meta["suv"]["factor"]
    for key in ("Radionuclide", "Radiopharmaceutical"):
        if key in image.meta:
            record[key.lower()] = image.meta[key]
    return record


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    records = describe(args.path, args.suv)
    if not records:
        raise InputError(args.path, "no DICOM series found")
    if args.json:
        json.dump(records, sys.stdout, indent=2, default=str)
        print()
        return 0
    for r in records:
        head = f"{r['modality'] or '?':7s} {r.get('description', '')[:40]!r:44s}"
        if r["status"] == "ok":
            size = "x".join(str(v) for v in r["size"])
            extra = "x".join(str(v) for v in r["shape"][: len(r["shape"]) - len(r["size"])])
            spacing = "x".join(f"{v:g}" for v in r["spacing"])
            frames = f" ({extra} frames)" if extra else ""
            print(f"{head} size {size}{frames}  spacing {spacing} mm  units {r['units']}")
        else:
            print(f"{head} {r['status']}")
        if r.get("series_uid"):
            print(f"        series {r['series_uid']}")
    return 0
