"""DICOM Segmentation objects (SEG) <-> masks, with highdicom.

Reading supports BINARY, FRACTIONAL (thresholded, or kept as probabilities with :func:`read_seg_fractions`),
overlapping segments and LABELMAP SEGs. A SEG is placed on the reference image's grid either frame by
frame through the source SOP instances it references (exact, no geometry needed) or, when it references
other instances, through its own plane positions and a nearest-neighbour resampling in patient space
(same frame of reference required). Without a reference the SEG's own derived volume geometry is used.

Writing makes a highdicom ``Segmentation`` referencing the source DICOM series of the reference image,
one segment per mask label, with the algorithm that produced it recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DicomReadError, GeometryError, InputError
from .dicom_series import read_dataset
from .image import Image, Mask, resample_to

log = logging.getLogger(__name__)

SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage", "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage"}


def is_seg(ds: Any) -> bool:
    return str(getattr(ds, "SOPClassUID", "")) in SEG_SOP_CLASSES


def _segread(path: str | Path):
    import highdicom as hd

    ds = read_dataset(path)
    if not is_seg(ds):
        raise DicomReadError(path, f"not a DICOM Segmentation (SOPClassUID {getattr(ds, 'SOPClassUID', 'missing')})")
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:
        raise DicomReadError(path, f"malformed Segmentation object ({type(exc).__name__}: {exc})") from exc


def _segments(seg, path: Path, segment_names: Sequence[str] | None,
              segment_numbers: Sequence[int] | None = None) -> dict[int, str]:
    """Segment number -> label (background 0 of label-map SEGs left out), optionally selected by label and/or number.

    Labels may repeat (a QIN-style SEG with ten "Neoplasm, Secondary" segments): a label selects every segment
    carrying it, each kept apart by its number."""
    numbers = [int(n) for n in seg.segment_numbers if int(n) != 0]
    names = {}
    for n in numbers:
        label = str(seg.get_segment_description(n).segment_label or f"segment_{n}")
        names[n] = label
    if not names:
        raise DicomReadError(path, "the Segmentation defines no segments")
    if segment_names is None and segment_numbers is None:
        return names
    chosen: dict[int, str] = {}
    if segment_names is not None:
        wanted = {w.lower() for w in segment_names}
        chosen.update({n: lab for n, lab in names.items() if lab.lower() in wanted})
        missing = wanted - {lab.lower() for lab in chosen.values()}
        if missing:
            raise InputError(path, f"segment(s) {sorted(missing)} not found; the SEG has {sorted(set(names.values()))}")
    if segment_numbers is not None:
        absent = sorted(int(n) for n in segment_numbers if int(n) not in names)
        if absent:
            raise InputError(path, f"segment number(s) {absent} not found; the SEG has {dict(sorted(names.items()))}")
        chosen.update({int(n): names[int(n)] for n in segment_numbers})
    return dict(sorted(chosen.items()))


def segment_creators(path: str | Path) -> dict[int, str]:
    """Segment number -> who or what made it: the segment's algorithm name (automatic segments), else the
    SEG's ContentCreatorName; segments with neither are left out. Reads the header only."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for broken files
        raise DicomReadError(path, f"cannot read the SEG header ({type(exc).__name__}: {exc})") from exc
    creator = str(getattr(ds, "ContentCreatorName", "") or "").strip()
    out: dict[int, str] = {}
    for item in getattr(ds, "SegmentSequence", []) or []:
        number = int(getattr(item, "SegmentNumber", 0) or 0)
        algorithm = str(getattr(item, "SegmentAlgorithmName", "") or "").strip()
        if number and (algorithm or creator):
            out[number] = algorithm or creator
    return out


