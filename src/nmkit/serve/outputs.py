"""Result objects of one job: DICOM SEG, SR (TID 1500 measurements) and a secondary-capture overlay.

All carry the model name and version (series description, algorithm identification, content creator)
and reference the source study and series. Their UIDs are derived from the job id and model version, so
re-running a job after a crash produces the *same* objects: a PACS that receives one twice keeps one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.image import Image, Mask
from ..phantoms.nm_dicom import deterministic_uid

SEG_SERIES_NUMBER, SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9101, 9102, 9103


@dataclass
class ModelTag:
    name: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def output_uid(job_id: str, version: str, kind: str, what: str) -> str:
    return deterministic_uid("nmkit-serve", job_id, version, kind, what)


def _planar_sources(datasets: list[Any]) -> list[Any]:
    """Copies of planar NM datasets that highdicom can derive a SEG from: the NM multi-frame IOD lacks the
    functional groups highdicom expects, so the pixel measures are given as shared functional groups and
    the (detector-plane) frame of reference is left out - the SEG then lies on the source pixel grid."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        _blank_invalid_dates(ds)
        measures = Dataset()
        measures.PixelSpacing = ds.PixelSpacing
        measures.SliceThickness = 1
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        if "FrameOfReferenceUID" in ds:
            del ds.FrameOfReferenceUID
        out.append(ds)
    return out


def _blank_invalid_dates(ds: Any) -> None:
    """Empty the top-level dates no calendar has (e.g. PatientBirthDate '00000000' from gamma cameras): the
    derived objects copy them and would fail to build; the source file itself is left as it is."""
    import datetime as dt

    for elem in ds:
        if elem.VR == "DA" and elem.value:
            try:
                dt.datetime.strptime(str(elem.value)[:8], "%Y%m%d")
            except ValueError:
                elem.value = ""


