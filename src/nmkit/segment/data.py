"""Training data from a case table (``nmkit.dataset``, schema ``nmkit-dataset/1``): images with label maps and a split.

Tables are read ONLY through :func:`nmkit.dataset.read_dataset` (:func:`read_manifest` here delegates to it, with
``split`` required where a split is needed), so a bad row fails with the row, column and file named. A row's mask is
its one label-map file (:func:`nmkit.dataset.single_label_map`; RTSTRUCT/SEG must be converted with ``nmkit roi2mask``
first). Images may be NIfTI/NRRD or DICOM (any file our readers understand).

Several readers' masks of the same image (for a network with one output head per reader, see
``TrainConfig.heads``) go in columns ``mask_<head>``, e.g. ``mask_R1``, ``mask_R2``, ``mask_consensus``.

Several input channels (e.g. PET and CT of one study): one row per channel image, matched to the channel names by the
``modality`` column and grouped by study (:mod:`nmkit.segment.engines.channels`, as for the nnU-Net engine); the first
channel's row carries the label map and its grid is the case's grid (other channels resampled onto it, linear).
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
    patient_id: str = ""  # for patient-level k-fold splits
    fold: str = ""  # the case table's fold column ('' when blank)

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.image.spacing


def load_image(path: str | Path, suv: str | None = None) -> Image:
    """Read any image nmkit understands; a single-frame planar image becomes 2D.

    ``suv`` (``bw``/``lbm``): a DICOM PET is read in SUV (NIfTI/NRRD files are taken as stored)."""
    path = Path(path)
    if is_volume_file(path):
        image = read_volume(path)
    else:
        from ..io import reader  # DICOM readers (planar NM, series)

        image = reader.read_image(path, suv=suv)
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


def read_manifest(path: str | Path, require: Sequence[str] = ("image", "split"), heads: Sequence[str] | None = None,
                  need_masks: bool = False, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a case table (``nmkit.dataset.read_dataset``): absolute paths, ``masks`` as ``MaskRef`` lists.

    ``require``: columns that must be non-blank in every row (``split`` for training/studies; ``("image",)`` when any
    row will do). ``heads``: the ``mask_<head>`` columns must exist. ``need_masks``: every row must have a mask.
    """
    from ..dataset import read_dataset

    return read_dataset(path, require=tuple(require), need_masks=need_masks, check_files=check_files, heads=heads)


def as_case_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``masks`` as ``MaskRef`` lists (a DataFrame built in code, e.g. by the demo, gets them from its
    ``mask`` column); the row index is kept so errors can name the CSV line."""
    from ..dataset import new_table

    if "masks" in table.columns and all(isinstance(m, list) for m in table["masks"]):
        return table
    out = new_table(table.to_dict(orient="records")).set_axis(table.index)
    out.attrs.update(table.attrs)
    return out


def _row_where(table: pd.DataFrame, index: object) -> str:
    """``row N, `` (the CSV line, header = line 1) for a table read from a file; empty for one built in code."""
    return f"row {int(index) + 2}, " if table.attrs.get("path") and isinstance(index, (int, np.integer)) else ""


def load_channel_case(rows: Sequence[dict], case_id: str, where: str | Path | None) -> Case:
    """One multi-channel case from its rows in channel order: images stacked on the first row's grid, the first row's
    label map on that grid (nearest-neighbour when it lies on another grid)."""
    from ..dataset import single_label_map
    from ..io.image import resample_to
    from .engines.channels import stack_channels

    images = [load_image(r["image"], suv=str(r.get("suv") or "").strip() or None) for r in rows]
    for image, row in zip(images, rows):
        _check_single_channel(image, row["image"])
    stacked = stack_channels(images)
    mask_path = single_label_map(rows[0], where)
    if mask_path is None:
        label = np.zeros(images[0].spatial_shape, np.int64)
    else:
        mask = squeeze_planar(read_label_map(mask_path))
        if not mask.same_grid(images[0]):
            mask = resample_to(mask, images[0], "nearest")
        label = np.asarray(mask.array, dtype=np.int64)
    return Case(case_id=case_id, image=stacked, label=label)


def _load_channel_split(table: pd.DataFrame, rows: pd.DataFrame, channels: Sequence[str], need_masks: bool) -> list[Case]:
    from ..dataset import single_label_map
    from .engines.channels import group_rows

    where = table.attrs.get("path") or "case table"
    cases = []
    for group in group_rows(rows.to_dict(orient="records"), channels, where):
        first = group[0]
        case_id = str(first["case_id"])
        if need_masks and single_label_map(first, where) is None:
            raise InputError(where, f"column 'masks': case {case_id!r} has no mask on its {channels[0]} row (the first "
                                    "channel's row carries the label map)")
        try:
            case = load_channel_case(group, case_id, where)
        except InputError:
            raise
        except Exception as exc:  # an unreadable file never stops the cohort
            log.warning("skipping case %s: %s", case_id, exc)
            continue
        case.patient_id, case.fold = str(first.get("patient_id") or case_id), _fold_text(first.get("fold"))
        cases.append(case)
    return cases


def _fold_text(value: object) -> str:
    """The fold column's value as text ('' when blank; 2.0 -> '2')."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return ""
    text = str(value).strip()
    try:
        return str(int(float(text)))
    except ValueError:
        return text