def segment_labels(path: str | Path) -> dict[int, str]:
    """Segment number -> SegmentLabel from the header alone (no pixel data): what ``read_seg`` would name them."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for broken files
        raise DicomReadError(path, f"cannot read the SEG header ({type(exc).__name__}: {exc})") from exc
    names = {int(item.SegmentNumber): str(getattr(item, "SegmentLabel", "") or f"segment_{int(item.SegmentNumber)}")
             for item in getattr(ds, "SegmentSequence", []) or [] if int(getattr(item, "SegmentNumber", 0) or 0) != 0}
    if not names:
        raise DicomReadError(path, "the Segmentation defines no segments")
    return dict(sorted(names.items()))


def _decode_error(path: Path, exc: Exception) -> DicomReadError:
    ds_ts = ""
    try:
        import pydicom

        ds_ts = pydicom.dcmread(str(path), stop_before_pixels=True).file_meta.TransferSyntaxUID.name
    except Exception:
        pass
    hint = f" (transfer syntax {ds_ts})" if ds_ts else ""
    return DicomReadError(path, f"cannot decode the segmentation frames{hint}: {type(exc).__name__}: {exc}")


def _volume_to_image(volume, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """highdicom Volume (slice, row, column[, segment]) -> (array (segment, k, j, i), geometry kwargs)."""
    affine = np.asarray(volume.affine, dtype=float)
    cols = affine[:3, :3]
    spacing_kji = np.linalg.norm(cols, axis=0)
    if np.any(spacing_kji <= 0):
        raise DicomReadError(path, "the Segmentation's derived volume has a zero spacing")
    # our index (i, j, k) = volume axes (2, 1, 0)
    direction = np.column_stack([cols[:, 2] / spacing_kji[2], cols[:, 1] / spacing_kji[1], cols[:, 0] / spacing_kji[0]])
    arr = np.asarray(volume.array)
    if arr.ndim == 3:
        arr = arr[..., None]
    arr = np.moveaxis(arr, -1, 0)
    origin = affine[:3, 3]
    if np.linalg.det(direction) < 0:  # slices stored against the slice normal: flip so k runs along row x column, like stack_slices
        arr = arr[:, ::-1]
        origin = origin + cols[:, 0] * (arr.shape[1] - 1)
        direction[:, 2] = -direction[:, 2]
    geometry = dict(spacing=(spacing_kji[2], spacing_kji[1], spacing_kji[0]), origin=tuple(origin), direction=tuple(direction.ravel()))
    return arr, geometry


def _read_layers(path: str | Path, reference: Image | None, segment_names: Sequence[str] | None,
                 rescale: bool, segment_numbers: Sequence[int] | None = None) -> tuple[np.ndarray, dict[int, str], Image, Any]:
    """Per-segment layers (segment, k, j, i) on the reference grid (or the SEG's own), the segment names and the grid."""
    path = Path(path)
    seg = _segread(path)
    names = _segments(seg, path, segment_names, segment_numbers)
    numbers = sorted(names)
    coordinate_system = str(getattr(seg, "coordinate_system", "") or "")
    if coordinate_system.upper().endswith("SLIDE"):
        raise DicomReadError(path, "a slide-microscopy Segmentation (SLIDE coordinate system) has no patient-space volume; not supported")
    seg_for = str(getattr(seg, "FrameOfReferenceUID", "") or "")
    if reference is not None:
        if reference.ndim_spatial != 3:
            raise GeometryError(f"{path}: a SEG needs a 3D reference image, got {reference.ndim_spatial}D")
        ref_for = str(reference.meta.get("FrameOfReferenceUID", "") or "")
        if seg_for and ref_for and seg_for != ref_for:
            raise DicomReadError(path, f"SEG frame of reference {seg_for} does not match the image's FrameOfReferenceUID {ref_for}")
        sops = [str(s) for s in reference.meta.get("SOPInstanceUIDs") or []]
        referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
        by_instance = bool(sops) and len(sops) == reference.spatial_shape[0] and bool(referenced) and referenced <= set(sops)
        if by_instance and (int(seg.Rows), int(seg.Columns)) != tuple(reference.spatial_shape[1:]):
            by_instance = False
    else:
        sops, by_instance = [], False

    def frames_by_instance(ignore_spatial_locations: bool) -> np.ndarray:
        pixels = seg.get_pixels_by_source_instance(sops, segment_numbers=numbers, combine_segments=False,
                                                   assert_missing_frames_are_empty=True, rescale_fractional=rescale,
                                                   skip_overlap_checks=True, ignore_spatial_locations=ignore_spatial_locations)
        return np.moveaxis(np.asarray(pixels), -1, 0)

    if by_instance:
        try:
            return frames_by_instance(False), names, reference, seg
        except RuntimeError as exc:  # frames do not declare spatial locations preserved: place them by position instead
            log.debug("%s: source-instance indexing refused (%s); using plane positions", path, exc)
        except Exception as exc:
            raise _decode_error(path, exc) from exc
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, rescale_fractional=rescale, skip_overlap_checks=True)
    except Exception as exc:
        if by_instance:
            log.warning("%s: no usable plane positions; frames placed on the referenced source slices", path)
            try:
                return frames_by_instance(True), names, reference, seg
            except Exception as exc2:
                raise _decode_error(path, exc2) from exc2
        if "position" in str(exc).lower():
            raise DicomReadError(path, f"cannot derive a volume: the SEG's frames lack usable plane positions ({type(exc).__name__}: {exc}); "
                                       "give the reference image series") from exc
        raise _decode_error(path, exc) from exc
    layers, geometry = _volume_to_image(volume, path)
    own = Image(array=layers, modality="SEG", meta={"FrameOfReferenceUID": seg_for}, **geometry)
    if reference is None or own.same_grid(reference):
        grid = own if reference is None else reference
        return layers, names, grid, seg
    out = []
    for layer in layers:
        resampled = resample_to(own.with_array(layer.astype(np.float32)), reference, "nearest")
        out.append(resampled.array)
    return np.stack(out), names, reference, seg


