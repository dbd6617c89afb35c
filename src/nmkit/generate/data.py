"""Training images for diffusion models: a folder of 2D images, or thyroid scintigraphy phantoms with masks.

Every image keeps its geometry (``nmkit.io.image.Image``); images are resized to the model's square size only
when they are turned into tensors (``stack_images``), and the pixel spacing of the resized grid is recorded.
Unreadable files are logged and skipped (a bad file never stops a training run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..io.image import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", "")
#: thyroid mask labels used for conditioning: gland tissue without nodules, cold nodules, hot nodules
THYROID_LABELS = {1: "gland", 2: "cold_nodule", 3: "hot_nodule"}


@dataclass
class TrainingImage:
    """One 2D training image with an optional integer label map on the same grid."""

    name: str
    image: Image
    label: np.ndarray | None = None


def read_png(path: Path) -> Image:
    """A PNG/JPEG/TIFF (or DICOM radiograph) as a 2D grey image (``nmkit.io.radiograph.read_radiograph``)."""
    from ..io.radiograph import read_radiograph

    return read_radiograph(path)


def read_2d(path: str | Path) -> Image:
    """Read one 2D image (NIfTI/NRRD/MHA with one slice, PNG, planar DICOM); refuses volumes with a clear error."""
    from ..segment.data import load_image

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    from ..io.radiograph import is_bitmap_file

    image = read_png(path) if is_bitmap_file(path) else load_image(path)
    if image.ndim_spatial != 2 or image.array.ndim != 2:
        raise InputError(path, f"expected a single 2D image, got array shape {image.array.shape} "
                               f"({image.ndim_spatial}D geometry); extract slices first")
    return image


def load_folder(folder: str | Path, limit: int | None = None) -> list[TrainingImage]:
    """All readable 2D images under ``folder`` (sorted by path); unreadable files are logged and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.name.lower().endswith(IMAGE_SUFFIXES[:-1]) or p.suffix == ""))
    out: list[TrainingImage] = []
    for path in files:
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(TrainingImage(name=str(path.relative_to(folder)), image=read_2d(path)))
        except Exception as exc:  # batch job: log and skip
            log.warning("skipping %s: %s", path, exc)
    if not out:
        raise InputError(folder, "no readable 2D images found")
    return out


def thyroid_label_map(case) -> np.ndarray:
    """Conditioning label map of a simulated thyroid: 1 gland tissue, 2 cold nodule, 3 hot nodule."""
    label = np.zeros(case.counts.shape, np.int64)
    label[case.truth["gland"]] = 1
    for nodule in case.nodules:
        label[case.truth[nodule["name"]]] = 2 if nodule["kind"] == "cold" else 3
    return label


def thyroid_phantoms(n: int, seed: int = 1, matrix: int = 64, pathologies: Sequence[str] = ("normal", "cold_nodules"),
                     count_range: tuple[float, float] = (100_000, 400_000), isotope: str = "Tc99m") -> list[TrainingImage]:
    """``n`` simulated anterior thyroid scans (Poisson counts) with label maps; deterministic for a seed."""
    from ..phantoms.thyroid import simulate_thyroid

    out = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence((seed, i)))
        pathology = pathologies[i % len(pathologies)]
        total = float(rng.uniform(*count_range))
        case = simulate_thyroid((seed, i), pathology=pathology, isotope=isotope, total_counts=total, matrix=matrix)
        image = Image(array=case.counts.astype(np.float32), spacing=case.spacing, modality="NM", units="counts",
                      meta={"phantom": "thyroid", "pathology": pathology, "total_counts": total, "seed": [seed, i]})
        out.append(TrainingImage(name=f"thyroid_{seed}_{i:04d}", image=image, label=thyroid_label_map(case)))
    return out


