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


def symmetric_kernel_spectrum(kernel_octant: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Real rFFT-layout spectrum ``(N0, N1, N2 // 2 + 1)`` of a kernel that is even along every axis.

    ``kernel_octant[i, j, k]`` is the kernel at offset ``(i, j, k)`` for ``0 <= i <= N0 / 2`` etc. (even sizes);
    the kernel at ``(-i, j, k)`` etc. is the same value. The DFT of such a kernel is real and even and equals the
    type-I DCT of the octant, an eighth of the work of transforming the full grid.
    """
    from scipy import fft

    if any(s % 2 for s in size) or kernel_octant.shape != tuple(s // 2 + 1 for s in size):
        raise ValueError(f"octant shape {kernel_octant.shape} does not fit even grid {size}")
    spec = fft.dctn(kernel_octant, type=1)  # spectrum at frequencies 0..N/2 per axis
    unfold = [np.r_[0:s // 2 + 1, s // 2 - 1:0:-1] for s in size[:2]]  # spectrum(f) = spectrum(N - f)
    return spec[unfold[0][:, None], unfold[1][None, :]]


def half_spectrum_weights(n_last: int) -> np.ndarray:
    """Weights of the rFFT bins of an even-length last axis in a sum over the full spectrum (2 for mirrored bins)."""
    w = np.full(n_last // 2 + 1, 2.0)
    w[0] = w[-1] = 1.0
    return w