def _meta(path: Path, seg, names: dict[int, str], grid: Image) -> dict[str, Any]:
    seg_type = getattr(seg, "segmentation_type", None)
    return {
        "source_files": [str(path)],
        "roi_format": "SEG",
        "segmentation_type": getattr(seg_type, "value", str(seg_type)),
        "segment_numbers": {name: n for n, name in sorted(names.items(), reverse=True)},  # first number of a repeated label
        "FrameOfReferenceUID": str(getattr(seg, "FrameOfReferenceUID", "") or grid.meta.get("FrameOfReferenceUID", "")),
        "ReferencedSeriesInstanceUID": grid.meta.get("SeriesInstanceUID", ""),
        "SeriesInstanceUID": str(getattr(seg, "SeriesInstanceUID", "")),
    }


def read_seg(path: str | Path, reference: Image | None = None, segment_names: Sequence[str] | None = None,
             threshold: float = 0.5, segment_numbers: Sequence[int] | None = None) -> Mask:
    """Read a SEG as an overlapping ``Mask`` (one binary layer per segment; label value = Segment Number).

    FRACTIONAL segments are binarised at ``threshold`` (fraction of the maximum, 0.5 by default); use
    :func:`read_seg_fractions` to keep them. ``reference`` (a 3D image from DICOM) puts the mask on that
    image's grid; without it the SEG's own volume geometry is used. ``segment_names`` selects segments
    by label (case-insensitive; a repeated label selects every segment carrying it), ``segment_numbers`` by
    Segment Number; both together select the union. Labels may repeat, numbers never do.
    """
    path = Path(path)
    layers, names, grid, seg = _read_layers(path, reference, segment_names, rescale=True, segment_numbers=segment_numbers)
    if np.issubdtype(layers.dtype, np.floating):
        binary = layers >= threshold
    else:
        binary = layers > 0
    mask = Mask.like(grid, binary, labels=dict(sorted(names.items())), overlapping=True)
    mask.meta = _meta(path, seg, names, grid)
    return mask


def read_seg_fractions(path: str | Path, reference: Image | None = None, segment_names: Sequence[str] | None = None,
                       segment_numbers: Sequence[int] | None = None) -> Image:
    """Read a SEG keeping fractional values: a float32 ``Image`` with one layer (leading axis) per segment.

    Values are fractions in [0, 1] (probability or occupancy, see ``meta["fractional_type"]``); binary
    segments read as 0/1. ``meta["segment_names"]`` lists the layers' names in order.
    """
    path = Path(path)
    layers, names, grid, seg = _read_layers(path, reference, segment_names, rescale=True, segment_numbers=segment_numbers)
    image = grid.with_array(layers.astype(np.float32), modality="SEG", units="fraction", meta=_meta(path, seg, names, grid))
    image.meta["segment_names"] = [names[n] for n in sorted(names)]
    image.meta["segment_numbers_in_order"] = sorted(names)
    ftype = getattr(seg, "segmentation_fractional_type", None)
    image.meta["fractional_type"] = getattr(ftype, "value", str(ftype or ""))
    return image


