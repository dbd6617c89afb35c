"""Per-structure, per-case evaluation tables: overlap + surface (+ optional lesion-wise) metrics on real spacing.

``evaluate_pair`` compares one predicted ``Mask`` with one true ``Mask`` on the same grid (spacing comes from the
masks; a ``GeometryError`` is raised when the grids differ) and returns one row per structure.
``evaluate_cases`` does that for many cases and returns a ``pandas.DataFrame``; cases that fail are logged and
skipped (their errors are kept in ``DataFrame.attrs["skipped"]``). ``pair_files`` matches NIfTI files of two
folders by name, for ``nmkit evaluate``; ``read_mask`` reads one with the label names of its sidecar
(``<stem>.labels.json``, see ``nmkit.io.roi.label_sidecar``), so rows say ``gtv`` rather than ``label_1``.

Distances carry their unit in the column name (``hd_mm``, ``hd95_mm``, ``assd_mm``, ``msd_*_mm``). A distance is
infinite when exactly one of prediction and truth is empty (no surface to measure to); ``summarise`` and
``summary_table`` average the finite values only and count the infinite and undefined ones, so that a mean HD95
over "the cases that had one" is never mistaken for a mean over all cases.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import GeometryError, InputError, NmkitError
from ..io.image import Mask
from .lesion import lesion_metrics
from .overlap import overlap_metrics
from .surface import surface_distances

log = logging.getLogger(__name__)


def _layer(mask: Mask, value: int) -> np.ndarray:
    """Boolean layer of label ``value`` (empty when the mask does not hold that label)."""
    if mask.overlapping:
        if value in mask.labels:
            return mask.binary(value)
        return np.zeros(mask.spatial_shape, bool)
    if mask.array.dtype == bool:
        return mask.array.copy() if value == 1 else np.zeros(mask.spatial_shape, bool)
    return mask.array == value


#: columns summarised by ``summarise`` / ``summary_table``, with their unit
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DISTANCE_COLUMNS = ("hd95_mm", "hd_mm", "assd_mm")
SUMMARY_COLUMNS = {"dice": "1", "iou": "1", "hd95_mm": "mm", "hd_mm": "mm", "assd_mm": "mm", "nsd": "1"}


def _is_default_name(value: int, name: str | None) -> bool:
    return name is None or name == f"label_{value}"


def _name(value: int, truth: Mask, pred: Mask) -> str:
    """The structure name: the truth's, else the prediction's, when either is a real name (not ``label_<v>``)."""
    t, p = truth.labels.get(value), pred.labels.get(value)
    if not _is_default_name(value, t):
        if not _is_default_name(value, p) and p != t:
            log.warning("label %d is %r in the truth and %r in the prediction; using the truth's name", value, t, p)
        return str(t)
    if not _is_default_name(value, p):
        return str(p)
    return f"label_{value}"


def _structures(truth: Mask, pred: Mask, labels: Mapping[int, str] | Sequence[int | str] | None) -> dict[int, str]:
    if labels is None:
        values = sorted({int(v) for v in pred.labels} | {int(v) for v in truth.labels})
        return {v: _name(v, truth, pred) for v in values}
    if isinstance(labels, Mapping):
        return {int(v): str(n) for v, n in labels.items()}
    out: dict[int, str] = {}
    for item in labels:
        if isinstance(item, str):
            value = truth.label_value(item) if item in truth.labels.values() else pred.label_value(item)
        else:
            value = int(item)
        out[value] = _name(value, truth, pred)
    return out


def evaluate_pair(pred: Mask, truth: Mask, labels: Mapping[int, str] | Sequence[int | str] | None = None,
                  tolerance_mm: float = 2.0, method: str = "surface-distance", percentile: float = 95.0,
                  lesions: bool = False, connectivity: int | None = None, lesion_match: str = "overlap",
                  lesion_threshold: float = 0.1, lesion_details: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Metrics per structure between a predicted and a true mask on the same grid.

    ``labels``: ``{value: name}``, or a list of values/names; default: every label of either mask.
    Each row holds ``structure``, ``label``, the overlap metrics (``overlap.overlap_metrics``), the surface
    metrics in mm (``hd_mm``, ``hd95_mm``, ``assd_mm``, ``msd_*_mm``; infinite when exactly one side is empty)
    and ``nsd`` at ``tolerance_mm``, ``missed``
    (truth present, prediction shares no voxel with it) and, with ``lesions=True``, the lesion-wise summary;
    ``lesion_details`` (a list) then receives one row per true and per predicted lesion.
    """
    if not isinstance(pred, Mask) or not isinstance(truth, Mask):
        raise TypeError("evaluate_pair takes two nmkit Mask objects")
    if not pred.same_grid(truth):
        raise GeometryError(f"prediction and truth are on different grids: prediction {pred.geometry()} vs truth {truth.geometry()}; "
                            "resample the prediction onto the truth first (nmkit.io.image.resample_to)")
    rows = []
    for value, name in _structures(truth, pred, labels).items():
        p, t = _layer(pred, value), _layer(truth, value)
        row: dict[str, Any] = {"structure": name, "label": value}
        row.update(overlap_metrics(p, t, truth.spacing))
        sd = surface_distances(p, t, truth.spacing, method=method)
        distances = sd.summary(tolerance_mm=tolerance_mm, percentile=percentile)
        row.update({(k if k == "nsd" else f"{k}_mm"): v for k, v in distances.items()})  # distances in mm
        row["missed"] = bool(t.any() and not (p & t).any())
        if lesions:
            result = lesion_metrics(p, t, truth.spacing, connectivity=connectivity, match=lesion_match, threshold=lesion_threshold)
            row.update(result.summary)
            if lesion_details is not None:
                for side, items in (("truth", result.truth_lesions), ("pred", result.pred_lesions)):
                    for item in items:
                        lesion_details.append({"structure": name, "label": value, "side": side,
                                               **{k: (";".join(map(str, v)) if isinstance(v, list) else v) for k, v in item.items()}})
        row["surface_method"] = method
        row["tolerance_mm"] = tolerance_mm
        # a truth without pixel spacing (PNG radiograph): the *_mm columns hold pixels (spacing 1), and say so
        row["distance_unit"] = "px" if truth.meta.get("spacing_assumed") else "mm"
        rows.append(row)
    return rows