def make_seg(mask: Mask, image: Image, datasets: list[Any], path: Path, model: ModelTag, job_id: str) -> Any:
    """Write the SEG (via nmkit.io.seg.write_seg) with deterministic UIDs; returns the pydicom dataset."""
    import pydicom

    from ..io.seg import write_seg

    desc = f"AI SEG {model.label}"[:64]
    if mask.ndim_spatial == 2:  # planar: one frame
        mask3 = Mask(array=np.asarray(mask.array)[None], spacing=tuple(mask.spacing) + (1.0,), labels=mask.labels)
        write_seg(mask3, _planar_sources(datasets[:1]), path, algorithm_name=model.name, algorithm_version=model.version,
                  series_description=desc, series_number=SEG_SERIES_NUMBER)
    else:
        write_seg(mask, image, path, algorithm_name=model.name, algorithm_version=model.version, series_description=desc,
                  series_number=SEG_SERIES_NUMBER)
    ds = pydicom.dcmread(str(path))
    ds.SeriesInstanceUID = output_uid(job_id, model.version, "seg", "series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = output_uid(job_id, model.version, "seg", "sop")
    ds.ContentCreatorName = f"nmkit^{model.name}^{model.version}"[:64]
    ds.ContentLabel = "AI_SEGMENTATION"
    ds.save_as(str(path), enforce_file_format=True)
    return ds


def measurements(mask: Mask, image: Image) -> list[dict[str, Any]]:
    """Per segment: area (planar, mm2) or volume (ml), mean and total counts, or mean/max SUV for SUV images."""
    values = np.asarray(image.array, dtype=float).reshape(mask.spatial_shape)
    out = []
    for value, name in sorted(mask.labels.items()):
        sel = mask.binary(value)
        n = int(sel.sum())
        row: dict[str, Any] = {"segment_number": sorted(mask.labels).index(value) + 1, "label": name, "voxels": n}
        if mask.ndim_spatial == 2:
            row["area_mm2"] = n * mask.voxel_volume
        else:
            row["volume_ml"] = n * mask.voxel_volume / 1000.0
        inside = values[sel] if n else np.zeros(1)
        if image.units.upper().startswith("SUV") or image.units.lower() in ("g/ml",):
            row["suv_mean"], row["suv_max"] = float(inside.mean()), float(inside.max())
        else:
            row["mean_counts"], row["total_counts"] = float(inside.mean()), float(inside.sum())
        out.append(row)
    return out


def make_sr(seg_ds: Any, datasets: list[Any], rows: list[dict[str, Any]], path: Path, model: ModelTag, job_id: str, planar: bool) -> Any:
    """Comprehensive 3D SR with a TID 1500 Measurement Report: one ROI group per segment, referencing the SEG."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=deterministic_uid("nmkit-serve-device", model.name),
                                                       name=f"nmkit {model.name}"[:64], manufacturer_name="nmkit",
                                                       model_name=f"{model.name} {model.version}"[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                                                      observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    mean = hd.sr.CodedConcept("373098007", "SCT", "Mean")
    counts_unit = hd.sr.CodedConcept("{counts}", "UCUM", "counts")
    groups = []
    for row in rows:
        tracking = hd.sr.TrackingIdentifier(uid=output_uid(job_id, model.version, "sr", f"track-{row['segment_number']}"),
                                            identifier=f"{row['label']}")
        ms = []
        if "area_mm2" in row:
            ms.append(hd.sr.Measurement(name=codes.SCT.Area, value=row["area_mm2"], unit=codes.UCUM.SquareMillimeter, algorithm_id=algorithm))
        if "volume_ml" in row:
            ms.append(hd.sr.Measurement(name=codes.SCT.Volume, value=row["volume_ml"], unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"), algorithm_id=algorithm))
        if "mean_counts" in row:
            ms.append(hd.sr.Measurement(name=hd.sr.CodedConcept("nmkit-mean-counts", "99NMKIT", "Mean counts"), value=row["mean_counts"],
                                        unit=counts_unit, algorithm_id=algorithm, derivation=mean))
            ms.append(hd.sr.Measurement(name=hd.sr.CodedConcept("nmkit-total-counts", "99NMKIT", "Total counts"), value=row["total_counts"],
                                        unit=counts_unit, algorithm_id=algorithm))
        if "suv_mean" in row:
            suv = hd.sr.CodedConcept("126401", "DCM", "SUVbw")
            unit = hd.sr.CodedConcept("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
            ms.append(hd.sr.Measurement(name=suv, value=row["suv_mean"], unit=unit, derivation=mean, algorithm_id=algorithm))
            ms.append(hd.sr.Measurement(name=suv, value=row["suv_max"], unit=unit, derivation=hd.sr.CodedConcept("56851009", "SCT", "Maximum"), algorithm_id=algorithm))
        if planar:
            ref = _segmentation_frame(seg_ds, datasets[0], row["segment_number"])
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, referenced_segment=ref,
                                                                              measurements=ms, algorithm_id=algorithm))
        else:
            ref = hd.sr.ReferencedSegment(str(seg_ds.SOPClassUID), str(seg_ds.SOPInstanceUID), row["segment_number"],
                                          source_series=hd.sr.SourceSeriesForSegmentation(str(datasets[0].SeriesInstanceUID)))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, referenced_segment=ref,
                                                                                  measurements=ms, algorithm_id=algorithm))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.NuclearMedicineProcedure
                                     if hasattr(codes.LN, "NuclearMedicineProcedure") else hd.sr.CodedConcept("49118-9", "LN", "NM Study"),
                                     imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=list(datasets) + [seg_ds], content=report, series_instance_uid=output_uid(job_id, model.version, "sr", "series"),
                                 series_number=SR_SERIES_NUMBER, sop_instance_uid=output_uid(job_id, model.version, "sr", "sop"), instance_number=1,
                                 manufacturer="nmkit", series_description=f"AI SR {model.label}"[:64], is_complete=True,
                                 software_versions=__version__)
    sr.ContentCreatorName = f"nmkit^{model.name}^{model.version}"[:64]
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(str(path), enforce_file_format=True)
    return sr


def _segmentation_frame(seg_ds: Any, source: Any, segment_number: int) -> Any:
    """Reference to the frame(s) of one segment of a planar SEG (segment identification may be shared or per frame)."""
    import highdicom as hd

    frames = []
    shared = seg_ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg_ds else None
    for i, item in enumerate(seg_ds.PerFrameFunctionalGroupsSequence, start=1):
        ident = item.get("SegmentIdentificationSequence") or (shared.get("SegmentIdentificationSequence") if shared else None)
        if ident and int(ident[0].ReferencedSegmentNumber) == segment_number:
            frames.append(i)
    if not frames:  # an empty segment has no frame (omit_empty_frames): refer to the first frame
        frames = [1]
    src = hd.sr.SourceImageForSegmentation(str(source.SOPClassUID), str(source.SOPInstanceUID))
    return hd.sr.ReferencedSegmentationFrame(str(seg_ds.SOPClassUID), str(seg_ds.SOPInstanceUID), frames if len(frames) > 1 else frames[0],
                                             segment_number, src)


_COLOURS = np.array([[255, 40, 40], [40, 255, 40], [60, 120, 255], [255, 220, 0], [255, 0, 255], [0, 230, 230]], dtype=np.uint8)


def overlay_rgb(image2d: np.ndarray, labels2d: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Grey image (0 to 99.5th percentile) with each label's 1-pixel contour burned in colour."""
    from scipy import ndimage

    img = np.asarray(image2d, dtype=float)
    top = float(np.percentile(img, 99.5)) or float(img.max()) or 1.0
    grey = (np.clip(img / top, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for i, value in enumerate(label_values):
        sel = labels2d == value
        contour = sel & ~ndimage.binary_erosion(sel)
        rgb[contour] = _COLOURS[i % len(_COLOURS)]
    return rgb


def make_overlay(mask: Mask, image: Image, datasets: list[Any], path: Path, model: ModelTag, job_id: str) -> Any:
    """Secondary capture (RGB) of the image with contours burned in, for viewers that cannot show SEG.
    Volumes show the slice with the largest segmented area."""
    import highdicom as hd

    labels = np.asarray(mask.array)
    values = np.asarray(image.array).reshape(mask.spatial_shape)
    if mask.ndim_spatial == 3:
        k = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1)))
        labels, values, ref = labels[k], values[k], datasets[min(k, len(datasets) - 1)]
    else:
        ref = datasets[0]
    rgb = overlay_rgb(values, labels, sorted(mask.labels))
    orientation = tuple(getattr(ref, "PatientOrientation", None) or ("L", "F" if mask.ndim_spatial == 2 else "P"))
    sc = hd.sc.SCImage.from_ref_dataset(ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
                                        coordinate_system="PATIENT", series_instance_uid=output_uid(job_id, model.version, "overlay", "series"),
                                        series_number=SC_SERIES_NUMBER, sop_instance_uid=output_uid(job_id, model.version, "overlay", "sop"),
                                        instance_number=1, manufacturer="nmkit", patient_orientation=orientation[:2],
                                        series_description=f"AI overlay {model.label}"[:64])
    sc.ContentCreatorName = f"nmkit^{model.name}^{model.version}"[:64]
    sc.BurnedInAnnotation = "YES"
    path.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(str(path), enforce_file_format=True)
    return sc

