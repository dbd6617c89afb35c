"""`nmkit qc`: quality control of real phantom scans (PET image quality: NEMA NU 2-2018 / EARL)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def register(subparsers) -> None:
    parser = subparsers.add_parser("qc", help="quality control of real phantom scans (IEC/NEMA image quality, EARL)",
                                   description="Quality control of real phantom scans. `qc iq IMAGE --out DIR`: NEMA NU 2-2018 "
                                               "image quality and EARL recovery of an IEC body phantom PET/SPECT scan.")
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
    p.add_argument("--diameters", type=float, nargs=6, default=None, metavar="MM",
                   help="inner sphere diameters in mm (default NEMA 37 28 22 17 13 10)")
    p.add_argument("--wall-mm", type=float, default=1.0, help="sphere wall thickness for the FWHM fit (mm, default 1.0)")
    p.add_argument("--a50-background", type=float, default=None,
                   help="background value for the A50 isocontour (image units; default: NEMA background ROI mean)")
    p.set_defaults(func=run_iq)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _check_activity_args(args: argparse.Namespace) -> None:
    from ..errors import InputError

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
    image = read_image(args.image)
    unit = image_unit(image.units, image.modality)
    settings = IQSettings(diameters_mm=tuple(args.diameters or NEMA_DIAMETERS_MM), sphere_conc=args.sphere_conc,
                          bg_conc=args.bg_conc, ratio=args.ratio, wall_mm=args.wall_mm, a50_background=args.a50_background)
    from ..errors import InputError

    try:
        table, summary = analyse_iq(image, settings)
    except InputError as exc:
        raise InputError(args.image, exc.problem) from None
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
             "lung_residual_percent": "%", **{f"{c}_{suffix}": unit for c in VALUE_COLUMNS}}
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
    log.info("wrote %s", out)
    print(f"{'ESTIMATED ratio ' if summary['ratio_estimated'] else ''}{summary['sphere_to_background_ratio']:.3g}:1  "
          f"EARL1 {'pass' if summary['earl1_pass'] else 'fail'}  EARL2 {'pass' if summary['earl2_pass'] else 'fail'}  "
          f"lung residual {summary['lung_residual_percent']:.1f} %")
    print(table[["diameter_mm", "fwhm_mm", "contrast_q_h_percent", "background_variability_n_percent", "rc_max", "rc_mean",
                 "rc_peak"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {csv_path}, {out / 'iq_summary.json'}, {out / 'iq_report.html'}")
    return 0
