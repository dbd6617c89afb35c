"""Cohort radiomics: one tidy table for many cases of a case table (``nmkit.dataset``), a DataFrame or a DICOM catalog.

Cohorts are read ONLY through :func:`nmkit.dataset.read_dataset` (schema ``nmkit-dataset/1``; older manifests with a
``mask`` column, or the catalog's ``roi``/``roi_format``, are read too). A case row is one image (``image``; a DICOM
series UID in ``series_uid`` picks that series in a folder holding several; ``suv`` = ``bw``/``lbm`` reads a DICOM PET
in SUV) with its ``masks``; it expands to one extraction per structure:

* an RTSTRUCT/SEG mask reference without ``segment``/``structure`` stands for every structure of the file (one row
  each); with them, for that structure only;
* a label map gives one row for its ``label`` (or the structure named), else one row for any foreground;
* the row's ``roi`` column and the CLI ``--roi`` are selectors (``nmkit.io.roi_select``: ROI/segment number, glob such
  as ``GTV*``, or name; repeated names select every structure carrying them) applied to the structures of all the
  row's masks; a selector that matches nothing fails the case with the structures found listed.

Every output row carries ``segment_number`` (RTSTRUCT ROI Number, SEG Segment Number, or the label-map source's
number), ``structure`` (also as ``roi_name``), ``label_value`` (the value in the mask: segment/ROI number for
RTSTRUCT/SEG, the voxel value of a label map, blank for any foreground), ``mask_file``, ``mask_kind``, ``reader``,
``image_units`` (the image's, else the table's ``units`` column), ``config_name``, ``config_hash`` and
``nmkit_version``, so lesions are told apart by number, never by
row order. Blank ``patient_id``/``study_uid``/``series_uid`` are filled from the image's DICOM header. With a config
whose ``native_pet`` is true (the PET presets) the row also has the native-grid PET numbers of
``radiomics.pet.native_pet_features`` (``native_suv_max`` ..., ``mtv_ml``, ``tlg_g``).

:func:`cases_from_catalog` builds the cases from a catalog (``nmkit index``): one row per (image series, ROI file),
filtered by modality, tracer and series description. Failing cases (or single structures of a case) are logged and
skipped (listed in ``CohortResult.failures``). Work runs in a local process pool (``n_workers``), or on Dask when
``scheduler`` is an address or ``"dask-local"`` (a LocalCluster).
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from .config import RadiomicsConfig

log = logging.getLogger(__name__)

ID_COLUMNS = ("patient_id", "study_uid", "series_uid", "roi", "segment_number", "structure", "label_value")


@dataclass
class CohortResult:
    table: Any  # pandas.DataFrame, one row per extracted ROI
    failures: list[dict[str, str]] = field(default_factory=list)
    resumed: int = 0  # cases taken from the partial store (not recomputed)


def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _text(v: Any) -> str | None:
    return None if _is_blank(v) else str(v).strip()




def _roi_numbers(path: str, kind: str) -> dict[int, str]:
    """ROI number -> name of an RTSTRUCT or SEG, from its header (no rasterisation)."""
    if kind == "rtstruct":
        from ..io.rtstruct import list_rois

        return list_rois(path)
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for broken files
        raise InputError(path, f"cannot read the SEG header ({type(exc).__name__}: {exc})") from exc
    names = {int(item.SegmentNumber): str(getattr(item, "SegmentLabel", "") or f"segment_{int(item.SegmentNumber)}")
             for item in getattr(ds, "SegmentSequence", []) or [] if int(getattr(item, "SegmentNumber", 0) or 0) != 0}
    if not names:
        raise InputError(path, "the Segmentation defines no segments")
    return names


@dataclass(frozen=True)
class Structure:
    """One structure to extract: its mask reference, number (selection key), name and value in the loaded mask."""

    ref: Any  # nmkit.dataset.MaskRef
    kind: str
    number: int | None  # RTSTRUCT ROI Number / SEG Segment Number / label value (None: any foreground)
    name: str
    label: int | None  # value in the loaded Mask; None = any foreground


def _mask_kind(file: str) -> str:
    from ..io.roi import detect_roi_kind

    if not Path(file).exists():
        raise InputError(file, "mask file does not exist")
    kind = detect_roi_kind(file)
    if kind is None:
        raise InputError(file, "not a mask: expected a NIfTI/NRRD label map, a DICOM RTSTRUCT or SEG, or nmkit-polygons/1 JSON")
    return kind


def _label_map_candidates(ref, mask, selecting: bool) -> list[Structure]:
    """Label-map structures: the reference's label, else its named structure, else each label (when a selector will
    choose among them), else one structure of any foreground."""
    from ..io.roi_select import select_rois

    labels = dict(mask.labels)
    if ref.label is not None:
        if ref.label not in labels:
            raise InputError(ref.file, f"label value {ref.label} not in the label map (labels: {labels})")
        number = ref.segment if ref.segment is not None else ref.label
        return [Structure(ref, "labelmap", number, ref.structure or labels[ref.label], ref.label)]
    if ref.segment is not None and len(labels) == 1:  # one structure per file (roi2mask): the number is its source's
        (value, name), = labels.items()
        return [Structure(ref, "labelmap", ref.segment, ref.structure or name, value)]
    if ref.structure:
        chosen = select_rois(labels, ref.structure, ref.file)
        return [Structure(ref, "labelmap", v, n, v) for v, n in chosen.items()]
    if selecting:
        return [Structure(ref, "labelmap", v, n, v) for v, n in sorted(labels.items())]
    return [Structure(ref, "labelmap", None, ",".join(labels.values()), None)]


def _candidates(ref, image, loaded: dict[str, Any], selecting: bool) -> list[Structure]:
    """The structures a mask reference stands for (RTSTRUCT/SEG from the header only; label maps and polygon files
    are read, on the image grid, into ``loaded``)."""
    from ..io.roi import load_rois
    from ..io.roi_select import select_rois

    kind = _mask_kind(ref.file)
    if kind in ("rtstruct", "seg"):
        names = _roi_numbers(ref.file, kind)
        if ref.segment is not None:
            if ref.segment not in names:
                raise InputError(ref.file, f"{'ROI' if kind == 'rtstruct' else 'segment'} number {ref.segment} not found; "
                                           f"the file has {dict(sorted(names.items()))}")
            names = {ref.segment: names[ref.segment]}
        elif ref.structure:
            names = select_rois(names, ref.structure, ref.file)
        return [Structure(ref, kind, n, name, n) for n, name in sorted(names.items())]
    if ref.file not in loaded:
        loaded[ref.file] = load_rois(ref.file, image)
    mask = loaded[ref.file]
    if kind == "labelmap":
        return _label_map_candidates(ref, mask, selecting)
    labels = dict(mask.labels)
    if ref.structure:
        labels = select_rois(labels, ref.structure, ref.file)
    return [Structure(ref, kind, v, n, v) for v, n in sorted(labels.items())]


def _select(candidates: list[Structure], selector: str) -> list[Structure]:
    """The candidates ``selector`` chooses, mask file by mask file; an error when it matches nothing in any of them
    (the one file's own message, or every file's structures listed)."""
    from ..io.roi_select import _listing, select_rois

    groups: dict[Any, list[Structure]] = {}
    for c in candidates:
        groups.setdefault(c.ref, []).append(c)
    kept: list[Structure] = []
    errors: list[InputError] = []
    for ref, group in groups.items():
        names = {c.number: c.name for c in group if c.number is not None}
        try:
            chosen = select_rois(names, selector, ref.file)
        except InputError as exc:
            errors.append(exc)
            continue
        kept += [c for c in group if c.number in chosen]
    if not kept:
        if len(errors) == 1:
            raise errors[0]
        found = "; ".join(f"{Path(ref.file).name}: {_listing({c.number: c.name for c in g if c.number is not None})}"
                          for ref, g in groups.items())
        raise InputError(None, f"ROI {selector!r} matches no structure of the case's {len(groups)} masks ({found}); "
                               "select by exact name, glob such as 'GTV*', or number")
    return kept


def _load_numbers(file: str, image, numbers: Mapping[int, str]):
    """An RTSTRUCT/SEG rasterised on the image grid with only ``numbers``, and ``{number: label value in the mask}``.

    ``load_rois`` selects by number where it can (label values = ROI/segment numbers); else by the names, and the
    numbers are matched to the layers (label values = numbers, or RTSTRUCT layers 1..n in StructureSetROI order)."""
    import inspect

    from ..io.roi import load_rois

    if "roi_numbers" in inspect.signature(load_rois).parameters:
        return load_rois(file, image, roi_numbers=sorted(numbers)), {n: n for n in numbers}
    mask = load_rois(file, image, roi_names=sorted(set(numbers.values())))
    if mask.meta.get("roi_format") != "RTSTRUCT":
        return mask, {n: n for n in numbers}  # SEG layers are labelled by segment number
    wanted = {name.lower() for name in numbers.values()}
    header = _roi_numbers(file, "rtstruct")
    in_order = [n for n, name in header.items() if name.lower() in wanted]
    if set(mask.labels) == set(in_order) and all(mask.labels[n] == header[n] for n in in_order):  # values = ROI numbers
        return mask, {n: n for n in numbers}
    return mask, {n: in_order.index(n) + 1 for n in numbers}  # older reader: layers 1..n in StructureSetROI order


def case_masks(case: Mapping[str, Any]) -> list[Any]:
    """The case's mask references (``masks`` list or JSON, else the legacy ``mask`` column)."""
    from ..dataset import MaskRef, decode_masks, guess_mask_kind

    try:
        masks = decode_masks(case.get("masks"))
    except (ValueError, TypeError) as exc:
        raise InputError(None, f"case {case.get('case_id')!r}: masks is not a list of mask references ({exc})") from exc
    if not masks and _text(case.get("mask")):
        masks = [MaskRef(file=str(case["mask"]).strip(), kind=guess_mask_kind(str(case["mask"]).strip()))]
    if not masks:
        raise InputError(case.get("image"), "the case has no mask (masks/mask column blank)")
    return masks


