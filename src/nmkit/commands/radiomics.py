"""`nmkit radiomics`: IBSI-1 features for one image + mask, or for a cohort from a case table or a DICOM catalog.

Examples::

    nmkit radiomics --image ct.nii.gz --mask gtv.nii.gz --preset ibsi-c --out features.csv
    nmkit radiomics --image ct_dicom/ --mask rtstruct.dcm --roi 'GTV*' --preset ibsi-c --out features.csv
    nmkit radiomics --manifest dataset.csv --config my.yaml --workers 4 --out cohort.csv
    nmkit radiomics --catalog archive.sqlite --modality PT --tracer FDG --roi 'GTV*' --suv bw --preset lifex-pet \\
        --per-patient --out pet.csv

Cohorts: ``--manifest`` takes a case table (``nmkit.dataset``, schema nmkit-dataset/1, e.g. written by ``nmkit
manifest`` or ``nmkit roi2mask``); ``--catalog`` a catalog built by ``nmkit index``, one case per image series and
RTSTRUCT/SEG referencing it, filtered by ``--modality``, ``--tracer`` (radiopharmaceutical or radionuclide; series
without tracer information never match) and ``--series-description`` (glob).

ROIs: every structure of an RTSTRUCT/SEG gets its own row, told apart by ``segment_number`` (ROI/segment number),
``structure`` and ``label_value``. ``--roi`` (and a case table's ``roi`` column) selects structures by number
(``3``), glob (``'GTV*'``, quote it) or name (exact, else case-insensitive; a repeated name selects all); a selector
that matches nothing stops with the structures found listed.

PET presets (lifex-pet, pet-native) add the clinical numbers on the PET's own grid, before any resampling:
native_suv_max, native_suv_mean, native_suv_peak (1 cm^3 sphere, voxel-centred), mtv_ml and tlg_g; the IBSI stat_*
features are those of the processed grid (lifex-pet: 2 mm resampled; pet-native: no resampling, no texture).
``--per-patient`` also writes one row per patient and scan (patient SUVmax, SUVpeak, total MTV ml, total TLG g,
lesion count) to ``<out stem>.patients.csv``.

Units: ``<out>.units.json`` gives the unit of every numeric column (``"1"`` = dimensionless; morphology in mm/mm^2/
mm^3 as IBSI defines it, with ``morph_volume_ml`` next to ``morph_volume``; intensities in the image's units, the
``image_units`` column). The long format (``--format long``) has a ``unit`` column. ``--diagnostics`` adds the IBSI
diagnostic features (image and ROI dimensions, voxel counts and intensities before and after resampling and
re-segmentation). A provenance JSON (config, hash, inputs, selection, failures, nmkit version) is written as
``<out>.provenance.json``. Failing cases are logged and skipped; the exit status is 1 only when nothing worked.

Resuming: a cohort run appends every finished case to ``<out>.partial.jsonl`` (flushed to disk case by case). Run the
same command again after a crash or kill and only the cases not yet logged are computed (with the same config,
options and case record; changed cases are recomputed, failed cases retried); the table equals an uninterrupted
run's. The log is kept after the run; ``--restart`` discards it, ``--no-resume`` writes none.
"""

from __future__ import annotations

import argparse

#: per-row columns that describe the case or the structure, not features
META_COLUMNS = ("segment_number", "structure", "roi_name", "label_value", "mask", "mask_file", "mask_kind", "mask_format",
                "roi_series_uid", "reader", "image_units", "config_name", "config_hash", "nmkit_version")


