"""IBSI-1 local intensity features: local and global intensity peak (mean in a 1 cm^3 sphere).

The sphere (radius 6.2035 mm) is built on the real voxel spacing; the mean around a voxel is an FFT convolution
of the image with the sphere, divided by the number of sphere voxels that lie inside the image (voxels outside
the image never count). For the features only the means at intensity-mask voxels are needed, so the convolution
runs on the mask's bounding box plus the sphere radius, and the divisor is the sphere size wherever the sphere
stays inside the image (it is only counted near the image border).
"""

from __future__ import annotations

import functools

import numpy as np

from ._fft import ArrayCache, padded_rfftn
from ._native import native
from .preprocess import PEAK_RADIUS_MM, ProcessedROI


@functools.lru_cache(maxsize=32)
def _sphere_kernel_cached(spacing_xyz: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    sx, sy, sz = spacing_xyz
    nz, ny, nx = (int(np.floor(radius_mm / s)) for s in (sz, sy, sx))
    z, y, x = np.meshgrid(np.arange(-nz, nz + 1) * sz, np.arange(-ny, ny + 1) * sy, np.arange(-nx, nx + 1) * sx,
                          indexing="ij", sparse=True)
    k = (z * z + y * y + x * x) <= radius_mm ** 2 + 1e-9
    k.flags.writeable = False
    return k


def sphere_kernel(spacing_xyz, radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (z, y, x) kernel of voxel centres within ``radius_mm`` of the centre voxel (a read-only array)."""
    return _sphere_kernel_cached(tuple(float(s) for s in spacing_xyz), float(radius_mm))


def _convolve_same(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Linear convolution of ``a`` (zero outside) with the centro-symmetric kernel ``k``, cropped to ``a.shape``."""
    from scipy import fft

    size = tuple(fft.next_fast_len(n + kn - 1, real=True) for n, kn in zip(a.shape, k.shape))
    spec = padded_rfftn(a.astype(np.float64, copy=False), size)
    spec *= padded_rfftn(k.astype(np.float64), size)
    crop = tuple(slice(kn // 2, kn // 2 + n) for n, kn in zip(a.shape, k.shape))
    return fft.irfftn(spec, size, overwrite_x=True)[crop]  # k symmetric: convolution == correlation


_SPECTRA = ArrayCache(32 << 20)


def _sphere_spectrum(spacing_xyz: tuple[float, float, float], radius_mm: float, size: tuple[int, int, int]) -> np.ndarray:
    """rFFT of the sphere kernel wrapped around voxel 0 of a ``size`` grid (circular convolution), read-only and
    kept in a bounded cache (it depends on the geometry only)."""
    from scipy import fft

    def make():
        k = _sphere_kernel_cached(spacing_xyz, radius_mm)
        wrapped = np.zeros(size)
        wrapped[:k.shape[0], :k.shape[1], :k.shape[2]] = k
        wrapped = np.roll(wrapped, [-(n // 2) for n in k.shape], axis=(0, 1, 2))
        return (fft.rfftn(wrapped),)

    return _SPECTRA.get((spacing_xyz, radius_mm, size), make)[0]


def local_mean(image: np.ndarray, spacing_xyz, radius_mm: float = PEAK_RADIUS_MM, support: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``image`` within a sphere around every voxel (only voxels in ``support``, default all, count)."""
    k = sphere_kernel(spacing_xyz, radius_mm)
    sup = np.ones(image.shape) if support is None else support.astype(np.float64)
    num = _convolve_same(np.where(sup > 0, image, 0.0), k)
    den = _convolve_same(sup, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.maximum(np.round(den), 1.0)


NATIVE_MAX_BYTES = 256 << 20  # window sums of the compiled path; beyond this the FFT path runs


def sphere_means_at(image: np.ndarray, where: np.ndarray, spacing_xyz, radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Sphere means (as ``local_mean``) at the voxels of boolean ``where``, in ``image[where]`` order.

    Compiled path: direct sums over the sphere's x-rows (one window sum per row and voxel), exact up to round-off
    and cheaper than transforming the box when only the ROI's voxels are asked for."""
    k = sphere_kernel(spacing_xyz, radius_mm)
    cm = native("_cmorph")
    if cm is not None:
        img = np.ascontiguousarray(image, dtype=np.float64)
        wh = np.ascontiguousarray(where, dtype=bool)
        out = np.empty(int(np.count_nonzero(wh)))
        if cm.sphere_means(img, wh, img.shape, k, k.shape, out, NATIVE_MAX_BYTES) is not None:
            return out
    half = [kn // 2 for kn in k.shape]
    nz = [np.flatnonzero(where.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    lo = [max(0, int(ix[0]) - h) for ix, h in zip(nz, half)]
    hi = [min(n, int(ix[-1]) + h + 1) for ix, h, n in zip(nz, half, image.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub_where = where[box]
    inside = all(int(ix[0]) - h >= 0 and int(ix[-1]) + h < n for ix, h, n in zip(nz, half, image.shape))
    if inside:
        # every sphere lies within the image and holds all kernel voxels; the box has a margin of the kernel
        # radius around every voxel asked for, so a circular convolution on a grid of the box's own size (no
        # zero padding) is exact there: what wraps around only reaches the margin
        from scipy import fft

        sub = np.asarray(image[box], dtype=np.float64)
        size = tuple(fft.next_fast_len(n, real=True) for n in sub.shape)
        spec = padded_rfftn(sub, size)
        spec *= _sphere_spectrum(tuple(float(v) for v in spacing_xyz), float(radius_mm), size)
        conv = fft.irfftn(spec, size, overwrite_x=True)[:sub.shape[0], :sub.shape[1], :sub.shape[2]]
        return conv[sub_where] / float(np.count_nonzero(k))
    num = _convolve_same(image[box], k)[sub_where]
    den = np.round(_convolve_same(np.ones(sub_where.shape), k)[sub_where])
    return num / np.maximum(den, 1.0)


def local_intensity_features(roi: ProcessedROI, values: np.ndarray | None = None) -> dict[str, float]:
    """``loc_peak_loc``: highest sphere mean around the maximum-intensity voxel(s) of the intensity mask;
    ``loc_peak_glob``: highest sphere mean over all intensity-mask voxels (``values``: ``roi.values`` if known)."""
    m = sphere_means_at(roi.image, roi.int_mask, roi.spacing)
    vals = roi.values if values is None else values
    at_max = m[vals == vals.max()]
    return {"loc_peak_loc": float(at_max.max()), "loc_peak_glob": float(m.max())}
