"""IBSI texture features (GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM) for every IBSI aggregation method.

Entry point: :func:`compute_texture`. It takes discretised grey levels (``1..n_levels`` inside the intensity
mask, ``0`` outside) in NumPy ``(z, y, x)`` order and returns ``{mirp_tag: value}`` with tags exactly as in
column ``mirp_tag`` of the IBSI 1 reference table (``cm_joint_max_2D_avg``, ``rlm_sre_3D_comb``,
``szm_sze_2_5D``, ``ngl_dc_energy_3D`` ...).

Two equivalent paths build the matrices (``_matrices``). The compiled one (``_ctexture``, see its C source; used
when built and ``NMKIT_NO_NATIVE`` is unset) crops the ROI into a zero-framed uint16 grid and makes one raster
pass per family: GLCMs and run lengths together (each voxel pairs with its predecessor along the 13 / 4
directions and knows its position in its run), zones by union-find with the GLDZM edge distance from a separable
Manhattan transform, NGTDM/NGLDM by neighbour sums over each row's ROI span; GLCM, run-like and NGTDM formulas are
compiled too (compensated sums). Its integer matrices are identical to the NumPy path's and its features agree to
~1e-15 relative (tests/test_radiomics_native_texture.py). The NumPy path: the ROI is cropped and padded by one
voxel, so the neighbour of a voxel along a direction is a constant offset in the flattened array. The neighbour
grey levels of all ROI voxels in the 13 (4 in-plane) forward directions are gathered once and co-occurrence
matrices for every slice and direction are single ``np.bincount`` calls; NGTDM neighbourhood sums are separable
box sums and NGLDM dependences are equal-neighbour counts on the padded grid; runs are constant segments of the
array read along each direction's stride; zones are labelled with scikit-image's multi-valued ``label`` when it is
installed (else as connected components of the "same grey level" neighbour graph with scipy); features are
evaluated on stacks of matrices at once without BLAS (see ``texture_features``), every aggregation of a family in
one call.

IBSI settings implemented: symmetric GLCM at Chebyshev distance 1; GLRLM along the 13 (3D) / 4 (2D)
directions; GLSZM/GLDZM zones linked with 26- (3D) / 8-connectivity (2D); GLDZM distance to the edge of the
*morphological* mask with 6- / 4-connectivity (Manhattan), minimum 1; NGTDM/NGLDM at Chebyshev distance 1,
NGLDM coarseness alpha 0, neighbours outside the intensity mask ignored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import InputError
from .texture_features import glcm_table, ngtdm_table, runlike_table

__all__ = ["compute_texture", "TEXTURE_DIMS"]

TEXTURE_DIMS = ("2D", "2.5D", "3D")

# direction vectors (dz, dy, dx); the first four lie in the axial plane
_IN_PLANE = ((0, 0, 1), (0, 1, 1), (0, 1, 0), (0, 1, -1))
_CROSS = ((1, 0, 0), (1, 0, 1), (1, 0, -1), (1, 1, 0), (1, -1, 0), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1))
_DIRECTIONS = _IN_PLANE + _CROSS
_N2D = len(_IN_PLANE)


@dataclass
class _Neighbourhood:
    """The cropped, zero-padded grey levels and the neighbour grey levels of every ROI voxel."""

    flat: np.ndarray  # padded grey levels, flattened (uint8/uint16); a view of ``flat_ext``
    flat_ext: np.ndarray  # ``flat`` followed by at least two largest offsets of zeros (for run extraction)
    shape: tuple[int, int, int]  # padded shape
    idx: np.ndarray  # flat indices of ROI voxels (ascending)
    inner: np.ndarray  # the same voxels' flat indices in the unpadded crop (box sums come out unpadded)
    centre: np.ndarray  # grey level of each ROI voxel, same dtype as ``flat``
    zslot: np.ndarray  # slice index (0-based, within the crop) of each ROI voxel (intp)
    n_slices: int
    offsets: np.ndarray  # flat offsets of the used directions (all positive)
    plus: np.ndarray  # (n_dir, Nv) neighbour grey level at +direction (0 = outside ROI)
    morph: np.ndarray  # padded morphological mask (bool)


def _validate(levels: np.ndarray, morph_mask: np.ndarray, n_levels: int, dims: Iterable[str]) -> tuple[str, ...]:
    dims = tuple(dims)
    bad = [d for d in dims if d not in TEXTURE_DIMS]
    if bad:
        raise InputError(None, f"texture dims {bad} not understood; use any of {TEXTURE_DIMS}")
    if levels.ndim != 3:
        raise InputError(None, f"texture needs a 3D (z, y, x) grey level array, got shape {levels.shape}")
    if morph_mask.shape != levels.shape:
        raise InputError(None, f"morphological mask shape {morph_mask.shape} != grey level shape {levels.shape}")
    if not np.issubdtype(levels.dtype, np.integer):
        raise InputError(None, f"grey levels must be integers (discretised), got dtype {levels.dtype}")
    if int(n_levels) < 1:
        raise InputError(None, f"n_levels must be >= 1, got {n_levels}")
    if levels.size and (levels.min() < 0 or levels.max() > n_levels):
        raise InputError(None, f"grey levels must lie in 0..{n_levels} (0 = outside the ROI), "
                               f"found {levels.min()}..{levels.max()}")
    return dims


def _crop_box(levels: np.ndarray, morph_mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of the intensity and morphological masks."""
    keep = (levels > 0) | morph_mask
    nz = [np.flatnonzero(keep.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1))]
    return tuple(slice(ix[0], ix[-1] + 1) for ix in nz)


