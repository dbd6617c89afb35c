"""Planar polygon ROIs: rasterising polygons onto pixel grids, tracing masks back to polygons, and
the ``nmkit-polygons/1`` JSON format exported by workstations (and written by nmkit's phantom tools).

Pixel-centre convention (used everywhere in nmkit, also by the RTSTRUCT reader): a pixel belongs to a
polygon when its *centre* lies inside it. Pixel centres sit at integer continuous indices, so the pixel in
column ``i``, row ``j`` has its centre at ``(x, y) = (i, j)``. Several polygons on one plane combine by the
even-odd rule (exclusive or), which is how holes and islands are drawn in DICOM RTSTRUCT and most
workstation exports.

JSON format ``nmkit-polygons/1``::

    {
      "format": "nmkit-polygons/1",
      "image": "<relative path or SOPInstanceUID of the image the ROIs were drawn on>",
      "coordinates": "pixel" | "patient",
      "reader": "R1",
      "rois": [{"name": "thyroid", "frame": 0, "points": [[x, y], ...]}, ...]
    }

* ``coordinates == "pixel"``: ``points`` are ``[x, y]`` with ``x`` = column, ``y`` = row, in pixel units,
  pixel centres at integer positions (so ``[0, 0]`` is the centre of the first pixel).
* ``coordinates == "patient"``: ``points`` are ``[x, y, z]`` in millimetres (DICOM LPS patient coordinates);
  they must lie in the plane of the image (or of the frame) they were drawn on. For a 2D reference image,
  whose geometry is in-plane only, ``x, y`` are its 2D physical coordinates and ``z`` is ignored (written as 0).
* ``frame`` is the 0-based frame (slice) index for multi-frame or 3D references; 0 for a 2D image.
  Several entries with the same ``name`` and ``frame`` are XOR-combined (holes); entries with the same
  ``name`` on different frames build one multi-frame ROI.
* ``reader`` (optional) names the person or algorithm who drew the ROIs, for inter-reader studies.

ROI numbers: the format has none, so the ROIs are numbered 1, 2, ... by the order of their names' first appearance
in ``rois``; that number is the label value :func:`read_polygons` gives them (and what ``--roi 2`` selects).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import GeometryError, InputError
from .image import Image, Mask

log = logging.getLogger(__name__)

FORMAT = "nmkit-polygons/1"
#: in-plane tolerance (in slice units) for patient-coordinate points that should lie on a frame
PLANE_TOLERANCE = 0.25


# ----- rasterisation ------------------------------------------------------------------------------------
def fill_polygons(polygons: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd scanline fill of closed polygons on a ``(rows, cols)`` pixel grid.

    ``polygons``: arrays of shape ``(n, 2)`` holding ``(x, y)`` = (column, row) continuous indices; each is
    closed implicitly (the last point connects to the first). A pixel is set when its centre ``(i, j)`` is
    inside an odd number of polygons. Edges follow a half-open rule (a centre exactly on a left/bottom
    edge is inside, on a right/top edge outside) so that polygons sharing an edge never both claim a pixel.
    """
    rows, cols = int(shape[0]), int(shape[1])
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for poly in polygons:
        p = np.asarray(poly, dtype=float)
        if p.ndim != 2 or p.shape[1] != 2:
            raise GeometryError(f"a polygon must be an (n, 2) array of (x, y) points, got shape {p.shape}")
        if len(p) < 3:
            continue
        if not np.all(np.isfinite(p)):
            raise GeometryError("polygon points must be finite")
        starts.append(p)
        ends.append(np.roll(p, -1, axis=0))
    out = np.zeros((rows, cols), dtype=bool)
    if not starts:
        return out
    a = np.concatenate(starts)
    b = np.concatenate(ends)
    y0, y1 = a[:, 1], b[:, 1]
    keep = y0 != y1  # horizontal edges never cross a scanline under the half-open rule
    a, b, y0, y1 = a[keep], b[keep], y0[keep], y1[keep]
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    # scanlines j with ylo <= j < yhi, restricted to the grid
    jstart = np.clip(np.ceil(ylo), 0, rows).astype(np.int64)
    jstop = np.clip(np.ceil(yhi), 0, rows).astype(np.int64)
    counts = np.maximum(jstop - jstart, 0)
    total = int(counts.sum())
    if total == 0:
        return out
    edge = np.repeat(np.arange(len(a)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    j = jstart[edge] + offsets
    t = (j - y0[edge]) / (y1[edge] - y0[edge])
    x = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
    order = np.lexsort((x, j))
    j, x = j[order], x[order]
    if len(j) % 2:
        raise GeometryError("polygon scanline crossings are unpaired (non-finite or degenerate polygon)")
    ja, jb = j[0::2], j[1::2]
    if np.any(ja != jb):
        raise GeometryError("polygon scanline crossings are unpaired (non-finite or degenerate polygon)")
    # centres i with xa <= i < xb  ->  i in [ceil(xa), ceil(xb))
    ia = np.clip(np.ceil(x[0::2]), 0, cols).astype(np.int64)
    ib = np.clip(np.ceil(x[1::2]), 0, cols).astype(np.int64)
    diff = np.zeros((rows, cols + 1), dtype=np.int32)
    np.add.at(diff, (ja, ia), 1)
    np.add.at(diff, (ja, ib), -1)
    # crossings on one scanline are sorted, so spans never overlap: the running sum is 0 or 1 (even-odd)
    return np.cumsum(diff[:, :cols], axis=1) % 2 == 1


def mask_to_polygons(mask: np.ndarray | Mask) -> list[np.ndarray]:
    """Trace a 2D binary mask into closed polygons of ``(x, y)`` = (column, row) pixel coordinates.

    Uses marching squares at level 0.5 (contourpy, shipped with matplotlib). Outer boundaries and hole
    boundaries are returned alike; filling them back with :func:`fill_polygons` (even-odd) reproduces
    the mask exactly, because every traced edge crosses the midpoint between a set and an unset centre.
    Accepts a 2D array or a 2D ``Mask`` (any foreground).
    """
    import contourpy

    arr = mask.binary() if isinstance(mask, Mask) else np.asarray(mask)
    arr = np.asarray(arr).astype(bool)
    if arr.ndim != 2:
        raise GeometryError(f"mask_to_polygons needs a 2D mask, got shape {arr.shape}")
    if not arr.any():
        return []
    padded = np.pad(arr, 1).astype(np.float64)  # pad so that every boundary closes inside the grid
    gen = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate, corner_mask=False)
    polys = []
    for line in gen.lines(0.5):
        pts = np.asarray(line, dtype=float) - 1.0  # undo the padding
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) >= 3:
            polys.append(pts)
    return polys


