"""Simulated expert readers drawing polygon ROIs on noisy planar thyroid scans.

Why: inter-reader agreement studies, label-noise experiments and "is the model within reader variability?"
questions need several plausible human delineations of the same image. Each simulated reader works on the
**noisy counts image** (never on the truth masks) and has its own habits, mirroring how physicians draw on a
workstation:

1. smooth the image (Gaussian, ``smooth_mm``) - the eye integrates noise;
2. iso-contour at ``threshold`` (fraction of the background-corrected maximum of the gland, above the 10th
   percentile of the neck region; clinical habits range 20-30 % of max). The maximum is taken where the gland can
   be (within ``GLAND_REACH_MM`` of the lobes, isthmus and reported nodules), as a reader windows on the gland and
   not on a salivary gland or a vessel at the edge of the neck;
3. keep the blobs the reader clicks on (lobe centres known from anatomy, with a few mm of hand uncertainty),
   fill holes (a cold nodule is still gland), optionally cut the isthmus (columns between the lobes whose
   vertical extent is small). A blob never reaches further than ``GLAND_REACH_MM`` from the gland's expected
   place: when a faint gland (thyroiditis) merges with the neck vessels at the iso-level, the reader stops the
   outline at the poles instead of following the vessels up the neck;
4. grow or shrink by a personal ``margin_mm`` (generous vs tight outliners);
5. draw: resample the outline every ~2 mm, add smooth hand ``jitter_mm`` normal to the contour, then
   simplify it to fewer vertices (Ramer-Douglas-Peucker, ``simplify_px``) as a mouse-drawn polygon has;
6. nodules: around each nodule the reader was told about (ultrasound/palpation: the truth centre plus a few mm
   of uncertainty), threshold the smoothed image half-way between the nodule's extreme and the surrounding
   gland, fit an ellipse to the blob's second moments, add ``nodule_margin_mm`` and draw it as a polygon.
   A nodule whose blob is not found (too faint in noise) is missed, as readers miss small cold nodules.

With three default readers (20/25/30 % thresholds, different smoothing/margins/isthmus habits) the mean
pairwise gland Dice over a mixed cohort lies around 0.9-0.95, the range reported for manual planar
thyroid ROIs.

Polygons use pixel coordinates ``[x, y]`` = (column, row) with pixel centres at integers (format
``nmkit-polygons/1``, see :mod:`nmkit.io.polygons`); a pixel belongs to a ROI when its centre is inside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

POLYGON_FORMAT = "nmkit-polygons/1"
#: how far (mm) outside the anatomically expected gland a reader's outline may reach (a 12 mm FWHM camera blurs
#: a gland edge by about 5 mm at the 20 % level; vessels merged with a faint gland run much further)
GLAND_REACH_MM = 8.0


@dataclass(frozen=True)
class ReaderStyle:
    """Drawing habits of one simulated reader (see the module docstring)."""

    name: str
    threshold: float  # fraction of (max - background) above background
    smooth_mm: float  # Gaussian sigma the eye applies
    margin_mm: float  # + generous, - tight
    include_isthmus: bool
    simplify_px: float  # RDP tolerance: larger = fewer vertices
    jitter_mm: float  # SD of the hand tremor normal to the contour
    nodule_margin_mm: float
    click_sd_mm: float = 2.0  # uncertainty of where the reader believes the lobes / nodules are


DEFAULT_READERS: tuple[ReaderStyle, ...] = (
    ReaderStyle("R1", threshold=0.20, smooth_mm=1.5, margin_mm=-0.2, include_isthmus=True, simplify_px=0.5, jitter_mm=0.3, nodule_margin_mm=1.0),
    ReaderStyle("R2", threshold=0.25, smooth_mm=2.5, margin_mm=0.3, include_isthmus=True, simplify_px=1.0, jitter_mm=0.5, nodule_margin_mm=0.5),
    ReaderStyle("R3", threshold=0.30, smooth_mm=2.0, margin_mm=0.6, include_isthmus=False, simplify_px=1.5, jitter_mm=0.6, nodule_margin_mm=0.0),
    ReaderStyle("R4", threshold=0.22, smooth_mm=3.0, margin_mm=0.0, include_isthmus=False, simplify_px=0.8, jitter_mm=0.4, nodule_margin_mm=1.5),
    ReaderStyle("R5", threshold=0.28, smooth_mm=1.0, margin_mm=0.4, include_isthmus=True, simplify_px=2.0, jitter_mm=0.8, nodule_margin_mm=0.5),
)


def default_readers(n: int = 3) -> tuple[ReaderStyle, ...]:
    """The first ``n`` (1-5) built-in reader styles."""
    if not 1 <= n <= len(DEFAULT_READERS):
        raise ValueError(f"between 1 and {len(DEFAULT_READERS)} simulated readers are available, asked for {n}")
    return DEFAULT_READERS[:n]


# ----- polygon helpers ----------------------------------------------------------------------------------
def rdp(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker simplification of an open polyline (keeps both ends)."""
    pts = np.asarray(points, dtype=float)
    if len(pts) < 3 or tolerance <= 0:
        return pts
    keep = np.zeros(len(pts), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        a, b = pts[i], pts[j]
        seg = pts[i + 1 : j] - a
        ab = b - a
        norm = math.hypot(ab[0], ab[1])
        if norm == 0:
            dist = np.hypot(seg[:, 0], seg[:, 1])
        else:
            dist = np.abs(seg[:, 0] * ab[1] - seg[:, 1] * ab[0]) / norm
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            m = i + 1 + k
            keep[m] = True
            stack.append((i, m))
            stack.append((m, j))
    return pts[keep]


def simplify_closed(points: np.ndarray, tolerance: float) -> np.ndarray:
    """RDP on a closed polygon, split at the two mutually farthest-ish vertices so the result stays closed."""
    pts = np.asarray(points, dtype=float)
    if len(pts) < 8 or tolerance <= 0:
        return pts
    far = int(np.argmax(np.hypot(*(pts - pts[0]).T)))
    first = rdp(pts[: far + 1], tolerance)
    second = rdp(np.vstack([pts[far:], pts[:1]]), tolerance)
    out = np.vstack([first[:-1], second[:-1]])
    return out if len(out) >= 3 else pts


def rasterize(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (col, row) lies inside an odd number of the polygons (matplotlib's Path test)."""
    from matplotlib.path import Path

    out = np.zeros(shape, dtype=bool)
    for poly in polygons:
        poly = np.asarray(poly, dtype=float)
        if len(poly) < 3:
            continue
        x0, y0 = np.floor(poly.min(axis=0)).astype(int)
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, shape[1] - 1), min(y1, shape[0] - 1)
        if x1 < x0 or y1 < y0:
            continue
        yy, xx = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
        inside = Path(poly).contains_points(np.column_stack([xx.ravel(), yy.ravel()])).reshape(xx.shape)
        out[y0 : y1 + 1, x0 : x1 + 1] ^= inside
    return out


def _contours(field: np.ndarray, level: float) -> list[np.ndarray]:
    """Closed iso-contours (x, y) of a 2D field at ``level`` (the field is padded so every contour closes)."""
    import contourpy

    low = min(float(field.min()), level) - 1.0
    padded = np.pad(field.astype(np.float64), 1, constant_values=low)
    gen = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate, corner_mask=False)
    out = []
    for line in gen.lines(level):
        pts = np.asarray(line, dtype=float) - 1.0
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) >= 3:
            out.append(pts)
    return out


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _hand_drawn(poly: np.ndarray, spacing: float, style: ReaderStyle, rng: np.random.Generator) -> np.ndarray:
    """Resample a contour every ~2 mm, add smooth tremor normal to it, simplify to fewer vertices."""
    from scipy.ndimage import gaussian_filter1d

    closed = np.vstack([poly, poly[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    perimeter = float(seg.sum())
    n = max(int(perimeter * spacing / 2.0), 8)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, perimeter, n, endpoint=False)
    pts = np.column_stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])])
    tangent = np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)
    tangent /= np.maximum(np.hypot(*tangent.T), 1e-9)[:, None]
    normal = np.column_stack([tangent[:, 1], -tangent[:, 0]])
    wobble = gaussian_filter1d(rng.standard_normal(n), 1.5, mode="wrap")
    wobble *= style.jitter_mm / spacing / max(float(wobble.std()), 1e-9)
    pts = pts + normal * wobble[:, None]
    return simplify_closed(pts, style.simplify_px)


