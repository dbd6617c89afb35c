"""True activity concentrations of a phantom at scan start, from what the physicist measured in the dose calibrator.

The fill is measured at a calibration time, the scan starts later: every concentration is multiplied by the decay
factor exp(-ln 2 (t_scan - t_cal) / T_half). The scan start comes from the DICOM header: for PET the Series Date/Time
(the DICOM PET module's reference time for all activity values, what DecayCorrection START refers to), then the
Acquisition Date/Time; for other modalities the Acquisition Date/Time first. ``--scan-time`` overrides it (NIfTI has
no header times). The half-life comes from ``--half-life-s``, ``--isotope`` or the header's RadionuclideHalfLife.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import InputError

#: physical half-lives in seconds (NUDAT / DDEP recommended values)
HALF_LIFE_S: dict[str, float] = {
    "F-18": 6586.2, "Ga-68": 4062.6, "Tc-99m": 21624.12, "C-11": 1221.66, "N-13": 597.9, "O-15": 122.24,
    "Rb-82": 75.45, "Cu-64": 45721.1, "Zr-89": 282276.0, "I-123": 47602.0, "I-124": 360806.0, "I-131": 692928.0,
    "In-111": 242332.0, "Lu-177": 574300.0, "Y-90": 230400.0, "Tl-201": 262483.0, "Ge-68": 23410080.0,
    "Co-57": 23482080.0,
}


def isotope_half_life(name: str) -> float:
    """Half-life (s) of an isotope written like F-18, f18, 18F or Tc99m (case and dash insensitive)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    for iso, t in HALF_LIFE_S.items():
        sym, mass = iso.split("-")
        forms = {f"{sym}{mass}".lower(), f"{mass}{sym}".lower()}
        if key in forms:
            return t
    raise InputError(None, f"--isotope {name!r} is not known; known: {', '.join(HALF_LIFE_S)} (or give --half-life-s)")


def parse_datetime(text: str, option: str) -> datetime:
    """``YYYYMMDDHHMMSS[.frac]`` (a DICOM DT without zone) -> datetime; a clear error naming ``option`` otherwise."""
    s = str(text).strip()
    digits, _, frac = s.partition(".")
    if len(digits) != 14 or not digits.isdigit() or (frac and not frac.isdigit()):
        raise InputError(None, f"{option} must be YYYYMMDDHHMMSS (e.g. 20250709112852), got {text!r}")
    try:
        dt = datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise InputError(None, f"{option} {text!r} is not a valid date and time") from None
    return dt.replace(microsecond=int(round(float(f"0.{frac}") * 1e6)) if frac else 0)


def scan_start(meta: dict[str, Any]) -> tuple[datetime, str] | None:
    """Scan start from the header and the attributes it came from (see module docstring); None without one."""
    pairs = [("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime")]
    if str(meta.get("Modality", "")).upper() not in ("PT", "PET"):
        pairs.reverse()
    for dk, tk in pairs:
        date, time = str(meta.get(dk, "") or "").strip(), str(meta.get(tk, "") or "").strip()
        digits, _, frac = time.partition(".")
        if len(date) == 8 and date.isdigit() and len(digits) >= 4 and digits.isdigit() and date != "00010101":
            try:
                return parse_datetime(date + digits.ljust(6, "0") + (f".{frac}" if frac.isdigit() else ""), dk), f"{dk}/{tk}"
            except InputError:
                continue
    return None


@dataclass
class Activities:
    """Sphere and background concentrations (Bq/ml or image units) at scan start, and how they were obtained."""

    sphere_conc: float
    bg_conc: float
    record: dict[str, Any]  # calibration/scan times, half-life, decay factor: written to iq_summary.json
    source: str  # one line for every output


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """exp(-ln 2 elapsed / half-life): the fraction of the activity left after ``elapsed_s``."""
    return math.exp(-math.log(2) * elapsed_s / half_life_s)


def resolve_activities(sphere_conc: float, bg_conc: float, meta: dict[str, Any], calibration_time: str | None,
                       isotope: str | None = None, half_life_s: float | None = None, scan_time: str | None = None,
                       how: str = "concentrations") -> Activities:
    """The concentrations given at ``calibration_time`` decay-corrected to the scan start (unchanged without one)."""
    if calibration_time is None:
        return Activities(sphere_conc, bg_conc, {"decay_corrected": False},
                          f"given ({how}) at scan start, not decay-corrected")
    t_cal = parse_datetime(calibration_time, "--calibration-time")
    if scan_time is not None:
        t_scan, scan_src = parse_datetime(scan_time, "--scan-time"), "--scan-time"
    else:
        found = scan_start(meta)
        if found is None:
            raise InputError(None, "the image has no scan start time (SeriesDate/Time or AcquisitionDate/Time) to "
                                   "decay-correct to: give --scan-time YYYYMMDDHHMMSS")
        t_scan, scan_src = found
    if half_life_s is not None:
        t_half, half_src = float(half_life_s), "--half-life-s"
    elif isotope is not None:
        t_half, half_src = isotope_half_life(isotope), f"--isotope {isotope}"
    else:
        header = meta.get("RadionuclideHalfLife")
        try:
            t_half = float(header)
        except (TypeError, ValueError):
            raise InputError(None, "--calibration-time needs the half-life: give --isotope (e.g. F-18) or "
                                   "--half-life-s (the header has no RadionuclideHalfLife)") from None
        half_src = "DICOM RadionuclideHalfLife"
    if not (math.isfinite(t_half) and t_half > 0):
        raise InputError(None, f"the half-life must be a positive number of seconds, got {t_half}")
    elapsed = (t_scan - t_cal).total_seconds()
    if abs(elapsed) > 10 * t_half:
        raise InputError(None, f"calibration time {t_cal.isoformat()} is {elapsed / t_half:.1f} half-lives from the scan "
                               f"start {t_scan.isoformat()} ({scan_src}): wrong date or isotope?")
    f = decay_factor(elapsed, t_half)
    record = {"decay_corrected": True, "calibration_time": t_cal.isoformat(), "scan_start_time": t_scan.isoformat(),
              "scan_start_source": scan_src, "elapsed_s": elapsed, "half_life_s": t_half, "half_life_source": half_src,
              "decay_factor": f, "sphere_conc_at_calibration": sphere_conc, "bg_conc_at_calibration": bg_conc}
    source = (f"given ({how}) at {t_cal.isoformat()}, decay-corrected to the scan start {t_scan.isoformat()} "
              f"({scan_src}; half-life {t_half:g} s from {half_src}; factor {f:.5f})")
    if elapsed < 0:
        source += "; NOTE: calibration after the scan start"
    return Activities(sphere_conc * f, bg_conc * f, record, source)