CaseSource = tuple[str, Any, Any]


def _load(item: Any, reader: Callable[[Any], Mask]) -> Mask:
    return item if isinstance(item, Mask) else reader(item)


def read_mask(path: str | Path) -> Mask:
    """A NIfTI/NRRD label map with the names of its label sidecar (``<stem>.labels.json`` or ``<stem>.json``,
    ``{value: name}``), or ``label_<value>`` when there is none. A sidecar that is not a label-name file is
    logged and ignored (the metrics do not depend on names)."""
    from ..io.roi import label_sidecar, read_label_names
    from ..io.volume_files import read_label_map

    sidecar = label_sidecar(path)
    names: dict[int, str] = {}
    if sidecar is not None:
        try:
            names = read_label_names(sidecar)
        except InputError as exc:
            log.warning("label names of %s not used: %s", path, exc)
    mask = read_label_map(path)
    if Path(path).suffix.lower() in PICTURE_SUFFIXES:  # PNG/JPEG/TIFF carry no pixel spacing: distances in pixels
        mask.meta["spacing_assumed"] = True
    if names:
        mask.labels = {**{v: n for v, n in mask.labels.items() if v not in names}, **names}
        mask.labels = dict(sorted(mask.labels.items()))
    return mask


def evaluate_cases(cases: Iterable[CaseSource] | Mapping[str, tuple[Any, Any]], reader: Callable[[Any], Mask] | None = None,
                   resample: bool = False, **options: Any):
    """Evaluate many cases: ``cases`` yields ``(case_id, pred, truth)`` (Masks or file paths) or is a mapping
    ``case_id -> (pred, truth)``. Returns a DataFrame with one row per case and structure; keyword ``options`` go
    to :func:`evaluate_pair`. Bad cases (unreadable files, different grids) are logged and skipped and listed in
    ``df.attrs["skipped"]`` as ``{case: reason}``. ``resample=True`` puts a prediction that is on another grid onto
    the truth's grid first (nearest neighbour, physical space respected) and logs it, instead of skipping the case.
    """
    import pandas as pd

    if reader is None:
        reader = read_mask
    items = [(k, v[0], v[1]) for k, v in cases.items()] if isinstance(cases, Mapping) else list(cases)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for case_id, pred, truth in items:
        try:
            pm, tm = _load(pred, reader), _load(truth, reader)
            if resample and not pm.same_grid(tm):
                from ..io.image import resample_to

                log.info("case %s: resampling the prediction %s onto the truth grid %s", case_id, pm.geometry(), tm.geometry())
                pm = resample_to(pm, tm, interpolation="nearest")
            details: list[dict[str, Any]] | None = [] if options.get("lesion_details") is not None else None
            case_options = {**options, "lesion_details": details} if details is not None else options
            for row in evaluate_pair(pm, tm, **case_options):
                rows.append({"case": case_id, **row})
            if details is not None:
                options["lesion_details"].extend({"case": case_id, **d} for d in details)
        except (NmkitError, OSError, KeyError, ValueError) as exc:
            log.warning("skipping case %s: %s", case_id, exc)
            skipped[str(case_id)] = str(exc)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    return df