def _cut_isthmus(mask: np.ndarray, midline_col: float, spacing: float) -> np.ndarray:
    """Remove the isthmus: contiguous columns around the midline whose vertical extent is < 45 % of the lobes'."""
    extent = mask.sum(axis=0).astype(float)
    if extent.max() == 0:
        return mask
    limit = 0.45 * extent.max()
    mid = int(round(min(max(midline_col, 0), mask.shape[1] - 1)))
    if extent[mid] >= limit:
        return mask  # no narrow neck at the midline: nothing to cut
    lo = mid
    while lo > 0 and extent[lo - 1] < limit:
        lo -= 1
    hi = mid
    while hi < mask.shape[1] - 1 and extent[hi + 1] < limit:
        hi += 1
    out = mask.copy()
    out[:, lo : hi + 1] = False
    return out


def expected_gland(params: dict[str, Any], n: int, spacing: float, reach_mm: float) -> np.ndarray:
    """Where a reader expects gland tissue: lobes, isthmus and reported nodules (from ``params``, i.e. anatomy and
    the referral) grown by ``reach_mm``; an ``n`` x ``n`` boolean image."""
    from scipy import ndimage

    from .thyroid import _shape_radius

    coords = (np.arange(n) - (n - 1) / 2.0) * spacing
    core = np.zeros((n, n), dtype=bool)
    for lobe in params.get("lobes", {}).values():
        cx, cy = lobe["centre_mm"]
        core |= _shape_radius(coords, cx, cy, lobe["width_mm"] / 2, lobe["length_mm"] / 2, math.radians(lobe["tilt_deg"]),
                              lobe.get("exponent", 2.0), lobe.get("taper", 0.0)) < 1.0
    isthmus = params.get("isthmus", {})
    if isthmus.get("present") and "centre_mm" in isthmus and len(params.get("lobes", {})) == 2:
        lobes = params["lobes"]
        half_span = abs(lobes["left"]["centre_mm"][0] - lobes["right"]["centre_mm"][0]) / 2
        ix, iy = isthmus["centre_mm"]
        core |= _shape_radius(coords, ix, iy, half_span, isthmus["height_mm"] / 2, 0.0, 4.0) < 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    for nod in params.get("nodules", []):
        nx, ny = nod["centre_mm"]
        core |= (xx - nx) ** 2 + (yy - ny) ** 2 <= nod["radius_mm"] ** 2
    if not core.any():
        return core
    return ndimage.distance_transform_edt(~core) * spacing <= reach_mm


