"""IBSI-1 morphological features (3D, always on the morphological mask; integrated intensity and the spatial
autocorrelation indices use intensities of the intensity mask).

The surface is the marching-cubes mesh (scikit-image) of the zero-padded mask at level 0.5, in physical mm; its
volume and area are summed from per-corner-pattern tables of the 2x2x2 cells and its convex hull is built from the
outermost points of each grid line, so the mesh itself is never built (``mesh`` still gives it).
Moran's I and Geary's C are exact over all voxel pairs with inverse-distance weights: on a regular grid the pair
sums are correlations with the kernel 1/|d| (0 at d = 0) summed over all shifts, i.e. by Parseval sums over
frequencies of kernel spectrum x cross-spectrum of zero-padded arrays (``_fft.kernel_pair_sums``: forward
transforms only, kernel spectrum as a DCT-I of one octant). That is mathematically identical to the O(N^2) double
sum (tests compare the two) but takes milliseconds for ROIs of 10^5 voxels.
With the compiled module (``_native.native("_cmorph")``) the mask scans, the hull (exact integer quickhull on the
same candidate points) and the Moran rows and sums are C loops; the NumPy code below stays the fallback and the
reference (tests/test_radiomics_native_morph.py compares both).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._fft import (ArrayCache, even_fast_len, kernel_pair_sums, native_pair_sums, scratch, slab_weights,
                   unfolded_weights)
from ._native import native
from .preprocess import ProcessedROI


def _bbox_slices(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of a non-empty 3D mask from its axis projections (no list of voxel indices)."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    plane = mask[z[0]:z[-1] + 1].any(axis=0)
    y = np.flatnonzero(plane.any(axis=1))
    x = np.flatnonzero(plane.any(axis=0))
    return slice(int(z[0]), int(z[-1]) + 1), slice(int(y[0]), int(y[-1]) + 1), slice(int(x[0]), int(x[-1]) + 1)


def mesh(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (n, 3) in mm, ordered (z, y, x) like the array, and triangle faces (m, 3).

    Marching cubes runs on the mask's bounding box only (plus the one-voxel zero frame); vertices are then shifted
    back to the coordinates of ``mask``."""
    from skimage.measure import marching_cubes

    lo = [int(np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0]) for a in range(3)]
    hi = [int(np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[-1]) + 1 for a in range(3)]
    padded = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32), 1)
    sp = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    verts, faces, _n, _v = marching_cubes(padded, level=0.5, spacing=sp, allow_degenerate=True)
    verts += (np.asarray(lo) - 1) * np.asarray(sp)  # undo the crop and the one-voxel frame
    return verts, faces


def mesh_volume_area(verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Volume (divergence theorem: signed tetrahedra from the origin) and area of a closed triangle mesh."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    u, v = b - a, c - a
    cx = u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1]
    cy = u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2]
    cz = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    area = 0.5 * float(np.sqrt(cx * cx + cy * cy + cz * cz).sum())
    # a . (b x c)
    triple = (a[:, 0] * (b[:, 1] * c[:, 2] - b[:, 2] * c[:, 1]) + a[:, 1] * (b[:, 2] * c[:, 0] - b[:, 0] * c[:, 2])
              + a[:, 2] * (b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]))
    volume = abs(float(triple.sum()) / 6.0)
    return volume, area


