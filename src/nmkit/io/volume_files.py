"""NIfTI and NRRD images and label maps (via SimpleITK), with geometry kept exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError
from .image import Image, Mask

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_volume_file(path: str | Path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def read_volume(path: str | Path, modality: str = "", units: str = "") -> Image:
    """Read a NIfTI/NRRD/MetaImage file as an ``Image`` (LPS geometry, as SimpleITK gives it)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"cannot read image: {str(exc).strip().splitlines()[-1]}") from exc
    image = Image.from_sitk(img, modality=modality, units=units, meta={"source_files": [str(path)]})
    return image


def read_label_map(path: str | Path, labels: Mapping[int, str] | None = None) -> Mask:
    """Read a NIfTI/NRRD label map as a ``Mask``; label names default to ``label_<value>``."""
    image = read_volume(path)
    arr = image.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isclose(arr, np.round(arr))):
            raise InputError(path, "label map holds non-integer values (a probability map? threshold it first)")
        arr = np.round(arr).astype(np.int32)
    values = [int(v) for v in np.unique(arr) if v != 0]
    names = dict(labels) if labels else {v: f"label_{v}" for v in values}
    if not names:
        names = {1: "roi"}
    mask = Mask(array=arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8), spacing=image.spacing, origin=image.origin,
                direction=image.direction, modality="SEG", meta=image.meta, labels=names)
    return mask


def write_volume(image: Image, path: str | Path) -> Path:
    """Write an image or mask as NIfTI/NRRD (chosen by suffix); parent folders are created."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Mask) and image.overlapping:
        raise InputError(path, "overlapping masks cannot be one label map; write one file per label (Mask.split())")
    sitk.WriteImage(image.to_sitk(), str(path), useCompression=True)
    return path
