"""`nmkit qc`: quality control of real phantom scans: PET/SPECT image quality (NEMA NU 2-2018 / EARL), gamma camera
(NEMA NU 1: flood uniformity, line-source resolution, slit linearity), tomographic resolution and uniformity, and the
per-scanner QC history with its trend plot."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def register(subparsers) -> None:
    parser = subparsers.add_parser("qc", help="quality control of real phantom scans (IEC/NEMA image quality, EARL)",
                                   description="Quality control of real phantom scans: iq (IEC body phantom, NEMA NU 2-2018 "
                                               "and EARL), compare (two iq results), flood/lines/slit/bars (gamma camera, NEMA NU 1), spect-resolution/"
                                               "spect-uniformity/spect-contrast (tomographic), calibrate, trend (per-scanner QC history). "
                                               "Guide: docs/qc.md.")
    sub = parser.add_subparsers(dest="qc", metavar="TEST")
    p = sub.add_parser(
        "iq", help="IEC body phantom: NEMA NU 2-2018 contrast/variability/lung residual, EARL RCmax/RCmean/RCpeak",
        description="Finds the IEC body phantom (position, in-plane orientation, lung insert), fits the six spheres "
                    "(sub-voxel centres, FWHM with a cold-wall model), and reports NEMA NU 2-2018 percent contrast Q_H,j, "
                    "background variability N_j (2D circular ROIs, 12 background ROIs on the central slice and at +-10, "
                    "+-20 mm), lung residual, and EARL RCmax, RCmean (A50) and RCpeak (1 ml) with the EARL1/EARL2 bands. "
                    "Without --ratio or --sphere-conc/--bg-conc the sphere concentration is ESTIMATED from the fitted "
                    "signal of the largest sphere, and every output says so. Writes DIR/iq_spheres.csv, "
                    "DIR/iq_summary.json, DIR/iq_recovery.png and DIR/iq_report.html.")
    p.add_argument("image", help="phantom image: DICOM series folder or file, or a NIfTI/NRRD volume")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ratio", type=float, default=None, help="true sphere-to-background activity ratio (e.g. 10 for 10:1)")
    p.add_argument("--sphere-conc", type=float, default=None, help="true sphere activity concentration at scan start (image units, e.g. Bq/ml)")
    p.add_argument("--bg-conc", type=float, default=None, help="true background activity concentration at scan start (image units)")
    p.add_argument("--sphere-activity-mbq", type=float, default=None,
                   help="activity put into the sphere stock solution (MBq), with --sphere-volume-ml: sphere Bq/ml")
    p.add_argument("--sphere-volume-ml", type=float, default=None, help="volume of the sphere stock solution (ml)")
    p.add_argument("--bg-activity-mbq", type=float, default=None,
                   help="activity in the phantom background (MBq), with --bg-volume-ml: background Bq/ml")
    p.add_argument("--bg-volume-ml", type=float, default=None, help="background volume of the phantom (ml, IEC ~9700)")
    p.add_argument("--calibration-time", default=None, metavar="YYYYMMDDHHMMSS",
                   help="time the given concentrations/activities were measured: they are decay-corrected to the scan "
                        "start (header SeriesDate/Time for PET, else AcquisitionDate/Time; or --scan-time)")
    p.add_argument("--isotope", default=None, help="isotope for the decay correction: F-18, Ga-68, Tc-99m, C-11, Cu-64, "
                                                    "Zr-89, I-123, I-131, In-111, Lu-177, ... (default: header half-life)")
    p.add_argument("--half-life-s", type=float, default=None, help="half-life for the decay correction (s)")
    p.add_argument("--scan-time", default=None, metavar="YYYYMMDDHHMMSS",
                   help="scan start, overriding the DICOM header (needed for NIfTI with --calibration-time)")
    p.add_argument("--diameters", type=float, nargs=6, default=None, metavar="MM",
                   help="inner sphere diameters in mm (default NEMA 37 28 22 17 13 10)")
    p.add_argument("--wall-mm", type=float, default=1.0, help="sphere wall thickness for the FWHM fit (mm, default 1.0)")
    p.add_argument("--a50-background", type=float, default=None,
                   help="background value for the A50 isocontour (image units; default: NEMA background ROI mean)")
    _history_arg(p)
    p.set_defaults(func=run_iq)

    p = sub.add_parser("compare", help="two `qc iq` results (two reconstructions of one phantom scan) side by side",
                       description="Reads two `nmkit qc iq` output folders and draws both recovery curves (RCmax, "
                                   "RCmean, RCpeak with the EARL bands) and the background variability N_j on one "
                                   "figure. Writes DIR/compare.png, DIR/compare.csv (per sphere and measure: A, B, "
                                   "B - A, percent), DIR/compare.json and DIR/compare_report.html.")
    p.add_argument("iq_a", help="first `qc iq` output folder (A)")
    p.add_argument("iq_b", help="second `qc iq` output folder (B)")
    p.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"), help="names of the two results (default: folder names)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_compare)

    p = sub.add_parser("flood", help="NEMA NU 1 flood: integral and differential uniformity (percent) in UFOV and CFOV",
                       description="Rebins to the pixel nearest 6.4 mm, finds the UFOV (0.95 of the field, edge pixels under "
                                   "75 %% of the CFOV mean dropped) and CFOV (0.75 of it), 9-point smoothing, integral and "
                                   "differential uniformity. Writes DIR/flood.json.")
    p.add_argument("image", help="planar flood image (DICOM file)")
    p.add_argument("--out", required=True, help="output folder")
    _history_arg(p)
    p.set_defaults(func=run_flood)

    p = sub.add_parser("lines", help="planar spatial resolution FWHM/FWTM (mm) from two parallel line sources",
                       description="Profiles across the two lines in 30 mm bands; NEMA peak/interpolation widths. "
                                   "--spacing-mm calibrates the pixel size from the lines' true distance. Writes "
                                   "DIR/lines.csv and DIR/lines.json.")
    p.add_argument("image", help="planar two-line-source image (DICOM file)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--spacing-mm", type=float, default=None, help="true distance between the two lines (mm): calibrates the pixel size")
    p.add_argument("--band-mm", type=float, default=30.0, help="width of the bands summed into each profile (mm, default 30)")
    _history_arg(p)
    p.set_defaults(func=run_lines)

    p = sub.add_parser("slit", help="NEMA NU 1 spatial linearity and intrinsic FWHM/FWTM from a slit-mask image",
                       description="Slit peak positions in ~6 mm bands, a straight line per slit: absolute linearity (max "
                                   "deviation, mm) and differential linearity (SD, mm) in UFOV/CFOV; intrinsic FWHM/FWTM. "
                                   "Writes DIR/slit.csv and DIR/slit.json.")
    p.add_argument("image", help="planar slit-mask image (DICOM file)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slit-spacing-mm", type=float, default=30.0, help="slit spacing of the mask (mm, NEMA 30)")
    p.add_argument("--calibrate", action="store_true", help="take the pixel size from the slit spacing instead of the header")
    _history_arg(p)
    p.set_defaults(func=run_slit)

    p = sub.add_parser("bars", help="four-quadrant bar phantom: modulation per bar group and equivalent FWHM (mm)",
                       description="Finds the four bar groups (below 70 %% of the open-field counts, split at the open "
                                   "cross), measures each group's bar period (bar width = period / 2) and assigns the "
                                   "nominal widths in that order; modulation M = sqrt(2 (var - mean)) / mean (Hander et "
                                   "al. 1997, raw counts) and the equivalent FWHM of a Gaussian LSF, 1.0601 w "
                                   "sqrt(ln(1/M)). Writes DIR/bars.csv, DIR/bars.json and DIR/bars.png.")
    p.add_argument("image", help="planar four-quadrant bar phantom image (DICOM file)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bar-widths-mm", type=float, nargs=4, default=None, metavar="MM",
                   help="the phantom's four bar widths (mm, default 4.23 3.18 2.54 2.12: 1/6 1/8 1/10 1/12 inch)")
    p.add_argument("--margin-mm", type=float, default=8.0, help="ROI margin inside each bar group (mm, default 8)")
    _history_arg(p)
    p.set_defaults(func=run_bars)

    p = sub.add_parser("spect-resolution", help="tomographic FWHM/FWTM (mm) along x, y, z of a point-source reconstruction",
                       description="Profiles through the hottest voxel along x, y, z; NEMA widths and a Gaussian-fit check. "
                                   "Writes DIR/spect_resolution.csv and .json.")
    p.add_argument("image", help="reconstructed point-source volume (DICOM series/file or NIfTI)")
    p.add_argument("--out", required=True, help="output folder")
    _history_arg(p)
    p.set_defaults(func=run_spect_resolution)

    p = sub.add_parser("spect-uniformity", help="uniform cylinder / Jaszczak: per-slice integral uniformity and noise (percent)",
                       description="Central disc of 75 %% of the cylinder radius on each slice of the central 80 %% of its "
                                   "length (or --slices A:B), rebinned to ~6.4 mm, 9-point smoothing: integral uniformity; "
                                   "noise = CoV. Writes DIR/spect_uniformity.csv and .json.")
    p.add_argument("image", help="reconstructed uniform-phantom volume (DICOM series/file or NIfTI)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slices", default=None, metavar="A:B", help="slice indices to analyse (default: automatic)")
    _history_arg(p)
    p.set_defaults(func=run_spect_uniformity)

    p = sub.add_parser("spect-contrast", help="Jaszczak / IEC SPECT phantom: per-sphere cold or hot contrast (percent), "
                                              "uniformity and noise of the uniform part",
                       description="Finds the phantom cylinder and its cold (Jaszczak) or hot (IEC) spheres by a matched "
                                   "filter (any in-plane position or rotation), fits each sphere (sub-voxel centre, FWHM, "
                                   "diameter as imaged) and measures NEMA-style 2D disc ROIs of the sphere diameters on "
                                   "each sphere's central slice against the background around the sphere plane: contrast "
                                   "(cold: 100 (1 - C_S/C_B); hot: 100 (C_S/C_B - 1)) and contrast recovery 100 (C_S/C_B - "
                                   "1)/(R - 1) with R the true ratio (cold solid spheres: 0; hot: --ratio, else ESTIMATED "
                                   "from the largest sphere). The uniform slices (automatic, or --uniform-slices) give "
                                   "integral uniformity and noise. Writes DIR/spect_contrast.csv, .json, .png and "
                                   "DIR/spect_contrast_report.html.")
    p.add_argument("image", help="reconstructed SPECT (or PET) phantom volume (DICOM series/file or NIfTI)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--phantom", default="jaszczak-standard", choices=("jaszczak-standard", "jaszczak-deluxe", "iec"),
                   help="sphere set: jaszczak-standard (cold 38.1-12.7 mm, default), jaszczak-deluxe (cold 31.8-9.5 mm), "
                        "iec (hot 37-10 mm, 1 mm wall)")
    p.add_argument("--diameters", type=float, nargs="+", default=None, metavar="MM",
                   help="sphere diameters in mm, overriding the --phantom set")
    p.add_argument("--spheres", default=None, choices=("cold", "hot", "auto"),
                   help="sphere polarity (default: the --phantom's; auto: the stronger of the two)")
    p.add_argument("--ratio", type=float, default=None,
                   help="true sphere-to-background activity ratio (hot, e.g. 4; cold default 0)")
    p.add_argument("--wall-mm", type=float, default=None, help="sphere wall thickness for the fits (mm; default: the --phantom's)")
    p.add_argument("--uniform-slices", default=None, metavar="A:B",
                   help="slice indices of the uniform part (default: automatic)")
    _history_arg(p)
    p.set_defaults(func=run_spect_contrast)

    p = sub.add_parser("calibrate", help="SPECT calibration from a uniform phantom of known activity: cps/MBq and Bq/ml per cps/ml",
                       description="Counts -> counts/s with the acquisition time (ActualFrameDuration x views from the NM "
                                   "header, or --frame-duration-s/--views), activity decay-corrected to the acquisition "
                                   "start, phantom found automatically (or --mask). Writes DIR/calibration.json, which "
                                   "`nmkit quality IMAGE --rois ... --calibration DIR/calibration.json` uses to report Bq/ml and MBq.")
    p.add_argument("image", help="SPECT reconstruction of a uniform phantom in counts or counts/s (DICOM or NIfTI)")
    p.add_argument("--activity-mbq", type=float, required=True, help="activity in the phantom (MBq, at --calibration-time)")
    p.add_argument("--calibration-time", default=None, metavar="YYYYMMDDHHMMSS",
                   help="time the activity was measured: decay-corrected to the acquisition start")
    p.add_argument("--isotope", default=None, help="isotope for the decay correction (Tc-99m, Lu-177, I-131, In-111, ...)")
    p.add_argument("--half-life-s", type=float, default=None, help="half-life for the decay correction (s)")
    p.add_argument("--scan-time", default=None, metavar="YYYYMMDDHHMMSS", help="acquisition start, overriding the header")
    p.add_argument("--volume-ml", type=float, default=None, help="phantom volume (ml; default: the found region's volume)")
    p.add_argument("--mask", default=None, help="phantom mask file (label map; non-zero = phantom) instead of the automatic region")
    _time_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_calibrate)

    p = sub.add_parser("trend", help="plot a scanner's QC history over time against tolerances and flag drifts",
                       description="Reads one scanner's QC history (an .sqlite file written by --history) and writes "
                                   "DIR/trend.png and DIR/trend.csv (flags: out of tolerance, drift > 3 SD).")
    p.add_argument("history", help="QC history database file (<folder>/<scanner>.sqlite)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tolerance", action="append", default=None, metavar="MEASURE=MIN:MAX",
                   help="tolerance of a measure (repeatable), e.g. integral_uniformity_cfov_percent=0:3.5")
    p.set_defaults(func=run_trend)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _time_args(p: argparse.ArgumentParser) -> None:
    """Options that turn a counts image into counts/s (shared with `nmkit quality --calibration`)."""
    p.add_argument("--frame-duration-s", type=float, default=None, help="time per view (s; default DICOM ActualFrameDuration)")
    p.add_argument("--views", type=int, default=None, help="number of views (default DICOM ScanArc/AngularStep)")
    p.add_argument("--units", default=None, help="image unit when the image does not state it (NIfTI): counts or CPS (counts/s)")


def _history_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", default=None, metavar="DIR",
                   help="QC history folder: append the results to the scanner's SQLite file there (one per scanner)")


def _activity_to_conc(args: argparse.Namespace, which: str) -> None:
    """--<which>-activity-mbq / --<which>-volume-ml -> args.<which>_conc (Bq/ml); errors name the options."""
    from ..errors import InputError

    act, vol = getattr(args, f"{which}_activity_mbq"), getattr(args, f"{which}_volume_ml")
    if act is None and vol is None:
        return
    if act is None or vol is None:
        raise InputError(None, f"--{which}-activity-mbq and --{which}-volume-ml go together")
    if getattr(args, f"{which}_conc") is not None:
        raise InputError(None, f"give either --{which}-conc or --{which}-activity-mbq/--{which}-volume-ml, not both")
    for name, value in ((f"--{which}-activity-mbq", act), (f"--{which}-volume-ml", vol)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(None, f"{name} must be a positive number, got {value}")
    setattr(args, f"{which}_conc", act * 1e6 / vol)


def _check_activity_args(args: argparse.Namespace) -> None:
    from ..errors import InputError

    given_activity = getattr(args, "sphere_activity_mbq", None) is not None or getattr(args, "bg_activity_mbq", None) is not None
    args.activity_how = "activities (MBq) and volumes (ml)" if given_activity else "concentrations"
    for which in ("sphere", "bg"):
        _activity_to_conc(args, which)
    if getattr(args, "calibration_time", None) is not None and args.sphere_conc is None:
        raise InputError(None, "--calibration-time needs the sphere and background concentrations or activities "
                               "(--sphere-conc/--bg-conc or --sphere-activity-mbq/--sphere-volume-ml and "
                               "--bg-activity-mbq/--bg-volume-ml); a --ratio does not decay")
    if getattr(args, "calibration_time", None) is None and (args.isotope is not None or args.half_life_s is not None
                                                             or args.scan_time is not None):
        raise InputError(None, "--isotope, --half-life-s and --scan-time are for the decay correction: give --calibration-time")
    if args.isotope is not None and args.half_life_s is not None:
        raise InputError(None, "give either --isotope or --half-life-s, not both")
    if args.half_life_s is not None and not (math.isfinite(args.half_life_s) and args.half_life_s > 0):
        raise InputError(None, f"--half-life-s must be a positive number of seconds, got {args.half_life_s}")
    from ..quality.qc_activity import parse_datetime

    for option in ("calibration_time", "scan_time"):
        if getattr(args, option, None) is not None:
            parse_datetime(getattr(args, option), f"--{option.replace('_', '-')}")
    if (args.sphere_conc is None) != (args.bg_conc is None):
        raise InputError(None, "--sphere-conc and --bg-conc go together (or give --ratio)")
    if args.ratio is not None and args.sphere_conc is not None:
        raise InputError(None, "give either --ratio or --sphere-conc/--bg-conc, not both")
    for name in ("ratio", "sphere_conc", "bg_conc"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(None, f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.ratio is not None and args.ratio <= 1:
        raise InputError(None, f"--ratio must be above 1 (hot spheres), got {args.ratio}")
    if args.diameters is not None and any(not (3 <= d <= 80) for d in args.diameters):
        raise InputError(None, f"--diameters must be 6 sphere diameters between 3 and 80 mm, got {args.diameters}")
    if not 0 <= args.wall_mm <= 5:
        raise InputError(None, f"--wall-mm must be between 0 and 5 mm, got {args.wall_mm}")


def _unit_suffix(unit: str) -> str:
    return {"Bq/ml": "Bq_per_ml", "g/ml": "g_per_ml", "counts": "counts", "counts/s": "counts_per_s"}.get(unit, "image_units")


#: per-sphere columns holding image values (renamed with the unit suffix)
VALUE_COLUMNS = ("fitted_signal", "c_hot_roi", "c_background_roi", "max", "a50_mean", "peak_1ml")


def recovery_figure(table: Any, note: str):
    """RCmax, RCmean (A50) and RCpeak against sphere diameter with the EARL1/EARL2 bands (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..quality.qc_iq import EARL_BANDS

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True)
    colours = {"EARL1": "tab:orange", "EARL2": "tab:green"}
    for ax, (measure, label) in zip(axes, (("rc_max", "RCmax"), ("rc_mean", "RCmean (A50)"), ("rc_peak", "RCpeak (1 ml)"))):
        for version, bands in EARL_BANDS.items():
            band = bands.get(measure)
            if not band:
                continue
            ds = sorted(band)
            ax.fill_between(ds, [band[d][0] for d in ds], [band[d][1] for d in ds], color=colours[version], alpha=0.25,
                            label=f"{version} band")
        ax.plot(table["diameter_mm"], table[measure], "ko-", label="measured")
        ax.set_xlabel("sphere diameter (mm)")
        ax.set_ylabel(f"{label} (1)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig


def slice_figure(image: Any, table: Any, summary: dict):
    """The central slice with the sphere ROIs, the 12 background ROIs and the lung ROI drawn on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Circle

    from ..quality.qc_iq import _xyz_axes

    xs, ys, zs = _xyz_axes(image)
    k = int(np.argmin(np.abs(zs - summary["sphere_plane_z_mm"])))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.asarray(image.array[k], float), cmap="gray_r", extent=(xs[0], xs[-1], ys[-1], ys[0]), origin="upper")
    for _, r in table.iterrows():
        ax.add_patch(Circle((r["x_mm"], r["y_mm"]), r["diameter_mm"] / 2, fill=False, color="tab:red", lw=1))
        ax.annotate(f"{r['diameter_mm']:g}", (r["x_mm"], r["y_mm"]), color="tab:red", fontsize=7, ha="center")
    for x, y in summary["background_roi_centres_mm"]:
        ax.add_patch(Circle((x, y), 18.5, fill=False, color="tab:blue", lw=1))
    ax.add_patch(Circle((summary["lung_x_mm"], summary["lung_y_mm"]), 15.0, fill=False, color="tab:purple", lw=1))
    cx, cy = summary["lung_x_mm"], summary["lung_y_mm"]
    ax.set_xlim(cx - 170, cx + 170)
    ax.set_ylim(cy + 170, cy - 170)
    ax.set_xlabel("x (mm, LPS)")
    ax.set_ylabel("y (mm, LPS)")
    ax.set_title(f"central slice z = {zs[k]:.1f} mm")
    return fig


def run_iq(args: argparse.Namespace) -> int:
    import logging

    from ..io.reader import read_image
    from ..provenance import provenance
    from ..quality.qc_iq import NEMA_DIAMETERS_MM, IQSettings, analyse_iq
    from ..report.html import Report
    from ..units import image_unit

    log = logging.getLogger(__name__)
    _check_activity_args(args)
    if args.isotope is not None:
        from ..quality.qc_activity import isotope_half_life

        isotope_half_life(args.isotope)  # an unknown isotope fails before the image is read
    image = read_image(args.image)
    unit = image_unit(image.units, image.modality)
    from ..errors import InputError

    if args.activity_how != "concentrations" and unit != "Bq/ml":
        raise InputError(args.image, f"image values are in {unit}, not Bq/ml: activities (MBq) cannot be compared; "
                                     "give --sphere-conc/--bg-conc in image units or --ratio")
    activity = None
    if args.sphere_conc is not None:
        from ..quality.qc_activity import resolve_activities

        activity = resolve_activities(args.sphere_conc, args.bg_conc, image.meta or {}, args.calibration_time,
                                      isotope=args.isotope, half_life_s=args.half_life_s, scan_time=args.scan_time,
                                      how=args.activity_how)
    settings = IQSettings(diameters_mm=tuple(args.diameters or NEMA_DIAMETERS_MM),
                          sphere_conc=activity.sphere_conc if activity else None,
                          bg_conc=activity.bg_conc if activity else None, ratio=args.ratio, wall_mm=args.wall_mm,
                          a50_background=args.a50_background)
    try:
        table, summary = analyse_iq(image, settings)
    except InputError as exc:
        raise InputError(args.image, exc.problem) from None
    if activity is not None:
        summary["activity_source"] = activity.source
        summary.update({k: v for k, v in activity.record.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = _unit_suffix(unit)
    table = table.rename(columns={c: f"{c}_{suffix}" for c in VALUE_COLUMNS})
    table.insert(0, "activity_source", summary["activity_source"])
    meta = image.meta or {}
    scanner = {k: str(meta.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName", "StationName", "DeviceSerialNumber",
                                                   "AcquisitionDate", "AcquisitionTime", "ReconstructionMethod", "ConvolutionKernel")}
    units = {"image": unit, "diameter_mm": "mm", "x_mm": "mm", "fwhm_mm": "mm", "contrast_q_h_percent": "%",
             "background_variability_n_percent": "%", "rc_max": "1", "rc_mean": "1", "rc_peak": "1",
             "sphere_concentration": unit, "background_concentration": unit, "background_37mm_mean": unit,
             "lung_residual_percent": "%", **{f"{c}_{suffix}": unit for c in VALUE_COLUMNS},
             "elapsed_s": "s", "half_life_s": "s", "decay_factor": "1", "sphere_conc_at_calibration": unit,
             "bg_conc_at_calibration": unit, "calibration_time": "ISO 8601 local", "scan_start_time": "ISO 8601 local"}
    record = {"summary": summary, "units": units, "scanner": scanner,
              "provenance": provenance(settings.as_dict(), [args.image], standard="NEMA NU 2-2018 section 7.4; EARL1/EARL2")}
    csv_path = out / "iq_spheres.csv"
    table.to_csv(csv_path, index=False)
    (out / "iq_summary.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    note = ("ESTIMATED activity ratio: " if summary["ratio_estimated"] else "") + summary["activity_source"]
    fig = recovery_figure(table, note)
    fig.savefig(out / "iq_recovery.png", dpi=100, bbox_inches="tight")
    report = Report(f"Image quality (IEC body phantom): {Path(args.image).name}")
    sec = report.section("Activity")
    sec.text(note, note=summary["ratio_estimated"])
    sec.text(f"sphere concentration {summary['sphere_concentration']:.5g} {unit}, background {summary['background_concentration']:.5g} "
             f"{unit}, ratio {summary['sphere_to_background_ratio']:.3g}:1; lung residual {summary['lung_residual_percent']:.2f} %; "
             f"EARL1 {'PASS' if summary['earl1_pass'] else 'FAIL'}, EARL2 {'PASS' if summary['earl2_pass'] else 'FAIL'}")
    report.section("Recovery").figure(fig, "RCmax, RCmean (A50) and RCpeak against the EARL1/EARL2 bands; " + note)
    report.section("ROIs").figure(slice_figure(image, table, summary), "central slice: sphere ROIs (red), 37 mm background "
                                                                      "ROIs (blue), lung ROI (purple)")
    cols = ["diameter_mm", "fwhm_mm", "contrast_q_h_percent", "background_variability_n_percent", "rc_max", "rc_mean", "rc_peak",
            "rc_max_earl2_pass", "rc_mean_earl2_pass", "rc_peak_earl2_pass", "rc_max_earl1_pass", "rc_mean_earl1_pass"]
    report.section("Per sphere").table(table[cols], caption=note)
    report.section("Scanner and provenance").code({"scanner": scanner, "summary": summary, "provenance": record["provenance"]})
    report.write(out / "iq_report.html")
    if args.history:
        from ..quality.qc_history import record, scanner_identity

        measures = {"lung_residual_percent": summary["lung_residual_percent"], "fwhm_mm_median_large": summary["fwhm_mm_median_large"]}
        for _, r in table.iterrows():
            for m in ("rc_max", "rc_mean", "rc_peak", "contrast_q_h_percent", "background_variability_n_percent"):
                measures[f"{m}_{r['diameter_mm']:g}mm"] = float(r[m])
        hist_units = {k: ("%" if "percent" in k else "mm" if k.endswith("_mm") else "1") for k in measures}
        db = record(args.history, scanner_identity(meta, args.image), "iq", measures, hist_units, source=str(Path(args.image).resolve()))
        print(f"history: {db}")
    log.info("wrote %s", out)
    print(f"{'ESTIMATED ratio ' if summary['ratio_estimated'] else ''}{summary['sphere_to_background_ratio']:.3g}:1  "
          f"EARL1 {'pass' if summary['earl1_pass'] else 'fail'}  EARL2 {'pass' if summary['earl2_pass'] else 'fail'}  "
          f"lung residual {summary['lung_residual_percent']:.1f} %")
    print(table[["diameter_mm", "fwhm_mm", "contrast_q_h_percent", "background_variability_n_percent", "rc_max", "rc_mean",
                 "rc_peak"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {csv_path}, {out / 'iq_summary.json'}, {out / 'iq_report.html'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..provenance import provenance
    from ..quality.qc_compare import compare_figure, difference_table, read_iq_folder
    from ..report.html import Report

    labels = tuple(args.labels) if args.labels else (Path(args.iq_a).name, Path(args.iq_b).name)
    if labels[0] == labels[1]:
        labels = (f"A: {labels[0]}", f"B: {labels[1]}")
    (ta, ra), (tb, rb) = read_iq_folder(args.iq_a), read_iq_folder(args.iq_b)
    try:
        diff = difference_table(ta, tb)
    except InputError as exc:
        raise InputError(args.iq_b, exc.problem) from None
    sa, sb = ra["summary"], rb["summary"]
    notes = []
    ca, cb = sa.get("sphere_concentration"), sb.get("sphere_concentration")
    if ca and cb and abs(cb / ca - 1) > 1e-6:
        notes.append(f"the two results use different sphere concentrations ({ca:.5g} vs {cb:.5g}): RC differences "
                     "include the activity assumption, not only the reconstruction")
    if sa.get("ratio_estimated") or sb.get("ratio_estimated"):
        notes.append("ESTIMATED activity ratio in " + " and ".join(l for l, s in zip(labels, (sa, sb)) if s.get("ratio_estimated")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    diff.to_csv(out / "compare.csv", index=False)
    fig = compare_figure(ta, tb, labels, "; ".join(notes))
    fig.savefig(out / "compare.png", dpi=100, bbox_inches="tight")
    summary = {"labels": list(labels), "notes": notes,
               "lung_residual_percent": [sa.get("lung_residual_percent"), sb.get("lung_residual_percent")],
               "earl1_pass": [sa.get("earl1_pass"), sb.get("earl1_pass")], "earl2_pass": [sa.get("earl2_pass"), sb.get("earl2_pass")],
               "max_abs_difference": {m: float(g["difference"].abs().max()) for m, g in diff.groupby("measure")}}
    record = {"summary": summary, "units": {"difference": "unit of the measure (B - A)", "relative_difference_percent": "%"},
              "sources": [str(Path(args.iq_a).resolve()), str(Path(args.iq_b).resolve())],
              "provenance": provenance({"labels": list(labels)}, [args.iq_a, args.iq_b])}
    (out / "compare.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    report = Report(f"Image quality comparison: {labels[0]} vs {labels[1]}")
    sec = report.section("Recovery and noise")
    for note in notes:
        sec.text(note, note=True)
    sec.figure(fig, f"{labels[0]} (black) and {labels[1]} (red): RCmax, RCmean (A50), RCpeak with the EARL bands; "
                    "background variability N_j")
    wide = diff.pivot(index="diameter_mm", columns="measure", values="difference").sort_index(ascending=False)
    report.section("Differences (B - A)").table(wide.reset_index(), caption=f"B = {labels[1]}, A = {labels[0]}; units as "
                                                "the measure (RC: 1, Q_H and N: %, FWHM: mm)")
    report.section("All values").table(diff)
    report.section("Sources").code(record)
    report.write(out / "compare_report.html")
    for note in notes:
        print(f"NOTE: {note}")
    print(f"B = {labels[1]} minus A = {labels[0]}:")
    print(wide.to_string(float_format=lambda v: f"{v:+.4f}"))
    print(f"wrote {out / 'compare.png'}, {out / 'compare.csv'}, {out / 'compare_report.html'}")
    return 0


# ----- the other tests -------------------------------------------------------------------------------
def _read(path: str):
    """The image at ``path`` (DICOM warnings collected into one log line, errors naming the file)."""
    import logging

    from ..errors import InputError
    from ..io.dicom_warnings import DicomWarnings
    from ..io.reader import read_image

    collector = DicomWarnings()
    with collector.capture(path):
        image = read_image(path)
    collector.report(logging.getLogger(__name__))
    if image is None:
        raise InputError(path, "no image")
    return image


def _finish(args: argparse.Namespace, test: str, image: Any, summary: dict, units: dict, table: Any = None) -> int:
    """Write DIR/<test>.json (+ .csv), append to the history when asked, print the summary."""
    from ..provenance import provenance
    from ..quality.qc_history import record, scanner_identity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ident = scanner_identity(image.meta or {}, args.image)
    config = {k: v for k, v in vars(args).items() if k not in ("func",) and not callable(v)}
    payload = {"test": test, "summary": summary, "units": units, "scanner": ident, "provenance": provenance(config, [args.image])}
    (out / f"{test}.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    if table is not None:
        table.to_csv(out / f"{test}.csv", index=False)
    if getattr(args, "history", None):
        db = record(args.history, ident, test, history_measures(summary), units, source=str(Path(args.image).resolve()))
        print(f"history: {db}")
    for k, v in summary.items():
        if isinstance(v, float):
            print(f"{k}: {v:.4g}{' ' + units[k] if units.get(k) and units[k] != '1' else ''}")
        elif not isinstance(v, (list, dict)):
            print(f"{k}: {v}")
    print(f"wrote {out / (test + '.json')}")
    return 0


def history_measures(summary: dict) -> dict:
    """The measures worth a trend: widths (mm) and percentages, not positions, pixel sizes or counts."""
    skip = ("pixel_", "peak_", "line_separation", "slit_spacing", "cylinder_radius", "roi_radius", "lung_x", "lung_y",
            "sphere_plane", "cfov_poisson", "phantom_axis", "phantom_radius")
    return {k: v for k, v in summary.items()
            if (k.endswith("_mm") or k.endswith("_percent") or "_percent_" in k or k.startswith("rc_"))
            and isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith(skip)}


def _units_by_suffix(summary: dict) -> dict:
    """Units from the key suffixes (_mm, _percent, _px, counts)."""
    out = {}
    for k in summary:
        out[k] = ("mm" if k.endswith("_mm") or "_mm_" in k else "%" if k.endswith("_percent") or "_percent_" in k
                  else "px" if k.endswith("_px") else "counts" if "counts" in k else "1")
    return out


def _in_file_error(path: str, fn, *a, **kw):
    from ..errors import InputError

    try:
        return fn(*a, **kw)
    except InputError as exc:
        if exc.path:
            raise
        raise InputError(path, exc.problem) from None


def run_flood(args: argparse.Namespace) -> int:
    from ..quality.qc_gamma import flood_uniformity

    image = _read(args.image)
    summary = _in_file_error(args.image, flood_uniformity, image)
    return _finish(args, "flood", image, summary, _units_by_suffix(summary))


def run_lines(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..quality.qc_gamma import line_resolution

    if args.spacing_mm is not None and not (args.spacing_mm > 0 and math.isfinite(args.spacing_mm)):
        raise InputError(None, f"--spacing-mm must be a positive distance, got {args.spacing_mm}")
    if not args.band_mm > 0:
        raise InputError(None, f"--band-mm must be positive, got {args.band_mm}")
    image = _read(args.image)
    table, summary = _in_file_error(args.image, line_resolution, image, spacing_mm=args.spacing_mm, band_mm=args.band_mm)
    return _finish(args, "lines", image, summary, _units_by_suffix(summary), table)


def run_slit(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..quality.qc_gamma import slit_linearity

    if not args.slit_spacing_mm > 0:
        raise InputError(None, f"--slit-spacing-mm must be positive, got {args.slit_spacing_mm}")
    image = _read(args.image)
    table, summary = _in_file_error(args.image, slit_linearity, image, slit_spacing_mm=args.slit_spacing_mm, calibrate=args.calibrate)
    return _finish(args, "slit", image, summary, _units_by_suffix(summary), table)


def run_bars(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..quality.qc_bars import DEFAULT_BAR_WIDTHS_MM, bars_figure, quadrant_bars
    from ..quality.qc_gamma import planar_counts

    widths = tuple(args.bar_widths_mm or DEFAULT_BAR_WIDTHS_MM)
    if any(not (math.isfinite(w) and 0.5 <= w <= 20) for w in widths) or len(set(widths)) != 4:
        raise InputError(None, f"--bar-widths-mm must be 4 different widths between 0.5 and 20 mm, got {list(widths)}")
    if not 0 <= args.margin_mm <= 30:
        raise InputError(None, f"--margin-mm must be between 0 and 30 mm, got {args.margin_mm}")
    image = _read(args.image)
    table, summary, rois = _in_file_error(args.image, quadrant_bars, image, widths, args.margin_mm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = bars_figure(planar_counts(image)[0], table, rois, Path(args.image).name)
    fig.savefig(out / "bars.png", dpi=100, bbox_inches="tight")
    for note in summary["notes"]:
        print(f"NOTE: {note}")
    units = _units_by_suffix(summary)
    units.update({k: "1" for k in summary if k.startswith("modulation")})
    units.update({k: "mm" for k in summary if k.startswith("equivalent_fwhm")})
    units["mean_counts"] = units["sd_counts"] = "counts"
    code = _finish(args, "bars", image, summary, units, table)
    print(table[["bar_width_mm", "quadrant", "bar_direction", "measured_bar_width_mm", "modulation",
                 "equivalent_fwhm_mm"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out / 'bars.csv'}, {out / 'bars.png'}")
    return code


def run_spect_resolution(args: argparse.Namespace) -> int:
    from ..quality.qc_spect import point_resolution

    image = _read(args.image)
    table, summary = _in_file_error(args.image, point_resolution, image)
    for _, r in table.iterrows():
        summary[f"fwhm_{r['axis']}_mm"] = float(r["fwhm_mm"])
        summary[f"fwtm_{r['axis']}_mm"] = float(r["fwtm_mm"])
    return _finish(args, "spect_resolution", image, summary, _units_by_suffix(summary), table)


def run_spect_uniformity(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import InputError
    from ..quality.qc_spect import tomo_uniformity

    image = _read(args.image)
    if args.slices:
        try:
            a, b = (int(v) for v in args.slices.split(":"))
        except ValueError:
            raise InputError(None, f"--slices must be A:B (slice indices), got {args.slices!r}") from None
        n = image.array.shape[0]
        if not 0 <= a < b <= n:
            raise InputError(None, f"--slices {a}:{b} outside the volume's 0:{n}")
        from ..io.image import Image

        image = Image(array=image.array[a:b], spacing=image.spacing, origin=tuple(image.index_to_physical(np.array([0.0, 0.0, a]))),
                      direction=image.direction, modality=image.modality, units=image.units, meta=image.meta)
    table, summary = _in_file_error(args.image, tomo_uniformity, image)
    units = _units_by_suffix(summary)
    from ..units import image_unit

    units["mean_value"] = image_unit(image.units, image.modality)
    return _finish(args, "spect_uniformity", image, summary, units, table)


def _slice_range(text: str, option: str, n: int) -> tuple[int, int]:
    """``A:B`` slice indices within ``0:n`` (one-line errors naming ``option``)."""
    from ..errors import InputError

    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise InputError(None, f"{option} must be A:B (slice indices), got {text!r}") from None
    if not 0 <= a < b <= n:
        raise InputError(None, f"{option} {a}:{b} outside the volume's 0:{n}")
    return a, b


def run_spect_contrast(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..quality.qc_spect_contrast import PHANTOMS, ContrastSettings, analyse_contrast, contrast_figure, upright
    from ..report.html import Report
    from ..units import image_unit

    preset = PHANTOMS[args.phantom]
    wall = preset["wall_mm"] if args.wall_mm is None else args.wall_mm
    if not (math.isfinite(wall) and 0 <= wall <= 5):
        raise InputError(None, f"--wall-mm must be between 0 and 5 mm, got {wall}")
    if args.ratio is not None and not (math.isfinite(args.ratio) and args.ratio >= 0):
        raise InputError(None, f"--ratio must be a non-negative number, got {args.ratio}")
    # the figure draws on the frame the positions refer to: the phantom axis along the slices (resliced if need be)
    image, resliced = _in_file_error(args.image, upright, _read(args.image))
    uniform = _slice_range(args.uniform_slices, "--uniform-slices", image.array.shape[0]) if args.uniform_slices else None
    settings = ContrastSettings(diameters_mm=tuple(args.diameters or preset["diameters_mm"]),
                                polarity=args.spheres or preset["polarity"], ratio=args.ratio, wall_mm=wall,
                                central_exclusion_mm=preset.get("central_exclusion_mm", 0.0), uniform_slices=uniform)
    table, summary = _in_file_error(args.image, analyse_contrast, image, settings)
    if resliced:
        summary["resliced"] = resliced
    unit = image_unit(image.units, image.modality)
    suffix = _unit_suffix(unit)
    values = ("c_sphere_roi", "c_background", "c_extreme_voxel")
    table = table.rename(columns={c: f"{c}_{suffix}" for c in values})
    table.insert(0, "polarity", summary["polarity"])
    table.insert(1, "true_ratio", summary["true_ratio"])
    table.insert(2, "ratio_source", summary["ratio_source"])  # says ESTIMATED when no --ratio was given (hot)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    note = f"{summary['polarity']} spheres; true ratio R = {summary['true_ratio']:.3g}: {summary['ratio_source']}"
    fig = contrast_figure(image, table, summary)
    fig.savefig(out / "spect_contrast.png", dpi=100, bbox_inches="tight")
    units = _units_by_suffix(summary)
    units.update({"background_mean": unit, "uniform_mean_value": unit, "fitted_signal_largest_sphere": unit, "true_ratio": "1", "detectability": "1 (score SD)",
                  **{f"{c}_{suffix}": unit for c in values}, "contrast_percent": "%", "contrast_recovery_percent": "%",
                  "extreme_contrast_percent": "%", "angle_deg": "degree", "roi_slice": "slice index"})
    code = _finish(args, "spect_contrast", image, summary, units, table)
    report = Report(f"SPECT phantom sphere contrast: {Path(args.image).name}")
    sec = report.section("Spheres")
    sec.text(note, note=summary["ratio_estimated"])
    sec.text(f"background C_B {summary['background_mean']:.5g} {unit} (voxel CoV {summary['background_cov_percent']:.1f} %); "
             f"fitted FWHM (largest sphere) {summary['fwhm_largest_sphere_mm']:.1f} mm")
    sec.figure(fig, "left: sphere plane with the sphere ROIs (red) and the background region's edge (blue); middle: "
                    "profile through the largest sphere; right: contrast and contrast recovery against diameter")
    cols = ["diameter_mm", "fitted_diameter_mm", "detectability", f"c_sphere_roi_{suffix}",
            f"c_background_{suffix}", "contrast_percent", "contrast_recovery_percent", "extreme_contrast_percent",
            "ring_radius_mm", "angle_deg"]
    sec.table(table[cols], caption=note)
    unif = report.section("Uniform part")
    if "integral_uniformity_percent_mean" in summary:
        unif.text(f"slices {summary['uniform_slices']}: integral uniformity {summary['integral_uniformity_percent_mean']:.1f} % "
                  f"(max {summary['integral_uniformity_percent_max']:.1f} %), noise (voxel CoV) {summary['noise_cov_percent_mean']:.1f} %")
    else:
        unif.text(summary.get("uniform_note", "no uniform section"), note=True)
    from ..provenance import provenance
    from ..quality.qc_history import scanner_identity

    report.section("Scanner, summary and provenance").code(
        {"scanner": scanner_identity(image.meta or {}, args.image), "summary": summary, "units": units,
         "provenance": provenance(settings.as_dict(), [args.image])})
    report.write(out / "spect_contrast_report.html")
    print(f"NOTE: {note}" if summary["ratio_estimated"] else note)
    if summary.get("resliced"):
        print(f"NOTE: {summary['resliced']}")
    print(table[["diameter_mm", "fitted_diameter_mm", "detectability", "contrast_percent", "contrast_recovery_percent"]]
          .to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {out / 'spect_contrast.csv'}, {out / 'spect_contrast.png'}, {out / 'spect_contrast_report.html'}")
    return code


def run_trend(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..quality.qc_history import read_history, trend_figure, trend_table

    tol = {}
    for item in args.tolerance or []:
        try:
            name, rng = item.split("=")
            lo, hi = (float(v) if v else math.nan for v in rng.split(":"))
        except ValueError:
            raise InputError(None, f"--tolerance must be MEASURE=MIN:MAX, got {item!r}") from None
        tol[name] = (lo, hi)
    history = read_history(args.history)
    if history.empty:
        raise InputError(args.history, "the QC history holds no results yet")
    trend = trend_table(history, tol)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trend.to_csv(out / "trend.csv", index=False)
    fig = trend_figure(trend, Path(args.history).stem)
    fig.savefig(out / "trend.png", dpi=100, bbox_inches="tight")
    flagged = trend[trend["out_of_tolerance"] | trend["drift"]]
    print(f"{len(trend)} points, {trend.groupby(['test', 'measure']).ngroups} measures, {len(flagged)} flagged")
    for _, r in flagged.iterrows():
        why = "out of tolerance" if r["out_of_tolerance"] else "drift > 3 SD"
        print(f"  {r['acquired']} {r['test']} {r['measure']} = {r['value']:.4g} {r['unit']} ({why})")
    print(f"wrote {out / 'trend.png'}, {out / 'trend.csv'}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..provenance import provenance
    from ..quality.qc_activity import resolve_activities
    from ..quality.qc_calibration import SCHEME, acquisition_seconds, calibrate

    image = _read(args.image)
    if args.units:
        image.units = args.units
    acq_s, timing = _in_file_error(args.image, acquisition_seconds, image, args.frame_duration_s, args.views)
    act = _in_file_error(args.image, resolve_activities, args.activity_mbq, 0.0, image.meta or {}, args.calibration_time,
                         args.isotope, args.half_life_s, args.scan_time, how="activity in MBq")
    mask = None
    if args.mask:
        from ..io.image import resample_to
        from ..io.roi import load_rois

        m = load_rois(args.mask, reference=image)
        if not m.same_grid(image):
            m = resample_to(m, image, "nearest")
        mask = m.array > 0
        if not mask.any():
            raise InputError(args.mask, "the phantom mask is empty")
    result = _in_file_error(args.image, calibrate, image, act.sphere_conc, acq_s, args.volume_ml, mask)
    decay = {k.replace("sphere_conc_at_calibration", "activity_mbq_at_calibration"): v for k, v in act.record.items()
             if k != "bg_conc_at_calibration"}
    payload = {"scheme": SCHEME, **result, "activity_source": act.source, "decay": decay, "timing": timing,
               "units": {"sensitivity_cps_per_mbq": "cps/MBq", "bq_per_ml_per_cps_per_ml": "Bq/ml per (counts/s/ml)",
                         "bq_per_ml_per_cps_per_voxel": "Bq/ml per (counts/s/voxel)", "activity_mbq": "MBq",
                         "volume_ml": "ml", "concentration_bq_per_ml": "Bq/ml", "total_cps": "counts/s", "image_total_cps": "counts/s",
                         "mean_cps_per_voxel": "counts/s/voxel", "voxel_volume_ml": "ml"},
               "image": str(Path(args.image).resolve()), "modality": image.modality,
               "isotope": args.isotope or (image.meta or {}).get("Radionuclide"),
               "provenance": provenance({k: v for k, v in vars(args).items() if not callable(v)},
                                        [args.image] + ([args.mask] if args.mask else []))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    print(f"activity: {act.sphere_conc:.4g} MBq at acquisition start ({act.source})")
    print(f"time: {timing['normalisation']}" + (f" (NOTE: {timing['note']})" if timing.get("note") else ""))
    print(f"sensitivity: {result['sensitivity_cps_per_mbq']:.4g} cps/MBq ({100 * result['total_cps'] / result['image_total_cps']:.1f} "
          f"% of the image's counts lie in the phantom region)")
    print(f"volumetric factor: {result['bq_per_ml_per_cps_per_ml']:.4g} Bq/ml per counts/s/ml "
          f"({result['bq_per_ml_per_cps_per_voxel']:.4g} Bq/ml per counts/s/voxel)")
    print(f"phantom: {result['region_volume_ml']:.1f} ml found, volume used {result['volume_ml']:.1f} ml ({result['volume_source']})")
    print(f"wrote {out / 'calibration.json'}")
    return 0
