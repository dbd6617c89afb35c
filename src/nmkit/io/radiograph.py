"""Projection radiographs (chest, dental ...) as 2D ``Image``: PNG/JPEG/TIFF files and DICOM CR/DX objects.

One reader, :func:`read_radiograph`, used by ``nmkit.io.reader.read_image`` (for these file types and for DICOM
projection-radiography objects) and by the diffusion-model training data (``nmkit.generate.data``).

What it does, and why:

* **Bitmaps** (8/16-bit grey, palette, RGB(A) -> luma; JPEG EXIF orientation applied): values kept as stored
  (0..255 or 0..65535). A bitmap carries no trustworthy geometry (a DPI tag describes a print, not the patient), so
  the spacing is 1 (pixel units) with ``meta["spacing_assumed"] = True`` and ``meta["spacing_source"] = "none"``.
* **DICOM**: Modality LUT / rescale, then the VOI LUT or the first window (``pydicom``'s ``apply_voi_lut``) when the
  object has one, so the values are what the modality intended to be displayed; then **MONOCHROME1** (low values
  bright, common for CR) is inverted to **MONOCHROME2** over the output range, so bone and soft tissue are bright in
  every radiograph nmkit reads (training on mixed CR/DX/PNG sets needs one polarity).
* **Spacing** (mm, physical order x, y): ``PixelSpacing`` (calibrated at the patient), else ``ImagerPixelSpacing``
  (at the detector: includes the geometric magnification, ``EstimatedRadiographicMagnificationFactor`` is recorded
  when present), else ``NominalScannedPixelSpacing`` (digitised film); zero or missing values fall through. The
  attribute used is recorded in ``meta["spacing_source"]``; when none is usable the spacing is 1 mm and
  ``meta["spacing_assumed"]`` is True.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DicomReadError, InputError
from .image import Image

log = logging.getLogger(__name__)

BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: DICOM modalities of projection radiography (computed, digital, intra-oral, panoramic, mammography, radiographic)
RADIOGRAPH_MODALITIES = ("CR", "DX", "IO", "PX", "MG", "RG")
#: SOP class root of CR (itself) and DX / MG / IO (``.1``, ``.2``, ``.3`` and their sub-classes)
RADIOGRAPH_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.1",)
SPACING_ATTRIBUTES = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def is_bitmap_file(path: str | Path) -> bool:
    """True for PNG/JPEG/TIFF file names."""
    return str(path).lower().endswith(BITMAP_SUFFIXES)


def is_radiograph_dataset(ds: Any) -> bool:
    """True for single-image projection-radiography objects (CR, DX, MG, IO ... by modality or SOP class)."""
    modality = str(getattr(ds, "Modality", "") or "").upper()
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 or int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        return False
    base = RADIOGRAPH_SOP_PREFIXES[0]
    return modality in RADIOGRAPH_MODALITIES or sop == base or sop.startswith(base + ".")


def read_radiograph(path: str | Path, voi: bool = True, invert_monochrome1: bool = True) -> Image:
    """A radiograph file (PNG/JPEG/TIFF or a DICOM CR/DX object) as a 2D float32 ``Image`` (MONOCHROME2 polarity).

    ``voi``: apply the DICOM VOI LUT / window when present; ``invert_monochrome1``: MONOCHROME1 -> MONOCHROME2.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "radiograph file does not exist")
    if is_bitmap_file(path):
        return read_bitmap(path)
    return read_dicom_radiograph(path, voi=voi, invert_monochrome1=invert_monochrome1)


def read_bitmap(path: str | Path) -> Image:
    """A PNG/JPEG/TIFF as a 2D grey image: stored values (8 or 16 bit), colour as ITU-R 601 luma, spacing 1 pixel."""
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with PILImage.open(path) as im:
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if n_frames > 1:
                raise InputError(path, f"holds {n_frames} images (pages/frames); a radiograph file must hold one")
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im).astype(np.float32)
                bits = 16 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255) else 8 if mode != "F" else 32
            elif mode in ("L", "1"):
                arr, bits = np.asarray(im.convert("L"), dtype=np.float32), 8
            else:  # P, LA, RGB, RGBA, CMYK ...: luma (alpha dropped)
                arr, bits = np.asarray(im.convert("RGB").convert("F"), dtype=np.float32), 8
            fmt = str(im.format or path.suffix.lstrip(".").upper()) if hasattr(im, "format") else path.suffix
            dpi = im.info.get("dpi")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable image file ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2D grey image, got array shape {arr.shape}")
    meta = {"source_files": [str(path)], "format": fmt, "mode": mode, "bit_depth": bits, "geometry": "unknown (bitmap)",
            "spacing_assumed": True, "spacing_source": "none", "photometric_interpretation": "MONOCHROME2"}
    if dpi:
        meta["dpi_tag"] = [float(v) for v in dpi]  # recorded, not used: a print resolution, not a patient spacing
    return Image(array=arr, spacing=(1.0, 1.0), modality="", meta=meta)