def _neighbourhood(levels: np.ndarray, morph_mask: np.ndarray, n_levels: int, three_d: bool) -> _Neighbourhood:
    sl = _crop_box(levels, morph_mask)
    dtype = np.uint8 if n_levels < 256 else (np.uint16 if n_levels < 65536 else np.int64)
    crop = levels[sl]
    shape = tuple(n + 2 for n in crop.shape)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.intp)
    dirs = _DIRECTIONS if three_d else _IN_PLANE
    offsets = np.asarray(dirs, dtype=np.intp) @ strides
    n = shape[0] * shape[1] * shape[2]
    flat_ext = np.zeros(n + 2 * int(offsets.max()), dtype=dtype)
    flat = flat_ext[:n]
    flat.reshape(shape)[1:-1, 1:-1, 1:-1] = crop
    morph = np.pad(morph_mask[sl], 1)
    idx = np.flatnonzero(flat)
    plus = np.empty((len(dirs), idx.size), dtype=dtype)
    for k, o in enumerate(offsets):
        np.take(flat[o:], idx, out=plus[k])  # flat[idx + o] without forming idx + o
    iz, rest = np.divmod(idx, strides[0])
    iy, ix = np.divmod(rest, strides[1])
    inner = ((iz - 1) * (shape[1] - 2) + (iy - 1)) * (shape[2] - 2) + (ix - 1)
    return _Neighbourhood(flat, flat_ext, shape, idx, inner, flat[idx], iz - 1, shape[0] - 2, offsets, plus, morph)


# ----- matrices --------------------------------------------------------------------------------------------