def register(subparsers) -> None:
    p = subparsers.add_parser("radiomics", help="IBSI radiomics features and PET numbers (single case, case table or DICOM catalog)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file (NIfTI/NRRD) or DICOM series folder")
    src.add_argument("--manifest", "--dataset", dest="manifest", metavar="TABLE",
                     help="case table (nmkit-dataset/1 CSV/JSON from `nmkit manifest` or `nmkit roi2mask`)")
    src.add_argument("--catalog", metavar="DB", help="catalog database from `nmkit index`: every image series with an RTSTRUCT/SEG")
    p.add_argument("--mask", help="label map, DICOM RTSTRUCT/SEG or nmkit-polygons/1 JSON (with --image)")
    p.add_argument("--roi", help="structure selector: number (ROI/segment number, label value), glob ('GTV*') or name "
                                 "(exact, else case-insensitive). Default: every structure (label maps: any foreground)")
    p.add_argument("--modality", action="append", help="with --catalog: image modality to keep (CT, PT, MR, NM; repeatable)")
    p.add_argument("--tracer", help="with --catalog: radiopharmaceutical or radionuclide (FDG, PSMA, DOTATATE, Lu-177, ...)")
    p.add_argument("--series-description", metavar="GLOB", help="with --catalog: series description glob, case-insensitive ('*AC*')")
    cfg = p.add_mutually_exclusive_group()
    cfg.add_argument("--preset", help="shipped preset: ibsi-a..ibsi-e, ibsi-digital-phantom, ibsi2-2d, ibsi2-3d, lifex-pet, pet-native, "
                          "relative-64 (default: ibsi-c for CT or unknown modality, relative-64 for NM/PT/MR/radiographs)")
    cfg.add_argument("--config", help="YAML config file (may start from a preset with 'base: ibsi-c')")
    p.add_argument("--suv", choices=["bw", "lbm"], help="convert DICOM PET images to SUV (other modalities are left as they are)")
    p.add_argument("--format", choices=["wide", "long"], default="wide",
                   help="wide: one row per structure; long: one row per structure and feature, with its unit")
    p.add_argument("--diagnostics", action="store_true", help="add the IBSI diagnostic features")
    p.add_argument("--per-patient", nargs="?", const="", default=None, metavar="CSV",
                   help="also write the per-patient PET summary (default <out stem>.patients.csv; needs a PET preset)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes for a case table or catalog")
    p.add_argument("--scheduler", help="Dask scheduler address, or 'dask-local' for a LocalCluster")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--restart", action="store_true",
                   help="cohorts: discard <out>.partial.jsonl (the log of finished cases) and compute every case again")
    p.add_argument("--no-resume", action="store_true",
                   help="cohorts: keep no log of finished cases (by default a re-run computes only the cases not yet logged)")
    p.add_argument("--out", required=True, help="output table (.csv, or .parquet with pyarrow)")
    p.set_defaults(func=run)


def feature_columns(table, case_columns) -> list[str]:
    """The feature columns of a result table: numeric columns that are neither case nor structure metadata."""
    from ..dataset import COLUMNS

    skip = set(META_COLUMNS) | set(COLUMNS) | set(case_columns)
    return [c for c in table.columns if c not in skip and table[c].dtype.kind in "fiub"]


def _image_unit(table) -> str:
    """The one image unit of the table's rows ("image units ..." when unknown or mixed)."""
    units = sorted({str(u) for u in table.get("image_units", []) if str(u) not in ("", "nan", "None")})
    if len(units) == 1 and (table["image_units"].astype(str).isin(units)).all():
        return units[0]
    return "image units (see column image_units)" if units else "image units (not stated by the image file)"


def units_table(table, features: list[str], filter_spec=None) -> dict:
    """The ``<out>.units.json`` content: scheme, the image units, and ``{column: unit}`` for every numeric column.

    With an IBSI-2 filter the IBSI features describe the response map, whose unit ``filters.response_unit`` gives
    (e.g. ``g/ml per voxel^2`` after a LoG); the native-grid PET numbers stay in the image's unit."""
    from ..radiomics.filters import response_unit
    from ..radiomics.names import units_for

    unit = _image_unit(table)
    response = response_unit(filter_spec, unit) if filter_spec is not None else unit
    native = [f for f in features if f.startswith("native_") or f in ("mtv_ml", "tlg_g", "tla")]
    columns = {**units_for([f for f in features if f not in native], response), **units_for(native, unit)}
    return {"scheme": "nmkit-units/1", "note": "unit of every numeric column; '1' = dimensionless; grey level = bin number "
            "after discretisation", "image_units": unit, "response_units": response,
            "columns": {f: columns[f] for f in features if f in columns}}