def _column_summary(values: Any) -> dict[str, Any]:
    """Mean/median over the finite values, with how many were finite, infinite and undefined (NaN)."""
    x = np.asarray(values, dtype=float)
    finite = x[np.isfinite(x)]
    return {"n_finite": int(finite.size), "n_infinite": int(np.isinf(x).sum()), "n_undefined": int(np.isnan(x).sum()),
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "median": float(np.median(finite)) if finite.size else float("nan")}


def summarise(df) -> dict[str, Any]:
    """Means/medians of the main metrics over all rows (finite values only), with ``<metric>_n_infinite`` /
    ``_n_undefined`` counts, the share of structures missed, and ``n_both_empty`` (rows where neither mask has
    the structure: Dice 1 and distances 0 by convention)."""
    if df.empty:
        return {"n_rows": 0}
    out: dict[str, Any] = {"n_cases": int(df["case"].nunique()) if "case" in df else 1, "n_rows": int(len(df))}
    truth_size, pred_size = _size_column(df, "truth"), _size_column(df, "pred")
    present = df[truth_size > 0]
    out["missed_share"] = float(present["missed"].mean()) if len(present) else float("nan")
    out["n_both_empty"] = int(((truth_size == 0) & (pred_size == 0)).sum())
    for col in SUMMARY_COLUMNS:
        if col in df:
            s = _column_summary(df[col])
            out[f"{col}_mean"], out[f"{col}_median"] = s["mean"], s["median"]
            out[f"{col}_n_finite"], out[f"{col}_n_infinite"], out[f"{col}_n_undefined"] = s["n_finite"], s["n_infinite"], s["n_undefined"]
    out["distance_unit"] = distance_unit(df)
    return out


def _size_column(df, side: str):
    """The structure's size on one side (``truth``/``pred``) per row: its volume (3D rows) or area (2D rows)."""
    import pandas as pd

    size = pd.Series(np.nan, index=df.index)
    for col in (f"volume_{side}_ml", f"area_{side}_mm2"):
        if col in df:
            size = size.fillna(df[col])
    return size


def distance_unit(*tables) -> str:
    """The unit of the distance columns of these evaluation rows (one or several tables; a table without a
    ``distance_unit`` column is in mm): mm, px (no pixel spacing) or mixed."""
    units = set().union(*(set(df["distance_unit"]) if "distance_unit" in df else {"mm"} for df in tables))
    return units.pop() if len(units) == 1 else "mixed mm/px (see distance_unit)"


