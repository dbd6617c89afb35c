"""IBSI-2 convolutional filters (arXiv:2006.05470): mean, LoG, Laws, Gabor, separable wavelets, Simoncelli, Riesz.

Why: filtered ("response") images are a standard radiomics preprocessing step; IBSI-2 fixes the kernels, boundary
conditions and rotation-invariance rules so that values agree between software. ``apply_filter`` works on a
(z, y, x) float array with voxel spacing (x, y, z) mm and returns the response map on the same grid.

Conventions (checked voxel by voxel against the IBSI-2 phase-1 consensus response maps, see
tests/test_radiomics_ibsi2_phase1.py):

- ``dims`` "3D" filters over (z, y, x); "2D" filters each axial slice over (y, x) independently.
- Boundary conditions: ``constant`` (zero padding), ``nearest`` (edge value), ``periodic`` (wrap) and ``mirror``
  (symmetric: ``d c b a | a b c d``).
- Rotation invariance (``rotation: max | average``) pools the response over the 24 right-angle rotations of the
  volume (3D) or the 4 in-plane rotations (2D): each rotation rotates the image, filters it and rotates the
  response back, which keeps even-length kernels (wavelets) centred as a rotated kernel would be.
- Kernel sizes in mm are converted to voxels with the in-plane spacing (x); IBSI-2 grids are isotropic or 2D.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import InputError

FILTER_KINDS = ("none", "mean", "log", "laws", "gabor", "wavelet", "simoncelli", "riesz_log", "riesz_simoncelli")
BOUNDARIES = ("constant", "nearest", "periodic", "mirror")
_NDIMAGE_MODE = {"constant": "constant", "nearest": "nearest", "periodic": "wrap", "mirror": "reflect"}
_NUMPY_PAD = {"constant": "constant", "nearest": "edge", "periodic": "wrap", "mirror": "symmetric"}

# Laws 1D kernels, normalised to unit L2 norm as IBSI-2 defines them.
_LAWS = {
    "L3": np.array([1.0, 2.0, 1.0]) / math.sqrt(6.0),
    "E3": np.array([-1.0, 0.0, 1.0]) / math.sqrt(2.0),
    "S3": np.array([-1.0, 2.0, -1.0]) / math.sqrt(6.0),
    "L5": np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / math.sqrt(70.0),
    "E5": np.array([-1.0, -2.0, 0.0, 2.0, 1.0]) / math.sqrt(10.0),
    "S5": np.array([-1.0, 0.0, 2.0, 0.0, -1.0]) / math.sqrt(6.0),
    "W5": np.array([-1.0, 2.0, 0.0, -2.0, 1.0]) / math.sqrt(10.0),
    "R5": np.array([1.0, -4.0, 6.0, -4.0, 1.0]) / math.sqrt(70.0),
}

# Decomposition low-pass filters (PyWavelets ``dec_lo``) of the wavelets IBSI-2 uses; any other name is looked up
# in PyWavelets when it is installed. High-pass: quadrature mirror of the low-pass.
_WAVELETS = {
    "haar": [0.7071067811865476, 0.7071067811865476],
    "db1": [0.7071067811865476, 0.7071067811865476],
    "db2": [-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416],
    "db3": [0.03522629188570953, -0.08544127388202666, -0.13501102001025458, 0.45987750211849154,
            0.8068915093110925, 0.33267055295008263],
    "db4": [-0.010597401785069032, 0.0328830116668852, 0.030841381835560764, -0.18703481171909309,
            -0.027983769416859854, 0.6308807679298589, 0.7148465705529157, 0.2303778133088965],
    "coif1": [-0.015655728135791993, -0.07273261951252645, 0.3848648468648578, 0.8525720202116004,
              0.3378976624574818, -0.07273261951252645],
    "sym2": [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025],
    "sym3": [0.035226291882100656, -0.08544127388224149, -0.13501102001039084, 0.4598775021193313,
             0.8068915093133388, 0.3326705529509569],
}


@dataclass
class FilterSpec:
    """One IBSI-2 filter. Lengths in mm (``sigma_mm``, ``lambda_mm``); ``support`` in voxels.

    kind: mean | log | laws | gabor | wavelet | simoncelli | riesz_log | riesz_simoncelli (or none).
    """

    kind: str = "none"
    dims: str = "3D"
    boundary: str = "mirror"
    rotation: str = "none"  # none | max | average (right-angle rotations; Gabor: orientations in plane)
    support: int = 5  # mean filter support M (voxels)
    sigma_mm: float | None = None  # LoG / Gabor scale
    truncate: float = 4.0  # LoG / Gabor kernel half-width in units of sigma: M = 1 + 2 floor(d sigma / dx + 0.5)
    kernel: str | None = None  # Laws kernel name, e.g. "E5L5S5" (x, y, z order)
    energy: bool = False  # Laws energy map: local mean of |response| over (2 delta + 1)^D voxels
    energy_delta: int = 7
    lambda_mm: float | None = None  # Gabor wavelength
    gamma: float = 1.0  # Gabor spatial aspect ratio
    theta: float = 0.0  # Gabor orientation (rad)
    delta_theta: float | None = None  # Gabor orientation step for rotation pooling (rad)
    orthogonal_planes: bool = False  # Gabor: also filter the coronal and sagittal planes, average the three
    wavelet: str = "haar"
    decomposition: str = "L"  # wavelet: one L/H letter per filtered axis, x first (e.g. "LHL": x L, y H, z L)
    level: int = 1  # wavelet / Simoncelli decomposition level
    riesz_order: tuple[int, ...] | None = None  # Riesz order per axis, x first
    # Riesz aligned with the local structure-tensor frame (IBSI-2 9.b.2 / 10.b.2 / 11.A-B; no consensus exists, so
    # this is not validated): x' = dominant gradient direction, then decreasing eigenvalues; tensor Gaussian in mm
    steer: bool = False
    tensor_sigma_mm: float = 1.0

    _FLOATS = ("sigma_mm", "truncate", "lambda_mm", "gamma", "theta", "delta_theta", "tensor_sigma_mm")
    _INTS = ("support", "energy_delta", "level")

    def __post_init__(self) -> None:
        for name in self._FLOATS + self._INTS:
            value = getattr(self, name)
            if value is None or isinstance(value, bool):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InputError(None, f"filter {name} must be a number (angles in radians), got {value!r}") from None
            if name in self._INTS and number != int(number):
                raise InputError(None, f"filter {name} must be an integer, got {value!r}")
            setattr(self, name, int(number) if name in self._INTS else number)
        self.kind = str(self.kind).lower()
        if self.kind not in FILTER_KINDS:
            raise InputError(None, f"filter kind must be one of {FILTER_KINDS}, got {self.kind!r}")
        if self.dims not in ("2D", "3D"):
            raise InputError(None, f"filter dims must be '2D' or '3D', got {self.dims!r}")
        b = {"zero": "constant", "wrap": "periodic", "reflect": "mirror", "symmetric": "mirror"}.get(
            str(self.boundary).lower(), str(self.boundary).lower())
        if b not in BOUNDARIES:
            raise InputError(None, f"filter boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        self.boundary = b
        if self.rotation not in ("none", "max", "average"):
            raise InputError(None, f"filter rotation must be none, max or average, got {self.rotation!r}")
        if self.kind in ("log", "riesz_log", "gabor") and not (self.sigma_mm and self.sigma_mm > 0):
            raise InputError(None, f"{self.kind} filter needs a positive sigma_mm")
        if self.kind == "gabor" and not (self.lambda_mm and self.lambda_mm > 0):
            raise InputError(None, "gabor filter needs a positive lambda_mm")
        if self.kind == "laws":
            _laws_kernels(self.kernel, self.n_axes)
        if self.kind == "wavelet":
            _wavelet_filters(self.wavelet)
            self.decomposition = str(self.decomposition)
            if len(self.decomposition) != self.n_axes or set(self.decomposition.upper()) - {"L", "H"}:
                raise InputError(None, f"wavelet decomposition must be {self.n_axes} letters L/H, got {self.decomposition!r}")
        if self.kind in ("riesz_log", "riesz_simoncelli"):
            if self.riesz_order is None or len(self.riesz_order) != self.n_axes:
                raise InputError(None, f"{self.kind} needs riesz_order with {self.n_axes} integers (x first)")
            try:
                self.riesz_order = tuple(int(v) for v in self.riesz_order)
            except (TypeError, ValueError):
                raise InputError(None, f"riesz_order must be integers, got {self.riesz_order!r}") from None
            if min(self.riesz_order) < 0 or sum(self.riesz_order) == 0:
                raise InputError(None, f"riesz_order must be non-negative with a positive sum, got {self.riesz_order!r}")
        if self.level < 1:
            raise InputError(None, "filter level must be >= 1")
        if self.mean_support_invalid:
            raise InputError(None, "mean filter support must be an odd number of voxels >= 1")

    @property
    def n_axes(self) -> int:
        return 2 if self.dims == "2D" else 3

    @property
    def mean_support_invalid(self) -> bool:
        return self.kind == "mean" and (self.support < 1 or self.support % 2 == 0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FilterSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(None, f"unknown filter keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(data))


# ----------------------------------------------------------------------------------------------- kernels


def _laws_kernels(name: str | None, n_axes: int) -> list[np.ndarray]:
    """The 1D Laws kernels of a name like ``E5L5S5`` (x, y, z order)."""
    text = (name or "").upper()
    parts = [text[i:i + 2] for i in range(0, len(text), 2)]
    if len(parts) != n_axes or any(p not in _LAWS for p in parts):
        raise InputError(None, f"Laws kernel must be {n_axes} of {sorted(_LAWS)} (e.g. 'L5E5'), got {name!r}")
    return [_LAWS[p] for p in parts]


def _wavelet_filters(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(low-pass, high-pass) decomposition filters of a wavelet (PyWavelets naming)."""
    key = str(name).lower()
    if key in _WAVELETS:
        lo = np.asarray(_WAVELETS[key], dtype=float)
    else:
        try:
            import pywt

            lo = np.asarray(pywt.Wavelet(key).dec_lo, dtype=float)
        except (ImportError, ValueError) as exc:
            raise InputError(None, f"unknown wavelet {name!r} (built in: {sorted(_WAVELETS)}; others need PyWavelets)") from exc
    hi = lo[::-1] * np.array([(-1.0) ** (k + 1) for k in range(lo.size)])
    return lo, hi