def _glcm_matrices(nb: _Neighbourhood, ng: int, three_d: bool, per_slice: bool = True
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Symmetric GLCMs per (slice, in-plane direction) ``(S, 4, Ng, Ng)`` and, for 3D, per direction ``(13, Ng, Ng)``.

    Pairs whose neighbour lies outside the ROI (level 0) land in row/column 0, which is dropped. Without
    ``per_slice`` (3D aggregation only) the in-plane matrices are summed over slices: ``(1, 4, Ng, Ng)``.
    """
    lv = ng + 1
    ns = nb.n_slices if per_slice else 1
    centre = nb.centre.astype(np.intp)
    base = (nb.zslot * lv + centre) * lv if per_slice else centre * lv
    m2 = np.stack([np.bincount(base + nb.plus[d], minlength=ns * lv * lv) for d in range(_N2D)])
    mc = None
    if three_d:
        base = centre * lv
        mc = np.stack([np.bincount(base + nb.plus[d], minlength=lv * lv)
                       for d in range(_N2D, len(_DIRECTIONS))]).reshape(-1, lv, lv)
    return _glcm_finish(m2.reshape(_N2D, ns, lv, lv), mc)


def _glcm_finish(raw2: np.ndarray, raw3: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """From raw pair counts with level 0 (``(4, S, lv, lv)`` in-plane, ``(9, lv, lv)`` cross-plane or None) to the
    symmetric matrices without level 0: ``(S, 4, Ng, Ng)`` and ``(13, Ng, Ng)`` (in-plane summed over slices)."""
    m2 = raw2.swapaxes(0, 1)[:, :, 1:, 1:].astype(np.int64, copy=False)
    m2 = m2 + m2.swapaxes(-1, -2)
    m3 = None
    if raw3 is not None:
        mc = raw3[:, 1:, 1:].astype(np.int64, copy=False)
        mc = mc + mc.swapaxes(-1, -2)
        m3 = np.concatenate([m2.sum(0), mc], axis=0)
    return m2, m3


def _runs_along(flat_ext: np.ndarray, n: int, step: int, with_start: bool
                ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Every run along flat offset ``step`` of the zero-padded array (the first ``n`` values of ``flat_ext``, which
    continues with zeros): (flat index of its first voxel, level, length).

    Reshaping to ``(K, step)`` and transposing lists each arithmetic progression ``r, r + step, r + 2 step, ...``
    contiguously. Thanks to the one-voxel zero frame, two consecutive non-zero members of a progression are
    always geometric neighbours along the direction, so runs are simply the maximal constant non-zero segments
    of that sequence (a zero row keeps progressions apart, and the sequence starts and ends with a zero): a run
    starts where a non-zero value differs from its predecessor and ends where it differs from its successor.
    """
    k = -(-n // step) + 1
    seq = flat_ext[:k * step].reshape(k, step).T.ravel()
    change = seq[1:] != seq[:-1]
    first = np.flatnonzero(change & (seq[1:] != 0)) + 1
    last = np.flatnonzero(change & (seq[:-1] != 0))
    length = last - first + 1
    level = seq[first]
    start = first // k + (first % k) * step if with_start else None
    return start, level, length


def _glrlm_matrices(nb: _Neighbourhood, ng: int, three_d: bool, per_slice: bool = True
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """GLRLMs per (slice, in-plane direction) ``(S, 4, Ng, Nr)`` (``S = 1``, summed over slices, without
    ``per_slice``) and, for 3D, per direction ``(13, Ng, Nr)``."""
    lv = ng + 1
    ns = nb.n_slices if per_slice else 1
    slab = nb.shape[1] * nb.shape[2]
    runs = [_runs_along(nb.flat_ext, nb.flat.size, int(o), per_slice and d < _N2D)
            for d, o in enumerate(nb.offsets)]
    nr = max(int(r[2].max()) if r[2].size else 1 for r in runs) + 1
    m2 = np.stack([np.bincount((((start // slab - 1) * lv if per_slice else 0) + level.astype(np.intp)) * nr + length,
                               minlength=ns * lv * nr)
                   for start, level, length in runs[:_N2D]])
    mc = None
    if three_d:
        mc = np.stack([np.bincount(level.astype(np.intp) * nr + length, minlength=lv * nr)
                       for _, level, length in runs[_N2D:]]).reshape(-1, lv, nr)
    return _glrlm_finish(m2.reshape(_N2D, ns, lv, nr), mc)


def _glrlm_finish(raw2: np.ndarray, raw3: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """From raw run counts with level 0 and length 0 (``(4, S, lv, nr)``, ``(9, lv, nr)`` or None) to
    ``(S, 4, Ng, nr - 1)`` and ``(13, Ng, nr - 1)``."""
    m2 = raw2.swapaxes(0, 1)[:, :, 1:, 1:].astype(np.int64, copy=False)
    m3 = None
    if raw3 is not None:
        m3 = np.concatenate([m2.sum(0), raw3[:, 1:, 1:]], axis=0, dtype=np.int64)
    return m2, m3


def _zones(nb: _Neighbourhood, three_d: bool) -> tuple[np.ndarray, int]:
    """Zone label (0..n-1) of every ROI voxel: connected voxels of equal grey level (8- or 26-connected)."""
    try:
        from skimage.measure import label
    except ImportError:  # pragma: no cover - exercised only without scikit-image
        return _zones_graph(nb, three_d)
    grid = nb.flat.reshape(nb.shape)
    if three_d:
        lab, n_zones = label(grid, background=0, connectivity=3, return_num=True)
        lab = lab.ravel()
    else:
        lab = np.zeros(grid.shape, dtype=np.intp)
        n_zones = 0
        for z in range(1, grid.shape[0] - 1):
            sl, n = label(grid[z], background=0, connectivity=2, return_num=True)
            lab[z] = np.where(sl > 0, sl + n_zones, 0)
            n_zones += n
        lab = lab.ravel()
    return lab[nb.idx] - 1, int(n_zones)


def _zones_graph(nb: _Neighbourhood, three_d: bool) -> tuple[np.ndarray, int]:
    """Zones as connected components of the "equal grey level neighbour" graph (scipy only, slower)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = nb.idx.size
    ndir = len(_DIRECTIONS) if three_d else _N2D
    eq = (nb.plus[:ndir] == nb.centre[None, :]).T  # (Nv, ndir): row-major edges sorted by source voxel
    rows, cols = np.nonzero(eq)
    cmap = np.full(nb.flat.size, -1, dtype=np.intp)
    cmap[nb.idx] = np.arange(n)
    other = cmap[nb.idx[rows] + nb.offsets[cols]]
    indptr = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    graph = csr_matrix((np.ones(rows.size, dtype=np.int8), other, indptr), shape=(n, n))
    n_zones, labels = connected_components(graph, directed=True, connection="weak")
    return labels, int(n_zones)


def _edge_distance(nb: _Neighbourhood, three_d: bool) -> np.ndarray:
    """Manhattan distance (in voxels, minimum 1) of each ROI voxel to the edge of the morphological mask."""
    from scipy import ndimage

    if three_d:
        structure = ndimage.generate_binary_structure(3, 1)
    else:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)
    dist = ndimage.distance_transform_cdt(nb.morph, metric=structure)
    # intensity-mask voxels outside the morphological mask (not expected) are treated as on the edge
    return np.maximum(dist.ravel()[nb.idx], 1).astype(np.intp)


def _zone_matrices(nb: _Neighbourhood, ng: int, three_d: bool, want_dzm: bool
                   ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """GLSZM and GLDZM per slice (2D zones, ``(S, Ng, U)``) or for the volume (3D zones, ``(1, Ng, U)``).

    Zone sizes are sparse (a few sizes up to the ROI size), so each matrix comes with the zone size / distance
    of each of its ``U`` columns: ``(matrix, column_values)``.
    """
    lv = ng + 1
    labels, nzone = _zones(nb, three_d)
    size = np.bincount(labels, minlength=nzone)
    zlvl = np.empty(nzone, dtype=np.intp)
    zlvl[labels] = nb.centre
    ns = 1 if three_d else nb.n_slices
    zslice = np.zeros(nzone, dtype=np.intp)
    if not three_d:
        zslice[labels] = nb.zslot
    zdist = None
    if want_dzm:
        dist = _edge_distance(nb, three_d)
        zdist = np.full(nzone, np.iinfo(np.intp).max, dtype=np.intp)
        np.minimum.at(zdist, labels, dist)
    row = zslice * lv + zlvl
    return _zone_matrix(row, ns, lv, size), (None if zdist is None else _zone_matrix(row, ns, lv, zdist))


def _zone_matrix(row: np.ndarray, ns: int, lv: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zone counts per (row = slice * lv + level, occurring value of ``values``): ``((S, Ng, U), the U values)``."""
    # the occurring sizes / distances (small non-negative integers) and each zone's column, without a sort
    cols = np.flatnonzero(np.bincount(values))
    lut = np.empty(int(cols[-1]) + 1, dtype=np.intp)
    lut[cols] = np.arange(cols.size)
    col = lut[values]
    m = np.bincount(row * cols.size + col, minlength=ns * lv * cols.size).reshape(ns, lv, cols.size)
    return m[:, 1:], cols


def _box_sums(grid: np.ndarray, three_d: bool, dtype) -> np.ndarray:
    """Sums over the 3x3x3 (``three_d``) or in-plane 3x3 neighbourhood of every voxel of the padded grid that is
    not on its frame, centre included: shape of the grid without its frame (separable, two or three passes)."""
    a = grid.astype(dtype)
    a = a[:, :, :-2] + a[:, :, 1:-1] + a[:, :, 2:]
    a = a[:, :-2] + a[:, 1:-1] + a[:, 2:]
    return a[:-2] + a[1:-1] + a[2:] if three_d else a[1:-1]


def _ngtdm_matrices(nb: _Neighbourhood, ng: int, three_d: bool) -> tuple[np.ndarray, np.ndarray]:
    """NGTDM ``s`` and ``n`` per slice ``(S, Ng)`` (2D neighbourhoods) or ``(1, Ng)`` (3D).

    The neighbourhood sum and count of a voxel are box sums of the grey levels and of the ROI indicator, less the
    voxel itself (voxels outside the ROI are 0 in both)."""
    lv = ng + 1
    grid = nb.flat.reshape(nb.shape)
    wide = np.int64 if nb.flat.dtype == np.int64 or ng >= 65536 else np.int32
    centre = nb.centre.astype(np.intp)
    total = _box_sums(grid, three_d, wide).ravel()[nb.inner] - centre
    count = _box_sums(grid > 0, three_d, np.int8).ravel()[nb.inner] - 1
    valid = count > 0
    centre = centre[valid]
    diff = np.abs(centre - total[valid] / count[valid])
    ns = 1 if three_d else nb.n_slices
    code = centre if three_d else nb.zslot[valid] * lv + centre
    s = np.bincount(code, weights=diff, minlength=ns * lv).reshape(ns, lv)[:, 1:]
    n = np.bincount(code, minlength=ns * lv).reshape(ns, lv)[:, 1:]
    return s, n


def _ngldm_matrices(nb: _Neighbourhood, ng: int, three_d: bool) -> np.ndarray:
    """NGLDM ``(S, Ng, Nn)`` per slice (2D) or ``(1, Ng, Nn)`` (3D), alpha 0, Chebyshev distance 1.

    Equal neighbours are counted on the padded grid, one direction at a time: a pair of equal voxels adds one to
    both. Only ROI voxels are read back, and a neighbour equal to a (non-zero) ROI level is itself in the ROI."""
    lv = ng + 1
    ndir = len(_DIRECTIONS) if three_d else _N2D
    flat = nb.flat
    same = np.zeros(flat.size, dtype=np.uint8)
    for o in nb.offsets[:ndir]:
        eq = flat[:-o] == flat[o:]
        same[:-o] += eq
        same[o:] += eq
    dep = 1 + same[nb.idx].astype(np.intp)
    nn = 2 * ndir + 1
    ns = 1 if three_d else nb.n_slices
    centre = nb.centre.astype(np.intp)
    code = (centre if three_d else nb.zslot * lv + centre) * (nn + 1) + dep
    return np.bincount(code, minlength=ns * lv * (nn + 1)).reshape(ns, lv, nn + 1)[:, 1:, 1:]


# ----- all matrices: NumPy or compiled ------------------------------------------------------------------------

@dataclass
class _Matrices:
    """Every texture matrix of one ROI (integer counts, NGTDM ``s`` float), as the feature stage reads them."""

    glcm2: np.ndarray  # (S, 4, Ng, Ng) in-plane, per slice (S = 1: summed over slices)
    glcm3: np.ndarray | None  # (13, Ng, Ng) per 3D direction
    rlm2: np.ndarray  # (S, 4, Ng, Nr)
    rlm3: np.ndarray | None  # (13, Ng, Nr)
    nv_slice: np.ndarray  # ROI voxels per slice (S slices of the crop)
    # per zone/neighbourhood dimension (False: per slice, True: 3D): (szm, szm sizes), (dzm, dzm distances),
    # NGTDM s, NGTDM n, NGLDM
    zone: dict[bool, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray,
                           np.ndarray]]


def _numpy_matrices(levels: np.ndarray, morph_mask: np.ndarray, ng: int, three_d: bool, slices: bool) -> _Matrices:
    nb = _neighbourhood(levels, morph_mask, ng, three_d)
    m2, m3 = _glcm_matrices(nb, ng, three_d, per_slice=slices)
    r2, r3 = _glrlm_matrices(nb, ng, three_d, per_slice=slices)
    zone = {}
    for is3d in [d for d, wanted in ((False, slices), (True, three_d)) if wanted]:
        szm, dzm = _zone_matrices(nb, ng, is3d, want_dzm=True)
        s_ng, n_ng = _ngtdm_matrices(nb, ng, is3d)
        zone[is3d] = (szm, dzm, s_ng, n_ng, _ngldm_matrices(nb, ng, is3d))
    return _Matrices(m2, m3, r2, r3, np.bincount(nb.zslot, minlength=nb.n_slices), zone)


def _native_matrices(mod, levels: np.ndarray, morph_mask: np.ndarray, ng: int, three_d: bool,
                     slices: bool) -> _Matrices:
    """The same matrices from the compiled kernels (``_ctexture``): one pass over the zero-framed grid per family."""
    levels = np.ascontiguousarray(levels, dtype=np.int32)
    box = mod.bbox(levels, np.ascontiguousarray(morph_mask).view(np.uint8), *levels.shape)
    sl = (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))
    crop = levels[sl]
    nz, ny, nx = shape = tuple(n + 2 for n in crop.shape)
    grid = np.zeros(shape, dtype=np.uint16)
    grid[1:-1, 1:-1, 1:-1] = crop
    flat = grid.reshape(-1)
    n_slices, lv = nz - 2, ng + 1
    ns = n_slices if slices else 1
    ndir = len(_DIRECTIONS) if three_d else _N2D
    nmat = _N2D * ns + ndir - _N2D
    ext = max(shape) - 2
    cm = np.empty((nmat, ng, ng), dtype=np.int64)
    rl = np.empty((nmat, ng, ext), dtype=np.int64)
    nv_slice = np.empty(n_slices, dtype=np.intp)
    longest = mod.pairs(flat, nz, ny, nx, ndir, slices, lv, cm, rl, nv_slice)
    rl = rl.reshape(-1)[:nmat * ng * longest].reshape(nmat, ng, longest)  # written compactly
    n2 = _N2D * ns
    m2 = cm[:n2].reshape(_N2D, ns, ng, ng).swapaxes(0, 1)
    r2 = rl[:n2].reshape(_N2D, ns, ng, longest).swapaxes(0, 1)
    m3 = r3 = None
    if three_d:
        m3 = cm if ns == 1 else np.concatenate([m2.sum(0), cm[n2:]])
        r3 = rl if ns == 1 else np.concatenate([r2.sum(0), rl[n2:]])
    nv = int(nv_slice.sum())
    morph = np.zeros(shape, dtype=np.uint8)
    morph[1:-1, 1:-1, 1:-1] = morph_mask[sl]
    zone = {}
    for is3d in [d for d, wanted in ((False, slices), (True, three_d)) if wanted]:
        nsz = 1 if is3d else n_slices
        zones = np.empty((4, nv), dtype=np.int64)
        n_zones = mod.zones(flat, morph.reshape(-1), nz, ny, nx, is3d, *zones)
        size, zlvl, zslice, zdist = zones[:, :n_zones]
        row = zslice * lv + zlvl
        s_ng = np.zeros((nsz, lv))
        n_ng = np.zeros((nsz, lv), dtype=np.int64)
        dep = np.zeros((nsz, lv, 28 if is3d else 10), dtype=np.int64)
        mod.neighbours(flat, nz, ny, nx, is3d, lv, s_ng, n_ng, dep)
        zone[is3d] = (_native_zone_matrix(mod, row, nsz, lv, size), _native_zone_matrix(mod, row, nsz, lv, zdist),
                      s_ng[:, 1:], n_ng[:, 1:], dep[:, 1:, 1:])
    return _Matrices(m2, m3, r2, r3, nv_slice, zone)


def _native_zone_matrix(mod, row: np.ndarray, ns: int, lv: int, values: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``_zone_matrix`` by the compiled kernels."""
    row, values = np.ascontiguousarray(row), np.ascontiguousarray(values)
    cols = np.empty(values.size, dtype=np.int64)
    cols = cols[:mod.zone_columns(values, cols)]
    m = np.zeros((ns, lv, cols.size), dtype=np.int64)
    mod.zone_counts(row, values, cols, ns * lv, m)
    return m[:, 1:], cols


def _matrices(levels: np.ndarray, morph_mask: np.ndarray, ng: int, three_d: bool, slices: bool) -> _Matrices:
    """All matrices, from the compiled kernels when they are built (and levels and runs fit uint16), else NumPy."""
    from ._native import native

    mod = native("_ctexture")
    # (the compiled kernels hold levels and run positions in uint16)
    if mod is not None and ng <= 65535 and max(levels.shape) <= 65534:
        return _native_matrices(mod, levels, morph_mask, ng, three_d, slices)
    return _numpy_matrices(levels, morph_mask, ng, three_d, slices)


# ----- aggregation -----------------------------------------------------------------------------------------

class _Stack:
    """Matrices of several aggregations stacked for one call of a feature function (every feature of a matrix
    depends on that matrix alone), with the rows of each aggregation; empty matrices are dropped (with the
    same rows of ``extra``, e.g. NGTDM ``s`` next to ``n``)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.nv: list[np.ndarray] = []
        self.extra: list[np.ndarray] = []
        self.groups: list[tuple[str, int, int]] = []  # (suffix, first row, end row)
        self.rows = 0

    def add(self, suffix: str, m: np.ndarray, nv: np.ndarray | None = None, extra: np.ndarray | None = None
            ) -> None:
        keep = m.reshape(m.shape[0], -1).any(1)
        if not keep.all():  # e.g. a one-voxel slice has no co-occurring pair
            m = m[keep]
            nv = None if nv is None else nv[keep]
            extra = None if extra is None else extra[keep]
        self.parts.append(m)
        if nv is not None:
            self.nv.append(nv)
        if extra is not None:
            self.extra.append(extra)
        self.groups.append((suffix, self.rows, self.rows + m.shape[0]))
        self.rows += m.shape[0]

    @staticmethod
    def _join(parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def matrices(self) -> np.ndarray:
        return self._join(self.parts)

    def voxels(self) -> np.ndarray:
        return self._join(self.nv)

    def extras(self) -> np.ndarray:
        return self._join(self.extra)

    def values(self, table: tuple[tuple[str, ...], np.ndarray]) -> tuple[tuple[str, ...], list[np.ndarray]]:
        """Feature names and, per aggregation, their values averaged over its matrices (NaN if none)."""
        names, vals = table
        cols = []
        for _, a, b in self.groups:
            if b - a == 1:  # one matrix (merged aggregations): the value itself
                cols.append(vals[:, a])
            elif b > a:
                cols.append(vals[:, a:b].sum(1) / (b - a))  # == np.mean, row by row
            else:
                cols.append(np.full(len(names), np.nan))
        return names, cols

    def emit_values(self, out: dict[str, float], prefix: str, values: tuple[tuple[str, ...], list[np.ndarray]],
                    group: int) -> None:
        names, cols = values
        out.update(zip(_keys(prefix, names, self.groups[group][0]), cols[group].tolist()))

    def emit(self, out: dict[str, float], prefix: str, table: tuple[tuple[str, ...], np.ndarray]) -> None:
        """``out[prefix_name_suffix]`` = the feature averaged over each aggregation's matrices."""
        values = self.values(table)
        for group in range(len(self.groups)):
            self.emit_values(out, prefix, values, group)


@functools.lru_cache(maxsize=256)
def _keys(prefix: str, names: tuple[str, ...], suffix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{name}_{suffix}" for name in names)


def _glcm(out: dict[str, float], m2: np.ndarray, m3: np.ndarray | None, dims: tuple[str, ...]) -> None:
    ng = m2.shape[-1]
    st = _Stack()
    if "2D" in dims:
        st.add("2D_avg", m2.reshape(-1, ng, ng))
        st.add("2D_comb", m2.sum(1))
    if "2.5D" in dims:
        st.add("2_5D_avg", m2.sum(0))
        st.add("2_5D_comb", m2.sum((0, 1))[None])
    if m3 is not None:
        st.add("3D_avg", m3)
        st.add("3D_comb", m3.sum(0)[None])
    st.emit(out, "cm", glcm_table(st.matrices()))


def _runlike(out: dict[str, float], family: str, st: _Stack, j_values: np.ndarray | None = None) -> None:
    st.emit(out, family, runlike_table(st.matrices(), st.voxels(), family, j_values))


def _glrlm(out: dict[str, float], m2: np.ndarray, m3: np.ndarray | None, nv_slice: np.ndarray,
           dims: tuple[str, ...]) -> None:
    ns, nd, ng, nr = m2.shape
    st = _Stack()
    if "2D" in dims:
        st.add("2D_avg", m2.reshape(-1, ng, nr), np.repeat(nv_slice, nd))
        st.add("2D_comb", m2.sum(1), nv_slice * nd)
    if "2.5D" in dims:
        st.add("2_5D_avg", m2.sum(0), np.full(nd, nv_slice.sum()))
        st.add("2_5D_comb", m2.sum((0, 1))[None], np.array([nv_slice.sum() * nd]))
    if m3 is not None:
        n3 = m3.shape[0]
        st.add("3D_avg", m3, np.full(n3, nv_slice.sum()))
        st.add("3D_comb", m3.sum(0)[None], np.array([nv_slice.sum() * n3]))
    _runlike(out, "rlm", st)


def compute_texture(levels: np.ndarray, morph_mask: np.ndarray, n_levels: int, spacing_xyz: Iterable[float],
                    dims: Iterable[str] = TEXTURE_DIMS) -> dict[str, float]:
    """All IBSI texture features of discretised grey levels, for the requested aggregation dimensions.

    Parameters
    ----------
    levels:
        Integer array ``(z, y, x)``: discretised grey levels ``1..n_levels`` inside the (re-segmented)
        intensity mask, ``0`` outside.
    morph_mask:
        Boolean ``(z, y, x)`` morphological mask; only the GLDZM distance-to-edge map uses it (IBSI).
    n_levels:
        Number of grey levels of the discretisation (N_g); fixes matrix sizes, which matters for the GLCM
        normalised inverse differences.
    spacing_xyz:
        Voxel spacing in mm, ``(x, y, z)``. IBSI texture neighbourhoods are defined in voxels, so spacing does
        not change the values; it is validated so that a wrong grid is not passed silently.
    dims:
        Any of ``"2D"`` (per-slice: GLCM/GLRLM ``_2D_avg`` and ``_2D_comb``, zone/neighbourhood ``_2D``),
        ``"2.5D"`` (slices merged: ``_2_5D_avg``/``_2_5D_comb`` and ``_2_5D``) and ``"3D"`` (volumetric:
        ``_3D_avg``/``_3D_comb`` and ``_3D``).

    Returns
    -------
    ``{mirp_tag: value}`` for GLCM (25 features), GLRLM (16), GLSZM (16), GLDZM (16), NGTDM (5), NGLDM (17)
    per requested aggregation. An empty ROI raises :class:`InputError`.
    """
    levels = np.asarray(levels)
    morph_mask = np.asarray(morph_mask).astype(bool, copy=False)
    dims = _validate(levels, morph_mask, int(n_levels), dims)
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(None, f"spacing_xyz must be 3 positive finite values, got {spacing}")
    if not (levels > 0).any():
        raise InputError(None, "texture features need at least one voxel in the intensity mask")
    ng = int(n_levels)
    three_d = "3D" in dims
    slices = "2D" in dims or "2.5D" in dims
    return _features(_matrices(levels, morph_mask, ng, three_d, slices), dims)


def _features(mats: _Matrices, dims: tuple[str, ...]) -> dict[str, float]:
    """Every texture feature of the matrices, aggregated as ``dims`` asks."""
    out: dict[str, float] = {}
    _glcm(out, mats.glcm2, mats.glcm3, dims)
    nv_slice = mats.nv_slice
    _glrlm(out, mats.rlm2, mats.rlm3, nv_slice, dims)
    for is3d, (szm, dzm, s_ng, n_ng, dep) in sorted(mats.zone.items()):
        nvz = np.array([nv_slice.sum()]) if is3d else nv_slice
        # per slice ("2D") and slices merged ("2_5D"), or the volume ("3D")
        parts = [("3D", lambda m: m, nvz)] if is3d else (
            ([("2D", lambda m: m, nvz)] if "2D" in dims else [])
            + ([("2_5D", lambda m: m.sum(0)[None], np.array([nvz.sum()]))] if "2.5D" in dims else []))
        for family, (m, cols) in (("szm", szm), ("dzm", dzm)):
            st = _Stack()
            for suffix, agg, nv in parts:
                st.add(suffix, agg(m), nv)
            _runlike(out, family, st, cols)
        sn = _Stack()
        dp = _Stack()
        for suffix, agg, nv in parts:
            sn.add(suffix, agg(n_ng), extra=agg(s_ng))
            dp.add(suffix, agg(dep), nv)
        ngt_vals = sn.values(ngtdm_table(sn.extras(), sn.matrices()))
        ngl_vals = dp.values(runlike_table(dp.matrices(), dp.voxels(), "ngl"))
        for i in range(len(parts)):  # the order of the keys: ngt, ngl per aggregation
            sn.emit_values(out, "ngt", ngt_vals, i)
            dp.emit_values(out, "ngl", ngl_vals, i)
    return out
