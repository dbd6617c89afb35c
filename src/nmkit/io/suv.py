"""Standardised uptake values (SUV) for PET/SPECT images stored as DICOM PT.

Why a module of its own: SUV needs patient, dose and timing attributes that are often missing or
inconsistent; every assumption is made explicit here and recorded in ``Image.meta["suv"]``.

* ``SUVbw = C * W / D``          (C in Bq/ml, body weight W in g, decay-corrected dose D in Bq; 1 g/ml tissue)
* ``SUL   = C * LBM / D``        (lean body mass: Janmahasatian 2005 by default, James 1976 as an option)

Decay correction follows the image's ``DecayCorrection`` (0054,1102):

* ``START``: pixels are decay corrected to the series start -> the dose is decayed from injection to
  the series start time (SeriesDate/SeriesTime, or the earliest AcquisitionDate/Time when the series
  time is later, which happens after post-processing);
* ``ADMIN``: pixels are decay corrected to the administration time -> the dose is used as is;
* ``NONE``:  pixels are not decay corrected -> the dose is decayed to each slice's acquisition time.

``Units`` (0054,1001): ``BQML`` is activity concentration; ``CNTS`` needs the Philips SUV scale factor
(7053,1000) (or the activity concentration scale factor (7053,1009)); ``GML`` is already SUVbw.
Missing attributes raise :class:`nmkit.errors.MissingTagError` naming every missing attribute; when the file
carries de-identification markers (PatientIdentityRemoved / DeidentificationMethod) and the missing attributes
are ones de-identification removes (weight, size, sex, dates/times), the message says so and names the
``nmkit anonymize --profile research`` re-export that keeps them.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom.dataset import Dataset

from ..errors import DicomReadError, InputError, MissingTagError
from .image import Image

SUV_KINDS = ("bw", "lbm")
LBM_FORMULAS = ("janmahasatian", "james")
PHILIPS_SUV_SCALE = (0x7053, 0x1000)
PHILIPS_ACTIVITY_SCALE = (0x7053, 0x1009)


# ----- DICOM date/time ----------------------------------------------------------------------------
def parse_dicom_time(value: Any) -> _dt.time | None:
    """A DICOM TM value ("HHMMSS.FFFFFF", "HHMM", "HH:MM:SS") as ``datetime.time`` (None if empty)."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    main, _, frac = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        raise ValueError(f"malformed DICOM time {value!r}")
    main = main.ljust(6, "0")
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    return _dt.time(int(main[:2]), int(main[2:4]), min(int(main[4:6]), 59), micro)


def parse_dicom_date(value: Any) -> _dt.date | None:
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if not text:
        return None
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"malformed DICOM date {value!r}")
    return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def parse_dicom_datetime(value: Any) -> _dt.datetime | None:
    """A DICOM DT value ("YYYYMMDDHHMMSS.FFFFFF[+ZZZZ]") as a naive ``datetime`` (offset dropped)."""
    text = str(value or "").strip()
    if not text:
        return None
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    date = parse_dicom_date(text[:8])
    time = parse_dicom_time(text[8:]) if len(text) > 8 else _dt.time(0, 0)
    return _dt.datetime.combine(date, time or _dt.time(0, 0))


def _combine(date_value: Any, time_value: Any) -> _dt.datetime | None:
    date, time = parse_dicom_date(date_value), parse_dicom_time(time_value)
    if date is None or time is None:
        return None
    return _dt.datetime.combine(date, time)


# ----- errors ------------------------------------------------------------------------------------
#: attributes a de-identification profile may have removed (the research profile keeps or shifts them)
_DEID_REMOVABLE = ("PatientWeight", "PatientSize", "PatientSex", "SeriesDate", "SeriesTime", "AcquisitionDate",
                   "AcquisitionTime", "RadiopharmaceuticalStart", "Philips")


