"""Images, ROIs and their files: DICOM (CT, MR, PT, NM), NIfTI/NRRD, RTSTRUCT, SEG, polygons.

The ROI readers/writers are imported on first use (highdicom is slow to import).
"""

from importlib import import_module
from typing import Any

from .image import Image, Mask, resample_to
from .volume_files import read_label_map, read_volume, write_volume

_LAZY = {
    "read_image": "reader", "load_rois": "roi",
    "read_rtstruct": "rtstruct", "write_rtstruct": "rtstruct",
    "read_seg": "seg", "write_seg": "seg",
    "read_polygons": "polygons", "write_polygons": "polygons",
}

__all__ = ["Image", "Mask", "resample_to", "read_volume", "read_label_map", "write_volume", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