def _half_width(sigma_vox: float, truncate: float) -> int:
    """IBSI-2 kernel radius: M = 1 + 2 floor(d sigma + 0.5)."""
    return int(math.floor(truncate * sigma_vox + 0.5))


def _axes(spec: FilterSpec, ndim: int = 3) -> tuple[int, ...]:
    """Array axes filtered, numpy order: (1, 2) for 2D, (0, 1, 2) for 3D."""
    return (1, 2) if spec.dims == "2D" else (0, 1, 2)


# ----------------------------------------------------------------------------------------------- primitives


def _separable(img: np.ndarray, kernels: Mapping[int, np.ndarray], boundary: str) -> np.ndarray:
    """Convolve ``img`` with a 1D kernel along each listed axis (kernel centre at ``len // 2``)."""
    from scipy import ndimage

    out = img
    for axis, k in kernels.items():
        out = ndimage.convolve1d(out, np.asarray(k, dtype=float), axis=axis, mode=_NDIMAGE_MODE[boundary], cval=0.0)
    return out


def _pad(img: np.ndarray, widths: Mapping[int, int], boundary: str) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``img`` padded by ``widths[axis]`` on both sides following the boundary condition, and the slice back."""
    pw = [(widths.get(a, 0), widths.get(a, 0)) for a in range(img.ndim)]
    mode = _NUMPY_PAD[boundary]
    padded = np.pad(img, pw, mode=mode)
    return padded, tuple(slice(p, p + n) for (p, _), n in zip(pw, img.shape))


def _freq_grid(shape: tuple[int, ...], axes: tuple[int, ...], consensus: bool = False) -> list[np.ndarray]:
    """Angular frequencies (rad / voxel) along ``axes`` in FFT order, broadcastable to ``shape``.

    ``consensus``: the grid of the IBSI-2 Simoncelli consensus maps, N points evenly from -pi to pi inclusive
    (spacing 2 pi / (N - 1), so not exactly the DFT frequencies); it reproduces phase-1 tests 8.a.2 / 8.a.3 to
    1e-5 of the range where the exact DFT grid misses them by 2.5-8 % of the range."""
    out = []
    for a in axes:
        if consensus:
            w = np.fft.ifftshift(np.linspace(-math.pi, math.pi, shape[a]))
        else:
            w = 2.0 * math.pi * np.fft.fftfreq(shape[a])
        sh = [1] * len(shape)
        sh[a] = shape[a]
        out.append(w.reshape(sh))
    return out


FOURIER_PAD_MAX = 64  # voxels per side at most: bounds the memory of Fourier filters on large images


def _response_cache():
    from ._fft import ArrayCache

    return ArrayCache(64 << 20)


_RESPONSES = _response_cache()  # frequency responses by grid (they depend on the geometry only)


def _fourier_filter(img: np.ndarray, axes: tuple[int, ...], boundary: str,
                    response: Callable[[list[np.ndarray]], np.ndarray], consensus_grid: bool = False,
                    cache_key: tuple | None = None) -> np.ndarray:
    """Apply a filter defined by its frequency response ``response(omegas)`` (omegas in numpy-axis order).

    Periodic boundaries use the image as is; other boundaries first pad half the image size per side (at most
    ``FOURIER_PAD_MAX``), which matched the phase-1 Riesz maps best (10.b.1: 0.15 of the tolerance; no padding 0.79,
    a full image size 0.39). The result is the real part of the inverse transform of spectrum x response; for a
    real image that is computed with real transforms (half the work) and the Hermitian part of the response
    (:func:`_half_response`). ``cache_key`` names the response so that it is kept for the next image of the same
    size (it depends on the grid only)."""
    from scipy import fft

    if boundary == "periodic":
        padded, back = img, tuple(slice(None) for _ in img.shape)
    else:
        padded, back = _pad(img, {a: min(img.shape[a] // 2, FOURIER_PAD_MAX) for a in axes}, boundary)
    if np.iscomplexobj(padded):
        spec = np.fft.fftn(padded, axes=axes)
        spec *= response(_freq_grid(padded.shape, axes, consensus_grid))
        return np.real(np.fft.ifftn(spec, axes=axes)[back])
    shape = tuple(padded.shape)

    def make() -> tuple[np.ndarray]:
        return (_half_response(shape, axes, response, consensus_grid),)

    if cache_key is None:
        resp = make()[0]
    else:
        resp = _RESPONSES.get((cache_key, shape, tuple(axes), consensus_grid), make)[0]
    spec = fft.rfftn(padded, axes=axes)
    spec *= resp
    return fft.irfftn(spec, s=[shape[a] for a in axes], axes=axes, overwrite_x=True)[back]


def _half_response(shape: tuple[int, ...], axes: tuple[int, ...], response: Callable[[list[np.ndarray]], np.ndarray],
                   consensus: bool) -> np.ndarray:
    """``(H(k) + conj(H(-k))) / 2`` on the rFFT half grid (last filtered axis 0..N/2): for a real image, the real
    part of ``ifft(X H)`` is ``ifft(X Hs)`` with this Hermitian ``Hs``, i.e. ``irfft`` of the half spectrum times it.
    (H itself need not be Hermitian: the consensus Simoncelli grid is not symmetric about 0.)"""
    full = _freq_grid(shape, axes, consensus)
    pos, neg = [], []
    for j, (a, w) in enumerate(zip(axes, full)):
        n = shape[a]
        idx = np.arange(n // 2 + 1 if j == len(axes) - 1 else n)
        sh = [1] * len(shape)
        sh[a] = idx.size
        w = w.ravel()
        pos.append(w[idx].reshape(sh))
        neg.append(w[(-idx) % n].reshape(sh))
    h = response(pos)
    h_neg = response(neg)
    out = 0.5 * (h + (np.conj(h_neg) if np.iscomplexobj(h_neg) else h_neg))
    return np.ascontiguousarray(out)  # broadcastable to the half spectrum


# ----------------------------------------------------------------------------------------------- filters


def _box_mean(img: np.ndarray, size: int, axes: tuple[int, ...], boundary: str) -> np.ndarray:
    """Mean over a box of ``size`` (odd) voxels along each of ``axes`` (``size`` taps of ``1 / size`` per axis).

    Taps rather than running sums (``uniform_filter1d``, 3x faster for 15 voxels): a running sum's round-off
    depends on where each line starts, so the response at a voxel would change in its last digits with the crop
    around the ROI, and order statistics such as stat_rmad can jump with it (seen at 5e-6 relative on 2.B)."""
    k = np.full(size, 1.0 / size)
    return _separable(img, {a: k for a in axes}, boundary)


def _mean(img: np.ndarray, spec: FilterSpec) -> np.ndarray:
    return _box_mean(img, spec.support, _axes(spec), spec.boundary)


def _log(img: np.ndarray, spec: FilterSpec, spacing: tuple[float, ...]) -> np.ndarray:
    """Laplacian of Gaussian with the sampled, truncated IBSI-2 kernel (separable: sum over axes of g'' x g x g).

    Each axis gets its own sigma in voxels (sigma_mm / spacing), so anisotropic grids filter the same physical
    scale along every axis; the second derivatives are in mm^-2 times the x spacing squared, i.e. per voxel^2 as
    IBSI-2 has them on isotropic grids."""
    sp_np = tuple(float(v) for v in spacing[::-1])  # (z, y, x)
    ref2 = float(spacing[0]) ** 2
    axes = _axes(spec)
    g, g2 = {}, {}
    for a in axes:
        s = spec.sigma_mm / sp_np[a]
        r = _half_width(s, spec.truncate)
        x = np.arange(-r, r + 1, dtype=float)
        g[a] = np.exp(-x * x / (2 * s * s)) / (math.sqrt(2 * math.pi) * s)
        g2[a] = g[a] * (x * x / s ** 4 - 1.0 / s ** 2) * ref2 / sp_np[a] ** 2
    out = np.zeros_like(img, dtype=float)
    for a in axes:
        out += _separable(img, {b: (g2[b] if b == a else g[b]) for b in axes}, spec.boundary)
    return out


def _laws(img: np.ndarray, spec: FilterSpec) -> np.ndarray:
    ks = _laws_kernels(spec.kernel, spec.n_axes)  # x, y, z order
    axes = _axes(spec)[::-1]  # numpy axes of x, y, z
    return _separable(img, dict(zip(axes, ks)), spec.boundary)


def _laws_energy(resp: np.ndarray, spec: FilterSpec) -> np.ndarray:
    return _box_mean(np.abs(resp), 2 * spec.energy_delta + 1, _axes(spec), spec.boundary)


def _gabor_kernel(spec: FilterSpec, plane_spacing: tuple[float, float], theta: float) -> np.ndarray:
    """Complex 2D Gabor kernel over (rows, columns) = (y, x): Gaussian envelope (sigma, aspect gamma) times a
    complex carrier along the rotated x axis, evaluated in mm on the voxel grid (each axis its own spacing)."""
    dy, dx = (float(v) for v in plane_spacing)
    reach = spec.truncate * spec.sigma_mm * max(1.0, 1.0 / spec.gamma)
    ry, rx = (int(math.floor(reach / d + 0.5)) for d in (dy, dx))
    y, x = np.mgrid[-ry:ry + 1, -rx:rx + 1].astype(float)
    y, x = y * dy, x * dx
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    s = spec.sigma_mm
    env = np.exp(-(xr * xr + spec.gamma ** 2 * yr * yr) / (2 * s * s))  # IBSI-2: no normalisation
    return env * np.exp(1j * 2 * math.pi * xr / spec.lambda_mm)


def _gabor_plane(img: np.ndarray, spec: FilterSpec, plane_spacing: tuple[float, float],
                 region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """|Gabor response| in each slice over axes (1, 2); averaged (or maxed) over orientations when pooling.

    ``region``: the output voxels wanted (slices of the three axes); only those slices are filtered, and in plane
    only the wanted box plus the kernel's reach (with the boundary condition where that leaves the image) is
    transformed. Elsewhere the result is 0."""
    if spec.rotation == "none" or not spec.delta_theta:
        thetas = [spec.theta]
    else:
        n = max(1, int(round(2 * math.pi / spec.delta_theta)))
        # theta + pi conjugates the response of a real image: same modulus, so half the circle suffices
        n = n // 2 if n % 2 == 0 else n
        thetas = [spec.theta + k * spec.delta_theta for k in range(n)]
    from scipy import fft

    full = tuple(slice(0, n) for n in img.shape)
    rz, rj, ri = full if region is None else tuple(slice(*r.indices(n)[:2]) for r, n in zip(region, img.shape))
    kernels = [_gabor_kernel(spec, plane_spacing, th) for th in thetas]
    ry, rx = kernels[0].shape[0] // 2, kernels[0].shape[1] // 2
    padded, _ = _pad(img[rz], {1: ry, 2: rx}, spec.boundary)
    # original index i is padded index i + r: the wanted outputs [lo, hi) need padded [lo, hi + 2 r)
    sub = padded[:, rj.start:rj.stop + 2 * ry, ri.start:ri.stop + 2 * rx]
    # one forward FFT of the padded slices for every orientation; circular convolution on a grid at least as large
    # as the padded slice equals the linear one on the valid part (no output index wraps)
    shape = (fft.next_fast_len(sub.shape[1]), fft.next_fast_len(sub.shape[2]))
    spectrum = fft.fft2(sub, s=shape, axes=(1, 2))
    valid = (slice(None), slice(2 * ry, 2 * ry + rj.stop - rj.start), slice(2 * rx, 2 * rx + ri.stop - ri.start))
    acc = None
    for k in kernels:
        resp = np.abs(fft.ifft2(spectrum * fft.fft2(k, s=shape)[None], axes=(1, 2))[valid])
        if acc is None:
            acc = resp
        elif spec.rotation == "max":
            np.maximum(acc, resp, out=acc)
        else:
            acc += resp
    acc = acc if spec.rotation == "max" else acc / len(thetas)
    if (rz, rj, ri) == full:
        return acc
    out = np.zeros(img.shape)
    out[rz, rj, ri] = acc
    return out


def _gabor(img: np.ndarray, spec: FilterSpec, spacing: tuple[float, ...],
           region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    dx, dy, dz = (float(v) for v in spacing)
    out = _gabor_plane(img, spec, (dy, dx), region)
    if not spec.orthogonal_planes:
        return out
    # coronal: array (y, z, x), plane (z, x); sagittal: array (x, y, z), plane (y, z)
    for perm, plane in (((1, 0, 2), (dz, dx)), ((2, 1, 0), (dy, dz))):
        t = np.transpose(img, perm)
        r = None if region is None else tuple(region[p] for p in perm)
        out = out + np.transpose(_gabor_plane(t, spec, plane, r), perm)
    return out / 3.0


def _wavelet(img: np.ndarray, spec: FilterSpec) -> np.ndarray:
    """Undecimated (a trous) separable wavelet response: at level j the filters are dilated by 2^(j-1) and
    applied to the all-low-pass response of level j - 1."""
    lo, hi = _wavelet_filters(spec.wavelet)
    axes = _axes(spec)[::-1]  # x, y, z
    out = img
    for level in range(1, spec.level + 1):
        step = 2 ** (level - 1)

        def dil(k: np.ndarray) -> np.ndarray:
            d = np.zeros(k.size * step)
            d[::step] = k
            if d.size % 2 == 0:  # even length: one trailing zero keeps the centre tap where level 1 has it
                d = np.append(d, 0.0)
            return d

        letters = spec.decomposition.upper() if level == spec.level else "L" * spec.n_axes
        out = _separable(out, {a: dil(lo if c == "L" else hi) for a, c in zip(axes, letters)}, spec.boundary)
    return out


def _simoncelli_response(level: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Isotropic Simoncelli band-pass of one level: cos(pi/2 log2(2 |w| / wmax)) for wmax/4 < |w| < wmax, with
    wmax = pi / 2^(level - 1)."""
    wmax = math.pi / 2 ** (level - 1)

    def resp(ws: list[np.ndarray]) -> np.ndarray:
        r = np.sqrt(sum(w * w for w in ws))
        with np.errstate(divide="ignore"):
            v = np.cos(0.5 * math.pi * np.log2(np.where(r > 0, 2 * r / wmax, 1.0)))
        return np.where((r > wmax / 4) & (r < wmax), v, 0.0)

    return resp


