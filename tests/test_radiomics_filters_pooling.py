"""Rotation pooling of separable IBSI-2 filters by distinct rotated kernels (radiomics.filters) equals filtering
every right-angle rotation of the image, for max and average pooling, 2D and 3D, every boundary condition."""

import numpy as np
import pytest


@pytest.mark.parametrize("spec", [
    dict(kind="laws", kernel="L5E5E5", rotation="max", boundary="mirror"),
    dict(kind="laws", kernel="E5L5S5", rotation="max", energy=True, energy_delta=2, boundary="constant"),
    dict(kind="laws", kernel="S3R5L5", rotation="average", boundary="periodic"),
    dict(kind="laws", kernel="L5E5", rotation="max", dims="2D", boundary="nearest"),
    dict(kind="laws", kernel="S5R5", rotation="average", dims="2D", boundary="mirror"),
    dict(kind="wavelet", wavelet="db2", decomposition="LHL", rotation="max", boundary="nearest"),
    dict(kind="wavelet", wavelet="coif1", decomposition="HL", level=2, rotation="max", dims="2D", boundary="mirror"),
    dict(kind="wavelet", wavelet="db3", decomposition="HHL", rotation="average", boundary="mirror"),
])
def test_distinct_kernel_pooling_equals_filtering_every_rotation(spec, monkeypatch):
    from nmkit.radiomics import filters

    img = np.random.default_rng(5).normal(0.0, 100.0, (11, 13, 14))
    fast = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    monkeypatch.setattr(filters, "_rotation_pooled_separable", lambda a, s: None)
    monkeypatch.setattr(filters, "_average_pooled_separable", lambda a, s: None)
    slow = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    assert np.abs(slow).max() > 1.0  # a real response, not zeros on both sides
    np.testing.assert_allclose(fast, slow, atol=1e-12 * np.abs(slow).max())


def test_laws_l5e5e5_max_pooling_is_the_largest_modulus_of_three_responses():
    """L5 is symmetric and E5 antisymmetric, so the 24 rotations give +-3 responses: max = largest |response|."""
    from nmkit.radiomics import filters

    img = np.random.default_rng(6).normal(0.0, 1.0, (9, 10, 11))
    got = filters.apply_filter(img, (1.0, 1.0, 1.0), dict(kind="laws", kernel="L5E5E5", rotation="max"))
    resp = [np.abs(filters.apply_filter(img, (1.0, 1.0, 1.0), dict(kind="laws", kernel=k)))
            for k in ("L5E5E5", "E5L5E5", "E5E5L5")]
    np.testing.assert_allclose(got, np.max(resp, axis=0), atol=1e-12)


def test_average_pooling_of_an_antisymmetric_laws_kernel_is_zero(monkeypatch):
    """An antisymmetric kernel (E3) meets its negative among the rotations: the average is 0 on both paths."""
    from nmkit.radiomics import filters

    img = np.random.default_rng(7).normal(0.0, 100.0, (9, 10, 11))
    spec = dict(kind="laws", kernel="E3W5R5", rotation="average", boundary="periodic")
    fast = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    monkeypatch.setattr(filters, "_rotation_pooled_separable", lambda a, s: None)
    slow = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    assert np.abs(fast).max() == 0.0 and np.abs(slow).max() < 1e-9


@pytest.mark.parametrize("orthogonal", [False, True])
def test_gabor_on_a_region_equals_the_whole_map_there(orthogonal):
    """Filtering only the voxels the features read (the engine's region) gives the whole map's values there."""
    from nmkit.radiomics import filters

    img = np.random.default_rng(8).normal(0.0, 100.0, (16, 30, 28))
    spec = dict(kind="gabor", sigma_mm=2.0, lambda_mm=3.0, gamma=1.5, delta_theta=np.pi / 4, rotation="average",
                orthogonal_planes=orthogonal, boundary="mirror", dims="2D")
    whole = filters.apply_filter(img, (1.0, 1.0, 2.0), spec)
    for region in [(slice(3, 12), slice(9, 20), slice(0, 11)), (slice(0, 16), slice(20, 30), slice(5, 27))]:
        part = filters.apply_filter(img, (1.0, 1.0, 2.0), spec, region=region)
        np.testing.assert_allclose(part[region], whole[region], rtol=1e-12, atol=1e-12 * np.abs(whole).max())
        assert np.abs(whole[region]).min() > 0


@pytest.mark.parametrize("kind, extra", [
    ("simoncelli", dict(level=2)),
    ("riesz_simoncelli", dict(level=1, riesz_order=(1, 0, 1))),
    ("riesz_log", dict(sigma_mm=1.5, riesz_order=(0, 2, 0))),
])
@pytest.mark.parametrize("boundary", ["periodic", "mirror"])
def test_real_fourier_filter_equals_the_complex_transform(kind, extra, boundary):
    """Real transforms with the Hermitian part of the response (half grid) give Re(ifft(fft(x) H)) exactly."""
    from nmkit.radiomics import filters

    img = np.random.default_rng(9).normal(0.0, 50.0, (12, 15, 14))
    spec = filters.FilterSpec.from_dict(dict(kind=kind, boundary=boundary, **extra))
    real_path = filters.apply_filter(img, (1.0, 1.0, 1.0), spec)
    # a complex image takes the full complex transform; its real part is the same filter of the same image
    axes = (0, 1, 2)
    if kind == "simoncelli":
        ref = filters._fourier_filter(img.astype(complex), axes, boundary, filters._simoncelli_response(2), True)
    else:
        base = filters._oriented(img, filters.FilterSpec.from_dict(
            dict(kind="simoncelli", level=1, boundary=boundary) if kind == "riesz_simoncelli"
            else dict(kind="log", sigma_mm=1.5, boundary=boundary)), (1.0, 1.0, 1.0))
        ref = filters._fourier_filter(base.astype(complex), axes, boundary,
                                      filters._riesz_response(tuple(extra["riesz_order"][::-1])))
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(real_path, ref, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("plane_min", [1, 40, 100, 10 ** 9])
@pytest.mark.parametrize("shape", [(6, 17, 9), (15, 7, 11), (9, 12, 30)])
def test_separable_interpolation_equals_map_coordinates_on_every_path(plane_min, shape, monkeypatch):
    """Trilinear / tricubic (plane-by-plane, per-outer-plane and gathered paths, chosen by array size) equal
    scipy's map_coordinates with mode 'nearest' on the same grid."""
    from scipy import ndimage

    from nmkit.radiomics import preprocess

    monkeypatch.setattr(preprocess, "PLANE_LOOP_MIN", plane_min)
    rng = np.random.default_rng(sum(shape) + plane_min % 97)
    a = rng.normal(0.0, 100.0, shape)
    coords = [np.linspace(-0.7, n - 0.2, m) for n, m in zip(shape, (8, 13, 10))]
    mesh = np.meshgrid(*coords, indexing="ij")
    lin = preprocess._trilinear(a, coords)
    np.testing.assert_allclose(lin, ndimage.map_coordinates(a, mesh, order=1, mode="nearest"), atol=1e-10)
    cub = preprocess._tricubic(a, coords)
    np.testing.assert_allclose(cub, ndimage.map_coordinates(a, mesh, order=3, mode="nearest"), atol=1e-9)