def resize(array: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resize a 2D array to ``size`` x ``size`` (order 1 for images, 0 for labels)."""
    from scipy.ndimage import zoom

    if array.shape == (size, size):
        return np.asarray(array)
    factors = (size / array.shape[0], size / array.shape[1])
    return zoom(np.asarray(array, dtype=np.float32 if order else array.dtype), factors, order=order, mode="nearest", grid_mode=True)


def resized_spacing(image: Image, size: int) -> tuple[float, float]:
    """Pixel spacing (x, y) of ``image`` resampled to a ``size`` x ``size`` grid covering the same field."""
    ny, nx = image.spatial_shape
    return (image.spacing[0] * nx / size, image.spacing[1] * ny / size)


def one_hot(label: np.ndarray, n_labels: int) -> np.ndarray:
    """Integer label map (H, W) -> (n_labels, H, W) float32 binary channels for labels 1..n_labels."""
    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > n_labels:
        raise ValueError(f"label values must lie in 0..{n_labels}, got {label.min()}..{label.max()}")
    return np.stack([(label == v) for v in range(1, n_labels + 1)]).astype(np.float32)


def make_nodule_mask(gland: np.ndarray, diameter_mm: float, spacing: Sequence[float], rng: np.random.Generator | int,
                     kind: str = "cold") -> np.ndarray:
    """A conditioning label map: the gland with one round nodule of ``diameter_mm`` placed where it fits.

    The nodule centre is drawn among gland pixels whose distance to the gland edge is at least the nodule radius
    (else the deepest pixel); labels: 1 gland, 2 cold nodule (3 when ``kind='hot'``).
    """
    from scipy.ndimage import distance_transform_edt

    gland = np.asarray(gland, bool)
    if not gland.any():
        raise ValueError("the gland mask is empty")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    sx, sy = float(spacing[0]), float(spacing[1])
    depth = distance_transform_edt(gland, sampling=(sy, sx))
    radius = diameter_mm / 2.0
    candidates = np.argwhere(depth >= radius)
    centre = candidates[rng.integers(len(candidates))] if len(candidates) else np.unravel_index(np.argmax(depth), depth.shape)
    yy, xx = np.indices(gland.shape)
    disc = ((yy - centre[0]) * sy) ** 2 + ((xx - centre[1]) * sx) ** 2 <= radius**2
    label = gland.astype(np.int64)
    label[disc] = 2 if kind == "cold" else 3
    return label


def load_source(source: dict[str, Any]) -> list[TrainingImage]:
    """Training images from a recorded source: ``{"kind": "folder", "path"[, "names"]}`` (``names``: only these files,
    relative to the folder, e.g. a patient-level training split), ``{"kind": "manifest", "path", "split"}``
    or ``{"kind": "thyroid_phantoms", "n", "seed", "matrix", "pathologies"}``."""
    kind = source.get("kind")
    if kind == "folder":
        images = load_folder(source["path"], source.get("limit"))
        if source.get("names") is not None:
            keep = set(source["names"])
            images = [i for i in images if i.name in keep]
            if not images:
                raise InputError(source["path"], "none of the recorded training files is in the folder")
        return images
    if kind == "manifest":
        return load_manifest(source["path"], source.get("split"), source.get("limit"))
    if kind == "thyroid_phantoms":
        return thyroid_phantoms(int(source["n"]), int(source.get("seed", 1)), int(source.get("matrix", 64)),
                                tuple(source.get("pathologies", ("normal", "cold_nodules"))))
    raise InputError(None, f"unknown training source {source!r}")


def load_manifest(path: str | Path, split: str | None = "train", limit: int | None = None) -> list[TrainingImage]:
    """Images (with their label map when the row has one) of a case table's split (``nmkit.dataset``; every row when
    ``split`` is None); unreadable cases are logged and skipped."""
    from ..dataset import single_label_map
    from ..segment.data import load_case, read_manifest

    table = read_manifest(path, require=("image", "split") if split else ("image",))
    if split:
        table = table[table["split"] == split]
    out: list[TrainingImage] = []
    for row in table.to_dict(orient="records"):
        if limit is not None and len(out) >= limit:
            break
        mask = single_label_map(row, path)
        try:
            case = load_case(row["image"], mask, str(row["case_id"]))
            if case.image.ndim_spatial != 2:
                raise InputError(row["image"], "expected a 2D image")
            out.append(TrainingImage(name=case.case_id, image=case.image, label=case.label if mask else None))
        except Exception as exc:  # batch job: log and skip
            log.warning("skipping case %s: %s", row["case_id"], exc)
    if not out:
        raise InputError(path, "no readable 2D cases in the manifest" + (f" (split {split!r})" if split else ""))
    return out


def thyroid_nodule_conditions(n: int, diameter_mm: float, seed: int = 0, matrix: int = 64, kind: str = "cold") -> tuple[list[np.ndarray], tuple[float, float]]:
    """``n`` conditioning label maps: simulated normal glands, each with one nodule of ``diameter_mm``; and the spacing."""
    from ..phantoms.thyroid import simulate_thyroid

    maps, spacing = [], (1.0, 1.0)
    for i in range(n):
        case = simulate_thyroid((seed, 10_000 + i), pathology="normal", matrix=matrix)
        spacing = case.spacing
        maps.append(make_nodule_mask(case.truth["gland"], diameter_mm, case.spacing, np.random.default_rng((seed, i)), kind))
    return maps, spacing