def resample_case(case: Case, spacing_mm: Sequence[float] | None, interpolation: str = "linear") -> Case:
    """The case on the target spacing (image ``interpolation``, labels label-aware); unchanged when ``spacing_mm`` is
    None or already the case's grid."""
    from dataclasses import replace

    from .preprocess import resample_labels, resample_to_spacing, spacing_grid

    if spacing_mm is None:
        return case
    grid = spacing_grid(case.image, spacing_mm)
    if grid.same_grid(case.image):
        return case
    image = resample_to_spacing(case.image, spacing_mm, interpolation)
    return replace(case, image=image, label=resample_labels(case.label, case.image, grid))


def load_split(table: pd.DataFrame, split: str | Sequence[str], limit: int | None = None, heads: Sequence[str] | None = None,
               need_masks: bool = True, channels: Sequence[str] | None = None) -> list[Case]:
    """Load the cases of one split; unreadable image/mask files are logged and skipped.

    The mask is the row's one label map (``masks``/``mask``); ``heads``: one mask per head from the columns
    ``mask_<head>`` (multi-reader training) instead. ``need_masks``: a row without a mask is an error naming its
    row (training on an empty label would teach the network that nothing is there); otherwise its label is empty.
    ``split``: one split or several (e.g. ``("train", "val")`` for k-fold training). ``channels``: several input
    channels, one row per channel image of a study (see the module docstring).
    """
    from ..dataset import single_label_map

    columns = head_mask_columns(table, heads) if heads else None
    if "split" not in table.columns:
        raise InputError(table.attrs.get("path"), f"the case table has no 'split' column; cannot select split {split!r}")
    table = as_case_table(table)
    where = table.attrs.get("path") or "case table"
    splits = [split] if isinstance(split, str) else list(split)
    rows = table[table["split"].isin(splits)]
    if channels and len(channels) > 1:
        if heads:
            raise InputError(where, "several input channels with one head per reader is not supported")
        cases = _load_channel_split(table, rows, channels, need_masks)
        return cases[:limit] if limit is not None else cases
    if limit is not None:
        rows = rows.iloc[:limit]
    cases = []
    for index, row in zip(rows.index, rows.to_dict(orient="records")):
        case_id = str(row["case_id"])
        if columns:
            masks = {h: row.get(c) for h, c in columns.items()}
            blank = [c for h, c in columns.items() if not isinstance(masks[h], str) or not masks[h].strip()]
            if blank:
                raise InputError(where, f"{_row_where(table, index)}column {blank[0]!r}: no mask for case {case_id!r}")
        else:
            mask = single_label_map(row, where)
            if mask is None and need_masks:
                raise InputError(where, f"{_row_where(table, index)}column 'masks': case {case_id!r} (split {row['split']}) has no mask")
        try:
            if columns:
                cases.append(load_multi_reader_case(row["image"], masks, case_id))
            else:
                cases.append(load_case(row["image"], mask, case_id))
            cases[-1].patient_id, cases[-1].fold = str(row.get("patient_id") or case_id), _fold_text(row.get("fold"))
        except Exception as exc:  # an unreadable file never stops the cohort
            log.warning("skipping case %s: %s", case_id, exc)
    return cases
