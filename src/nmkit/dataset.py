"""The dataset contract: ONE case table that every cohort command reads and every producer writes.

Schema ``nmkit-dataset/1``. A case table is a CSV (or JSON records) with one row per image, and these columns
(any other column is kept and passed through, e.g. ``pathology`` or ``centre``):

============================ ==========================================================================================
column                       meaning
============================ ==========================================================================================
``case_id``                  unique row identifier (defaults to the series UID, else the image file's stem)
``patient_id``               patient identifier; splits and folds never separate one patient's rows (required, not blank)
``study_uid``, ``series_uid`` DICOM Study/Series Instance UIDs when known
``study_date``               study date (YYYYMMDD) when known
``acquisition_datetime``     acquisition (or series) date-time, ISO 8601, when known
``time_point``               time point label of a longitudinal study (``TP1``, ``baseline``, ``24h`` ...)
``modality``                 DICOM modality of the image (PT, NM, CT, MR, DX ...)
``tracer``                   radiopharmaceutical (``FDG``, ``Lu-177 DOTATATE`` ...) when known
``series_description``       the series' description (tells reconstructions and time points apart)
``image``                    a NIfTI/NRRD/PNG file, a DICOM file or series folder, or ``;``-separated DICOM files
``image_format``             ``nifti`` / ``nrrd`` / ``dicom`` / ``png`` (derived from the file when blank)
``masks``                    JSON list of mask references (below); blank when the image has no ROI
``mask``                     convenience: the single mask file when there is exactly one (legacy manifests' column)
``roi``                      structure selector applied by analyses: name, glob or number (``nmkit.io.roi_select``)
``reader``                   who drew the ROI(s)
``suv``                      ``bw`` / ``lbm`` to read a DICOM PET in SUV, blank for stored units
``split``, ``fold``          patient-level split name and cross-validation fold (-1 = not in a fold)
``mask_<head>``              one label map per reader head (``mask_R1`` ...), for multi-reader training
============================ ==========================================================================================

A mask reference is ``{"file", "kind", "segment", "structure", "label", "reader"}``: ``kind`` is ``labelmap``,
``rtstruct``, ``seg`` or ``polygons``; ``segment`` the ROI Number (RTSTRUCT) or Segment Number (SEG); ``structure`` the
structure's name; ``label`` the value in a label map (blank: any non-zero voxel). A reference to an RTSTRUCT/SEG without
``segment`` or ``structure`` stands for every structure of the file.

Paths are written relative to the table's folder when they lie under it, and are read relative to it. The sidecar
``<name>.provenance.json`` records the schema, the producer and its inputs. :func:`read_dataset` validates the table and
fails with the row (as the CSV line number), the column and the file named.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import InputError

log = logging.getLogger(__name__)

SCHEMA = "nmkit-dataset/1"
COLUMNS = ["case_id", "patient_id", "study_uid", "series_uid", "study_date", "acquisition_datetime", "time_point",
           "modality", "tracer", "series_description", "image", "image_format", "masks", "mask", "roi", "reader", "suv",
           "split", "fold"]
MASK_KINDS = ("labelmap", "rtstruct", "seg", "polygons")
_PATH_COLUMNS = ("image", "mask")


@dataclass(frozen=True)
class MaskRef:
    """One mask: a file, and optionally one structure of it (number and/or name, or a label value)."""

    file: str
    kind: str = "labelmap"
    segment: int | None = None
    structure: str | None = None
    label: int | None = None
    reader: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MaskRef":
        unknown = set(data) - {"file", "kind", "segment", "structure", "label", "reader"}
        if unknown:
            raise ValueError(f"unknown mask key(s) {sorted(unknown)}")
        if not str(data.get("file") or "").strip():
            raise ValueError("a mask needs a 'file'")
        kind = str(data.get("kind") or "labelmap").lower()
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kind {kind!r} is not one of {list(MASK_KINDS)}")
        return cls(file=str(data["file"]).strip(), kind=kind, segment=_int_or_none(data.get("segment")),
                   structure=_text(data.get("structure")), label=_int_or_none(data.get("label")),
                   reader=_text(data.get("reader")))

    @property
    def selector(self) -> str | None:
        """The ``roi_select`` selector this reference stands for (number first: names may repeat)."""
        if self.segment is not None:
            return str(self.segment)
        if self.label is not None:
            return str(self.label)
        return self.structure


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _int_or_none(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    number = float(text)
    if number != int(number):
        raise ValueError(f"{value!r} is not an integer")
    return int(number)


def is_blank(value: Any) -> bool:
    return _text(value) is None


def text(value: Any) -> str | None:
    """The stripped text of a table cell, ``None`` when blank/NaN."""
    return _text(value)


def guess_mask_kind(path: str | Path) -> str:
    """``labelmap``/``rtstruct``/``seg``/``polygons`` from the file itself (``labelmap`` when unknown or missing)."""
    from .io.roi import detect_roi_kind

    return detect_roi_kind(path) or "labelmap"


def image_format(path: str) -> str:
    name = path.lower().split(";")[0]
    for suffix, fmt in ((".nii", "nifti"), (".nii.gz", "nifti"), (".nrrd", "nrrd"), (".nhdr", "nrrd"), (".mha", "metaimage"),
                        (".mhd", "metaimage"), (".png", "png"), (".jpg", "jpeg"), (".jpeg", "jpeg"), (".tif", "tiff"),
                        (".tiff", "tiff")):
        if name.endswith(suffix):
            return fmt
    return "dicom"


# ----- encoding -----------------------------------------------------------------------------------------
def encode_masks(masks: Sequence[MaskRef] | None) -> str:
    return json.dumps([m.to_dict() for m in masks], separators=(",", ":")) if masks else ""


def decode_masks(cell: Any) -> list[MaskRef]:
    """The ``masks`` cell as references: JSON list, a list already, or blank."""
    if isinstance(cell, list):
        return [m if isinstance(m, MaskRef) else MaskRef.from_dict(m) for m in cell]
    text_ = _text(cell)
    if text_ is None:
        return []
    data = json.loads(text_)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of {file, kind, segment, structure, label}")
    return [MaskRef.from_dict(d) for d in data]


# ----- building -----------------------------------------------------------------------------------------
def new_table(rows: Iterable[Mapping[str, Any]]):
    """A case table (DataFrame) from row dicts: contract columns first, ``masks`` as lists of ``MaskRef``."""
    import pandas as pd

    records = []
    for row in rows:
        rec = {c: row.get(c, "") for c in COLUMNS}
        rec.update({k: v for k, v in row.items() if k not in rec})
        masks = decode_masks(rec.get("masks"))
        if not masks and _text(rec.get("mask")):
            masks = [MaskRef(file=str(rec["mask"]), kind=guess_mask_kind(rec["mask"]))]
        rec["masks"] = masks
        if not _text(rec.get("mask")) and len({m.file for m in masks}) == 1:
            rec["mask"] = masks[0].file
        rec["image_format"] = _text(rec.get("image_format")) or (image_format(str(rec["image"])) if _text(rec.get("image")) else "")
        rec["case_id"] = _text(rec.get("case_id")) or _text(rec.get("series_uid")) or _stem(str(rec.get("image") or ""))
        rec["fold"] = "" if _text(rec.get("fold")) is None else int(float(rec["fold"]))
        records.append(rec)
    columns = COLUMNS + [c for r in records for c in r if c not in COLUMNS]
    table = pd.DataFrame(records, columns=list(dict.fromkeys(columns)))
    for c in table.columns:
        if c not in ("masks", "fold"):
            table[c] = table[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    table.attrs["schema"] = SCHEMA
    return table


def _stem(path: str) -> str:
    name = Path(path.split(";")[0]).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".png", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ----- writing ------------------------------------------------------------------------------------------
def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".provenance.json")


def _relative(value: str, folder: Path) -> str:
    parts = [p.strip() for p in str(value).split(";")]
    out = []
    for p in parts:
        if p and not Path(p).is_absolute():
            p = str(Path(p).resolve())  # in memory, a relative path is relative to the working directory
        if p:
            try:
                p = os.path.relpath(p, folder) if Path(p).resolve().is_relative_to(folder.resolve()) else p
            except ValueError:
                pass
        out.append(p)
    return ";".join(out)


def write_dataset(table, path: str | Path, provenance: Mapping[str, Any] | None = None, relative: bool = True) -> Path:
    """Write the case table (CSV, or JSON records for ``.json``) and its ``<name>.provenance.json``; returns the sidecar.

    Paths in ``table`` are absolute or relative to the working directory; those under the table's folder are written
    relative to it (so the folder can be moved or shared as one piece), the others absolute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table if "masks" in table.columns and all(isinstance(m, list) for m in table["masks"]) else new_table(
        table.to_dict(orient="records"))
    out = table.copy()
    folder = path.parent
    head_columns = [c for c in out.columns if str(c).startswith("mask_")]
    if relative:
        for column in list(_PATH_COLUMNS) + head_columns:
            out[column] = [_relative(v, folder) if _text(v) else "" for v in out[column]]
        out["masks"] = [[MaskRef(**{**m.to_dict(), "file": _relative(m.file, folder)}) for m in ms] for ms in out["masks"]]
    out["masks"] = [encode_masks(ms) for ms in out["masks"]]
    if path.suffix.lower() == ".json":
        path.write_text(out.to_json(orient="records", indent=1))
    else:
        out.to_csv(path, index=False)
    record = {"schema": SCHEMA, **dict(provenance or {})}
    record["rows"] = int(len(out))
    record["patients"] = int(out["patient_id"].nunique())
    if "split" in out.columns and (out["split"] != "").any():
        record["split_patients"] = {str(k): int(v) for k, v in out.groupby("split")["patient_id"].nunique().items()}
    side = sidecar_path(path)
    side.write_text(json.dumps(record, indent=1, default=str))
    return side