def deidentification_hint(ds: Dataset, missing: Sequence[str]) -> str:
    """Why ``missing`` attributes may be absent when ``ds`` was de-identified ("" when it was not)."""
    method = str(ds.get("DeidentificationMethod", "") or "").strip()
    removed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() == "YES"
    if not (method or removed) or not any(m.startswith(_DEID_REMOVABLE) for m in missing):
        return ""
    match = re.match(r"nmkit profile (\w+)", method)
    if match:
        where = f"removed by de-identification profile '{match.group(1)}'"
    elif method:
        where = f"probably removed by de-identification ({method[:64]!r})"
    else:
        where = "probably removed by de-identification (PatientIdentityRemoved YES)"
    return f"; {where}; re-export from the original files with `nmkit anonymize --profile research`"


def _missing_error(ds: Dataset, path: str | Path | None, missing: list[str], purpose: str) -> MissingTagError:
    """A MissingTagError for ``missing``, with the de-identification hint appended when it applies."""
    error = MissingTagError(path, missing, purpose)
    hint = deidentification_hint(ds, missing)
    if hint:
        tags = error.tags
        InputError.__init__(error, path, error.problem + hint)
        error.tags = tags
    return error


# ----- lean body mass -----------------------------------------------------------------------------
def lean_body_mass(weight_kg: float, height_m: float, sex: str, formula: str = "janmahasatian") -> float:
    """Lean body mass in kg.

    ``janmahasatian`` (Janmahasatian et al., Clin Pharmacokinet 2005; recommended by PERCIST):
    male ``9270 W / (6680 + 216 BMI)``, female ``9270 W / (8780 + 244 BMI)``.
    ``james`` (James 1976): male ``1.10 W - 128 (W/H_cm)^2``, female ``1.07 W - 148 (W/H_cm)^2``.
    """
    sex = str(sex).strip().upper()[:1]
    if sex not in ("M", "F"):
        raise ValueError(f"lean body mass needs sex M or F, got {sex!r}")
    if not (weight_kg > 0 and height_m > 0):
        raise ValueError(f"weight and height must be positive (got {weight_kg} kg, {height_m} m)")
    if formula == "janmahasatian":
        bmi = weight_kg / height_m**2
        return 9270.0 * weight_kg / ((6680.0 + 216.0 * bmi) if sex == "M" else (8780.0 + 244.0 * bmi))
    if formula == "james":
        ratio = weight_kg / (height_m * 100.0)
        return (1.10 * weight_kg - 128.0 * ratio**2) if sex == "M" else (1.07 * weight_kg - 148.0 * ratio**2)
    raise ValueError(f"lbm formula must be one of {LBM_FORMULAS}, got {formula!r}")


# ----- SUV factors --------------------------------------------------------------------------------
@dataclass
class SuvResult:
    """Multiplicative factor(s) from stored pixel values to SUV, with everything used to get them."""

    kind: str
    factors: np.ndarray  # one per slice/dataset (identical unless DecayCorrection is NONE)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def factor(self) -> float:
        return float(np.median(self.factors))


def _radiopharm(ds: Dataset) -> Dataset | None:
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    return seq[0] if seq else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def injection_datetime(ds: Dataset) -> _dt.datetime | None:
    """Radiopharmaceutical start date/time; the time alone is combined with the series (or acquisition) date."""
    rp = _radiopharm(ds)
    if rp is None:
        return None
    full = parse_dicom_datetime(getattr(rp, "RadiopharmaceuticalStartDateTime", None))
    if full is not None:
        return full
    time = getattr(rp, "RadiopharmaceuticalStartTime", None)
    date = getattr(ds, "SeriesDate", None) or getattr(ds, "AcquisitionDate", None) or getattr(ds, "StudyDate", None)
    return _combine(date, time)