def _riesz_response(order_np: tuple[int, ...]) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Riesz transform of order l (numpy-axis order): sqrt(|l|! / prod l_i!) (-j)^|l| prod w_i^l_i / |w|^|l|."""
    total = sum(order_np)
    c = math.sqrt(math.factorial(total) / math.prod(math.factorial(v) for v in order_np)) * (-1j) ** total

    def resp(ws: list[np.ndarray]) -> np.ndarray:
        r = np.sqrt(sum(w * w for w in ws))
        num = np.ones(np.broadcast_shapes(*[w.shape for w in ws]), dtype=complex)
        for w, l in zip(ws, order_np):
            if l:
                num = num * w ** l
        with np.errstate(divide="ignore", invalid="ignore"):
            out = c * num / r ** total
        return np.where(r > 0, out, 0.0)

    return resp


def _riesz(img: np.ndarray, spec: FilterSpec, base: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Riesz transform of an already filtered image (``base``), with the same boundary padding; steered to the
    local structure-tensor frame with ``spec.steer``."""
    axes = _axes(spec)
    order_np = tuple(spec.riesz_order[::-1])
    if not spec.steer:
        return _fourier_filter(base, axes, spec.boundary, _riesz_response(order_np), cache_key=("riesz", order_np))
    frame = _structure_frame(base, axes, spec, spacing)  # frame[k]: unit vector (numpy-axis components) of axis k
    total = sum(order_np)
    c = math.sqrt(math.factorial(total) / math.prod(math.factorial(v) for v in spec.riesz_order)) * (-1j) ** total
    # expand prod_k (e_k . w)^(l_k) into monomials of w with per-voxel coefficients
    poly: dict[tuple[int, ...], np.ndarray | float] = {tuple(0 for _ in axes): 1.0}
    for k, lk in enumerate(spec.riesz_order):  # frame axes x', y', z'
        for _ in range(lk):
            nxt: dict[tuple[int, ...], np.ndarray | float] = {}
            for mono, coef in poly.items():
                for i in range(len(axes)):
                    m = tuple(v + (1 if j == i else 0) for j, v in enumerate(mono))
                    nxt[m] = nxt.get(m, 0.0) + coef * frame[k][i]
            poly = nxt
    out = np.zeros(base.shape)
    for mono, coef in poly.items():

        def resp(ws: list[np.ndarray], mono: tuple[int, ...] = mono) -> np.ndarray:
            r = np.sqrt(sum(w * w for w in ws))
            num = np.ones(np.broadcast_shapes(*[w.shape for w in ws]), dtype=complex)
            for w, e in zip(ws, mono):
                if e:
                    num = num * w ** e
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(r > 0, c * num / r ** total, 0.0)

        out += coef * _fourier_filter(base, axes, spec.boundary, resp)
    return out


