"""Writing received or de-identified DICOM instances: one file-meta rule and one folder layout.

Why: the PACS pull and the de-identifier each built the Part 10 file meta and the
``<patient>/<study>/<series>/<sop>.dcm`` path themselves; the path now goes through ``safe_name`` everywhere.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from .filenames import safe_name


def set_file_meta(ds: Dataset, transfer_syntax: str, implementation_name: str) -> None:
    """Give ``ds`` a fresh Part 10 file meta for its SOP class/instance in ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = implementation_name[:16]
    ds.file_meta = meta


def instance_path(root: str | Path, ds: Dataset) -> Path:
    """``root/<patient>/<study>/<series>/<sop>.dcm`` with every part made a safe file name."""
    return (Path(root) / safe_name(ds.get("PatientID", ""), "nopatient") / safe_name(ds.get("StudyInstanceUID", ""), "nostudy")
            / safe_name(ds.get("SeriesInstanceUID", ""), "noseries") / f"{safe_name(ds.SOPInstanceUID, 'noinstance')}.dcm")