def _long(table, features: list[str]):
    """One row per structure and feature, with IBSI name/code and unit."""
    import pandas as pd

    from ..radiomics.names import describe, feature_unit

    ids = [c for c in table.columns if c not in features]
    melted = table.melt(id_vars=ids, value_vars=features, var_name="feature", value_name="value")
    info = {f: describe(f) for f in features}
    melted["ibsi_name"] = [info[f]["name"] for f in melted.feature]
    melted["ibsi_code"] = [info[f]["code"] for f in melted.feature]
    melted["family"] = [info[f]["family"] for f in melted.feature]
    melted["pyradiomics"] = [info[f]["pyradiomics"] for f in melted.feature]
    units = melted["image_units"].astype(str) if "image_units" in melted else pd.Series([""] * len(melted))
    melted["unit"] = [feature_unit(f, u if u not in ("", "nan", "None") else "image units") for f, u in zip(melted.feature, units)]
    return melted


def per_patient(table):
    """One row per patient, scan and reader: lesion count, patient SUVmax/SUVpeak (highest over its ROIs), total MTV
    (ml) and total TLG (g). Sums run over the selected ROIs: overlapping ROIs (a GTV and a lesion inside it) count
    twice, so select the lesions with --roi."""
    import pandas as pd

    from ..errors import InputError

    suv = "native_suv_max" in table.columns
    prefix = "native_suv_" if suv else "native_"
    if f"{prefix}max" not in table.columns:
        raise InputError(None, "--per-patient needs the native PET numbers: use a PET preset (--preset lifex-pet) or "
                               "'native_pet: true' in the config")
    total = "tlg_g" if suv else "tla"
    keys = [k for k in ("patient_id", "image", "reader") if k in table.columns]
    table = table.assign(**{k: table[k].fillna("") for k in keys})
    extra = [c for c in ("study_uid", "series_uid", "study_date", "time_point", "tracer", "series_description", "image_units")
             if c in table.columns]
    rows = []
    for key, group in table.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update({c: group[c].iloc[0] for c in extra})
        row.update({"lesion_count": int(len(group)), f"patient_{prefix.removeprefix('native_')}max": float(group[f"{prefix}max"].max()),
                    f"patient_{prefix.removeprefix('native_')}peak": float(group[f"{prefix}peak"].max()),
                    "total_mtv_ml": float(group["mtv_ml"].sum()), f"total_{total}": float(group[total].sum()),
                    "structures": ";".join(f"{n}#{s}" if pd.notna(s) else str(n) for n, s in zip(group["structure"], group["segment_number"]))})
        rows.append(row)
    return pd.DataFrame(rows)


def _patient_units(summary, unit: str) -> dict:
    import pandas as pd

    u = "g/ml (SUVbw)" if unit in ("g/ml", "image units") and "patient_suv_max" in summary else unit
    cols = {"lesion_count": "1", "total_mtv_ml": "ml", "total_tlg_g": "g", "total_tla": f"{unit} x ml"}
    cols.update({c: u for c in summary.columns if c.startswith("patient_") and c != "patient_id"
                 and pd.api.types.is_numeric_dtype(summary[c])})
    return {"scheme": "nmkit-units/1", "image_units": unit, "columns": {c: v for c, v in cols.items() if c in summary}}


def _checked_config(config, args):
    from ..errors import InputError

    if args.per_patient is not None and not config.native_pet:
        raise InputError(None, f"--per-patient needs the native PET numbers, which config {config.name!r} does not compute: "
                               "use --preset lifex-pet or 'native_pet: true' in the config")
    return config


def _default_config(modalities: set[str], args, where=None):
    """The preset for the input's modalities when the user names none (radiomics.presets.default_preset), said once."""
    import logging

    from ..radiomics.presets import default_preset, load_config

    name = default_preset({m for m in modalities if m}, where)
    hint = " (for PET in SUV, --preset lifex-pet)" if "PT" in {m.upper() for m in modalities if m} else ""
    logging.getLogger(__name__).warning("no --preset or --config: using %s for modality %s%s", name,
                                        "/".join(sorted(m for m in modalities if m)) or "unknown", hint)
    return _checked_config(load_config(name), args)


