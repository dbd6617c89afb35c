"""FFT helpers shared by the morphology (Moran's I / Geary's C) and local intensity (peak) features.

Both transform arrays zero-padded to about twice their size per axis. ``scipy.fft.rfftn(a, shape)`` pads first and
then transforms every axis over the full padded size, including the planes that are all zeros; transforming one
axis at a time on the unpadded data ("pruned" transform) skips those and gives the same spectrum 3-4 times faster.
"""

from __future__ import annotations

import functools
import threading

import numpy as np


def even_fast_len(n: int) -> int:
    """Smallest FFT-friendly even length >= ``n`` (even sizes let a symmetric kernel's spectrum come from a DCT-I)."""
    from scipy import fft

    m = fft.next_fast_len(int(n), real=True)
    while m % 2:
        m = fft.next_fast_len(m + 1, real=True)
    return m


def padded_rfftn(a: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """``scipy.fft.rfftn(a, size)`` of a 3D array zero-padded to ``size`` (>= its shape), computed axis by axis."""
    from scipy import fft

    if any(s < n for s, n in zip(size, a.shape)):
        raise ValueError(f"padded size {size} smaller than array shape {a.shape}")
    f = fft.rfft(a, size[2], axis=2)
    f = fft.fft(f, size[1], axis=1, overwrite_x=True)
    return fft.fft(f, size[0], axis=0, overwrite_x=True)


def half_spectrum_weights(n_last: int) -> np.ndarray:
    """Weights of the rFFT bins of an even-length last axis in a sum over the full spectrum (2 for mirrored bins)."""
    w = np.full(n_last // 2 + 1, 2.0)
    w[0] = w[-1] = 1.0
    return w


def even_kernel_spectrum(kernel_octant: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Spectrum of a kernel that is even along every axis, at frequencies ``0..N/2`` per axis (real).

    ``kernel_octant[i, j, k]`` is the kernel at offset ``(i, j, k)``, ``0 <= i <= N0 / 2`` etc. (even ``size``);
    the kernel at ``(-i, j, k)`` etc. is the same value. The DFT of such a kernel is real and even (spectrum(f) =
    spectrum(N - f)) and equals the type-I DCT of the octant.
    """
    from scipy import fft

    if any(s % 2 for s in size) or kernel_octant.shape != tuple(s // 2 + 1 for s in size):
        raise ValueError(f"octant shape {kernel_octant.shape} does not fit even grid {size}")
    return fft.dctn(kernel_octant, type=1)


class ArrayCache:
    """A small cache of read-only arrays with a byte budget (oldest dropped first): kernel spectra that depend on
    geometry only, worth keeping when the same geometry recurs but never allowed to pile up."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: dict = {}

    def get(self, key, make):
        """The arrays stored under ``key``, else ``make()`` (a tuple whose arrays are set read-only), kept if they fit."""
        hit = self._items.get(key)
        if hit is not None:
            return hit
        value = make()
        arrays = [v for v in value if isinstance(v, np.ndarray)]
        for a in arrays:
            a.flags.writeable = False
        size = sum(a.nbytes for a in arrays)
        if size <= self.max_bytes:
            while self._items and self._bytes() + size > self.max_bytes:
                self._items.pop(next(iter(self._items)), None)
            self._items[key] = value
        return value

    def _bytes(self) -> int:
        return sum(v.nbytes for value in list(self._items.values()) for v in value if isinstance(v, np.ndarray))


_WORK = threading.local()
SCRATCH_MAX_BYTES = 32 << 20  # larger work arrays are allocated per call instead of kept


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised work array of this thread, reused from call to call (grown when needed).

    Fresh memory costs a page fault per 4 KiB page at first touch, on every call: for the tens of MB of
    zero-padded spectra of a typical ROI that costs more than the transforms themselves. Each thread keeps one
    buffer per ``name`` (at most ``SCRATCH_MAX_BYTES``), so callers must not hold on to the returned array.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes > SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype=dtype)
    store = _WORK.__dict__.setdefault("buffers", {})
    raw = store.get(name)
    if raw is None or raw.size < nbytes:
        raw = store[name] = np.empty(nbytes + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64  # cache-line aligned
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def unfolded_weights(kernel_octant: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Kernel spectrum x rFFT weights / N over f0 = 0..n0-1, f1 = 0..n1-1, f2 = 0..n2/2, each value twice (for
    the real and imaginary part): what :func:`kernel_pair_sums` multiplies the spectra with. It depends on the
    kernel and grid only, and its DCT costs as much as a transform of the data, so callers may cache it."""
    n0, n1, n2 = size
    spec = even_kernel_spectrum(np.asarray(kernel_octant, dtype=np.float64), size)
    spec *= half_spectrum_weights(n2) / float(n0 * n1 * n2)  # rFFT half of the last axis stands for both halves
    full = np.concatenate([spec, spec[n0 // 2 - 1:0:-1]], axis=0)  # spectrum(f) = spectrum(N - f)
    full = np.concatenate([full, full[:, n1 // 2 - 1:0:-1]], axis=1)
    return np.repeat(full, 2, axis=2)  # (re, im) pairs: multiplies the float view of a complex spectrum


SLAB_BYTES = 1 << 20  # one slab of x-frequencies (all arrays) for the compiled path: within the L2 cache


def slab_weights(kernel_octant: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """:func:`unfolded_weights` laid out for the compiled path: (n2 / 2 + 1, n0, n1), one value per frequency,
    the z frequencies in the order the split transform gives them (even ones 0, 2, .., then odd ones 1, 3, ..)."""
    w = np.moveaxis(unfolded_weights(kernel_octant, size)[..., ::2], 2, 0)
    return np.ascontiguousarray(np.concatenate([w[:, 0::2], w[:, 1::2]], axis=1))


def native_pair_sums(cm, rows_t: np.ndarray, pairs: list[tuple[int, int]], kernel_octant: np.ndarray,
                     size: tuple[int, int, int], weights: np.ndarray | None = None) -> list[float]:
    """:func:`kernel_pair_sums` with the compiled module ``cm``, of arrays laid out as ``rows_t`` (n_z, size[2],
    p, n_y): zero beyond the data along x. The real transform along x then gives, per plane, blocks of
    x-frequencies of contiguous y-rows; each block of x-frequencies is one small slab (within the L2 cache)
    copied out, transformed along y and z (a radix-2 split and two half-length transforms: half the z input is
    zero) and summed by C loops. ``weights``: ``slab_weights(kernel_octant, size)`` when the caller keeps it."""
    c2c, r2c = _inplace_fft(), _scratch_rfft()
    n0, n1, n2 = size
    nz, _, p, ny = rows_t.shape
    f = r2c(rows_t, 1)  # (n_z, n2 // 2 + 1, p, n_y)
    n_last = f.shape[1]
    wt = weights if weights is not None and weights.shape == (n_last, n0, n1) else slab_weights(kernel_octant, size)
    kb = max(1, min(n_last, SLAB_BYTES // (16 * p * n0 * n1)))
    slab = scratch("kps_slab", (kb, p, n0, n1), np.complex128)
    out = np.zeros(len(pairs))
    tpairs = tuple((int(a), int(b)) for a, b in pairs)
    for k0 in range(0, n_last, kb):
        s = slab[:min(kb, n_last - k0)]
        cm.fill_slab(f, s, k0, f.shape, (n0, n1))
        c2c(s[:, :, :nz], 3)  # along y, on the rows that hold data
        cm.split_slab(s, (p, n0, n1), nz)  # along z: a radix-2 step (half the input is zero) and ..
        c2c(s.reshape(len(s), p, 2, n0 // 2, n1), 3)  # .. two half-length transforms
        cm.slab_sums(s, wt, k0, (p, n_last, n0, n1), tpairs, out)
    return [float(v) for v in out]


@functools.lru_cache(maxsize=1)
def _scratch_rfft():
    """``f(a, axis)``: ``scipy.fft.rfft(a, axis=axis)`` written into a reused :func:`scratch` array (a fresh 5 MB
    result per call costs allocator work), through scipy's pocketfft binding; plain ``rfft`` without it. The
    result is only valid until the next call."""
    from scipy import fft

    def public(a: np.ndarray, axis: int) -> np.ndarray:
        return fft.rfft(a, axis=axis)

    try:
        from scipy.fft._pocketfft import pypocketfft as pfft
        probe = np.arange(12, dtype=np.float64).reshape(3, 4)
        out = np.empty((3, 3), dtype=np.complex128)
        pfft.r2c(probe, (1,), True, 0, out, 1)
        if not np.allclose(out, fft.rfft(probe, axis=1), rtol=1e-14, atol=1e-14):
            return public
    except (ImportError, AttributeError, TypeError, ValueError):
        return public

    def direct(a: np.ndarray, axis: int) -> np.ndarray:
        shape = a.shape[:axis] + (a.shape[axis] // 2 + 1,) + a.shape[axis + 1:]
        return pfft.r2c(a, (axis,), True, 0, scratch("kps_rfft", shape, np.complex128), 1)

    return direct


@functools.lru_cache(maxsize=1)
def _inplace_fft():
    """``f(a, axis)``: forward complex FFT of ``a`` along ``axis``, in place. scipy's pocketfft binding called
    directly (the public ``scipy.fft.fft`` adds ~25 us of dispatch per call; the slab loop makes ~20 calls), or
    ``scipy.fft.fft(overwrite_x=True)`` when that private binding is not there."""
    from scipy import fft

    def public(a: np.ndarray, axis: int) -> None:
        fft.fft(a, axis=axis, overwrite_x=True)

    try:
        from scipy.fft._pocketfft import pypocketfft as pfft
        probe = np.arange(6, dtype=np.complex128).reshape(2, 3)
        ref = fft.fft(probe, axis=1)
        pfft.c2c(probe, (1,), True, 0, probe, 1)
        if not np.allclose(probe, ref, rtol=1e-14, atol=1e-14):
            return public
    except (ImportError, AttributeError, TypeError, ValueError):
        return public

    def direct(a: np.ndarray, axis: int) -> None:
        pfft.c2c(a, (axis,), True, 0, a, 1)

    return direct


def kernel_pair_sums(arrays: list[np.ndarray], pairs: list[tuple[int, int]], kernel_octant: np.ndarray,
                     size: tuple[int, int, int], block_bytes: int = 32 << 20,
                     weights: np.ndarray | None = None) -> list[float]:
    """``sum_ij a_i K(i - j) b_j`` over all voxel pairs, for each pair ``(a, b)`` of 3D ``arrays`` (same shape).

    ``K`` is even along every axis and given by its octant (see :func:`even_kernel_spectrum`); ``size``
    (even, >= 2 (n - 1) per axis) makes circular correlation equal linear correlation. By Parseval each sum is
    ``sum_f K^(f) Re(conj(A(f)) B(f)) / N``, so only forward transforms are needed, pruned: the real transform
    along the last axis runs on the unpadded rows, the one along the middle axis only on the planes that hold
    data. The last two run in place in a zero-padded work buffer, on blocks of the real transform's frequencies
    (``block_bytes`` of buffer), and each block is summed right away; work arrays are reused between calls
    (:func:`scratch`). ``weights``: ``unfolded_weights(kernel_octant, size)`` when the caller keeps it
    (``slab_weights`` when the compiled module is used: :func:`native_pair_sums`).
    """
    from scipy import fft

    from ._native import native

    n0, n1, n2 = size
    p = len(arrays)
    nz, ny, nx = np.shape(arrays[0])
    cm = native("_cmorph")
    if cm is not None:
        rows_t = scratch("kps_rows", (nz, n2, p, ny), np.float64)  # x before y, zero-padded along x
        rows_t[:, nx:] = 0.0
        for k, a in enumerate(arrays):
            rows_t[:, :nx, k] = np.moveaxis(np.asarray(a, dtype=np.float64), 2, 1)
        return native_pair_sums(cm, rows_t, pairs, kernel_octant, size, weights)
    rows = scratch("kps_rows", (p, nz, ny, n2), np.float64)  # each row zero-padded to the transform length
    rows[..., nx:] = 0.0
    for k, a in enumerate(arrays):
        rows[k, :, :, :nx] = a
    f = fft.rfft(rows, axis=3)  # (p, n_z, n_y, n2 // 2 + 1)
    n_last = f.shape[3]
    if weights is None or weights.shape != (n0, n1, 2 * n_last):
        weights = unfolded_weights(kernel_octant, size)
    step = min(n_last, max(1, block_bytes // (16 * p * n0 * n1)))
    buf = scratch("kps_spectra", (p, n0, n1, step), np.complex128)
    sums = [0.0] * len(pairs)
    for k0 in range(0, n_last, step):
        kb = min(step, n_last - k0)
        blk = buf if kb == step else buf[..., :kb]
        blk[:, nz:] = 0.0
        blk[:, :nz, ny:] = 0.0
        blk[:, :nz, :ny] = f[..., k0:k0 + kb]
        fft.fft(blk[:, :nz], axis=2, overwrite_x=True)  # along y (rows beyond n_z are zero)
        fft.fft(blk, axis=1, overwrite_x=True)  # along z
        flat = blk.view(np.float64)  # (p, n0, n1, 2 kb): (re, im) pairs
        gb = weights[..., 2 * k0:2 * (k0 + kb)]
        for q, (a, b) in enumerate(pairs):
            # g * (re_a re_b + im_a im_b) summed in one pass without temporaries; plain einsum, not BLAS
            # (a threaded BLAS call spins on a busy machine)
            sums[q] += float(np.einsum("ijk,ijk,ijk->", gb, flat[a], flat[b]))
    return sums
