"""Cohort generator: many simulated thyroid scans with truth and several simulated readers' ROIs.

Why: learning-curve studies, inter-reader analyses, catalog/server tests and demos need thousands of
realistic, reproducible cases. Each case's random stream is derived from ``(seed, case index)`` only
(``numpy.random.SeedSequence``), so the output is byte-identical whatever the number of workers or the order in
which cases finish; UIDs and dates are derived from the seed too.

Layout written under ``out``::

    dicom/<case>/ANT.dcm             NM Image Storage, one patient/study/series per case
    truth/<case>.json                every simulation parameter (pathology, lobes, nodules with hot/cold ...)
    truth/<case>_gland.nii.gz        gland (lobes + isthmus + nodules), uint8 0/1
    truth/<case>_lobes.nii.gz        1 right lobe, 2 left lobe, 3 isthmus
    truth/<case>_nodules.nii.gz      k = nodule_k (0 = none)
    rois/<reader>/<case>.json        nmkit-polygons/1, pixel coordinates, "image" relative to ``out``
    masks/<reader>/<case>.nii.gz     the reader's polygons rasterised: 1 thyroid, 1+k nodule_k
    cases.csv                        one row per case (ids, pathology, isotope, counts, files)
    dataset.csv                      the case table (``nmkit.dataset``): image, truth gland mask, mask_<reader> columns
    readers.json, provenance.json    reader habits; how the cohort was made

Masks are 2D NIfTI on the DICOM pixel grid (spacing from PixelSpacing, origin 0, identity direction; see
:func:`nmkit.phantoms.nm_dicom.planar_image_geometry`).

CLI: ``nmkit phantom thyroid`` (:func:`register_phantom`; it lives here, above the simulator, so that
``phantoms.thyroid`` imports nothing from the cohort layer).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .thyroid import COLLIMATORS, ISOTOPES  # the simulator's tables: the CLI validates --isotope/--collimator on them

log = logging.getLogger(__name__)

#: pathology mix of a thyroid clinic referral population (rounded)
PATHOLOGY_MIX = {"normal": 0.30, "graves": 0.15, "multinodular_goitre": 0.20, "hot_nodule": 0.10,
                 "cold_nodules": 0.15, "thyroiditis": 0.10}
ISOTOPE_MIX = {"Tc99m": 0.70, "I123": 0.20, "I131": 0.10}
#: diagnostic administered activity ranges (MBq)
ACTIVITY_MBQ = {"Tc99m": (74.0, 185.0), "I123": (7.4, 20.0), "I131": (1.0, 4.0)}
COUNT_RANGE = (50_000, 500_000)
CSV_FIELDS = ["case", "patient_id", "study_uid", "series_uid", "acquisition_datetime", "pathology", "isotope", "collimator", "counts_requested", "counts_recorded",
              "n_nodules", "isthmus", "seed", "case_index", "dicom", "truth_json", "truth_gland", "truth_lobes",
              "truth_nodules", "rois", "masks", "status"]


def case_name(index: int) -> str:
    return f"case{index:05d}"


def case_plan(seed: int, index: int, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The clinical facts of case ``index`` (pathology, isotope, collimator, counts, patient), from (seed, index).

    ``overrides`` (``isotope``, ``collimator``, ``total_counts``) replace the drawn values; every draw is still
    made, so the rest of the plan (patient, dates, pathology) is the same as without them."""
    fixed = dict(overrides or {})
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]).spawn(1)[0])
    pathology = str(rng.choice(list(PATHOLOGY_MIX), p=list(PATHOLOGY_MIX.values())))
    isotope = str(rng.choice(list(ISOTOPE_MIX), p=list(ISOTOPE_MIX.values())))
    isotope = str(fixed.get("isotope") or isotope)
    collimator = "pinhole" if rng.random() < 0.6 else "parallel"
    collimator = str(fixed.get("collimator") or collimator)
    counts = int(round(math.exp(rng.uniform(math.log(COUNT_RANGE[0]), math.log(COUNT_RANGE[1]))), -2))
    counts = int(fixed.get("total_counts") or counts)
    sex = "F" if rng.random() < 0.75 else "M"  # thyroid disease is ~3-4x more common in women
    age = int(rng.integers(18, 86))
    day = _dt.datetime(2024, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 730)))
    acq = day.replace(hour=int(rng.integers(8, 16)), minute=int(rng.integers(0, 60)), second=int(rng.integers(0, 60)))
    # uptake time: pertechnetate 20 min, iodine 4 h (I-123) or 24 h (I-131)
    uptake = {"Tc99m": _dt.timedelta(minutes=20), "I123": _dt.timedelta(hours=4), "I131": _dt.timedelta(hours=24)}[isotope]
    lo, hi = ACTIVITY_MBQ[isotope]
    rate_cps = rng.uniform(300, 1500) if collimator == "pinhole" else rng.uniform(800, 3000)
    return dict(pathology=pathology, isotope=isotope, collimator=collimator, total_counts=counts, sex=sex,
                birth_date=f"{acq.year - age}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
                acquisition_datetime=acq, injection_datetime=acq - uptake, activity_mbq=round(float(rng.uniform(lo, hi)), 1),
                frame_duration_ms=int(round(counts / rate_cps * 1000)))