def _structure_frame(img: np.ndarray, axes: tuple[int, ...], spec: FilterSpec,
                     spacing: tuple[float, ...]) -> list[list[np.ndarray]]:
    """Per-voxel eigenvectors of the structure tensor G_sigma * (grad f grad f^T), largest eigenvalue first, as
    ``frame[k][i]``: component along filtered axis i of frame axis k."""
    from scipy import ndimage

    sp_np = [float(v) for v in spacing[::-1]]
    grads = [np.gradient(img, axis=a) / sp_np[a] for a in axes]
    sig = [spec.tensor_sigma_mm / sp_np[a] if a in axes else 0.0 for a in range(img.ndim)]
    n = len(axes)
    tensor = np.empty(img.shape + (n, n))
    for i in range(n):
        for j in range(i, n):
            t = ndimage.gaussian_filter(grads[i] * grads[j], sig, mode=_NDIMAGE_MODE[spec.boundary])
            tensor[..., i, j] = tensor[..., j, i] = t
    _, vecs = np.linalg.eigh(tensor)  # ascending eigenvalues; vecs[..., :, m] is eigenvector m
    return [[vecs[..., i, n - 1 - k] for i in range(n)] for k in range(n)]


def _oriented(img: np.ndarray, spec: FilterSpec, spacing: tuple[float, ...]) -> np.ndarray:
    """One oriented response map (no pooling, no energy)."""
    k = spec.kind
    if k == "mean":
        return _mean(img, spec)
    if k == "log":
        return _log(img, spec, spacing)
    if k == "laws":
        return _laws(img, spec)
    if k == "wavelet":
        return _wavelet(img, spec)
    axes = _axes(spec)
    if k in ("simoncelli", "riesz_simoncelli"):
        base = _fourier_filter(img, axes, spec.boundary, _simoncelli_response(spec.level), consensus_grid=True,
                               cache_key=("simoncelli", spec.level))
        return base if k == "simoncelli" else _riesz(img, spec, base, spacing)
    if k == "riesz_log":
        return _riesz(img, spec, _log(img, spec, spacing), spacing)
    raise InputError(None, f"filter {k!r} has no oriented response")