def case_structures(case: Mapping[str, Any], image, roi: str | None = None) -> list[tuple[Structure, Any]]:
    """Every structure of a case to extract, as ``(structure, mask on the image grid)``: each mask reference expands
    to its structures, then the row's ``roi`` and ``roi`` (the CLI's) select among them."""
    selectors = [s for s in (_text(case.get("roi")), _text(roi)) if s]
    loaded: dict[str, Any] = {}
    chosen: list[Structure] = []
    for ref in case_masks(case):
        chosen += _candidates(ref, image, loaded, selecting=bool(selectors))
    for selector in selectors:
        chosen = _select(chosen, selector)
    out: list[tuple[Structure, Any]] = []
    by_file: dict[str, dict[int, str]] = {}
    for s in chosen:
        if s.kind in ("rtstruct", "seg"):
            by_file.setdefault(s.ref.file, {})[s.number] = s.name
    dicom_masks = {f: _load_numbers(f, image, numbers) for f, numbers in by_file.items()}
    for s in chosen:
        if s.kind in ("rtstruct", "seg"):
            mask, label_of = dicom_masks[s.ref.file]
            out.append((Structure(s.ref, s.kind, s.number, s.name, label_of[s.number]), mask))
        else:
            out.append((s, loaded[s.ref.file]))
    return out