# ----- reading one image --------------------------------------------------------------------------------
def read_case(counts: np.ndarray, spacing: float, params: dict[str, Any], style: ReaderStyle,
              rng: np.random.Generator) -> list[dict[str, Any]]:
    """ROIs one reader draws on a noisy counts image: ``[{"name", "frame", "points"}, ...]``.

    ``params`` (from :func:`nmkit.phantoms.thyroid.simulate_thyroid`) supplies only what a clinician knows
    before drawing: where the neck/thyroid is and where nodules were reported; contours come from the image.
    """
    from scipy import ndimage

    shape = counts.shape
    n = shape[0]
    img = ndimage.gaussian_filter(counts.astype(np.float64), style.smooth_mm / spacing)
    centre = (n - 1) / 2.0

    def to_px(p: Sequence[float]) -> np.ndarray:
        return np.array([p[0] / spacing + centre, p[1] / spacing + centre])

    lobes = params["lobes"]
    clicks = [to_px(lobes[s]["centre_mm"]) + rng.normal(0, style.click_sd_mm / spacing, 2) for s in ("right", "left")]
    # neck region the reader looks at: around the lobes, wide enough for goitres, excluding salivary glands
    half_w = max(abs(lobes["right"]["centre_mm"][0]), abs(lobes["left"]["centre_mm"][0])) + 0.5 * max(
        lobes["right"]["width_mm"], lobes["left"]["width_mm"]) + 15.0
    half_h = 0.5 * max(lobes["right"]["length_mm"], lobes["left"]["length_mm"]) + 15.0
    tc = params["thyroid_centre_mm"]
    c0, r0 = to_px([tc[0] - half_w, tc[1] - half_h])
    c1, r1 = to_px([tc[0] + half_w, tc[1] + half_h])
    r0, r1 = int(max(r0, 0)), int(min(r1, n - 1)) + 1
    c0, c1 = int(max(c0, 0)), int(min(c1, n - 1)) + 1
    sub = img[r0:r1, c0:c1]  # everything below works in the neck box (pixel offsets r0, c0)
    reach = expected_gland(params, n, spacing, GLAND_REACH_MM)[r0:r1, c0:c1]
    peak = float(sub[reach].max()) if reach.any() else float(sub.max())
    background = float(np.percentile(sub, 10))
    level = background + style.threshold * (peak - background)
    labels, _ = ndimage.label(sub > level)
    bh, bw = labels.shape

    def blob_at(col: int, row: int, search_mm: float) -> int:
        """Label under a click (box coordinates), else the nearest blob within ``search_mm``."""
        col, row = min(max(col, 0), bw - 1), min(max(row, 0), bh - 1)
        lab = int(labels[row, col])
        if lab == 0 and search_mm > 0:
            win = int(round(search_mm / spacing))
            ra, ca = max(row - win, 0), max(col - win, 0)
            near = labels[ra : row + win + 1, ca : col + win + 1]
            if near.any():
                rr, cc = np.nonzero(near)
                k = int(np.argmin((rr + ra - row) ** 2 + (cc + ca - col) ** 2))
                lab = int(near[rr[k], cc[k]])
        return lab

    chosen: set[int] = set()
    for click in clicks:  # clicked just outside a blob: take the nearest one within ~10 mm
        chosen.add(blob_at(int(round(click[0])) - c0, int(round(click[1])) - r0, 10.0))
    for nod in params.get("nodules", []):  # a reported hot nodule belongs to the gland outline too
        col, row = np.round(to_px(nod["centre_mm"])).astype(int)
        chosen.add(blob_at(int(col) - c0, int(row) - r0, 0.0))
    chosen.discard(0)
    gland_box = np.isin(labels, sorted(chosen)) if chosen else np.zeros(labels.shape, dtype=bool)
    if reach.any():
        gland_box &= reach
    gland_box = ndimage.binary_fill_holes(gland_box)
    if not style.include_isthmus:
        gland_box = _cut_isthmus(gland_box, float(np.mean([c[0] for c in clicks])) - c0, spacing)
    gland = np.zeros(shape, dtype=bool)
    gland[r0:r1, c0:c1] = gland_box

    rois: list[dict[str, Any]] = []
    if gland_box.any():
        # signed distance in mm (+ inside); its zero level runs half-way between inside and outside pixel
        # centres. Padding leaves room for a positive margin where the gland touches the box.
        pad = int(math.ceil(max(style.margin_mm, 0.0) / spacing)) + 2
        g = np.pad(gland_box, pad)
        inside = ndimage.distance_transform_edt(g) * spacing
        outside = ndimage.distance_transform_edt(~g) * spacing
        field = np.where(g, inside - 0.5 * spacing, -(outside - 0.5 * spacing))
        offset = np.array([c0 - pad, r0 - pad], dtype=float)
        for poly in _contours(field, -style.margin_mm):
            if abs(_polygon_area(poly)) * spacing * spacing < 20.0:  # specks under 20 mm^2 are not drawn
                continue
            rois.append({"name": "thyroid", "frame": 0, "points": _hand_drawn(poly + offset, spacing, style, rng)})

    for k, nod in enumerate(params.get("nodules", []), start=1):
        ellipse = _nodule_ellipse(img, to_px(nod["centre_mm"]) + rng.normal(0, 0.5 * style.click_sd_mm / spacing, 2),
                                  nod["kind"], nod["radius_mm"], spacing, gland)
        if ellipse is None:
            continue
        (cx, cy), (a, b), angle = ellipse
        a += style.nodule_margin_mm / spacing
        b += style.nodule_margin_mm / spacing
        m = max(int(2 * math.pi * max(a, b) * spacing / 2.0), 12)
        t = np.linspace(0, 2 * math.pi, m, endpoint=False)
        ca, sa = math.cos(angle), math.sin(angle)
        ex, ey = a * np.cos(t), b * np.sin(t)
        pts = np.column_stack([cx + ca * ex - sa * ey, cy + sa * ex + ca * ey])
        pts += rng.normal(0, 0.3 * style.jitter_mm / spacing, pts.shape)
        rois.append({"name": f"nodule_{k}", "frame": 0, "points": pts})
    for roi in rois:
        roi["points"] = np.clip(roi["points"], -0.5, n - 0.5)
    return rois