def _rotations(dims: str) -> list[tuple[tuple[int, int, int], tuple[bool, bool, bool]]]:
    """Right-angle rotations as (axis permutation, flips): 24 proper rotations in 3D, 4 in-plane in 2D."""
    out = []
    perms = [(0, 1, 2), (0, 2, 1)] if dims == "2D" else list(itertools.permutations(range(3)))
    for perm in perms:
        sign = np.linalg.det(np.eye(3)[list(perm)])
        for flips in itertools.product((False, True), repeat=3):
            if dims == "2D" and flips[0]:
                continue
            if sign * (-1) ** sum(flips) > 0:
                out.append((perm, flips))
    return out


def _odd(k: np.ndarray) -> np.ndarray:
    """An even-length kernel with one trailing zero: its reverse is then a flip about the same centre tap."""
    return np.append(k, 0.0) if k.size % 2 == 0 else k


def _axis_chains(spec: FilterSpec) -> list[list[np.ndarray]] | None:
    """Per numpy axis (z, y, x) the 1D kernels a linear separable 3D filter applies along it, in order; None for
    filters that are not (Gabor, Fourier filters) and for 2D filters (the 24-rotation pooling is 3D)."""
    return _separable_chains(spec) if spec.dims == "3D" else None


def _average_pooled_separable(img: np.ndarray, spec: FilterSpec) -> np.ndarray | None:
    """Average over the 24 right-angle rotations of a linear separable filter, in a few separable passes.

    A rotation maps each axis's kernel chain to another axis, reversed or not. Rotations that give the axes the
    same chains (axis permutations that only swap equal chains) come in pairs of opposite parity, and together
    cover every reversal pattern: their sum factorises into (chain + reversed chain) along each axis. Equal to
    rotating the image 24 times (the boundary conditions are flip-symmetric); None when some chains differ on
    every axis (e.g. Laws E5L5S5), where the rotations are computed one by one."""
    chains = _axis_chains(spec)
    if chains is None:
        return None
    keys = [tuple(k.tobytes() for k in ch) for ch in chains]
    groups: dict[tuple, list[int]] = {}
    for perm in itertools.permutations(range(3)):
        inverse = np.argsort(perm)
        assignment = tuple(keys[inverse[b]] for b in range(3))
        parity = int(round(np.linalg.det(np.eye(3)[list(perm)])))
        groups.setdefault(assignment, []).append(parity)
    if any(sum(p) != 0 for p in groups.values()):
        return None
    by_key = dict(zip(keys, chains))
    acc = np.zeros(img.shape)
    for assignment, parities in groups.items():
        term = img
        for axis, key in enumerate(assignment):
            chain = by_key[key]
            fwd, rev = term, term
            for k in chain:
                fwd = _separable(fwd, {axis: k}, spec.boundary)
                rev = _separable(rev, {axis: k[::-1]}, spec.boundary)
            term = fwd + rev
        acc += (len(parities) / 2) * term
    return acc / 24.0


