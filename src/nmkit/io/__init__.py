"""Images, ROIs and their files: DICOM (CT, MR, PT, NM), NIfTI/NRRD, RTSTRUCT, SEG, polygons."""

from .image import Image, Mask, resample_to
from .volume_files import read_label_map, read_volume, write_volume

__all__ = ["Image", "Mask", "resample_to", "read_volume", "read_label_map", "write_volume"]