def pixel_spacing(ds: Any) -> tuple[tuple[float, float], str]:
    """((x, y) spacing in mm, the attribute it came from) or ((1, 1), "none") when no attribute is usable."""
    for keyword in SPACING_ATTRIBUTES:
        value = getattr(ds, keyword, None)
        try:
            values = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            values = []
        if len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values):
            return (values[1], values[0]), keyword  # DICOM gives (row spacing = y, column spacing = x)
        if value is not None:
            log.info("%s %r is not a usable spacing; trying the next attribute", keyword, value)
    return (1.0, 1.0), "none"


def _modality_range(ds: Any) -> tuple[float, float]:
    """Range of the values after the Modality LUT / rescale (the same rule pydicom's windowing uses)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    lo, hi = (0.0, float(2**bits - 1)) if int(getattr(ds, "PixelRepresentation", 0) or 0) == 0 else \
        (float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1))
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _voi(ds: Any, arr: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, Any], tuple[float, float]]:
    """Apply the VOI LUT (preferred) or the first window; return values, what was applied, and the output range."""
    from pydicom.pixels import apply_voi_lut

    out_range = _modality_range(ds)
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        desc = [int(v) for v in item.LUTDescriptor]
        values = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        return values, {"voi": "VOI LUT sequence", "voi_lut_explanation": str(item.get("LUTExplanation", ""))}, (0.0, float(2 ** desc[2] - 1))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = ds["WindowCenter"], ds["WindowWidth"]
        c = float(centre.value[0] if centre.VM > 1 else centre.value)
        w = float(width.value[0] if width.VM > 1 else width.value)
        if w < 1:
            log.warning("%s: window width %g is not usable; VOI not applied", path, w)
            return arr, {"voi": "none (invalid window)"}, out_range
        values = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        return values, {"voi": "window", "window_center": c, "window_width": w,
                        "voi_lut_function": str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")}, out_range
    return arr, {"voi": "none"}, out_range


def read_dicom_radiograph(path: str | Path, voi: bool = True, invert_monochrome1: bool = True) -> Image:
    """A single-frame grey DICOM radiograph: Modality LUT, VOI (when present and ``voi``), MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut

    from .dicom_series import dataset_meta, pixel_array, read_dataset

    path = Path(path)
    ds = read_dataset(path)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise DicomReadError(path, f"a colour image ({ds.PhotometricInterpretation}); radiographs are grey")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
        raise DicomReadError(path, f"{ds.NumberOfFrames} frames; a radiograph has one")
    raw = pixel_array(ds, path)
    try:
        arr = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        meta_voi: dict[str, Any] = {"voi": "not applied (voi=False)"}
        out_range = _modality_range(ds)
        if voi:
            arr, meta_voi, out_range = _voi(ds, arr, path)
            arr = np.asarray(arr, np.float64)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise DicomReadError(path, f"cannot apply the modality/VOI LUT ({type(exc).__name__}: {exc})") from exc
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    inverted = invert_monochrome1 and photometric == "MONOCHROME1"
    if inverted:
        arr = out_range[0] + out_range[1] - arr
    spacing, source = pixel_spacing(ds)
    meta = dataset_meta(ds)
    meta.update(meta_voi)
    meta.update(source_files=[str(path)], photometric_interpretation=photometric, inverted_to_monochrome2=inverted,
                value_range=list(out_range), spacing_source=source, spacing_assumed=source == "none",
                bits_stored=int(getattr(ds, "BitsStored", 0) or 0))
    for keyword in ("EstimatedRadiographicMagnificationFactor", "ViewPosition", "BodyPartExamined", "PresentationLUTShape",
                    "PixelSpacingCalibrationType"):
        value = getattr(ds, keyword, None)
        if value not in (None, ""):
            meta[keyword] = float(value) if keyword.startswith("Estimated") else str(value)
    if source == "none":
        log.info("%s: no usable pixel spacing; 1 mm assumed", path)
    return Image(array=arr.astype(np.float32), spacing=spacing, modality=str(getattr(ds, "Modality", "") or ""), meta=meta)