def _segment_description(number: int, name: str, algorithm_type, algorithm):
    """One SegmentSequence item: label, SNOMED-CT category/type (laterality modifier, anatomic region) from
    :func:`nmkit.io.snomed.segment_codes` (generic Tissue for names without a table entry)."""
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence

    from .snomed import segment_codes

    coded = segment_codes(name)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name, segmented_property_category=coded.category.to_pydicom(),
        segmented_property_type=coded.type.to_pydicom(), algorithm_type=algorithm_type, algorithm_identification=algorithm,
        anatomic_regions=[coded.region.to_pydicom()] if coded.region else None)
    if coded.modifier is not None:
        modifier = hd.sr.CodedConcept(coded.modifier.value, coded.modifier.scheme, coded.modifier.meaning)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = DicomSequence([modifier])
    return description


def write_seg(mask: Mask, reference: Image | Sequence[Any], path: str | Path, algorithm_name: str | None = "nmkit",
              algorithm_version: str | None = None, segment_names: Sequence[str] | None = None,
              series_description: str = "nmkit segmentation", labelmap: bool = False,
              manufacturer: str = "nmkit", series_number: int = 901, algorithm_source: str | None = None,
              algorithm_parameters: dict[str, str] | None = None) -> Path:
    """Write ``mask`` as a DICOM SEG that references the source series.

    ``reference``: the 3D image read from DICOM (its ``meta["source_files"]`` are read back to reference
    them) or the source pydicom datasets themselves, sorted like the image's slices. One segment per label
    (sorted label values), BINARY by default; ``labelmap=True`` writes a LABELMAP SEG (non-overlapping
    masks only). Each segment is coded in SNOMED-CT from its name (:mod:`nmkit.io.snomed`). ``algorithm_name=None``
    records a MANUAL segmentation, otherwise AUTOMATIC by that algorithm and version; ``algorithm_source`` (e.g. the
    engine) and ``algorithm_parameters`` (e.g. the weights' SHA-256, sliding-window settings) go into the
    AlgorithmIdentificationSequence too, so the SEG itself says which model made it.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    path = Path(path)
    if isinstance(reference, Image):
        files = list(reference.meta.get("source_files") or [])
        if len(files) != reference.spatial_shape[0]:
            raise InputError(path, "the reference image has no per-slice source_files to reference (read it from DICOM with stack_slices)")
        if not mask.same_grid(reference):
            raise GeometryError("the mask is not on the reference image's grid; resample it first (nmkit.io.resample_to)")
        sources = [read_dataset(f) for f in files]
    else:
        sources = list(reference)
        if len(sources) != mask.spatial_shape[0]:
            raise InputError(path, f"{len(sources)} source datasets for a mask of {mask.spatial_shape[0]} slices")
    values = sorted(mask.labels)
    names = list(segment_names) if segment_names is not None else [mask.labels[v] for v in values]
    if len(names) != len(values):
        raise InputError(path, f"{len(names)} segment names given for {len(values)} labels")
    layers = np.stack([mask.binary(v) for v in values], axis=-1)  # (k, j, i, segment)
    if labelmap and np.any(layers.sum(axis=-1) > 1):
        raise InputError(path, "a LABELMAP SEG cannot hold overlapping segments; write a BINARY SEG")
    if algorithm_name:
        parameters = {str(k): str(v) for k, v in (algorithm_parameters or {}).items()} or None
        algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name[:64], version=(algorithm_version or __version__)[:64],
                                                       family=codes.DCM.ArtificialIntelligence,
                                                       source=algorithm_source[:64] if algorithm_source else None,
                                                       parameters=parameters)
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    else:
        algorithm, algorithm_type = None, hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = [_segment_description(n, name, algorithm_type, algorithm) for n, name in enumerate(names, start=1)]
    if labelmap:
        pixel_array = np.zeros(layers.shape[:-1], dtype=np.uint8 if len(values) < 256 else np.uint16)
        for n in range(len(values)):
            pixel_array[layers[..., n]] = n + 1
        seg_type = hd.seg.SegmentationTypeValues.LABELMAP
    else:
        pixel_array = layers.astype(np.uint8)
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixel_array, segmentation_type=seg_type, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=manufacturer, manufacturer_model_name="nmkit", software_versions=__version__,
            device_serial_number="0", series_description=series_description[:64], omit_empty_frames=True,
        )
    except Exception as exc:
        raise InputError(path, f"cannot build a Segmentation from these sources ({type(exc).__name__}: {exc})") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return path
