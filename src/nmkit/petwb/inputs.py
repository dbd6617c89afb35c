"""Reading the inputs of the whole-body PET commands: a PET in SUV (clear error otherwise), masks on its grid,
points given as "X,Y,Z" mm, and label maps written with their name sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..io.image import Image, Mask


def read_suv_pet(path: str | Path, suv: str = "bw", assume_suv: bool = False) -> Image:
    """The PET in SUV: DICOM PT converted with the ``suv`` kind (errors name missing tags); a NIfTI/NRRD file only
    with ``assume_suv`` (it stores no units), then marked ``g/ml``."""
    from ..io.reader import read_image
    from ..io.volume_files import is_volume_file
    from ..units import image_unit

    path = Path(path)
    if path.is_file() and is_volume_file(path):
        image = read_image(path)
        if not assume_suv and image_unit(image.units, image.modality) != "g/ml":
            raise InputError(path, "a NIfTI/NRRD PET states no SUV units; convert from DICOM or pass --assume-suv "
                                   "if its values are SUV")
        image.units = image.units or "g/ml"
    else:
        image = read_image(path, suv=suv)
        if image.modality and image.modality.upper() != "PT":
            raise InputError(path, f"a {image.modality} image, not a PET (PT) series")
        if image_unit(image.units, image.modality) != "g/ml":
            raise InputError(path, f"PET values are in {image_unit(image.units, image.modality)}, not SUV "
                                   f"(the SUV tags are missing or unusable)")
    if image.ndim_spatial != 3 or image.array.ndim != 3:
        raise InputError(path, "a 3D PET volume is needed")
    return image


def read_mask_on(path: str | Path, reference: Image, selector: Sequence[str] | str | None = None,
                 what: str = "mask") -> Mask:
    """Any ROI file (label map, RTSTRUCT, SEG) on the PET grid, reduced to the selected structures."""
    from ..io.roi import load_rois

    mask = load_rois(path, reference, selector=selector)
    if not mask.binary(None).any():
        raise InputError(path, f"the {what} is empty (no voxel of the selected structures on the PET grid)")
    return mask


def parse_point(text: str) -> tuple[float, float, float]:
    """"X,Y,Z" in mm (LPS) -> a tuple; an InputError names the bad text."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(None, f"{text!r} is not a point X,Y,Z in mm")
    return values  # type: ignore[return-value]


def write_label_map(mask: Mask, path: str | Path) -> Path:
    """Write a label map (NIfTI) and its ``<stem>.labels.json`` name sidecar."""
    from ..io.volume_files import write_volume

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(mask, path)
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    path.with_name(f"{stem}.labels.json").write_text(json.dumps({str(k): v for k, v in sorted(mask.labels.items())}, indent=1))
    return path


def is_dicom_input(image: Image) -> bool:
    files = image.meta.get("source_files") or []
    return len(files) == image.array.shape[0] and not str(files[0]).endswith((".nii", ".nii.gz", ".nrrd"))
