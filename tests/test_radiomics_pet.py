"""PET metrics on real FDG-PET (SUV) with an expert GTV, and per-label statistics on a TotalSegmentator label map."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need
from nmkit.io.image import Image, Mask
from nmkit.radiomics.pet import label_statistics, suv_features, suv_peak
from nmkit.radiomics.preprocess import PEAK_RADIUS_MM


@pytest.fixture(scope="module")
def sts_pet(external_data):
    from nmkit.io.volume_files import read_label_map, read_volume

    folder = need(external_data, "pet_sts/sts_images_flat/nifti")
    image = read_volume(folder / "STS_001_PET_image.nii.gz")
    image = image.with_array(image.array.astype(np.float64))
    mask = read_label_map(folder / "STS_001_PET_mask.nii.gz")
    return image, mask


def _brute_peak(image: Image, roi: np.ndarray) -> float:
    """Sphere mean at every ROI voxel by explicit neighbour loops (the definition, no FFT)."""
    sx, sy, sz = image.spacing
    arr = image.array
    best = -np.inf
    rz, ry, rx = (int(PEAK_RADIUS_MM // s) for s in (sz, sy, sx))
    offs = [(dz, dy, dx) for dz in range(-rz, rz + 1) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)
            if (dz * sz) ** 2 + (dy * sy) ** 2 + (dx * sx) ** 2 <= PEAK_RADIUS_MM ** 2 + 1e-9]
    for z, y, x in np.argwhere(roi):
        vals = [arr[z + a, y + b, x + c] for a, b, c in offs
                if 0 <= z + a < arr.shape[0] and 0 <= y + b < arr.shape[1] and 0 <= x + c < arr.shape[2]]
        best = max(best, float(np.mean(vals)))
    return best


def test_suv_features_on_sarcoma_pet(sts_pet):
    image, mask = sts_pet
    roi = mask.binary()
    f = suv_features(image, mask)
    vals = image.array[roi]
    assert f["suv_max"] == pytest.approx(vals.max())
    assert f["suv_mean"] == pytest.approx(vals.mean())
    assert 1.0 < f["suv_mean"] < f["suv_peak"] < f["suv_max"]  # FDG-avid sarcoma: peak between mean and max
    assert f["mtv_ml"] == pytest.approx(roi.sum() * image.voxel_volume / 1000)
    assert f["tlg"] == pytest.approx(f["suv_mean"] * f["mtv_ml"])
    assert f["mtv_50pct_ml"] <= f["mtv_41pct_ml"] <= f["mtv_ml"]
    assert f["mtv_41pct_ml"] == pytest.approx((vals >= 0.41 * vals.max()).sum() * image.voxel_volume / 1000)
    assert f["tlg_41pct"] <= f["tlg"]


def test_suv_peak_fft_matches_definition(sts_pet):
    image, mask = sts_pet
    roi = mask.binary()
    # a small sub-ROI around the hottest voxel keeps the brute-force loop fast
    z, y, x = np.unravel_index(np.argmax(np.where(roi, image.array, -np.inf)), roi.shape)
    sub = np.zeros_like(roi)
    sub[max(z - 3, 0):z + 4, max(y - 3, 0):y + 4, max(x - 3, 0):x + 4] = True
    sub &= roi
    peak, centre = suv_peak(image, sub)
    assert peak == pytest.approx(_brute_peak(image, sub), rel=1e-9)
    assert sub[centre]


def test_label_statistics_match_pandas(external_data):
    import pandas as pd

    from nmkit.io.volume_files import read_label_map, read_volume

    ref = need(external_data, "ct_totalsegmentator/tests/reference_files")
    ct = read_volume(ref / "example_ct_sm.nii.gz")
    seg = read_label_map(ref / "example_seg.nii.gz")
    table = label_statistics(ct, seg)
    lab, val = seg.array.ravel().astype(int), ct.array.ravel().astype(float)
    df = pd.DataFrame({"label": lab, "value": val})
    df = df[df.label > 0]
    g = df.groupby("label")["value"]
    expected = pd.DataFrame({"count": g.size(), "mean": g.mean(), "std": g.std(ddof=0), "min": g.min(), "max": g.max(),
                             "median": g.median(), "p95": g.quantile(0.95), "sum": g.sum()})
    got = table.set_index("label").loc[expected.index]
    assert len(expected) > 10  # a whole-body map with many organs
    for col in expected.columns:
        np.testing.assert_allclose(got[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(got["volume_ml"], expected["count"] * 27 / 1000)


def test_label_statistics_rejects_other_grid():
    from nmkit.errors import GeometryError

    img = Image(np.zeros((4, 4, 4)), spacing=(1, 1, 1))
    lab = Mask(np.ones((4, 4, 4), np.uint8), spacing=(2, 1, 1))
    with pytest.raises(GeometryError):
        label_statistics(img, lab)