def _fill_ids(row: dict[str, Any], image) -> None:
    """Blank patient/study/series IDs from the image's DICOM header (NIfTI images have none)."""
    for column, key in (("patient_id", "PatientID"), ("study_uid", "StudyInstanceUID"), ("series_uid", "SeriesInstanceUID")):
        value = image.meta.get(key)
        if _is_blank(row.get(column)) and not _is_blank(value):
            row[column] = str(value)


def _table_units(image, case: Mapping[str, Any]) -> None:
    """The case table's ``units`` (e.g. ``g/ml`` for the SUV NIfTI files of ``roi2mask --suv``) for an image whose file
    does not state them (NIfTI/NRRD); the file's own units win when both are given."""
    units = _text(case.get("units"))
    if units and not image.units:
        image.units = units
    elif units and units.lower() != str(image.units).lower():
        log.warning("%s: the case table says units %r, the image %r; using the image's", case.get("image"), units, image.units)


def _structure_columns(s: Structure, case: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that tell a structure apart: number, name, label value, mask file and kind, reader."""
    return {"segment_number": s.number, "structure": s.name, "roi_name": s.name, "label_value": s.label, "mask": s.ref.file,
            "mask_file": s.ref.file, "mask_kind": s.kind, "reader": s.ref.reader or _text(case.get("reader"))}


def run_case_rows(case: Mapping[str, Any], config_dict: Mapping[str, Any], errors: list[dict[str, str]] | None = None,
                  roi: str | None = None, diagnostics: bool = False) -> list[dict[str, Any]]:
    """Extract every structure of one case (runs in a worker): one output row per structure.

    A failure reading the image or mask, or a selector matching nothing, raises. A failure of one structure raises
    too, unless ``errors`` is given: then it is appended there (``{"roi", "error"}``) and the other structures still
    give rows. ``roi`` is an extra selector (the CLI's ``--roi``); ``diagnostics`` adds the IBSI diagnostics."""
    import numpy as np

    from .. import __version__
    from ..provenance import config_hash
    from ..io.reader import read_case_image
    from .engine import extract
    from .pet import native_pet_features
    from .planar import is_planar, lift, planar_config, planar_features

    cfg = RadiomicsConfig.from_dict(config_dict)
    chash = config_hash(cfg.to_dict())
    image = read_case_image(str(case["image"]), _text(case.get("suv")), _text(case.get("series_uid")))
    _table_units(image, case)
    structures = case_structures(case, image, roi)
    base = {k: (None if _is_blank(v) else v) for k, v in case.items() if k != "masks"}
    _fill_ids(base, image)
    planar = is_planar(image)
    run_cfg = planar_config(cfg) if planar else cfg
    rows = []
    for s, mask in structures:
        if mask.spatial_shape != image.spatial_shape or not image.same_grid(mask):
            raise InputError(s.ref.file, f"mask grid differs from image {case['image']}")
        try:
            if planar:  # IBSI 2D: texture by slice, planar shape features instead of 3D morphology
                image3d, mask3d = lift(image, mask)
                feats = extract(image3d, mask3d, run_cfg, label=s.label, diagnostics=diagnostics)
                feats.update(planar_features(image, mask.binary(s.label)))
            else:
                feats = extract(image, mask, cfg, label=s.label, diagnostics=diagnostics)
            if cfg.native_pet and not planar:
                feats.update(native_pet_features(image, mask.binary(s.label)))
        except Exception as exc:
            if errors is None:
                raise
            errors.append({"roi": s.name, "segment_number": "" if s.number is None else str(s.number),
                           "error": f"{type(exc).__name__}: {exc}"})
            continue
        row = dict(base)
        row.update(_structure_columns(s, case))
        row["image_units"] = image.units or ""
        row["config_name"] = cfg.name + (" (planar 2D)" if planar else "")
        row["config_hash"] = chash
        row["nmkit_version"] = __version__
        row.update({k: (float(v) if np.isscalar(v) else v) for k, v in feats.items()})
        for tag in ("morph_volume", "morph_vol_approx"):
            if tag in feats:
                row[f"{tag}_ml"] = float(feats[tag]) / 1000.0
        rows.append(row)
    return rows


def run_case(case: Mapping[str, Any], config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Extract one case with one structure and return its row; raises on failure or when the case has several."""
    rows = run_case_rows(case, config_dict)
    if len(rows) != 1:
        raise InputError(case.get("mask"), f"{len(rows)} ROIs in the mask ({[r['roi_name'] for r in rows]}); choose one with roi "
                                           "or use run_case_rows")
    return rows[0]


def _safe_run_case(case: Mapping[str, Any], config_dict: Mapping[str, Any], options: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """``run_case_rows`` for worker processes: ``{"rows": [...], "errors": [...]}`` or ``{"__error__": message}``.

    nmkit's exceptions take (path, problem) arguments and do not survive pickling back to the parent (which
    would break the whole pool), so the message is sent as text."""
    errors: list[dict[str, str]] = []
    try:
        return {"rows": run_case_rows(case, config_dict, errors, **dict(options or {})), "errors": errors}
    except Exception as exc:  # noqa: BLE001 - reported per case by the caller
        return {"__error__": f"{type(exc).__name__}: {exc}"}


def _unwrap(result: dict[str, Any]) -> dict[str, Any]:
    if "__error__" in result:
        raise RuntimeError(result["__error__"])
    return result


def read_cases(path: str | Path):
    """A case table (``nmkit.dataset.read_dataset``) with absolute paths; missing files fail their case at extraction
    (logged and skipped), not the whole cohort."""
    from ..dataset import read_dataset

    return read_dataset(path, require=("image",), check_files=False)


read_manifest = read_cases  # the name used before the dataset contract


# ----- catalog ------------------------------------------------------------------------------------------
CATALOG_COLUMNS = ("patient_id", "study_uid", "series_uid", "modality", "tracer", "series_description", "image", "mask",
                   "mask_format", "roi_series_uid", "roi", "suv", "reader")
def check_selector(cases, selector: str | None, where: Any) -> None:
    """Fail early, naming every structure found, when ``selector`` matches no structure of any RTSTRUCT/SEG of the
    cases (header reads only); a selector that matches in some files lets the others fail one by one."""
    from ..io.roi_select import select_rois

    if not _text(selector):
        return
    found: dict[str, int] = {}
    for masks in cases["masks"]:
        for ref in masks:
            if ref.kind not in ("rtstruct", "seg"):
                return
            try:
                names = _roi_numbers(ref.file, ref.kind)
            except Exception:  # noqa: BLE001 - a broken file fails its own case later
                continue
            try:
                if select_rois(names, selector, ref.file):
                    return
            except InputError:
                for name in names.values():
                    found[name] = found.get(name, 0) + 1
    listing = ", ".join(f"{n!r} ({k} file{'s' if k > 1 else ''})" for n, k in sorted(found.items()))
    raise InputError(where, f"--roi {selector!r} matches no structure in the cohort's ROI files; structures found: "
                            f"{listing or 'none'} (select by exact name, glob such as 'GTV*', or number)")


def cases_from_catalog(db: str | Path, modality: str | list[str] | None = None, roi: str | None = None,
                       suv: str | None = None, tracer: str | None = None, series_description: str | None = None,
                       **criteria: Any):
    """Cohort cases (a ``nmkit.dataset`` case table) from a catalog (``nmkit index``): one row per (image series,
    RTSTRUCT/SEG file referencing it).

    ``modality`` keeps those image modalities; ``tracer`` matches the radiopharmaceutical, its code meaning or the
    radionuclide (``Catalog.series``: FDG = fluorodeoxyglucose; a series without tracer information never matches,
    so a Lu-177 SPECT stored as PT stays out of an FDG run); ``series_description`` is a glob on the series
    description (case-insensitive, e.g. ``'*xSPECT*'``). ``roi`` is every row's structure selector
    (``nmkit.io.roi_select``); one that matches no structure of any ROI file fails at once, listing the structures
    found. ``suv`` ("bw"/"lbm") applies to PT series only. Other ``Catalog.series`` criteria (``patient``, ...) pass
    through. Raises ``InputError`` when nothing matches.
    """
    from ..catalog.manifest import manifest_from_catalog
    from ..catalog.query import Catalog
    from ..dataset import new_table

    if suv not in (None, "bw", "lbm"):
        raise InputError(db, f"suv must be 'bw', 'lbm' or None, got {suv!r}")
    if not Path(db).is_file():
        raise InputError(db, "catalog database does not exist (build it with `nmkit index`)")
    like = series_description.replace("*", "%").replace("?", "_") if series_description else None
    filters = {k: v for k, v in {"tracer": tracer, "description_like": like, **criteria}.items() if v}
    images = manifest_from_catalog(db, modality=modality, require_roi=True, blank_patient="skip", **filters)
    rows: list[dict[str, Any]] = []
    with Catalog(db) as cat:
        roi_series = {path: r.roi_series_uid for s in images.series_uid for r in cat.rois(s).itertuples(index=False)
                      for path in str(r.paths).split(";") if path}
        for image in images.to_dict(orient="records"):
            refs = [m for m in image["masks"] if m.kind in ("rtstruct", "seg")]
            for k, ref in enumerate(refs):  # one case per ROI file: each reader's file gets its own rows
                uid = roi_series.get(ref.file, "")
                same_series = [m for m in refs if roi_series.get(m.file, "") == uid]
                suffix = f":{same_series.index(ref)}" if len(same_series) > 1 else ""
                rows.append({**image, "case_id": f"{image['series_uid']}:{uid}{suffix}", "masks": [ref], "mask": ref.file,
                             "roi": roi or "", "reader": ref.reader or "", "suv": suv if suv and image["modality"] == "PT" else "",
                             "mask_format": ref.kind, "roi_series_uid": uid})
        if not rows:
            wanted = {k: v for k, v in {"modality": modality, "tracer": tracer, "series_description": series_description,
                                        **criteria}.items() if v}
            every = manifest_from_catalog(db, require_roi=True, blank_patient="skip")
            seen = sorted({f"{r.modality} {r.tracer or '(no tracer)'} {r.series_description!r}" for r in every.itertuples()})
            raise InputError(db, f"no image series with an RTSTRUCT/SEG referencing it matches {wanted}"
                                 + (f"; series with ROIs: {'; '.join(seen[:12])}" if seen else "; the catalog has no series with ROIs"))
    table = new_table(rows)
    check_selector(table, roi, db)
    return table


def _client(scheduler: str):
    from dask.distributed import Client, LocalCluster

    if scheduler == "dask-local":
        return Client(LocalCluster(processes=True, dashboard_address=None))
    return Client(scheduler)


def extract_cohort(cases, config: RadiomicsConfig, n_workers: int = 1, scheduler: str | None = None,
                   progress: bool = True, roi: str | None = None, diagnostics: bool = False,
                   partial: str | Path | None = None, restart: bool = False) -> CohortResult:
    """Features for every case of ``cases`` (case table path or DataFrame): one row per structure; bad cases are
    logged and skipped. ``roi``: a selector applied to every case on top of its own ``roi``; ``diagnostics``: add
    the IBSI diagnostic features.

    ``partial``: an append log (``radiomics.resume``, e.g. ``<out>.partial.jsonl``) where every finished case is
    written durably as it arrives; cases already in it (same case record, configuration and options) are taken from
    it and not recomputed, so a killed run resumes where it stopped. ``restart`` discards the log first.

    ``failures`` lists ``{"index", "image", "mask", "roi", "error"}``: ``roi`` is blank when the whole case
    failed (image or mask unreadable, ROI not found) and names the structure when only that one failed."""
    import pandas as pd
    from tqdm.auto import tqdm

    df = read_cases(cases) if isinstance(cases, (str, Path)) else cases
    all_records = df.to_dict(orient="records")
    cfg_dict = config.to_dict()
    options = {"roi": roi, "diagnostics": diagnostics}
    rows: dict[int, list[dict[str, Any]]] = {}
    failures: list[dict[str, str]] = []
    store, keys = _open_store(partial, restart, cfg_dict, all_records, options)
    todo = [i for i in range(len(all_records)) if store is None or keys[i] not in store.done]
    records = dict(enumerate(all_records))

    def fail(i: int, error: Any, roi: str = "") -> None:
        case = records[i]
        what = f"case {i} ROI {roi!r}" if roi else f"case {i}"
        log.warning("radiomics: skipping %s (%s): %s", what, case.get("image"), error)
        try:
            mask = ";".join(m.file for m in case_masks(case))
        except InputError:
            mask = str(case.get("mask") or "")
        failures.append({"index": str(i), "image": str(case.get("image")), "mask": mask, "roi": roi, "error": str(error)})

    def collect(i: int, result: dict[str, Any]) -> None:
        if store is not None:
            store.append(keys[i], i, result)
            result = store.done[keys[i]]  # the logged (JSON round-tripped) rows: resumed and fresh rows alike
        rows[i] = result["rows"]
        for err in result["errors"]:
            fail(i, err["error"], err["roi"])

    if store is not None:
        for i in range(len(all_records)):
            if keys[i] in store.done:
                _collect_logged(i, store.done[keys[i]], rows, fail)
        if len(todo) < len(all_records):
            log.info("radiomics: %d of %d cases taken from %s, %d to compute", len(all_records) - len(todo),
                     len(all_records), store.path, len(todo))
    bar = tqdm(total=len(todo), disable=None if progress else True, desc="radiomics", unit="case")  # None: only on a terminal
    try:
        _run_cases(todo, records, cfg_dict, options, n_workers, scheduler, collect, fail, bar)
    finally:
        bar.close()
        if store is not None:
            store.close()
    table = pd.DataFrame([row for i in sorted(rows) for row in rows[i]])
    failures.sort(key=lambda f: (int(f["index"]), f["roi"]))
    return CohortResult(table=table, failures=failures, resumed=len(all_records) - len(todo))


def _open_store(partial: str | Path | None, restart: bool, cfg_dict: Mapping[str, Any], records: list[dict[str, Any]],
                options: Mapping[str, Any]):
    """The partial store of a resumable run and every case's key (``(None, [])`` without one)."""
    if partial is None:
        return None, []
    from ..provenance import config_hash
    from .resume import PartialStore, case_key

    chash = config_hash(dict(cfg_dict))
    keys = [case_key(rec, chash, options) for rec in records]
    store = PartialStore(partial, chash)
    if restart:
        store.clear()
    store.open()  # locked for this run: a concurrent run on the same output fails at once
    return store, keys


def _collect_logged(i: int, logged: Mapping[str, Any], rows: dict[int, list[dict[str, Any]]], fail) -> None:
    """A case taken from the partial store: its rows, and its per-structure failures reported again."""
    rows[i] = logged["rows"]
    for err in logged["errors"]:
        fail(i, err["error"], err["roi"])


def _run_cases(todo: list[int], records: Mapping[int, dict[str, Any]], cfg_dict: dict[str, Any],
               options: dict[str, Any], n_workers: int, scheduler: str | None, collect, fail, bar) -> None:
    """Run the cases ``todo`` serially, in a local process pool or on Dask; ``collect``/``fail`` get each result."""
    if not todo:
        return
    if scheduler:
        client = _client(scheduler)
        try:
            futures = {client.submit(_safe_run_case, records[i], cfg_dict, options, pure=False): i for i in todo}
            from dask.distributed import as_completed as dask_completed

            for fut in dask_completed(list(futures)):
                i = futures[fut]
                try:
                    collect(i, _unwrap(fut.result()))
                except Exception as exc:  # noqa: BLE001 - a failing case must not stop the cohort
                    fail(i, exc)
                bar.update()
        finally:
            client.close()
    elif n_workers <= 1:
        for i in todo:
            errors: list[dict[str, str]] = []
            try:
                collect(i, {"rows": run_case_rows(records[i], cfg_dict, errors, **options), "errors": errors})
            except Exception as exc:  # noqa: BLE001
                fail(i, exc)
            bar.update()
    else:
        import multiprocessing

        # spawn, not fork: forking a parent whose SimpleITK/BLAS thread pools are running can crash the children
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_safe_run_case, records[i], cfg_dict, options): i for i in todo}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    collect(i, _unwrap(fut.result()))
                except Exception as exc:  # noqa: BLE001
                    fail(i, exc)
                bar.update()


def write_table(table, path: str | Path) -> Path:
    """CSV, or Parquet when the name ends in .parquet (needs pyarrow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise InputError(path, "writing Parquet needs pyarrow (pip install pyarrow) - or use a .csv name") from exc
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path