def _separable_chains(spec: FilterSpec) -> list[list[np.ndarray]] | None:
    """Per numpy axis (z, y, x) the odd-length 1D kernels a separable filter applies along it, in order (an empty
    list for an axis a 2D filter leaves alone); None for filters that are not separable and linear."""
    if spec.kind == "laws":
        ks = [_odd(k) for k in _laws_kernels(spec.kernel, spec.n_axes)[::-1]]  # numpy order
    elif spec.kind == "wavelet":
        lo, hi = _wavelet_filters(spec.wavelet)
        ks = []
        for c in spec.decomposition.upper()[::-1]:  # numpy order
            chain = []
            for level in range(1, spec.level + 1):
                step = 2 ** (level - 1)
                k = lo if (level < spec.level or c == "L") else hi
                d = np.zeros(k.size * step)
                d[::step] = k
                chain.append(_odd(d))
            ks.append(chain)
        return [[]] * (3 - len(ks)) + ks
    else:
        return None
    return [[]] * (3 - len(ks)) + [[k] for k in ks]


def _canonical_kernel(k: np.ndarray) -> tuple[np.ndarray, int]:
    """(kernel, sign) with ``sign * kernel == k``: an antisymmetric kernel (its reverse is its negative, e.g. Laws
    E5, W5) is stored with a positive first tap, so that a kernel and its reverse share one filtering pass."""
    nz = np.flatnonzero(k)
    if nz.size and k[nz[0]] < 0 and np.array_equal(k[::-1], -k):
        return -k + 0.0, -1  # + 0.0: no negative zeros, so that equal kernels have equal bytes
    return k + 0.0, 1