def _write_mask(array: np.ndarray, geometry: dict[str, Any], path: Path) -> None:
    from ..io.image import Mask
    from ..io.volume_files import write_volume

    mask = Mask(array=array.astype(np.uint8), spacing=geometry["spacing"], origin=geometry["origin"],
                direction=geometry["direction"], modality="SEG", labels={1: "roi"})
    write_volume(mask, path)


def simulate_case(seed: int, index: int, n_readers: int = 3, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Any, list[tuple[Any, list[dict[str, Any]]]]]:
    """In memory: (plan, :class:`~nmkit.phantoms.thyroid.ThyroidCase`, [(reader style, rois), ...]) of one case.

    Streams: ``SeedSequence([seed, index]).spawn(2 + n_readers)`` -> plan, simulation, one per reader.
    """
    from .readers import default_readers, read_case
    from .thyroid import simulate_thyroid

    plan = case_plan(seed, index, overrides)
    streams = np.random.SeedSequence([seed, index]).spawn(2 + n_readers)
    case = simulate_thyroid(np.random.default_rng(streams[1]), plan["pathology"], plan["isotope"], plan["collimator"],
                            plan["total_counts"])
    reads = [(style, read_case(case.counts, case.spacing[0], case.params, style, np.random.default_rng(stream)))
             for style, stream in zip(default_readers(n_readers), streams[2:])]
    return plan, case, reads