# ----- reading and validation ------------------------------------------------------------------------------
def _absolute(value: str, folder: Path) -> str:
    parts = [p.strip() for p in str(value).split(";")]
    return ";".join(p if not p or Path(p).is_absolute() else str((folder / p).resolve()) for p in parts)


def _legacy_masks(row: Mapping[str, Any]) -> list[MaskRef]:
    """Masks of manifests written before the contract: ``mask`` (label map or DICOM ROI file), or ``roi`` holding
    ROI files with ``roi_format`` (the catalog manifest of nmkit <= 0.1)."""
    masks = []
    if _text(row.get("mask")):
        masks.append(MaskRef(file=str(row["mask"]), kind=guess_mask_kind(row["mask"])))
    elif _text(row.get("roi_format")) and _text(row.get("roi")):
        for f in str(row["roi"]).split(";"):
            if f.strip():
                masks.append(MaskRef(file=f.strip(), kind=guess_mask_kind(f.strip())))
    return masks


class DatasetError(InputError):
    """A case table row that breaks the contract: names the table, the row (CSV line) and the column."""


def _fail(path: Path, line: int | None, column: str | None, problem: str) -> DatasetError:
    where = ", ".join(x for x in (f"row {line}" if line else "", f"column {column!r}" if column else "") if x)
    return DatasetError(path, f"{where}: {problem}" if where else problem)