def _rotation_pooled_separable(img: np.ndarray, spec: FilterSpec) -> np.ndarray | None:
    """Max or average over the right-angle rotations of a linear separable filter, with one filtering pass per
    distinct rotated kernel instead of one per rotation.

    Rotating the image, filtering and rotating back equals filtering the image with the rotated kernel: along
    axis ``perm[i]`` the chain of axis ``i``, reversed where the rotation flips it (the boundary conditions are
    flip-symmetric). Symmetric kernels equal their reverse and antisymmetric ones (Laws E5, S3 ...) its negative,
    so the 24 rotations of e.g. Laws L5E5E5 give only 3 distinct responses up to sign: the max over a response
    and its negative is its modulus, and in an average opposite signs cancel. None when the filter is not
    separable (then every rotation is filtered)."""
    chains = _separable_chains(spec)
    if chains is None:
        return None
    groups: dict[tuple, tuple[list[list[np.ndarray]], list[int]]] = {}
    rots = _rotations(spec.dims)
    for perm, flips in rots:
        per_axis: list[list[np.ndarray]] = [[], [], []]
        sign = 1
        for i in range(3):
            for k in chains[i]:
                kk, s = _canonical_kernel(k[::-1] if flips[i] else k)
                per_axis[perm[i]].append(kk)
                sign *= s
        key = tuple(tuple(k.tobytes() for k in ch) for ch in per_axis)
        groups.setdefault(key, (per_axis, []))[1].append(sign)
    acc = None
    for per_axis, signs in groups.values():
        weight = sum(signs)
        if spec.rotation == "average" and weight == 0:
            continue  # opposite signs cancel in the average
        r = img
        for axis, chain in enumerate(per_axis):
            for k in chain:
                r = _separable(r, {axis: k}, spec.boundary)
        if spec.rotation == "max":
            r = np.abs(r) if (1 in signs and -1 in signs) else (r if signs[0] > 0 else -r)
            acc = np.array(r, dtype=float) if acc is None else np.maximum(acc, r, out=acc)
        else:
            acc = weight * r if acc is None else acc + weight * r
    if acc is None:  # every rotated response cancelled
        return np.zeros(img.shape)
    return acc if spec.rotation == "max" else acc / len(rots)