def _header_modality(path: str) -> str:
    """The Modality of a DICOM image file or folder's first file ("" for NIfTI/NRRD/PNG or when unreadable)."""
    from pathlib import Path

    from ..io.dicom_series import iter_dicom_files, read_header

    p = Path(path)
    if not p.exists() or p.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff")):
        return ""
    try:
        first = next(iter(iter_dicom_files(p)), None) if p.is_dir() else p
        return str(read_header(first).get("Modality", "") or "") if first is not None else ""
    except Exception:  # noqa: BLE001 - not DICOM: the reader says why later
        return ""


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..provenance import provenance
    from ..radiomics.cohort import cases_from_catalog, check_selector, extract_cohort, read_cases, run_case_rows, write_table
    from ..radiomics.presets import load_config

    for option, value in (("--modality", args.modality), ("--tracer", args.tracer), ("--series-description", args.series_description)):
        if value and not args.catalog:
            raise InputError(None, f"{option} filters a catalog: use it with --catalog")
    if args.mask and not args.image:
        raise InputError(None, "--mask goes with --image (a case table or catalog names its own masks)")
    if args.workers < 1:
        raise InputError(None, f"--workers must be >= 1, got {args.workers}")
    if args.config or args.preset:
        config = _checked_config(load_config(args.config or args.preset), args)
    out = Path(args.out)
    failures: list = []
    selection: dict = {}
    resumed = 0
    if args.image:
        if not args.mask:
            raise InputError(None, "--mask is required with --image")
        case = {"image": args.image, "mask": args.mask, "suv": args.suv}
        if not (args.config or args.preset):
            config = _default_config({_header_modality(args.image)}, args)
        table = pd.DataFrame(run_case_rows(case, config.to_dict(), roi=args.roi, diagnostics=args.diagnostics))
        case_columns = list(case)
        inputs = [args.image, args.mask]
    else:
        if args.catalog:
            cases = cases_from_catalog(args.catalog, modality=args.modality, roi=args.roi, suv=args.suv, tracer=args.tracer,
                                       series_description=args.series_description)
            inputs = [args.catalog]
            selection = {"catalog": args.catalog, "modality": args.modality, "tracer": args.tracer,
                         "series_description": args.series_description, "roi": args.roi, "suv": args.suv, "cases": int(len(cases))}
            roi = None  # already every case's roi
        else:
            cases = read_cases(args.manifest)
            check_selector(cases, args.roi, args.manifest)
            if args.suv:
                cases["suv"] = [s or args.suv for s in cases["suv"]]
            inputs = [args.manifest]
            roi = args.roi
        from ..radiomics.resume import partial_path

        if not (args.config or args.preset):
            known = {str(m) for m in cases.get("modality", []) if str(m) not in ("", "nan", "None")}
            config = _default_config(known, args, args.manifest or args.catalog)
        result = extract_cohort(cases, config, n_workers=args.workers, scheduler=args.scheduler,
                                progress=not args.no_progress, roi=roi, diagnostics=args.diagnostics,
                                partial=None if args.no_resume else partial_path(out), restart=args.restart)
        table, failures = result.table, result.failures  # each failure was logged once by extract_cohort
        resumed = result.resumed
        if resumed:
            print(f"{result.resumed} of {len(cases)} case(s) taken from {partial_path(out)} (finished by an earlier run)")
        case_columns = [c for c in cases.columns if c != "masks"]
    if not len(table):
        table = pd.DataFrame(columns=["patient_id", "image", "segment_number", "structure", "label_value", "mask_file"])
    features = feature_columns(table, case_columns) if len(table) else []
    units = units_table(table, features, getattr(config, "filter", None)) if len(table) else {"scheme": "nmkit-units/1", "columns": {}}
    write_table(_long(table, features) if args.format == "long" and len(table) else table, out)
    Path(str(out) + ".units.json").write_text(json.dumps(units, indent=1))
    extra_out = ""
    if args.per_patient is not None and len(table):
        summary = per_patient(table)
        target = Path(args.per_patient) if args.per_patient else out.with_name(out.name.split(".")[0] + ".patients.csv")
        write_table(summary, target)
        Path(str(target) + ".units.json").write_text(json.dumps(_patient_units(summary, units["image_units"]), indent=1))
        extra_out = f"; {len(summary)} patient/scan row(s) to {target}"
    prov = provenance(config.to_dict(), inputs, n_rows=int(len(table)), failures=failures,
                      **({"selection": selection} if selection else {}), **({"resumed_cases": resumed} if resumed else {}))
    Path(str(out) + ".provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    print(f"wrote {len(table)} row(s) to {out}{extra_out}" + (f"; {len(failures)} case(s) failed (see log)" if failures else ""))
    return 0 if not failures or len(table) else 1
