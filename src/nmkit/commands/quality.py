"""`nmkit quality`: objective image quality of one reconstruction (NEMA IEC phantom, patient ROIs, or a cohort)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quality",
        help="image-quality metrics: NEMA IEC phantom analysis (contrast recovery, background variability, RC, FWHM) or ROI metrics",
        description="Phantom mode (--phantom-masks and --phantom-activity, as written by `nmkit phantom nema`): locates "
                    "the spheres, and reports contrast recovery Q_H, background variability, RC mean/max, sphere-fit FWHM, "
                    "lung residual, noise and activity recovery. ROI mode (IMAGE --rois FILE, or --manifest TABLE for a "
                    "cohort): per structure voxels, volume (ml), mean, SD, CoV, max (image units, e.g. Bq/ml), total "
                    "activity (MBq for images in Bq/ml), contrast and CNR against --background; one long-format row per "
                    "value with its unit. Writes a CSV and a provenance JSON (<out>.json).",
    )
    p.add_argument("image", nargs="?", help="reconstructed image (NIfTI/NRRD file or DICOM folder), in activity concentration units")
    p.add_argument("--manifest", default=None, help="case table (nmkit-dataset/1): ROI mode on every row's image and masks")
    p.add_argument("--phantom-masks", default=None, help="NEMA phantom label map (sphere_<d>mm, lung_insert, background, body)")
    p.add_argument("--phantom-activity", default=None, help="true activity concentration image of the phantom")
    p.add_argument("--no-locate", action="store_true", help="use the nominal sphere centres instead of locating them")
    p.add_argument("--rois", default=None, help="ROI file (label map, SEG, RTSTRUCT) for patient-style metrics")
    p.add_argument("--roi", action="append", default=None, metavar="SELECTOR",
                   help="structures to measure: number, glob or name (repeatable; default all)")
    p.add_argument("--background", default=None, help="background ROI (selector: number or name) for contrast and CNR")
    p.add_argument("--suv", choices=("bw", "lbm"), default=None, help="read DICOM PET in SUV (g/ml)")
    p.add_argument("--units", default=None, help="unit of the voxel values when the image does not state it (NIfTI), e.g. Bq/ml")
    p.add_argument("--calibration", default=None,
                   help="SPECT calibration JSON from `nmkit qc calibrate`: ROI mode converts a counts image to Bq/ml (and MBq)")
    p.add_argument("--frame-duration-s", type=float, default=None,
                   help="with --calibration: time per view (s; default DICOM ActualFrameDuration)")
    p.add_argument("--views", type=int, default=None, help="with --calibration: number of views (default DICOM ScanArc/AngularStep)")
    p.add_argument("--out", required=True, help="output CSV")
    p.set_defaults(func=run)


def _read_calibration(path: str) -> dict:
    """The `nmkit qc calibrate` JSON at ``path`` (one-line error naming it otherwise)."""
    from ..errors import InputError
    from ..quality.qc_calibration import SCHEME

    try:
        cal = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not a readable calibration JSON ({exc.__class__.__name__})") from None
    if not isinstance(cal, dict) or cal.get("scheme") != SCHEME or "bq_per_ml_per_cps_per_ml" not in cal:
        raise InputError(path, f"not a `nmkit qc calibrate` result (scheme {SCHEME})")
    return cal


def _calibrated(image, args: argparse.Namespace, path: str):
    """``image`` (counts or counts/s) -> Bq/ml with the calibration; the conversion record for the provenance."""
    from ..errors import InputError
    from ..quality.qc_calibration import acquisition_seconds, apply_calibration

    if args.units and not image.units:
        image.units = args.units
    try:
        acq_s, timing = acquisition_seconds(image, args.frame_duration_s, args.views)
        return apply_calibration(image, args.calibration_data, acq_s), timing
    except InputError as exc:
        raise InputError(exc.path or path, exc.problem) from None


def _measure(image_path: str, roi_files: list, selector, background: str | None, suv: str | None,
             series_uid: str | None = None, args: argparse.Namespace | None = None) -> list[dict]:
    """Long-format ROI rows for one image and its ROI files (``MaskRef`` or paths)."""
    from ..dataset import MaskRef
    from ..io.image import resample_to
    from ..io.reader import read_case_image
    from ..io.roi import load_rois
    from ..io.roi_select import select_rois
    from ..quality.patient import roi_table

    image = read_case_image(image_path, suv=suv, series_uid=series_uid)
    if args is not None and getattr(args, "calibration_data", None):
        image, timing = _calibrated(image, args, image_path)
        args.calibration_timing.append({"image": image_path, **timing})
    rows = []
    for ref in roi_files:
        ref = ref if isinstance(ref, MaskRef) else MaskRef(file=str(ref))
        mask = load_rois(ref.file, reference=image)
        if not mask.same_grid(image):
            mask = resample_to(mask, image)
        wanted = selector if selector else ref.selector
        chosen = select_rois(mask.labels, wanted, ref.file)
        bg = None
        if background:
            bg = next(iter(select_rois(mask.labels, background, ref.file)))
            chosen.pop(bg, None)
        for row in roi_table(image, mask, background=bg, only=set(chosen)):
            rows.append({"mask_file": ref.file, **row})
    return rows


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..errors import InputError
    from ..io.image import resample_to
    from ..io.reader import read_image
    from ..provenance import provenance

    out = Path(args.out)
    inputs = [args.image] if args.image else []
    args.calibration_data, args.calibration_timing = None, []
    if args.calibration:
        if args.phantom_masks or args.phantom_activity:
            raise InputError(args.calibration, "--calibration works in ROI mode (--rois or --manifest), not phantom mode")
        args.calibration_data = _read_calibration(args.calibration)
    if args.phantom_masks or args.phantom_activity:
        if not args.image:
            raise InputError(None, "phantom mode needs the reconstructed IMAGE")
        if not (args.phantom_masks and args.phantom_activity):
            raise InputError(args.phantom_masks or args.phantom_activity, "phantom mode needs both --phantom-masks and --phantom-activity")
        from ..io.roi import read_named_label_map
        from ..quality.phantom import analyse_nema_phantom, phantom_from_truth

        image = read_image(args.image)
        if args.units and not image.units:
            image.units = args.units
        masks = read_named_label_map(args.phantom_masks)
        truth = read_image(args.phantom_activity)
        if not truth.same_grid(masks):
            truth = resample_to(truth, masks)
        ph = phantom_from_truth(masks, truth)
        if not image.same_grid(masks):
            image = resample_to(image, masks, "linear")
        table, summary = analyse_nema_phantom(image, ph, locate=not args.no_locate)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        from ..units import image_unit

        unit = image_unit(image.units, image.modality) if image.units else (args.units or "unknown (give --units)")
        columns = {"diameter_mm": "mm", "voxels": "voxels", "c_sphere": unit, "c_background": unit, "n_background_rois": "1",
                   "contrast_recovery_qh": "1", "background_variability": "1", "rc_mean": "1", "rc_max": "1", "fwhm_mm": "mm"}
        units = {"scheme": "nmkit-units/1", "image_units": unit, "columns": {c: u for c, u in columns.items() if c in table},
                 "summary": {k: ("mm" if k.endswith("_mm") or "_mm_" in k else unit if k == "background_mean" else "1")
                             for k in summary}}
        Path(str(out) + ".units.json").write_text(json.dumps(units, indent=1))
        inputs += [args.phantom_masks, args.phantom_activity]
        print(table[["diameter_mm", "contrast_recovery_qh", "background_variability", "rc_mean", "rc_max", "fwhm_mm"]].round(3).to_string(index=False))
        print(", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
        mode = "phantom"
    elif args.manifest:
        from tqdm.auto import tqdm

        from ..dataset import read_dataset

        table = read_dataset(args.manifest, need_masks=True)
        rows, failed = [], []
        for case in tqdm(table.to_dict(orient="records"), desc="quality", unit="case", disable=None):
            try:
                measured = _measure(case["image"], case["masks"], args.roi or case.get("roi") or None, args.background,
                                    args.suv or case.get("suv") or None, case.get("series_uid") or None, args)
            except Exception as exc:  # noqa: BLE001 - batch job: log and skip a bad case
                import logging

                logging.getLogger("nmkit.quality").warning("skipping case %s (%s): %s", case["case_id"], case["image"], exc)
                failed.append({"case_id": case["case_id"], "error": str(exc)})
                continue
            ids = {k: case.get(k, "") for k in ("case_id", "patient_id", "study_uid", "series_uid", "time_point",
                                                "series_description")}
            rows += [{**ids, **r} for r in measured]
        if not rows:
            raise InputError(args.manifest, f"no case could be measured ({len(failed)} failed; first: "
                                            f"{failed[0]['error'] if failed else '-'})")
        frame = pd.DataFrame(rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
        inputs = [args.manifest]
        summary = {"cases": int(frame.case_id.nunique()), "rows": len(frame), "failed": failed}
        print(f"{len(frame)} value(s) for {frame.case_id.nunique()} case(s), {len(failed)} failed -> {out}")
        mode = "manifest"
    elif args.rois:
        if not args.image:
            raise InputError(None, "ROI mode needs the IMAGE (or give --manifest)")
        frame = pd.DataFrame(_measure(args.image, [args.rois], args.roi, args.background, args.suv, args=args))
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
        inputs.append(args.rois)
        summary = {"rows": len(frame)}
        shown = frame[frame.metric.isin(["volume_ml", "mean", "max", "activity_mbq"])]
        for (number, name), part in shown.groupby(["segment_number", "structure"], sort=True):
            print(f"{number:>3} {name:<28} " + "  ".join(f"{r.metric} {r.value:.4g} {r.unit}" for r in part.itertuples()))
        print(f"{len(frame)} value(s) -> {out}")
        mode = "rois"
    else:
        raise InputError(args.image, "give --rois FILE (ROI mode), --manifest TABLE (cohort), or --phantom-masks/"
                                     "--phantom-activity (phantom mode)")
    config = {"command": "quality", "mode": mode, "background": args.background, "roi": args.roi, "suv": args.suv,
              "locate": not args.no_locate}
    if args.calibration_data:
        inputs.append(args.calibration)
        cal = args.calibration_data
        config["calibration"] = {"file": str(Path(args.calibration).resolve()),
                                 "bq_per_ml_per_cps_per_ml": cal["bq_per_ml_per_cps_per_ml"],
                                 "sensitivity_cps_per_mbq": cal.get("sensitivity_cps_per_mbq"),
                                 "phantom_image": cal.get("image"), "timing": args.calibration_timing}
        times = sorted({t["normalisation"] for t in args.calibration_timing})
        print(f"calibrated with {args.calibration}: {cal['bq_per_ml_per_cps_per_ml']:.4g} Bq/ml per counts/s/ml; "
              f"{'; '.join(times)}")
    Path(str(out) + ".json").write_text(json.dumps(provenance(config, inputs, summary=summary), indent=2, default=str))
    return 0