def summary_table(df):
    """Long summary, one row per (structure, metric) plus ``structure == "all"``: unit, rows, finite / infinite /
    undefined counts, and mean / median of the finite values (the file behind ``nmkit evaluate``'s summary)."""
    import pandas as pd

    rows = []
    if df.empty:
        return pd.DataFrame(columns=["structure", "metric", "unit", "n_rows", "n_finite", "n_infinite", "n_undefined",
                                     "mean_of_finite", "median_of_finite"])
    groups = [("all", df)] + [(str(name), grp) for name, grp in df.groupby("structure", sort=True)]
    for name, grp in groups:
        for col, unit in SUMMARY_COLUMNS.items():
            if col not in grp:
                continue
            s = _column_summary(grp[col])
            if col in DISTANCE_COLUMNS:
                unit = distance_unit(grp)
            rows.append({"structure": name, "metric": col, "unit": unit, "n_rows": int(len(grp)),
                         "n_finite": s["n_finite"], "n_infinite": s["n_infinite"], "n_undefined": s["n_undefined"],
                         "mean_of_finite": s["mean"], "median_of_finite": s["median"]})
    return pd.DataFrame(rows)


def pair_files(pred: str | Path, truth: str | Path) -> list[tuple[str, Path, Path]]:
    """Match prediction and truth volume files by name.

    Each argument is a file or a folder. Two folders: files with the same name (case ids = name without the
    volume suffix); unmatched files are logged. Two files: one pair.
    """
    from ..io.volume_files import VOLUME_SUFFIXES, is_volume_file

    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise InputError(p, "does not exist")

    def case_id(path: Path) -> str:
        name = path.name
        for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    if pred.is_file() and truth.is_file():
        for p, option in ((pred, "--pred"), (truth, "--truth")):
            if not is_volume_file(p):  # e.g. a PNG: no voxel spacing, so no distance in mm
                raise InputError(p, f"{option} is not a label-map volume ({', '.join(VOLUME_SUFFIXES)}); "
                                    "surface distances need the voxel spacing these formats carry")
        return [(case_id(truth), pred, truth)]
    if pred.is_file() != truth.is_file():
        raise InputError(pred if pred.is_file() else truth, "give two files or two folders (--pred and --truth)")
    preds = {case_id(p): p for p in sorted(pred.iterdir()) if p.is_file() and is_volume_file(p)}
    truths = {case_id(p): p for p in sorted(truth.iterdir()) if p.is_file() and is_volume_file(p)}
    for missing in sorted(set(truths) - set(preds)):
        log.warning("no prediction for truth case %s (%s)", missing, truths[missing])
    for extra in sorted(set(preds) - set(truths)):
        log.warning("no truth for prediction %s (%s)", extra, preds[extra])
    pairs = [(c, preds[c], truths[c]) for c in sorted(set(preds) & set(truths))]
    if not pairs:
        raise InputError(truth, f"no file names in common with {pred}")
    return pairs


# ----- case tables (nmkit.dataset) ---------------------------------------------------------------------------------
def is_case_table(path: str | Path) -> bool:
    """A CSV/JSON file (a case table), as opposed to a label-map file or a folder of them."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in (".csv", ".json")


def _row_keys(row: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """How rows of two tables find each other, strongest first: the series UID, the image file, the case id, then
    patient + modality + time point (which two images of one patient share when neither has a time point: such a key
    is only used when it names one row)."""
    keys: list[tuple[str, ...]] = []
    series = str(row.get("series_uid") or "").strip()
    if series:
        keys.append(("series", series))
    image = str(row.get("image") or "").strip()
    if image:
        keys.append(("image", str(Path(image).resolve())))
    case = str(row.get("case_id") or "").strip()
    if case:
        keys.append(("case", case))
    keys.append(("patient", str(row.get("patient_id") or ""), str(row.get("modality") or "").upper(),
                 str(row.get("time_point") or "")))
    return keys


def mask_of_ref(ref: Any) -> Mask:
    """One structure of a case table's mask reference as a one-label mask ``{1: structure name}``."""
    from ..io.image import Mask as MaskType

    if ref.kind != "labelmap":
        raise InputError(ref.file, f"is a {ref.kind.upper()}; convert it to label maps first with `nmkit roi2mask`")
    mask = read_mask(ref.file)
    if ref.label is not None:
        layer = mask.binary(ref.label)
        default = mask.labels.get(ref.label, f"label_{ref.label}")
    else:
        layer = mask.binary()
        default = ",".join(mask.labels.values()) or "foreground"
    name = ref.structure or default
    out = MaskType.like(mask, layer.astype(np.uint8), labels={1: name})
    if mask.meta.get("spacing_assumed"):
        out.meta["spacing_assumed"] = True
    return out


