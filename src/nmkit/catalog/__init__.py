"""DICOM catalog: SQLite index of headers (``index_folder``), cohort queries (``Catalog``), dataset manifests
with patient-level splits (``nmkit.catalog.manifest``)."""

from .index import IndexStats, index_folder
from .query import Catalog

__all__ = ["Catalog", "IndexStats", "index_folder"]