def make_case(out: str | Path, seed: int, index: int, n_readers: int = 3, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Simulate, write and read one case; returns its ``cases.csv`` row (``status`` 'ok' or the error)."""
    from .nm_dicom import deterministic_uid, planar_image_geometry, write_nm_planar
    from .readers import label_map, polygon_document, rois_to_masks

    out = Path(out)
    name = case_name(index)
    plan, case, reads = simulate_case(seed, index, n_readers, overrides)
    patient_id = f"THY{seed}-{index:05d}"
    info = dict(patient_name=f"Phantom^Thyroid{index:05d}", patient_id=patient_id, sex=plan["sex"],
                birth_date=plan["birth_date"], study_uid=deterministic_uid(seed, index, "study"),
                series_uid=deterministic_uid(seed, index, "series"), sop_uid=deterministic_uid(seed, index, "sop"),
                frame_of_reference_uid=deterministic_uid(seed, index, "frame-of-reference"),
                acquisition_datetime=plan["acquisition_datetime"], injection_datetime=plan["injection_datetime"],
                activity_mbq=plan["activity_mbq"], frame_duration_ms=plan["frame_duration_ms"],
                accession=f"A{seed}{index:06d}", study_id=str(index))
    dicom_rel = f"dicom/{name}/ANT.dcm"
    dcm = write_nm_planar(case.counts, out / dicom_rel, case.params, info)
    geometry = planar_image_geometry(dcm)

    truth_json = out / "truth" / f"{name}.json"
    truth_json.parent.mkdir(parents=True, exist_ok=True)
    truth_json.write_text(json.dumps({"case": name, "seed": seed, "case_index": index, "dicom": dicom_rel,
                                      "plan": {k: (v.isoformat() if isinstance(v, _dt.datetime) else v) for k, v in plan.items()},
                                      "params": case.params}, indent=1, sort_keys=True))
    lobes = np.zeros(case.counts.shape, np.uint8)
    lobes[case.truth["lobe_right"]] = 1
    lobes[case.truth["lobe_left"]] = 2
    lobes[case.truth["isthmus"]] = 3
    nodules = np.zeros(case.counts.shape, np.uint8)
    for k, nod in enumerate(case.nodules, start=1):
        nodules[case.truth[nod["name"]]] = k
    _write_mask(case.truth["gland"], geometry, out / "truth" / f"{name}_gland.nii.gz")
    _write_mask(lobes, geometry, out / "truth" / f"{name}_lobes.nii.gz")
    _write_mask(nodules, geometry, out / "truth" / f"{name}_nodules.nii.gz")

    for style, rois in reads:
        doc = polygon_document(rois, dicom_rel, style.name)
        roi_path = out / "rois" / style.name / f"{name}.json"
        roi_path.parent.mkdir(parents=True, exist_ok=True)
        roi_path.write_text(json.dumps(doc, separators=(",", ":")))
        # rasterise the points as saved (rounded to 0.01 px) so the JSON and the NIfTI agree pixel for pixel
        labels, _ = label_map(rois_to_masks(doc["rois"], case.counts.shape), case.counts.shape)
        _write_mask(labels, geometry, out / "masks" / style.name / f"{name}.nii.gz")

    return dict(case=name, patient_id=patient_id, study_uid=info["study_uid"], series_uid=info["series_uid"],
                acquisition_datetime=plan["acquisition_datetime"].isoformat(timespec="seconds")
                if isinstance(plan["acquisition_datetime"], _dt.datetime) else str(plan["acquisition_datetime"]),
                pathology=plan["pathology"], isotope=plan["isotope"],
                collimator=plan["collimator"], counts_requested=plan["total_counts"],
                counts_recorded=case.params["total_counts_recorded"], n_nodules=len(case.nodules),
                isthmus=int(case.params["isthmus"]["present"]), seed=seed, case_index=index, dicom=dicom_rel,
                truth_json=f"truth/{name}.json", truth_gland=f"truth/{name}_gland.nii.gz",
                truth_lobes=f"truth/{name}_lobes.nii.gz", truth_nodules=f"truth/{name}_nodules.nii.gz",
                rois=f"rois/{{reader}}/{name}.json", masks=f"masks/{{reader}}/{name}.nii.gz", status="ok")


def _safe_case(job: tuple[str, int, int, int, dict[str, Any]]) -> dict[str, Any]:
    out, seed, index, n_readers, overrides = job
    try:
        return make_case(out, seed, index, n_readers, overrides)
    except Exception as exc:  # a batch job logs and skips a bad case
        log.error("case %s failed: %s", case_name(index), exc)
        return dict(case=case_name(index), seed=seed, case_index=index, status=f"failed: {type(exc).__name__}: {exc}")


def generate_cohort(out: str | Path, n: int = 100, seed: int = 1, n_readers: int = 3, workers: int = 2,
                    progress: bool = True, start: int = 0, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``n`` cases (indices ``start .. start+n-1``) under ``out``; returns a summary with timings.

    ``workers`` > 1 uses a process pool; results do not depend on it. ``overrides``: fixed ``isotope``,
    ``collimator`` and/or ``total_counts`` for every case (see :func:`case_plan`).
    """
    from ..provenance import library_versions, provenance
    from .readers import default_readers, style_dict

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    styles = default_readers(n_readers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fixed = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    jobs = [(str(out), int(seed), i, int(n_readers), fixed) for i in range(start, start + n)]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="thyroid cohort", unit="case", disable=None)
    if workers > 1 and n > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap(_safe_case, jobs, chunksize=max(1, min(16, n // (workers * 8) or 1))):
                rows.append(row)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            rows.append(_safe_case(job))
            if bar:
                bar.update()
    if bar:
        bar.close()
    seconds = time.perf_counter() - t0
    with open(out / "cases.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    (out / "readers.json").write_text(json.dumps([style_dict(s) for s in styles], indent=1))
    write_case_table(out, rows, [s.name for s in styles])
    failed = [r for r in rows if r["status"] != "ok"]
    config = {"generator": "nmkit.phantoms.cohort.generate_cohort", "n": n, "start": start, "seed": seed,
              "n_readers": n_readers, "pathology_mix": PATHOLOGY_MIX, "isotope_mix": ISOTOPE_MIX,
              "count_range": list(COUNT_RANGE), "overrides": fixed}
    record = provenance(config, inputs=[], libraries=library_versions(("numpy", "scipy", "SimpleITK", "pydicom", "matplotlib")),
                        workers=workers, seconds=round(seconds, 2), n_ok=n - len(failed), n_failed=len(failed))
    (out / "provenance.json").write_text(json.dumps(record, indent=1, default=str))
    return {"n_ok": n - len(failed), "n_failed": len(failed), "seconds": seconds, "rows": rows}


def write_case_table(out: Path, rows: list[dict[str, Any]], readers: list[str]) -> Path:
    """``out/dataset.csv`` (``nmkit.dataset``): one row per case, the truth gland as its mask and each reader's label
    map in ``mask_<reader>`` (multi-reader training, ``train --heads R1 R2 R3``), for ``train``/``evaluate``/``radiomics``."""
    from ..dataset import MaskRef, new_table, write_dataset

    cases = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        name = row["case"]
        truth = str(out / row["truth_gland"])
        refs = [MaskRef(truth, "labelmap", structure="thyroid", label=1, reader="truth")]
        extra = {}
        for reader in readers:
            extra[f"mask_{reader}"] = str(out / "masks" / reader / f"{name}.nii.gz")
        cases.append({"case_id": name, "patient_id": row["patient_id"], "study_uid": row.get("study_uid", ""),
                      "series_uid": row.get("series_uid", ""), "acquisition_datetime": row.get("acquisition_datetime", ""),
                      "modality": "NM", "tracer": row["isotope"], "series_description": f"thyroid ANT {row['collimator']}",
                      "image": str(out / row["dicom"]), "masks": refs, "mask": truth, "pathology": row["pathology"],
                      **extra})
    return write_dataset(new_table(cases), out / "dataset.csv", {"producer": "nmkit phantom thyroid", "readers": readers})


def register_phantom(subparsers) -> None:
    """Add ``nmkit phantom thyroid`` (cohort generator) to the ``phantom`` sub-command."""
    p = subparsers.add_parser("thyroid", help="simulated thyroid scintigraphy cohort with several simulated readers",
                              description="Write a cohort of planar thyroid scans (DICOM NM), ground-truth masks, and "
                                          "polygon ROIs + masks of several simulated readers, reproducibly by seed.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=100, help="number of cases (default 100)")
    p.add_argument("--seed", type=int, default=1, help="cohort seed (default 1)")
    p.add_argument("--readers", type=int, default=3, help="number of simulated readers (1-5, default 3)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--isotope", type=_isotope_name, choices=ISOTOPES, default=None,
                   help=f"radionuclide of every case ({', '.join(ISOTOPES)}; I-123 etc. accepted; "
                        f"default: the clinic mix {ISOTOPE_MIX})")
    p.add_argument("--collimator", choices=COLLIMATORS, default=None,
                   help="collimator of every case (default: 60 %% pinhole, 40 %% parallel)")
    p.add_argument("--counts", type=_total_counts, default=None,
                   help=f"preset total counts of every image, e.g. 1e5 (the expected image sums to it; the Poisson image "
                        f"is within a few sqrt(counts)); default: log-uniform {COUNT_RANGE[0]:,}-{COUNT_RANGE[1]:,}")
    p.set_defaults(func=_run_cli)


def _isotope_name(text: str) -> str:
    """'I-123', 'i123', 'Tc-99m' -> the simulator's spelling; anything else is left for argparse to refuse."""
    key = text.replace("-", "").replace(" ", "").lower()
    return next((iso for iso in ISOTOPES if iso.lower() == key), text)


def _total_counts(text: str) -> int:
    """A positive count such as '1e5' or '200000' (argparse error otherwise)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 1000):
        raise argparse.ArgumentTypeError(f"total counts must be at least 1000, got {text!r}")
    return int(round(value))


def _run_cli(args) -> int:
    overrides = {"isotope": args.isotope, "collimator": args.collimator, "total_counts": args.counts}
    summary = generate_cohort(args.out, n=args.n, seed=args.seed, n_readers=args.readers, workers=args.workers,
                              progress=not args.no_progress, overrides=overrides)
    print(f"wrote {summary['n_ok']} cases to {args.out} ({summary['n_failed']} failed) in {summary['seconds']:.1f} s")
    return 0 if summary["n_failed"] == 0 else 1