def pair_case_tables(pred: str | Path, truth: str | Path, pred_roi: str | None = None,
                     truth_roi: str | None = None) -> list[tuple[str, Any, Any]]:
    """Pairs ``(case, pred MaskRef, truth MaskRef)`` from two case tables (``nmkit.dataset``).

    Rows match by series UID, else image file, else case id, else patient, modality and time point (when unique). Within a row pair, the truth's masks
    (``truth_roi`` selects structures by number, glob or name) meet the prediction's masks of the same structure
    name; when each side has a single mask (after selection), those two meet whatever their names."""
    from ..dataset import read_dataset
    from ..io.roi_select import select_rois

    tables = {}
    for option, path in (("--pred", pred), ("--truth", truth)):
        tables[option] = read_dataset(path, need_masks=True)
    by_key: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in tables["--pred"].to_dict(orient="records"):
        for key in _row_keys(row):
            by_key.setdefault(key, []).append(row)
    preds = {k: rows[0] for k, rows in by_key.items() if len(rows) == 1}  # a key naming two rows identifies neither

    def chosen(refs: list, selector: str | None, where: Any) -> list:
        if not selector:
            return list(refs)
        names = {i: (r.structure or Path(r.file).name) for i, r in enumerate(refs, start=1)}
        return [refs[i - 1] for i in select_rois(names, selector, where)]

    pairs: list[tuple[str, Any, Any]] = []
    unmatched: list[str] = []
    for row in tables["--truth"].to_dict(orient="records"):
        other = next((preds[k] for k in _row_keys(row) if k in preds), None)
        if other is None:
            log.info("no prediction row for truth case %s (%s)", row["case_id"], row["image"])
            unmatched.append(str(row["case_id"]))
            continue
        truth_refs = chosen(row["masks"], truth_roi, truth)
        pred_refs = chosen(other["masks"], pred_roi, pred)
        if len(truth_refs) == 1 and len(pred_refs) == 1:
            pairs.append((str(row["case_id"]), pred_refs[0], truth_refs[0]))
            continue
        by_name = {(r.structure or "").lower(): r for r in pred_refs}
        for ref in truth_refs:
            match = by_name.get((ref.structure or "").lower())
            if match is None:
                log.warning("case %s: no predicted structure %r", row["case_id"], ref.structure)
                continue
            pairs.append((f"{row['case_id']}:{ref.structure}", match, ref))
    if not pairs:
        raise InputError(truth, f"no case of {truth} pairs with a case of {pred} (rows match by series UID, else image "
                                "file, case id, or patient, modality and time point; structures by name: use --truth-roi/--pred-roi)")
    if unmatched:  # e.g. the truth table holds every split and the predictions only its test split: one line, not one per case
        log.warning("%d truth case(s) have no prediction row and are not evaluated (%s%s; -v lists them)", len(unmatched),
                    ", ".join(unmatched[:3]), ", ..." if len(unmatched) > 3 else "")
    return pairs


def read_mask_or_ref(item: Any) -> Mask:
    """The reader ``evaluate_cases`` needs for files and case-table mask references alike."""
    if hasattr(item, "kind") and hasattr(item, "file"):
        return mask_of_ref(item)
    return read_mask(item)
