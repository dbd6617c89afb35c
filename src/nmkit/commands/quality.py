"""`nmkit quality`: objective image quality of one reconstruction (NEMA IEC phantom, or patient ROIs)."""

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
                    "lung residual, noise and activity recovery. ROI mode (--rois): noise CoV, contrast, CNR, recovery. "
                    "Writes a CSV and a provenance JSON (<out>.json).",
    )
    p.add_argument("image", help="reconstructed image (NIfTI/NRRD file or DICOM folder), in activity concentration units")
    p.add_argument("--phantom-masks", default=None, help="NEMA phantom label map (sphere_<d>mm, lung_insert, background, body)")
    p.add_argument("--phantom-activity", default=None, help="true activity concentration image of the phantom")
    p.add_argument("--no-locate", action="store_true", help="use the nominal sphere centres instead of locating them")
    p.add_argument("--rois", default=None, help="ROI file (label map, SEG, RTSTRUCT) for patient-style metrics")
    p.add_argument("--background", default=None, help="background ROI name (ROI mode)")
    p.add_argument("--uniform", nargs="*", default=[], help="uniform ROI names for noise CoV (ROI mode)")
    p.add_argument("--out", required=True, help="output CSV")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..errors import InputError
    from ..io.image import resample_to
    from ..io.reader import read_image
    from ..io.roi import load_rois
    from ..provenance import provenance

    image = read_image(args.image)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = [args.image]
    if args.phantom_masks or args.phantom_activity:
        if not (args.phantom_masks and args.phantom_activity):
            raise InputError(args.phantom_masks or args.phantom_activity, "phantom mode needs both --phantom-masks and --phantom-activity")
        from ..io.roi import read_named_label_map
        from ..quality.phantom import analyse_nema_phantom, phantom_from_truth

        masks = read_named_label_map(args.phantom_masks)
        truth = read_image(args.phantom_activity)
        if not truth.same_grid(masks):
            truth = resample_to(truth, masks)
        ph = phantom_from_truth(masks, truth)
        if not image.same_grid(masks):
            image = resample_to(image, masks, "linear")
        table, summary = analyse_nema_phantom(image, ph, locate=not args.no_locate)
        table.to_csv(out, index=False)
        inputs += [args.phantom_masks, args.phantom_activity]
        print(table[["diameter_mm", "contrast_recovery_qh", "background_variability", "rc_mean", "rc_max", "fwhm_mm"]].round(3).to_string(index=False))
        print(", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    elif args.rois:
        from ..quality.patient import patient_quality

        mask = load_rois(args.rois, reference=image)
        if not mask.same_grid(image):
            mask = resample_to(mask, image)
        summary = patient_quality(image, mask, background=args.background, uniform=tuple(args.uniform))
        rows = [{"roi": k.rsplit(":", 1)[0], "metric": k.rsplit(":", 1)[1], "value": v} for k, v in summary.items()]
        pd.DataFrame(rows).to_csv(out, index=False)
        inputs.append(args.rois)
        print(f"{len(rows)} metric(s) -> {out}")
    else:
        raise InputError(args.image, "give --phantom-masks/--phantom-activity (phantom mode) or --rois (ROI mode)")
    config = {"command": "quality", "mode": "phantom" if args.phantom_masks else "rois", "background": args.background,
              "uniform": args.uniform, "locate": not args.no_locate}
    Path(str(out) + ".json").write_text(json.dumps(provenance(config, inputs, summary=summary), indent=2, default=str))
    return 0