def _nodule_ellipse(img: np.ndarray, centre: np.ndarray, kind: str, reported_radius_mm: float, spacing: float,
                    gland: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float] | None:
    """Ellipse (centre, semi-axes px, angle rad) fitted to the nodule blob near ``centre``, or None if not seen."""
    from scipy import ndimage

    n = img.shape[0]
    win = int(math.ceil(2.2 * reported_radius_mm / spacing)) + 2
    col, row = np.clip(np.round(centre).astype(int), 0, n - 1)
    r0, r1 = max(row - win, 0), min(row + win + 1, n)
    c0, c1 = max(col - win, 0), min(col + win + 1, n)
    sub = img[r0:r1, c0:c1]
    yy, xx = np.mgrid[r0:r1, c0:c1]
    dist = np.hypot(xx - centre[0], yy - centre[1]) * spacing
    core = dist < 0.4 * reported_radius_mm
    ring = (dist > 1.3 * reported_radius_mm) & (dist < 2.0 * reported_radius_mm) & gland[r0:r1, c0:c1]
    if not core.any() or ring.sum() < 5:
        return None
    if kind == "cold":
        extreme = float(np.percentile(sub[core], 10))
        surround = float(np.percentile(sub[ring], 75))
        if surround <= extreme * 1.15:  # no visible defect
            return None
        blob = (sub < 0.5 * (extreme + surround)) & (dist < 1.6 * reported_radius_mm) & gland[r0:r1, c0:c1]
    else:
        extreme = float(np.percentile(sub[core], 90))
        surround = float(np.median(sub[ring]))
        if extreme <= surround * 1.15:
            return None
        blob = (sub > 0.5 * (extreme + surround)) & (dist < 1.8 * reported_radius_mm)
    labels, _ = ndimage.label(blob)
    lab = labels[row - r0, col - c0]
    if lab == 0:
        near = np.where(labels > 0, dist, np.inf)
        if not np.isfinite(near.min()) or near.min() > 0.5 * reported_radius_mm:
            return None
        lab = labels.flat[int(np.argmin(near))]
    ys, xs = np.nonzero(labels == lab)
    if len(xs) < 5:
        return None
    xs = xs + c0
    ys = ys + r0
    cx, cy = float(xs.mean()), float(ys.mean())
    cov = np.cov(np.vstack([xs - cx, ys - cy])) + np.eye(2) / 12.0
    evals, evecs = np.linalg.eigh(cov)
    a, b = 2.0 * np.sqrt(np.maximum(evals[::-1], 1e-6))  # uniform ellipse: variance = semi-axis^2 / 4
    angle = float(math.atan2(evecs[1, 1], evecs[0, 1]))
    return (cx, cy), (float(a), float(b)), angle


