"""Training data from a dataset manifest: image/mask pairs with their split, loaded with geometry.

A manifest is a CSV with at least the columns ``image`` and ``mask`` (paths, relative to the manifest's
folder or absolute) and ``split`` (train / val / test); ``case_id`` and ``patient_id`` are used when
present. Images may be NIfTI/NRRD or DICOM (any file our readers understand); masks are label maps.

Several readers' masks of the same image (for a network with one output head per reader, see
``TrainConfig.heads``) go in columns ``mask_<head>``, e.g. ``mask_R1``, ``mask_R2``, ``mask_consensus``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.image import Image, Mask
from ..io.volume_files import is_volume_file, read_label_map, read_volume

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One image with its label map (same grid), as arrays in NumPy order."""

    case_id: str
    image: Image
    label: np.ndarray  # integer labels on the image grid; (heads, *grid) for a multi-head network
    heads: tuple[str, ...] | None = None  # names of the label layers when ``label`` holds one per head

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.image.spacing


def load_image(path: str | Path) -> Image:
    """Read any image nmkit understands; a single-frame planar image becomes 2D."""
    path = Path(path)
    if is_volume_file(path):
        image = read_volume(path)
    else:
        from ..io import reader  # DICOM readers (planar NM, series)

        image = reader.read_image(path)
    return squeeze_planar(image)


def squeeze_planar(image: Image) -> Image:
    """A 3D image with one slice (planar NM, one-slice NIfTI) as a 2D image with the in-plane geometry."""
    if image.ndim_spatial == 3 and image.spatial_shape[0] == 1 and image.array.ndim == 3:
        d = image.direction_matrix
        cls = Mask if isinstance(image, Mask) else Image
        kwargs = dict(array=image.array[0], spacing=image.spacing[:2], origin=image.origin[:2], direction=tuple(d[:2, :2].ravel()),
                      modality=image.modality, meta=image.meta)
        if cls is Mask:
            return Mask(labels=image.labels, **kwargs)  # type: ignore[attr-defined]
        return Image(units=image.units, **kwargs)
    return image


def _read_label(mask_path: str | Path, image: Image, image_path: str | Path) -> np.ndarray:
    mask = squeeze_planar(read_label_map(mask_path))
    if mask.spatial_shape != image.spatial_shape:
        raise InputError(mask_path, f"mask grid {mask.spatial_shape} differs from image grid {image.spatial_shape} ({image_path})")
    return np.asarray(mask.array, dtype=np.int64)


def _check_single_channel(image: Image, image_path: str | Path) -> None:
    if image.array.ndim != image.ndim_spatial:
        raise InputError(image_path, f"expected a single-channel image, got array shape {image.array.shape}")


def load_case(image_path: str | Path, mask_path: str | Path | None, case_id: str | None = None) -> Case:
    image = load_image(image_path)
    label = np.zeros(image.spatial_shape, np.int64) if mask_path is None else _read_label(mask_path, image, image_path)
    _check_single_channel(image, image_path)
    return Case(case_id=case_id or Path(image_path).name, image=image, label=label)


def load_multi_reader_case(image_path: str | Path, mask_paths: dict[str, str | Path], case_id: str | None = None) -> Case:
    """One image with one label map per head (``{head: mask path}``), stacked as ``label[k]`` in the given order."""
    heads = tuple(mask_paths)
    if not heads:
        raise ValueError("no head masks given")
    image = load_image(image_path)
    _check_single_channel(image, image_path)
    label = np.stack([_read_label(path, image, image_path) for path in mask_paths.values()])
    return Case(case_id=case_id or Path(image_path).name, image=image, label=label, heads=heads)


def head_mask_columns(table: pd.DataFrame, heads: Sequence[str]) -> dict[str, str]:
    """``{head: column}`` for heads whose masks are in columns ``mask_<head>``; a clear error names missing ones."""
    missing = [h for h in heads if f"mask_{h}" not in table.columns]
    if missing:
        raise InputError(getattr(table, "attrs", {}).get("path", "manifest"),
                         f"no column(s) {', '.join('mask_' + h for h in missing)} for head(s) {', '.join(missing)}")
    return {h: f"mask_{h}" for h in heads}


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV and resolve relative paths against its folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "manifest not found")
    table = pd.read_csv(path)
    missing = {"image", "split"} - set(table.columns)
    if missing:
        raise InputError(path, f"manifest lacks column(s) {sorted(missing)}")
    if "mask" not in table.columns and not any(str(c).startswith("mask_") for c in table.columns):
        raise InputError(path, "manifest lacks a 'mask' column (or per-reader 'mask_<head>' columns)")
    base = path.parent
    table.attrs["path"] = str(path)
    for column in [c for c in table.columns if c in ("image", "mask") or str(c).startswith("mask_")]:
        table[column] = [str(p if Path(str(p)).is_absolute() else base / str(p)) if isinstance(p, str) else p for p in table[column]]
    if "case_id" not in table.columns:
        table["case_id"] = [Path(p).stem.replace(".nii", "") for p in table["image"]]
    return table


def load_split(table: pd.DataFrame, split: str, limit: int | None = None, heads: Sequence[str] | None = None) -> list[Case]:
    """Load the cases of one split; unreadable cases are logged and skipped.

    ``heads``: load one mask per head from the columns ``mask_<head>`` (multi-reader training) instead of ``mask``.
    """
    columns = head_mask_columns(table, heads) if heads else None
    rows = table[table["split"] == split]
    if limit is not None:
        rows = rows.iloc[:limit]
    cases = []
    for row in rows.to_dict(orient="records"):
        try:
            if columns:
                cases.append(load_multi_reader_case(row["image"], {h: row[c] for h, c in columns.items()}, str(row["case_id"])))
            else:
                cases.append(load_case(row["image"], row["mask"], str(row["case_id"])))
        except Exception as exc:  # a bad case never stops the cohort
            log.warning("skipping case %s: %s", row["case_id"], exc)
    return cases
