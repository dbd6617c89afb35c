"""FFT helpers shared by the morphology (Moran's I / Geary's C) and local intensity (peak) features.

Both transform arrays zero-padded to about twice their size per axis. ``scipy.fft.rfftn(a, shape)`` pads first and
then transforms every axis over the full padded size, including the planes that are all zeros; transforming one
axis at a time on the unpadded data ("pruned" transform) skips those and gives the same spectrum 3-4 times faster.
"""

from __future__ import annotations

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


def kernel_pair_sums(arrays: list[np.ndarray], pairs: list[tuple[int, int]], kernel_octant: np.ndarray,
                     size: tuple[int, int, int], block_bytes: int = 4 << 20) -> list[float]:
    """``sum_ij a_i K(i - j) b_j`` over all voxel pairs, for each pair ``(a, b)`` of 3D ``arrays`` (same shape).

    ``K`` is even along every axis and given by its octant (see :func:`even_kernel_spectrum`); ``size``
    (even, >= 2 n - 1 per axis) makes circular correlation equal linear correlation. By Parseval each sum is
    ``sum_f K^(f) Re(conj(A(f)) B(f)) / N``, so only forward transforms are needed (pruned, axis by axis). After
    the first (real) transform the other two run on blocks of its frequencies and each block is summed right
    away: the padded spectra (tens to hundreds of MB of fresh memory, i.e. page faults, for a large ROI) never
    exist in full.
    """
    from scipy import fft

    n0, n1, n2 = size
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    spec = even_kernel_spectrum(kernel_octant, size)
    spec *= half_spectrum_weights(n2) / float(n0 * n1 * n2)  # rFFT half of the last axis stands for both halves
    spec = np.repeat(spec, 2, axis=-1)  # matches the (re, im) float view of a complex spectrum
    unfold0 = np.r_[0:n0 // 2 + 1, n0 // 2 - 1:0:-1]  # spectrum(f) = spectrum(N - f): full f0 and f1 ranges
    unfold1 = np.r_[0:n1 // 2 + 1, n1 // 2 - 1:0:-1]
    p, nz, ny = stack.shape[:3]
    f = fft.rfft(stack, n2, axis=3)  # (p, n_z, n_y, N2 // 2 + 1): the first two axes still unpadded
    n_last = f.shape[3]
    step = min(n_last, max(1, block_bytes // (16 * p * n0 * n1)))
    # one zero-padded work buffer for every block: both transforms run in place, no padded copies
    buf = np.zeros((p, n0, n1, step), dtype=np.complex128)
    sums = [0.0] * len(pairs)
    for k0 in range(0, n_last, step):
        k1 = min(k0 + step, n_last)
        blk = buf[..., :k1 - k0]
        blk[:, :nz, :ny] = f[..., k0:k1]
        blk[:, :nz, ny:] = 0.0
        blk[:, nz:] = 0.0
        fft.fft(blk[:, :nz], axis=2, overwrite_x=True)  # along y (rows beyond n_z are zero)
        fft.fft(blk, axis=1, overwrite_x=True)  # along z
        flat = blk.view(np.float64)
        g = spec[:, :, 2 * k0:2 * k1][np.ix_(unfold0, unfold1)]
        weighted = {}
        for q, (a, b) in enumerate(pairs):
            # g * (re_a re_b + im_a im_b) summed; plain einsum, not BLAS (threaded BLAS spins on a busy machine)
            if a not in weighted:
                weighted[a] = g * flat[a]
            sums[q] += float(np.einsum("ijk,ijk->", weighted[a], flat[b]))
    return sums
