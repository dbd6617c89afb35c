"""Tumour burden as a DICOM Structured Report (TID 1500 Measurement Report, highdicom's Comprehensive 3D SR).

One TID 1501 measurement group for the patient (lesion count, TMTV, total TLG, SUVmax, SUVpeak, Dmax, SDmax) and
one per lesion (volume, SUVmax, SUVmean, SUVpeak, TLG), tracked by "lesion_<n>". Quantities without a standard
concept code use the private coding scheme ``99NMKIT``; units are UCUM (ml, g, mm, /m, {SUVbw}g/ml, {lesions})."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import InputError

_PRIVATE = "99NMKIT"
#: column -> (code value, meaning, UCUM unit, unit meaning)
PATIENT_ITEMS = {
    "lesion_count": ("TB001", "Lesion count", "{lesions}", "lesions"),
    "tmtv_ml": ("TB002", "Total metabolic tumour volume", "ml", "milliliter"),
    "tlg_total_g": ("TB003", "Total lesion glycolysis", "g", "gram"),
    "suv_max": ("TB004", "Patient SUVmax", "{SUVbw}g/ml", "Standardized Uptake Value body weight"),
    "suv_peak": ("TB005", "Patient SUVpeak", "{SUVbw}g/ml", "Standardized Uptake Value body weight"),
    "dmax_mm": ("TB006", "Largest distance between lesion centroids (Dmax)", "mm", "millimeter"),
    "sdmax_per_m": ("TB007", "Dmax normalised by body surface area (SDmax)", "/m", "per meter"),
}
LESION_ITEMS = {
    "volume_ml": ("TB101", "Lesion metabolic volume", "ml", "milliliter"),
    "suv_max": ("TB102", "Lesion SUVmax", "{SUVbw}g/ml", "Standardized Uptake Value body weight"),
    "suv_mean": ("TB103", "Lesion SUVmean", "{SUVbw}g/ml", "Standardized Uptake Value body weight"),
    "suv_peak": ("TB104", "Lesion SUVpeak", "{SUVbw}g/ml", "Standardized Uptake Value body weight"),
    "tlg_g": ("TB105", "Lesion glycolysis (TLG)", "g", "gram"),
}


def _measurements(row: dict, items: dict, suv_kind: str = "bw") -> list:
    import math

    import highdicom as hd

    out = []
    for key, (code, meaning, unit, unit_meaning) in items.items():
        value = row.get(key)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if unit.startswith("{SUV"):
            unit, unit_meaning = ("{SUVlbm}g/ml", "Standardized Uptake Value lean body mass") if suv_kind == "lbm" else (unit, unit_meaning)
        out.append(hd.sr.Measurement(name=hd.sr.CodedConcept(code, _PRIVATE, meaning), value=float(value),
                                     unit=hd.sr.CodedConcept(unit, "UCUM", unit_meaning)))
    return out


def write_burden_sr(patient: dict, lesions: Sequence[dict], source_files: Sequence[str | Path], path: str | Path,
                    suv_kind: str = "bw") -> Path:
    """Write the SR referencing the PET series it measured (``source_files``: the PET's DICOM files; ``suv_kind``
    bw or lbm sets the SUV unit code)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from .. import __version__

    if not source_files:
        raise InputError(path, "a DICOM SR needs the PET's DICOM files (the PET was not read from DICOM)")
    first = pydicom.dcmread(str(source_files[0]), stop_before_pixels=True)
    context = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="nmkit")))
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient"),
        measurements=_measurements(patient, PATIENT_ITEMS, suv_kind))]
    for row in lesions:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=str(row["structure"])),
            measurements=_measurements(row, LESION_ITEMS, suv_kind)))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=hd.sr.CodedConcept("44139-4", "LN", "PET whole body"),
                                     imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=[first], content=report[0], series_instance_uid=hd.UID(), series_number=902,
                                 sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nmkit",
                                 series_description="nmkit tumour burden", institution_name=None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.software_versions = __version__
    sr.save_as(str(path))
    return path