# ----- documents and masks ------------------------------------------------------------------------------
def polygon_document(rois: list[dict[str, Any]], image: str, reader: str) -> dict[str, Any]:
    """The ``nmkit-polygons/1`` JSON document (points rounded to 0.01 px for stable, compact files)."""
    return {
        "format": POLYGON_FORMAT,
        "image": image,
        "coordinates": "pixel",
        "reader": reader,
        "rois": [{"name": r["name"], "frame": int(r["frame"]),
                  "points": [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(r["points"])]} for r in rois],
    }


def rois_to_masks(rois: list[dict[str, Any]], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Rasterise ROIs by name (several polygons of one name combine even-odd, like RTSTRUCT contours)."""
    by_name: dict[str, list[np.ndarray]] = {}
    for roi in rois:
        by_name.setdefault(roi["name"], []).append(np.asarray(roi["points"], dtype=float))
    return {name: rasterize(polys, shape) for name, polys in by_name.items()}


def label_map(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, dict[int, str]]:
    """One uint8 label map: thyroid = 1, nodule_k = 1 + k (nodules drawn over the gland)."""
    out = np.zeros(shape, dtype=np.uint8)
    labels: dict[int, str] = {}
    if "thyroid" in masks:
        out[masks["thyroid"]] = 1
        labels[1] = "thyroid"
    for name in sorted((m for m in masks if m.startswith("nodule_")), key=lambda s: int(s.split("_")[1])):
        value = 1 + int(name.split("_")[1])
        out[masks[name]] = value
        labels[value] = name
    return out, labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def style_dict(style: ReaderStyle) -> dict[str, Any]:
    return asdict(style)