def read_dataset(path: str | Path, require: Sequence[str] = ("image",), need_masks: bool = False,
                 check_files: bool = True, heads: Sequence[str] | None = None):
    """Read and validate a case table; returns a DataFrame with contract columns, absolute paths and ``masks`` lists.

    ``require``: columns that must exist and be non-blank in every row (``split`` for training, ...).
    ``need_masks``: every row must have at least one mask (or one ``mask_<head>`` per head in ``heads``).
    ``check_files``: images and mask files must exist. Any violation raises ``DatasetError`` naming the row (CSV
    line number, header = line 1), the column and the file.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(path, "dataset table (manifest) does not exist")
    if path.is_dir():
        candidates = [path / n for n in ("dataset.csv", "manifest.csv") if (path / n).is_file()]
        if not candidates:
            raise InputError(path, "is a folder without dataset.csv or manifest.csv; give the case table's file")
        path = candidates[0]
    try:
        if path.suffix.lower() == ".json":
            raw = pd.read_json(path, orient="records", dtype=False).astype(object)
        else:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as exc:  # OSError: a .gz name on a non-gzip file
        raise InputError(path, f"not a readable case table (CSV or JSON records): {str(exc).splitlines()[0]}") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputError(path, "empty file, not a case table") from exc
    if "image" not in raw.columns:
        raise DatasetError(path, f"not a case table: no 'image' column (columns: {list(raw.columns)[:12]})")
    missing = [c for c in require if c not in raw.columns]
    if missing:
        raise DatasetError(path, f"case table lacks column(s) {missing}")
    folder = path.parent
    rows = raw.to_dict(orient="records")
    head_columns = [f"mask_{h}" for h in heads] if heads else []
    missing_heads = [c for c in head_columns if c not in raw.columns]
    if missing_heads:
        raise DatasetError(path, f"no column(s) {missing_heads} for head(s) {list(heads or [])}")
    for i, row in enumerate(rows):
        line = i + 2
        for column in require:
            if _text(row.get(column)) is None:
                raise _fail(path, line, column, "blank")
        if "patient_id" in row and _text(row.get("patient_id")) is None:
            raise _fail(path, line, "patient_id", "blank patient ID (rows of unknown patients cannot be split safely)")
        for column in ("image",) + tuple(c for c in raw.columns if str(c) == "mask" or str(c).startswith("mask_")):
            if _text(row.get(column)):
                row[column] = _absolute(str(row[column]), folder)
        try:
            masks = decode_masks(row.get("masks")) if "masks" in row else []
        except (ValueError, TypeError) as exc:
            raise _fail(path, line, "masks", f"not a list of mask references ({exc})") from exc
        if not masks:
            masks = _legacy_masks(row)
        masks = [MaskRef(**{**m.to_dict(), "file": _absolute(m.file, folder)}) for m in masks]
        row["masks"] = masks
        if check_files:
            image = str(row.get("image") or "")
            for part in [p for p in image.split(";") if p.strip()]:
                if not Path(part).exists():
                    raise _fail(path, line, "image", f"file {part} does not exist")
            for m in masks:
                if not Path(m.file).is_file():
                    raise _fail(path, line, "masks", f"mask file {m.file} does not exist")
            for column in head_columns:
                f = _text(row.get(column))
                if f and not Path(f).is_file():
                    raise _fail(path, line, column, f"mask file {f} does not exist")
        if need_masks:
            if heads:
                blank = [c for c in head_columns if not _text(row.get(c))]
                if blank:
                    raise _fail(path, line, blank[0], "no mask for this head")
            elif not masks:
                raise _fail(path, line, "masks", "no mask for this image")
        if "fold" in row and _text(row.get("fold")) is not None:
            try:
                row["fold"] = int(float(row["fold"]))
            except ValueError as exc:
                raise _fail(path, line, "fold", f"{row['fold']!r} is not an integer") from exc
    table = new_table(rows)
    ids = table["case_id"]
    duplicated = ids[ids.duplicated()].tolist()
    if duplicated:
        log.warning("%s: case_id values repeat (%s); rows are still told apart by their position", path, duplicated[:3])
    table.attrs["path"] = str(path)
    table.attrs["schema"] = SCHEMA
    return table


def mask_files(table) -> list[str]:
    """Every distinct mask file referenced by a table (for provenance)."""
    return sorted({m.file for ms in table["masks"] for m in ms})


def single_label_map(row: Mapping[str, Any], where: str | Path | None = None) -> str | None:
    """The one label-map file of a row (segmentation training/evaluation); ``None`` when the row has no mask.

    RTSTRUCT/SEG masks must be converted first (``nmkit roi2mask``); the message says so."""
    masks: list[MaskRef] = list(row.get("masks") or [])
    if not masks:
        return None
    files = sorted({m.file for m in masks})
    if len(files) > 1:
        raise InputError(where, f"case {row.get('case_id')!r} has {len(files)} mask files {files}; a label map per image is "
                                "needed here (merge them or give one per row)")
    if masks[0].kind != "labelmap":
        raise InputError(files[0], f"is a {masks[0].kind.upper()}; convert it to a label map first with `nmkit roi2mask`")
    return files[0]