# ----- JSON format -------------------------------------------------------------------------------------
def _planar_reference(reference: Image, path: Path) -> tuple[int, tuple[int, int]]:
    """Number of frames and the (rows, cols) plane shape of a 2D image or of the frames of a 3D/multi-frame one."""
    shape = reference.spatial_shape
    if reference.ndim_spatial == 2:
        return 1, (shape[0], shape[1])
    if reference.ndim_spatial == 3:
        return shape[0], (shape[1], shape[2])
    raise InputError(path, f"polygon ROIs need a 2D or 3D reference image, got {reference.ndim_spatial}D")


def load_polygon_json(path: str | Path) -> dict[str, Any]:
    """Read and validate an ``nmkit-polygons/1`` file; errors name the file and the problem."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(path, "file does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(path, f"not an {FORMAT} polygon file (format is {found!r})")
    coords = doc.get("coordinates")
    if coords not in ("pixel", "patient"):
        raise InputError(path, f"'coordinates' must be 'pixel' or 'patient', got {coords!r}")
    rois = doc.get("rois")
    if not isinstance(rois, list):
        raise InputError(path, "'rois' must be a list")
    dim = 2 if coords == "pixel" else 3
    for n, roi in enumerate(rois):
        if not isinstance(roi, dict) or not isinstance(roi.get("name"), str) or not roi["name"]:
            raise InputError(path, f"rois[{n}] needs a non-empty 'name'")
        frame = roi.get("frame", 0)
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise InputError(path, f"rois[{n}] ({roi['name']}): 'frame' must be a non-negative integer, got {frame!r}")
        try:
            pts = np.asarray(roi.get("points"), dtype=float)
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"rois[{n}] ({roi['name']}): 'points' is not a list of numbers") from exc
        if pts.ndim != 2 or pts.shape[1] != dim or len(pts) < 3 or not np.all(np.isfinite(pts)):
            raise InputError(path, f"rois[{n}] ({roi['name']}): 'points' must be at least 3 finite [{'x, y' if dim == 2 else 'x, y, z'}] "
                             f"entries for {coords} coordinates, got shape {pts.shape}")
    return doc


def polygon_roi_numbers(doc: dict[str, Any]) -> dict[int, str]:
    """ROI number -> name of a loaded ``nmkit-polygons/1`` document (1, 2, ... in order of first appearance)."""
    names: list[str] = []
    for roi in doc["rois"]:
        if roi["name"] not in names:
            names.append(roi["name"])
    return {i + 1: n for i, n in enumerate(names)}


def read_polygons(path: str | Path, reference: Image, roi_names: Sequence[str] | None = None,
                  roi_numbers: Sequence[int] | None = None) -> Mask:
    """Rasterise an ``nmkit-polygons/1`` file on the grid of ``reference``.

    ``reference`` is the planar image the ROIs were drawn on: a 2D image, or a 3D / multi-frame image whose
    frames are the slices along the last index axis (``frame`` = k). Returns an overlapping ``Mask`` (one
    layer per ROI name; label value = ROI number, 1.. in order of first appearance) on the reference grid;
    ``meta`` keeps the reader, the image reference and the source file. ``roi_names`` selects ROIs
    (case-insensitive), ``roi_numbers`` by number; both together select the union.
    """
    path = Path(path)
    doc = load_polygon_json(path)
    n_frames, plane = _planar_reference(reference, path)
    numbered = polygon_roi_numbers(doc)
    chosen = dict(numbered) if roi_names is None and roi_numbers is None else {}
    if roi_names is not None:
        wanted = {n.lower() for n in roi_names}
        missing = wanted - {n.lower() for n in numbered.values()}
        if missing:
            raise InputError(path, f"ROI(s) {sorted(missing)} not found; the file has {list(numbered.values())}")
        chosen.update({k: n for k, n in numbered.items() if n.lower() in wanted})
    if roi_numbers is not None:
        absent = sorted(int(k) for k in roi_numbers if int(k) not in numbered)
        if absent:
            raise InputError(path, f"ROI number(s) {absent} not found; the file has {numbered}")
        chosen.update({int(k): numbered[int(k)] for k in roi_numbers})
    chosen = dict(sorted(chosen.items()))
    names = list(chosen.values())
    per_roi: dict[tuple[str, int], list[np.ndarray]] = {}
    for n, roi in enumerate(doc["rois"]):
        if roi["name"] not in names:
            continue
        frame = int(roi.get("frame", 0))
        pts = np.asarray(roi["points"], dtype=float)
        if doc["coordinates"] == "patient":
            # a 2D reference has in-plane physical coordinates only: its (x, y) are the points' first two values
            idx = reference.physical_to_index(pts if reference.ndim_spatial == 3 else pts[:, :2])
            if reference.ndim_spatial == 3:
                k = idx[:, 2]
                if np.max(np.abs(k - frame)) > PLANE_TOLERANCE:
                    raise InputError(path, f"rois[{n}] ({roi['name']}): patient points lie at slice index {k.min():.2f}..{k.max():.2f}, "
                                     f"not in the plane of frame {frame}")
            idx = idx[:, :2]
        else:
            idx = pts
        if frame >= n_frames:
            raise InputError(path, f"rois[{n}] ({roi['name']}): frame {frame} is outside the reference's {n_frames} frame(s)")
        per_roi.setdefault((roi["name"], frame), []).append(idx)
    layers = np.zeros((len(names),) + tuple(reference.spatial_shape), dtype=bool)
    for (name, frame), polys in per_roi.items():
        filled = fill_polygons(polys, plane)
        layer = layers[names.index(name)]
        if reference.ndim_spatial == 2:
            layer[...] = filled
        else:
            layer[frame] = filled
    for name, layer in zip(names, layers):
        if not layer.any():
            log.warning("%s: ROI %r covers no pixel centre of the reference image", path, name)
    mask = Mask.like(reference, layers, labels=chosen, overlapping=True)
    mask.meta = {"source_files": [str(path)], "roi_format": FORMAT, "reader": doc.get("reader", ""), "image": doc.get("image", ""),
                 "FrameOfReferenceUID": reference.meta.get("FrameOfReferenceUID", "")}
    return mask


def write_polygons(mask: Mask, path: str | Path, image: str = "", coordinates: str = "pixel", reader: str = "") -> Path:
    """Trace every label of a 2D or 3D ``mask`` into polygons and write an ``nmkit-polygons/1`` file.

    ``image`` names the image the ROIs belong to (relative path or SOPInstanceUID); ``coordinates``
    selects pixel ``[x, y]`` or patient ``[x, y, z]`` mm points. Reading the file back on the same grid
    gives the same mask.
    """
    if coordinates not in ("pixel", "patient"):
        raise ValueError("coordinates must be 'pixel' or 'patient'")
    path = Path(path)
    rois = []
    for value, name in sorted(mask.labels.items()):
        binary = mask.binary(value)
        frames = [binary] if mask.ndim_spatial == 2 else list(binary)
        for frame, plane in enumerate(frames):
            for poly in mask_to_polygons(plane):
                if coordinates == "patient":
                    if mask.ndim_spatial == 2:  # triplets as the format requires; z = 0 in the image's own plane
                        pts = np.column_stack([mask.index_to_physical(poly), np.zeros(len(poly))])
                    else:
                        pts = mask.index_to_physical(np.column_stack([poly, np.full(len(poly), float(frame))]))
                else:
                    pts = poly
                rois.append({"name": name, "frame": frame, "points": np.round(pts, 4).tolist()})
    doc = {"format": FORMAT, "image": image, "coordinates": coordinates, "reader": reader, "rois": rois}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path