@functools.lru_cache(maxsize=16)
def _cube_tables(spacing_zyx: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching-cubes surface pieces of each of the 256 corner patterns of one 2x2x2 cell, for a binary mask.

    On a binary mask at level 0.5 every vertex is an edge midpoint and the triangles of a cell depend only on
    its 8 corners (including Lewiner's ambiguity tests), so the mesh is a sum of per-pattern pieces. Returned per
    pattern (bit ``4 dz + 2 dy + dx`` set when that corner is inside): triangle area ``(256,)``; ``a.(b x c)``
    summed over its triangles with the cell corner at the origin ``(256,)``; and ``a x b + b x c + c x a``
    summed ``(256, 3)``, so that a cell at ``p`` adds ``t0 + p.s`` to the divergence-theorem volume sum
    (``6 V``). The triangles are scikit-image's ``marching_cubes`` ones for each pattern, stored in
    ``_cube_table`` (half-voxel coordinates, scaled here by the spacing); read-only arrays.
    """
    from ._cube_table import COUNTS, TRIANGLES

    counts = np.frombuffer(COUNTS.encode(), dtype=np.uint8).astype(np.intp) - 48
    half = np.frombuffer(TRIANGLES.encode(), dtype=np.uint8).astype(np.float64) - 48.0
    tri = (half * 0.5).reshape(-1, 3, 3) * np.asarray(spacing_zyx, dtype=np.float64)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    area, t0, s = np.zeros(256), np.zeros(256), np.zeros((256, 3))
    area[1:255] = 0.5 * np.add.reduceat(np.linalg.norm(np.cross(b - a, c - a), axis=1), starts)
    t0[1:255] = np.add.reduceat(np.einsum("ij,ij->i", a, np.cross(b, c)), starts)
    s[1:255] = np.add.reduceat(np.cross(a, b) + np.cross(b, c) + np.cross(c, a), starts, axis=0)
    for t in (area, t0, s):
        t.flags.writeable = False
    return area, t0, s


def _cube_tables_from_skimage(spacing_zyx: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_cube_tables`` computed by running scikit-image's ``marching_cubes`` on every pattern (what the stored
    table was made from; the tests compare the two)."""
    from skimage.measure import marching_cubes

    area, t0, s = np.zeros(256), np.zeros(256), np.zeros((256, 3))
    for code in range(1, 255):
        cell = np.array([(code >> k) & 1 for k in range(8)], dtype=np.float32).reshape(2, 2, 2)
        verts, faces, _n, _v = marching_cubes(cell, level=0.5, spacing=spacing_zyx, allow_degenerate=True)
        a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
        area[code] = 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
        t0[code] = float(np.einsum("ij,ij->", a, np.cross(b, c)))
        s[code] = (np.cross(a, b) + np.cross(b, c) + np.cross(c, a)).sum(0)
    return area, t0, s


def mask_volume_area(mask: np.ndarray, spacing_xyz) -> tuple[float, float]:
    """Volume and area of the marching-cubes mesh of a binary mask (as ``mesh_volume_area(*mesh(mask))``),
    without building the mesh: each 2x2x2 cell of the zero-padded mask is classified by its corner pattern and
    the per-pattern surface pieces (``_cube_tables``) are summed with their counts (divergence theorem for the
    volume, exact up to round-off)."""
    sp = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
    m = np.pad(mask[_bbox_slices(mask)], 1).view(np.uint8)
    nz, ny, nx = (n - 1 for n in m.shape)
    code = np.zeros((nz, ny, nx), dtype=np.uint8)
    for k in range(8):
        dz, dy, dx = k >> 2, (k >> 1) & 1, k & 1
        code |= m[dz:dz + nz, dy:dy + ny, dx:dx + nx] << np.uint8(k)
    code = code.ravel()
    cells = np.flatnonzero((code != 0) & (code != 255))  # cells the surface passes through
    c = code[cells]
    counts = np.bincount(c, minlength=256)
    iz, rest = np.divmod(cells, ny * nx)
    iy, ix = np.divmod(rest, nx)
    index_sums = [np.bincount(c, weights=idx.astype(np.float64), minlength=256) for idx in (iz, iy, ix)]
    return _volume_area_from_counts(counts, index_sums, sp)


def _volume_area_from_counts(counts: np.ndarray, index_sums, sp: tuple[float, float, float]) -> tuple[float, float]:
    """Mesh volume and area from the number of cells of each corner pattern and the sums of their (z, y, x) cell
    indices per pattern (``index_sums[axis]``, exact integers as float64), with the tables of ``_cube_tables``."""
    area_t, t0_t, s_t = _cube_tables(sp)
    area = float(counts @ area_t)
    six_v = float(counts @ t0_t)
    for axis in range(3):  # sum over cells of p.s, grouped by pattern
        six_v += sp[axis] * float(index_sums[axis] @ s_t[:, axis])
    return abs(six_v) / 6.0, area


def _hull_points(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Points (mm, z y x, relative to the mask's bounding box) whose convex hull is that of the marching-cubes
    vertices of a binary mask, but far fewer of them.

    Vertices are midpoints of edges between an inside and an outside voxel; along any grid line they lie between
    the two outermost ones (half a voxel beyond the first and the last inside voxel), so only those two per line
    along each axis can be hull corners. Of these, a line's first point is dropped when it is no closer to the
    start than the mean of its two neighbouring lines' first points (then it lies within the triangle of those two
    and the line's last point), likewise for the last points: only points that are not extreme are dropped, so the
    hull is unchanged.
    """
    m = mask[_bbox_slices(mask)]
    pts = []
    for ax in range(3):
        has = m.any(axis=ax)
        first = m.argmax(axis=ax)
        last = (m.shape[ax] - 1) - np.flip(m, axis=ax).argmax(axis=ax)
        keep_first, keep_last = has.copy(), has.copy()
        for a in (0, 1):  # the neighbouring lines on either side along each of the two other axes
            lo, mid, hi = _NEIGHBOURS[a]
            inner = has[lo] & has[mid] & has[hi]
            keep_first[mid] &= ~(inner & (2 * first[mid] >= first[lo] + first[hi]))
            keep_last[mid] &= ~(inner & (2 * last[mid] <= last[lo] + last[hi]))
        others = [b for b in range(3) if b != ax]
        for keep, val, shift in ((keep_first, first, -0.5), (keep_last, last, 0.5)):
            p = np.empty((int(np.count_nonzero(keep)), 3))
            p[:, ax] = val[keep] + shift
            p[:, others] = np.stack(np.nonzero(keep), axis=1)
            pts.append(p)
    return np.concatenate(pts) * spacing_zyx


# (previous, this, next) line of every interior line of a 2D map, along its first and its second axis
_NEIGHBOURS = (((slice(None, -2), slice(None)), (slice(1, -1), slice(None)), (slice(2, None), slice(None))),
               ((slice(None), slice(None, -2)), (slice(None), slice(1, -1)), (slice(None), slice(2, None))))


def _ellipsoid_area(a: float, b: float, c: float, terms: int = 20) -> float:
    """IBSI approximation of the surface area of an ellipsoid with semi-axes a >= b >= c (Legendre series)."""
    from scipy.special import eval_legendre

    alpha = math.sqrt(max(0.0, 1.0 - b * b / (a * a)))
    beta = math.sqrt(max(0.0, 1.0 - c * c / (a * a)))
    if alpha * beta == 0:
        # degenerate: fall back on the sphere-like limit of the series' first term
        return 4.0 * math.pi * a * b
    x = (alpha ** 2 + beta ** 2) / (2.0 * alpha * beta)
    total = sum((alpha * beta) ** v / (1.0 - 4.0 * v * v) * eval_legendre(v, x) for v in range(terms + 1))
    return 4.0 * math.pi * a * b * float(total)


def _inverse_distance_octant(shape: tuple[int, ...], spacing_zyx: np.ndarray):
    """Octant of the circular kernel 1/|d| (0 at d = 0) on an even grid of size >= 2 (n - 1) per axis, and that
    grid size. Every offset between two voxels (at most n - 1 per axis) then lies within half the grid, where
    the circular kernel equals 1/|d|, so circular correlation equals linear correlation for every voxel pair."""
    size = tuple(even_fast_len(max(2 * n - 2, 2)) for n in shape)
    axes = [np.arange(n_fft // 2 + 1) * s for n_fft, s in zip(size, spacing_zyx)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
    d2 = dz * dz + dy * dy + dx * dx
    d2[0, 0, 0] = 1.0
    k = 1.0 / np.sqrt(d2)
    k[0, 0, 0] = 0.0
    return k, size


_WEIGHTS = ArrayCache(64 << 20)


def _inverse_distance_weights(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                              compiled: bool = False) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    """Kernel octant, grid size and ``_fft.unfolded_weights`` (``slab_weights`` for the compiled path) for an ROI
    box of this shape and spacing, kept in a bounded cache: the same geometry recurs (one ROI under several
    settings, repeated extractions) and the kernel's DCT costs as much as a transform of the data."""
    def make():
        k, size = _inverse_distance_octant(shape, np.asarray(spacing_zyx, dtype=float))
        return k, size, (slab_weights if compiled else unfolded_weights)(k, size)

    return _WEIGHTS.get((tuple(shape), tuple(spacing_zyx), compiled), make)


def _moran_geary_native(cm, image: np.ndarray, mask: np.ndarray, spacing_zyx) -> tuple[float, float]:
    """``moran_geary`` with the rows of mask, deviations and squared deviations filled by one C pass (and the
    count, mean and sum of squares taken there), then the compiled pair sums."""
    sl = _bbox_slices(mask)
    box = tuple(s.start for s in sl) + tuple(s.stop - s.start for s in sl)
    img = np.ascontiguousarray(image, dtype=np.float64)
    msk = np.ascontiguousarray(mask, dtype=bool)
    k, size, weights = _inverse_distance_weights(box[3:], spacing_zyx, compiled=True)
    rows_t = scratch("kps_rows", (box[3], size[2], 3, box[4]), np.float64)
    n, _mu, ss = cm.moran_rows(img, msk, img.shape, box, rows_t, size[2])
    if n < 2 or ss == 0:
        return float("nan"), float("nan")
    w_sum, cross, dev2_m = native_pair_sums(cm, rows_t, [(0, 0), (1, 1), (0, 2)], k, size, weights=weights)
    return _moran_geary_from_sums(float(n), ss, w_sum, cross, dev2_m)


def _moran_geary_from_sums(n: float, ss: float, w_sum: float, cross: float, dev2_m: float) -> tuple[float, float]:
    """Moran's I and Geary's C from the voxel count, the sum of squared deviations and the three pair sums."""
    if w_sum == 0:
        return float("nan"), float("nan")
    moran = n / w_sum * cross / ss
    # sum_ij w_ij (x_i - x_j)^2 = 2 sum_ij w_ij dev_i^2 m_j - 2 sum_ij w_ij dev_i dev_j  (the mean cancels)
    pair = 2.0 * dev2_m - 2.0 * cross
    geary = (n - 1.0) * pair / (2.0 * w_sum * ss)
    return moran, geary


def moran_geary(image: np.ndarray, mask: np.ndarray, spacing_xyz) -> tuple[float, float]:
    """Exact Moran's I and Geary's C over all voxel pairs of ``mask`` with weights 1/distance (mm).

    The three pair sums needed, sum_ij w_ij m_i m_j, sum_ij w_ij d_i d_j and sum_ij w_ij d_i^2 m_j (m the mask,
    d the deviations from the ROI mean), are kernel-weighted correlations summed over all shifts; by Parseval
    they are sums over frequencies of kernel spectrum x cross-spectrum (``_fft.kernel_pair_sums``): forward
    transforms only, exact up to floating-point round-off.
    """
    sp = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
    cm = native("_cmorph")
    if cm is not None:
        return _moran_geary_native(cm, image, mask, sp)
    sl = _bbox_slices(mask)
    inside = mask[sl]
    n = float(np.count_nonzero(inside))
    if n < 2:
        return float("nan"), float("nan")
    x = image[sl]
    mu = float(x[inside].mean())
    dev = np.where(inside, x - mu, 0.0)
    m = inside.astype(np.float64)
    dev2 = dev * dev
    ss = float(dev2.sum())
    if ss == 0:
        return float("nan"), float("nan")
    k, size, weights = _inverse_distance_weights(m.shape, sp)
    # sum_ij w_ij m_i m_j, sum_ij w_ij dev_i dev_j, sum_ij w_ij m_i dev_j^2 (= sum_ij w_ij dev_i^2 m_j: w symmetric)
    w_sum, cross, dev2_m = kernel_pair_sums([m, dev, dev2], [(0, 0), (1, 1), (0, 2)], k, size, weights=weights)
    return _moran_geary_from_sums(n, ss, w_sum, cross, dev2_m)


def _index_moments(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Voxel count, first moments (3,) and second moments (3, 3) of the (z, y, x) indices of ``mask``, as exact
    integers from its three 2D projections (three passes over the array, no voxel list)."""
    m = mask.view(np.uint8) if mask.dtype == bool else mask
    p_zy, p_zx, p_yx = (m.sum(axis=a, dtype=np.int64) for a in (2, 1, 0))
    iz, iy, ix = (np.arange(s, dtype=np.int64) for s in mask.shape)
    cz, cy, cx = p_zy.sum(1), p_zy.sum(0), p_zx.sum(0)
    n = int(cz.sum())
    first = np.array([iz @ cz, iy @ cy, ix @ cx], dtype=np.int64)
    second = np.empty((3, 3), dtype=np.int64)
    second[0, 0], second[1, 1], second[2, 2] = (iz * iz) @ cz, (iy * iy) @ cy, (ix * ix) @ cx
    second[0, 1] = second[1, 0] = iz @ p_zy @ iy
    second[0, 2] = second[2, 0] = iz @ p_zx @ ix
    second[1, 2] = second[2, 1] = iy @ p_yx @ ix
    return n, first, second


def _index_covariance(mask: np.ndarray) -> np.ndarray:
    """Sample covariance (n - 1) of the (z, y, x) indices of the voxels of ``mask`` (exact integer moments)."""
    n, first, second = _index_moments(mask)
    return (n * second.astype(np.float64) - np.outer(first, first).astype(np.float64)) / (n * (n - 1.0))


def _scan_native(cm, roi: ProcessedROI, sp_zyx: np.ndarray):
    """What ``morphology_features`` needs from the masks, by two C passes: mesh volume and area (the same pattern
    counts and index sums as ``mask_volume_area``, so the same numbers), exact index moments of the morphological
    mask, the intensity-weighted centre of mass (mm), the bounding box extent (mm) and the hull candidate points
    (``_hull_points``' set, less the points inside their z-plane's 2D hull)."""
    morph = np.ascontiguousarray(roi.morph_mask, dtype=bool)
    int_mask = np.ascontiguousarray(roi.int_mask, dtype=bool)
    img = np.ascontiguousarray(roi.image, dtype=np.float64)
    bbox, mom, wsum = np.empty(6, np.int64), np.empty(10, np.int64), np.empty(4)
    counts, isum = np.empty(256, np.int64), np.empty((256, 3), np.int64)
    cm.morph_scan(morph, int_mask, img, img.shape, bbox, mom, wsum, counts, isum)
    sp = (float(sp_zyx[0]), float(sp_zyx[1]), float(sp_zyx[2]))
    volume, area = _volume_area_from_counts(counts, [isum[:, a].astype(np.float64) for a in range(3)], sp)
    n = int(mom[0])
    second = np.empty((3, 3), dtype=np.int64)
    second[0, 0], second[1, 1], second[2, 2] = mom[4], mom[5], mom[6]
    second[0, 1] = second[1, 0] = mom[7]
    second[0, 2] = second[2, 0] = mom[8]
    second[1, 2] = second[2, 1] = mom[9]
    com_int = wsum[1:] / wsum[0] * sp_zyx if wsum[0] != 0 else np.full(3, np.nan)
    ext = (bbox[3:] - bbox[:3]).astype(float) * sp_zyx
    hull = cm.hull_measures(morph, morph.shape, sp, HULL_MAX_POINTS, tuple(int(v) for v in bbox)) if n else None
    if hull is None:  # no volume, or too many candidates for the simple incremental hull: qhull
        nb = bbox[3:] - bbox[:3]
        out = np.empty((2 * int(nb[1] * nb[2] + nb[0] * nb[2] + nb[0] * nb[1]), 3))
        hull = _qhull_measures(out[:cm.hull_points(morph, morph.shape, sp, out)])
    return volume, area, (n, mom[1:4].copy(), second), com_int, ext, hull[:3]


HULL_MAX_POINTS = 4000  # hull candidates beyond which qhull (n log n) beats the compiled O(n h) hull


def _qhull_measures(points: np.ndarray) -> tuple[float, float, float]:
    """Volume, area and diameter (largest distance between hull vertices) of the convex hull of ``points``
    (scipy's qhull)."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    hull = ConvexHull(points)
    hv = hull.points[hull.vertices]  # the diameter is attained between hull corners
    return float(hull.volume), float(hull.area), float(pdist(hv).max()) if len(hv) > 1 else 0.0


def morphology_features(roi: ProcessedROI, values: np.ndarray | None = None) -> dict[str, float]:
    """All IBSI morphological features (mirp tags: ``morph_*``); ``values``: ``roi.values`` when the caller has it."""
    sp = roi.spacing
    sp_zyx = np.asarray([sp[2], sp[1], sp[0]], dtype=float)
    morph = roi.morph_mask
    w = roi.values if values is None else values
    cm = native("_cmorph")
    if cm is not None:
        volume, area, (n_m, first_m, second_m), com_int, ext, hull = _scan_native(cm, roi, sp_zyx)
    else:
        volume, area = mask_volume_area(morph, sp)
        n_m, first_m, second_m = _index_moments(morph)
        # intensity-weighted centre of mass (intensity mask), from per-axis projections (no voxel position list)
        w_tot = float(w.sum())
        if w_tot != 0:
            wimg = np.where(roi.int_mask, roi.image, 0.0)
            w_zy = wimg.sum(axis=2)
            w_z, w_y, w_x = w_zy.sum(1), w_zy.sum(0), wimg.sum(axis=(0, 1))
            com_int = np.array([np.arange(len(v)) @ v for v in (w_z, w_y, w_x)]) / w_tot * sp_zyx
        else:
            com_int = np.full(3, np.nan)
        # mesh extent: half a voxel beyond the outermost voxel centres on each side
        ext = np.array([sl.stop - sl.start for sl in _bbox_slices(morph)], dtype=float) * sp_zyx
        hull = _qhull_measures(_hull_points(morph, sp_zyx))  # the hull of the mesh vertices, from fewer points
    hull_volume, hull_area, diameter = hull
    n_vox = n_m
    vol_approx = n_vox * float(np.prod(sp))
    f: dict[str, float] = {}
    f["morph_volume"] = volume
    f["morph_vol_approx"] = vol_approx
    f["morph_area_mesh"] = area
    f["morph_av"] = area / volume
    f["morph_comp_1"] = volume / (math.sqrt(math.pi) * area ** 1.5)
    f["morph_comp_2"] = 36.0 * math.pi * volume ** 2 / area ** 3
    f["morph_sph_dispr"] = area / (36.0 * math.pi * volume ** 2) ** (1.0 / 3.0)
    f["morph_sphericity"] = (36.0 * math.pi * volume ** 2) ** (1.0 / 3.0) / area
    f["morph_asphericity"] = (area ** 3 / (36.0 * math.pi * volume ** 2)) ** (1.0 / 3.0) - 1.0
    # centre of mass shift: geometric (morphological mask) vs intensity-weighted (intensity mask)
    com_geo = first_m / n_m * sp_zyx
    f["morph_com"] = float(np.linalg.norm(com_geo - com_int))
    f["morph_diam"] = diameter
    # PCA on voxel centre positions of the morphological mask: covariance from exact integer index moments
    cov = ((n_m * second_m.astype(np.float64) - np.outer(first_m, first_m).astype(np.float64)) / (n_m * (n_m - 1.0))
           * np.outer(sp_zyx, sp_zyx)) if n_vox > 1 else np.zeros((3, 3))
    lam = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
    l1, l2, l3 = (float(v) for v in lam)
    f["morph_pca_maj_axis"] = 4.0 * math.sqrt(l1)
    f["morph_pca_min_axis"] = 4.0 * math.sqrt(l2)
    f["morph_pca_least_axis"] = 4.0 * math.sqrt(l3)
    f["morph_pca_elongation"] = math.sqrt(l2 / l1) if l1 > 0 else float("nan")
    f["morph_pca_flatness"] = math.sqrt(l3 / l1) if l1 > 0 else float("nan")
    f["morph_vol_dens_aabb"] = volume / float(np.prod(ext))
    f["morph_area_dens_aabb"] = area / float(2.0 * (ext[0] * ext[1] + ext[0] * ext[2] + ext[1] * ext[2]))
    a, b, c = 2.0 * math.sqrt(l1), 2.0 * math.sqrt(l2), 2.0 * math.sqrt(l3)
    f["morph_vol_dens_aee"] = 3.0 * volume / (4.0 * math.pi * a * b * c) if a * b * c > 0 else float("nan")
    f["morph_area_dens_aee"] = area / _ellipsoid_area(a, b, c) if a * b * c > 0 else float("nan")
    f["morph_vol_dens_conv_hull"] = volume / hull_volume
    f["morph_area_dens_conv_hull"] = area / hull_area
    f["morph_integ_int"] = float(w.mean()) * volume
    f["morph_moran_i"], f["morph_geary_c"] = moran_geary(roi.image, roi.int_mask, sp)
    return f