def series_start_datetime(datasets: Sequence[Dataset]) -> _dt.datetime | None:
    """Series start: SeriesDate/Time, unless an acquisition started earlier (series time rewritten later)."""
    ref = datasets[0]
    series = _combine(getattr(ref, "SeriesDate", None), getattr(ref, "SeriesTime", None))
    acquisitions = [a for a in (_combine(getattr(d, "AcquisitionDate", None) or getattr(d, "SeriesDate", None),
                                         getattr(d, "AcquisitionTime", None)) for d in datasets) if a is not None]
    earliest = min(acquisitions) if acquisitions else None
    if series is None:
        return earliest
    if earliest is not None and earliest < series:
        return earliest
    return series


def suv_factors(datasets: Sequence[Dataset], kind: str = "bw", path: str | Path | None = None,
                lbm_formula: str = "janmahasatian") -> SuvResult:
    """Factors turning the (rescaled) stored values of ``datasets`` (one PET series, sorted) into SUV.

    Raises ``MissingTagError`` listing every attribute that is missing for this computation.
    """
    if kind not in SUV_KINDS:
        raise ValueError(f"suv must be one of {SUV_KINDS} or None, got {kind!r}")
    ref = datasets[0]
    units = str(getattr(ref, "Units", "") or "").upper()
    decay = str(getattr(ref, "DecayCorrection", "") or "").upper()
    rp = _radiopharm(ref)
    missing: list[str] = []
    weight = _positive(getattr(ref, "PatientWeight", None))
    if weight is None:
        missing.append("PatientWeight")
    details: dict[str, Any] = {"kind": kind, "units_in": units, "decay_correction": decay, "weight_kg": weight}
    lbm = None
    if kind == "lbm":
        height = _positive(getattr(ref, "PatientSize", None))
        sex = str(getattr(ref, "PatientSex", "") or "").upper()[:1]
        if height is None:
            missing.append("PatientSize")
        if sex not in ("M", "F"):
            missing.append("PatientSex")
        details.update(height_m=height, sex=sex, lbm_formula=lbm_formula)

    if units == "GML":  # already SUVbw: only the SUL conversion needs anything
        if kind == "bw":
            missing = []
        if missing:
            raise _missing_error(ref, path, missing, f"SUV {kind}")
        factor = 1.0
        if kind == "lbm":
            lbm = lean_body_mass(weight, details["height_m"], details["sex"], lbm_formula)
            factor = lbm / weight
        details.update(lbm_kg=lbm, note="pixels already SUVbw (Units GML)")
        return SuvResult(kind, np.full(len(datasets), factor), details)

    scale_per_dataset = np.ones(len(datasets))
    if units == "CNTS":
        suv_tag = ref.get(PHILIPS_SUV_SCALE)
        act_tag = ref.get(PHILIPS_ACTIVITY_SCALE)
        if suv_tag is not None and _positive(suv_tag.value) is not None:
            # Philips: stored counts x SUV scale factor = SUVbw (computed by the scanner)
            bw = np.array([float(d[PHILIPS_SUV_SCALE].value) if PHILIPS_SUV_SCALE in d else float(suv_tag.value) for d in datasets])
            if missing:
                raise _missing_error(ref, path, missing, f"SUV {kind}")
            if kind == "lbm":
                lbm = lean_body_mass(weight, details["height_m"], details["sex"], lbm_formula)
                bw = bw * lbm / weight
            details.update(lbm_kg=lbm, philips_suv_scale_factor=float(suv_tag.value))
            return SuvResult(kind, bw, details)
        if act_tag is None or _positive(act_tag.value) is None:
            raise _missing_error(ref, path, ["Philips SUV Scale Factor (7053,1000)"], "SUV from Units CNTS")
        scale_per_dataset = np.array([float(d[PHILIPS_ACTIVITY_SCALE].value) if PHILIPS_ACTIVITY_SCALE in d else float(act_tag.value) for d in datasets])
        details["philips_activity_scale_factor"] = float(act_tag.value)
    elif units != "BQML":
        raise DicomReadError(path, f"cannot compute SUV from Units {units or '(missing)'}; expected BQML, CNTS or GML")

    dose = _positive(getattr(rp, "RadionuclideTotalDose", None)) if rp is not None else None
    if dose is None:
        missing.append("RadionuclideTotalDose")
    half_life = _positive(getattr(rp, "RadionuclideHalfLife", None)) if rp is not None else None
    injection = None
    if decay in ("START", "NONE"):
        if half_life is None:
            missing.append("RadionuclideHalfLife")
        try:
            injection = injection_datetime(ref)
        except ValueError as exc:
            raise DicomReadError(path, f"malformed injection time: {exc}") from exc
        if injection is None:
            missing.append("RadiopharmaceuticalStartDateTime/RadiopharmaceuticalStartTime")
    elif decay != "ADMIN":
        raise DicomReadError(path, f"unknown DecayCorrection {decay or '(missing)'}; expected START, ADMIN or NONE")

    references: list[_dt.datetime | None] = []
    if decay == "START":
        try:
            start = series_start_datetime(datasets)
        except ValueError as exc:
            raise DicomReadError(path, f"malformed series/acquisition time: {exc}") from exc
        if start is None:
            missing.append("SeriesDate/SeriesTime")
        references = [start] * len(datasets)
    elif decay == "NONE":
        try:
            references = [_combine(getattr(d, "AcquisitionDate", None) or getattr(d, "SeriesDate", None), getattr(d, "AcquisitionTime", None))
                          for d in datasets]
        except ValueError as exc:
            raise DicomReadError(path, f"malformed acquisition time: {exc}") from exc
        if any(r is None for r in references):
            missing.append("AcquisitionDate/AcquisitionTime")
    if missing:
        raise _missing_error(ref, path, list(dict.fromkeys(missing)), f"SUV {kind}")

    if decay == "ADMIN":
        decayed = np.full(len(datasets), dose)
        elapsed = np.zeros(len(datasets))
    else:
        elapsed = np.array([(r - injection).total_seconds() for r in references])  # type: ignore[operator]
        if np.any(elapsed < 0):
            raise DicomReadError(path, f"injection time {injection} is after the image reference time {min(references)}")
        decayed = dose * np.exp(-math.log(2) * elapsed / half_life)
    body = weight
    if kind == "lbm":
        lbm = lean_body_mass(weight, details["height_m"], details["sex"], lbm_formula)
        body = lbm
    factors = scale_per_dataset * body * 1000.0 / decayed  # kg -> g
    details.update(dose_bq=dose, half_life_s=half_life, injection=injection.isoformat() if injection else None,
                   reference=references[0].isoformat() if references and references[0] else None,
                   elapsed_s=float(np.median(elapsed)), decayed_dose_bq=float(np.median(decayed)), lbm_kg=lbm)
    return SuvResult(kind, factors, details)


def apply_suv(image: Image, datasets: Sequence[Dataset], kind: str, path: str | Path | None = None,
              lbm_formula: str = "janmahasatian") -> Image:
    """The image in SUV (units "g/ml"); ``datasets`` are the slices in the image's z order."""
    result = suv_factors(datasets, kind, path, lbm_formula)
    factors = result.factors.astype(np.float64)
    arr = image.array.astype(np.float64)
    if len(factors) == arr.shape[0] and arr.ndim == 3:
        arr = arr * factors[:, None, None]
    elif np.allclose(factors, factors[0]):
        arr = arr * factors[0]
    else:
        raise DicomReadError(path, "per-slice SUV factors do not match the image slices")
    meta = dict(image.meta)
    meta["suv"] = {**result.details, "factor": result.factor}
    meta["units_source"] = image.units
    return image.with_array(arr.astype(np.float32), units="g/ml", meta=meta)


def activity_units(ds: Dataset) -> str:
    """Units of rescaled PT pixel values: "Bq/ml", "g/ml" (already SUV), or "counts"."""
    units = str(getattr(ds, "Units", "") or "").upper()
    return {"BQML": "Bq/ml", "GML": "g/ml", "CNTS": "counts"}.get(units, units.lower())
