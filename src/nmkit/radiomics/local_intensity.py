"""IBSI-1 local intensity features: local and global intensity peak (mean in a 1 cm^3 sphere).

The sphere (radius 6.2035 mm) is built on the real voxel spacing; the mean around every voxel is one FFT
convolution of the image with the sphere, divided by the convolution of the image support with the sphere so
that voxels outside the image never count (only image voxels that exist are averaged).
"""

from __future__ import annotations

import numpy as np

from .preprocess import PEAK_RADIUS_MM, ProcessedROI


def sphere_kernel(spacing_xyz, radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (z, y, x) kernel of voxel centres within ``radius_mm`` of the centre voxel."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    nz, ny, nx = (int(np.floor(radius_mm / s)) for s in (sz, sy, sx))
    z, y, x = np.meshgrid(np.arange(-nz, nz + 1) * sz, np.arange(-ny, ny + 1) * sy, np.arange(-nx, nx + 1) * sx,
                          indexing="ij", sparse=True)
    return (z * z + y * y + x * x) <= radius_mm ** 2 + 1e-9


def local_mean(image: np.ndarray, spacing_xyz, radius_mm: float = PEAK_RADIUS_MM, support: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``image`` within a sphere around every voxel (only voxels in ``support``, default all, count)."""
    from scipy import fft

    k = sphere_kernel(spacing_xyz, radius_mm).astype(np.float64)
    sup = np.ones(image.shape) if support is None else support.astype(np.float64)
    # linear convolution by zero-padded rFFT ("same" crop); the sphere is symmetric so no flip is needed
    size = tuple(fft.next_fast_len(n + kn - 1, real=True) for n, kn in zip(image.shape, k.shape))
    kf = fft.rfftn(k, size, workers=-1)
    crop = tuple(slice(kn // 2, kn // 2 + n) for n, kn in zip(image.shape, k.shape))

    def conv(a: np.ndarray) -> np.ndarray:
        return fft.irfftn(fft.rfftn(a, size, workers=-1) * kf, size, workers=-1)[crop]

    num = conv(np.where(sup > 0, image, 0.0).astype(np.float64))
    den = conv(sup)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.maximum(np.round(den), 1.0)


def local_intensity_features(roi: ProcessedROI) -> dict[str, float]:
    """``loc_peak_loc``: highest sphere mean around the maximum-intensity voxel(s) of the intensity mask;
    ``loc_peak_glob``: highest sphere mean over all intensity-mask voxels."""
    means = local_mean(roi.image, roi.spacing)
    vals = roi.image[roi.int_mask]
    m = means[roi.int_mask]
    at_max = m[vals == vals.max()]
    return {"loc_peak_loc": float(at_max.max()), "loc_peak_glob": float(m.max())}