def _pooled(img: np.ndarray, spec: FilterSpec, spacing: tuple[float, ...]) -> np.ndarray:
    """Response pooled (max or average) over right-angle rotations of the image."""
    if spec.rotation == "average":
        fast = _average_pooled_separable(img, spec)
        if fast is not None:
            return fast
    fast = _rotation_pooled_separable(img, spec)
    if fast is not None:
        return fast
    acc = None
    rots = _rotations(spec.dims)
    for perm, flips in rots:
        a = np.transpose(img, perm)
        a = np.flip(a, [i for i, f in enumerate(flips) if f]) if any(flips) else a
        r = _oriented(np.ascontiguousarray(a), spec, spacing)
        r = np.flip(r, [i for i, f in enumerate(flips) if f]) if any(flips) else r
        r = np.transpose(r, np.argsort(perm))
        if acc is None:
            acc = np.array(r, dtype=float)
        elif spec.rotation == "max":
            np.maximum(acc, r, out=acc)
        else:
            acc += r
    return acc if spec.rotation == "max" else acc / len(rots)


def apply_filter(image: np.ndarray, spacing: tuple[float, ...], spec: FilterSpec | Mapping[str, Any],
                 region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """The IBSI-2 response map of ``image`` (z, y, x), spacing (x, y, z) mm, as float64 on the same grid.

    ``region`` (slices): the part of the map the caller reads. The response is exact there; outside it a filter
    may skip the work (Gabor does: 0 there). None: the whole map."""
    spec = spec if isinstance(spec, FilterSpec) else FilterSpec.from_dict(spec)
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise InputError(None, f"filters need a 3D (z, y, x) array, got shape {img.shape}")
    if spec.kind == "none":
        return img
    if spec.kind == "gabor":
        return _gabor(img, spec, spacing, region)
    if spec.rotation == "none":
        out = _oriented(img, spec, spacing)
    else:
        out = _pooled(img, spec, spacing)
    if spec.kind == "laws" and spec.energy:
        out = _laws_energy(out, spec)
    return out


WHOLE_IMAGE = 1 << 30  # margin meaning "filter the whole image"


def margin_voxels(spec: FilterSpec, spacing: tuple[float, ...]) -> int:
    """How far (voxels) the response at a voxel looks: a crop this much larger than the ROI filters like the whole
    image does. Filters defined in the Fourier domain (Simoncelli, Riesz) have no compact support and their
    frequency grid depends on the image size, so they get ``WHOLE_IMAGE``."""
    k = spec.kind
    if k == "none":
        return 0
    if k == "mean":
        return spec.support // 2
    fine = min(float(v) for v in spacing)  # the finest axis needs the most voxels
    if k == "log":
        return _half_width(spec.sigma_mm / fine, spec.truncate)
    if k == "laws":
        n = max(len(p) for p in _laws_kernels(spec.kernel, spec.n_axes)) // 2
        return n + (spec.energy_delta if spec.energy else 0)
    if k == "gabor":
        return _half_width(spec.sigma_mm / fine * max(1.0, 1.0 / spec.gamma), spec.truncate)
    if k == "wavelet":
        n = len(_wavelet_filters(spec.wavelet)[0])
        return sum(n * 2 ** (j - 1) for j in range(1, spec.level + 1))
    return WHOLE_IMAGE


def response_unit(spec: FilterSpec | None, image_unit: str) -> str:
    """Unit of a response map's values, for units files. Every kernel here is dimensionless (weights, normalised
    Laws kernels, wavelet taps, unnormalised Gabor envelope, Fourier multipliers), so responses keep the image's
    unit, except the Laplacian of Gaussian, a second derivative in voxel units."""
    if spec is not None and spec.kind in ("log", "riesz_log"):
        return f"{image_unit} per voxel^2"
    return image_unit
