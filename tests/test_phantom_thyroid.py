"""Thyroid scintigraphy simulator and its NM DICOM output: count statistics, anatomy, pathology contrast,
collimator response, determinism, and DICOM files that pydicom, SimpleITK and nmkit read back exactly."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from nmkit.errors import InputError
from nmkit.phantoms.nm_dicom import deterministic_uid, planar_image_geometry, write_nm_planar
from nmkit.phantoms.thyroid import PSF, blur, poisson_counts, simulate_thyroid


def _info(tag: str = "0") -> dict:
    return dict(patient_name="Phantom^Test", patient_id=f"T{tag}", study_uid=deterministic_uid("t", tag, "study"),
                series_uid=deterministic_uid("t", tag, "series"), sop_uid=deterministic_uid("t", tag, "sop"),
                acquisition_datetime=dt.datetime(2024, 5, 6, 9, 30, 15), activity_mbq=120.0, frame_duration_ms=300000)


# ----- counts ---------------------------------------------------------------------------------------------
def test_poisson_counts_in_a_large_uniform_region():
    rng = np.random.default_rng(11)
    expected = np.full((200, 200), 37.5)
    counts = poisson_counts(expected, rng)
    assert counts.dtype == np.uint16
    mean, var = counts.mean(), counts.var(ddof=1)
    # 40000 pixels: SE of the mean 0.03, of the variance/mean ratio ~0.007
    assert abs(mean - 37.5) < 5 * math.sqrt(37.5 / counts.size)
    assert 0.9 < var / mean < 1.1


@pytest.mark.parametrize("isotope,collimator,total", [("Tc99m", "pinhole", 50_000), ("I131", "parallel", 500_000)])
def test_phantom_counts_follow_poisson_expectation(isotope, collimator, total):
    case = simulate_thyroid(5, "normal", isotope, collimator, total)
    assert case.counts.dtype == np.uint16 and case.counts.shape == (256, 256)
    assert case.expected.sum() == pytest.approx(total, rel=1e-9)
    # total counts within 5 sigma of the preset
    assert abs(int(case.counts.sum(dtype=np.int64)) - total) < 5 * math.sqrt(total)
    assert case.params["total_counts_recorded"] == int(case.counts.sum(dtype=np.int64))
    # standardised residuals: mean 0 and variance 1 for Poisson counts at any mean
    sel = case.expected > 0.5
    z = (case.counts[sel] - case.expected[sel]) / np.sqrt(case.expected[sel])
    assert sel.sum() > 5000
    assert abs(z.mean()) < 5 / math.sqrt(sel.sum())
    assert 0.9 < z.var() < 1.1
    # a large nearly flat background patch away from organs: mean/variance like Poisson
    patch = (slice(225, 250), slice(105, 150)) if collimator == "pinhole" else (slice(5, 20), slice(110, 145))
    exp_patch = case.expected[patch]
    assert exp_patch.std() / exp_patch.mean() < 0.2
    cnt = case.counts[patch].astype(float)
    assert abs(cnt.mean() - exp_patch.mean()) < 5 * math.sqrt(exp_patch.mean() / cnt.size)
    resid = cnt - exp_patch
    assert 0.8 < resid.var() / exp_patch.mean() < 1.2


def test_same_seed_same_image_different_seed_different():
    a = simulate_thyroid((1, 7), "cold_nodules", "Tc99m", "pinhole", 100_000)
    b = simulate_thyroid((1, 7), "cold_nodules", "Tc99m", "pinhole", 100_000)
    c = simulate_thyroid((1, 8), "cold_nodules", "Tc99m", "pinhole", 100_000)
    assert np.array_equal(a.counts, b.counts) and a.params == b.params
    assert not np.array_equal(a.counts, c.counts)
    with pytest.raises(ValueError):
        simulate_thyroid(None, "normal")


# ----- anatomy and pathology ------------------------------------------------------------------------------
def test_truth_masks_and_anatomy_sizes():
    for seed in range(6):
        case = simulate_thyroid(seed, "normal", "Tc99m", "pinhole", 100_000)
        t = case.truth
        px = case.spacing[0]
        assert np.array_equal(t["gland"], t["lobe_right"] | t["lobe_left"] | t["isthmus"])
        assert not (t["lobe_right"] & t["lobe_left"]).any()
        # right lobe on the viewer's left (anterior view), both lobes 40-60 mm x 15-25 mm (x 0.85-1.15)
        cols_r = np.nonzero(t["lobe_right"].any(axis=0))[0]
        cols_l = np.nonzero(t["lobe_left"].any(axis=0))[0]
        assert cols_r.mean() < cols_l.mean()
        for side in ("lobe_right", "lobe_left"):
            rows = np.nonzero(t[side].any(axis=1))[0]
            height_mm = (rows.max() - rows.min() + 1) * px
            assert 30 < height_mm < 72
            area_mm2 = t[side].sum() * px * px
            assert 0.5 * 34 * 12.75 < area_mm2 < 69 * 28.75
        assert bool(t["isthmus"].any()) == case.params["isthmus"]["present"]
        # most counts of a normal pertechnetate scan come from gland + salivary glands + background
        assert 0.1 < case.params["gland_count_fraction"] < 0.8
    present = [simulate_thyroid(s, "normal").params["isthmus"]["present"] for s in range(40)]
    assert 25 <= sum(present) < 40  # absent in ~15 %


def _mean(img, mask):
    return float(img[mask].mean())


def test_cold_nodules_darker_hot_nodules_brighter_than_gland():
    n_cold = n_hot = 0
    cold_ratios: list[float] = []
    for seed in range(10):
        for pathology in ("cold_nodules", "hot_nodule", "multinodular_goitre"):
            case = simulate_thyroid((3, seed), pathology, "Tc99m", "pinhole", 300_000)
            nodule_union = np.zeros_like(case.truth["gland"])
            for nod in case.nodules:
                nodule_union |= case.truth[nod["name"]]
            yy, xx = np.mgrid[:256, :256]
            for nod in case.nodules:
                m = case.truth[nod["name"]]
                # surrounding gland: a 3 mm wide ring just outside the nodule, inside the gland
                cx, cy = (np.asarray(nod["centre_mm"]) / case.spacing[0] + 127.5)
                dist = np.hypot(xx - cx, yy - cy) * case.spacing[0] - nod["radius_mm"]
                lobe = (dist > 1.0) & (dist < 4.0) & case.truth["gland"] & ~nodule_union
                if lobe.sum() < 50:
                    continue
                if nod["kind"] == "cold":
                    ratio = _mean(case.expected, m) / _mean(case.expected, lobe)
                    assert ratio < 0.98
                    assert _mean(case.counts, m) < _mean(case.counts, lobe)
                    cold_ratios.append(ratio)
                    n_cold += 1
                else:
                    assert _mean(case.expected, m) > 1.2 * _mean(case.expected, lobe)
                    assert _mean(case.counts, m) > _mean(case.counts, lobe)
                    n_hot += 1
    assert n_cold >= 10 and n_hot >= 10
    assert np.mean(cold_ratios) < 0.8  # cold nodules are visible defects on average (planar: tissue in front remains)


def test_pathology_uptake_ordering():
    def gland_to_bg(pathology, seed):
        case = simulate_thyroid((9, seed), pathology, "Tc99m", "pinhole", 200_000)
        bg = case.expected[230:250, 100:156].mean()
        return np.percentile(case.expected[case.truth["gland"]], 90) / bg, case.truth["gland"].sum()

    res = {p: [gland_to_bg(p, s) for s in range(4)] for p in ("normal", "graves", "thyroiditis")}
    ratio = {p: np.mean([r for r, _ in v]) for p, v in res.items()}
    size = {p: np.mean([a for _, a in v]) for p, v in res.items()}
    assert ratio["graves"] > 1.5 * ratio["normal"] > 1.5 * ratio["thyroiditis"]
    assert ratio["thyroiditis"] > 1.0
    assert size["graves"] > 1.3 * size["normal"]  # Graves glands are enlarged


# ----- camera response ------------------------------------------------------------------------------------
def _fwhm(profile: np.ndarray, spacing: float) -> float:
    half = profile.max() / 2
    above = np.nonzero(profile >= half)[0]
    lo, hi = above[0], above[-1]
    left = lo - 1 + (half - profile[lo - 1]) / (profile[lo] - profile[lo - 1])
    right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1])
    return (right - left) * spacing


@pytest.mark.parametrize("collimator,isotope", sorted(PSF))
def test_point_source_fwhm_matches_collimator_model(collimator, isotope):
    spacing = 0.5
    point = np.zeros((256, 256))
    point[128, 128] = 1.0
    img = blur(point, spacing, collimator, isotope)
    fwhm, tail, _ = PSF[(collimator, isotope)]
    assert img.sum() == pytest.approx(1.0, rel=0.02)
    measured = _fwhm(img[128], spacing)
    assert measured == pytest.approx(fwhm, rel=0.08)
    radius = 2.5 * fwhm
    far = img[np.hypot(*np.mgrid[-128:128, -128:128]) * spacing > radius].sum()
    if tail == 0:
        assert far < 1e-3
    else:  # septal penetration puts a broad halo around the source: Gaussian tail beyond 2.5 FWHM
        tail_sigma = PSF[(collimator, isotope)][2] / 2.3548
        assert far == pytest.approx(tail * math.exp(-radius**2 / (2 * tail_sigma**2)), rel=0.2)


def test_pinhole_sharper_than_parallel_and_i131_worst():
    assert PSF[("pinhole", "Tc99m")][0] < PSF[("parallel", "Tc99m")][0] < PSF[("parallel", "I131")][0]
    assert PSF[("pinhole", "I131")][1] > PSF[("pinhole", "Tc99m")][1]


# ----- DICOM ----------------------------------------------------------------------------------------------
def test_nm_dicom_round_trip_pydicom_simpleitk_and_nmkit(tmp_path):
    import pydicom
    import SimpleITK as sitk

    case = simulate_thyroid(21, "hot_nodule", "I123", "parallel", 150_000)
    path = write_nm_planar(case.counts, tmp_path / "ant.dcm", case.params, _info())
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.20" and ds.Modality == "NM"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    assert int(ds.NumberOfFrames) == 1
    assert [int(t) for t in ds.FrameIncrementPointer] == [0x00540010, 0x00540020]
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([case.spacing[1], case.spacing[0]], rel=1e-5)
    window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    assert float(window.EnergyWindowLowerLimit) == pytest.approx(143.1) and float(window.EnergyWindowUpperLimit) == pytest.approx(174.9)
    radio = ds.RadiopharmaceuticalInformationSequence[0]
    assert radio.RadionuclideCodeSequence[0].CodeValue == "21572004" and radio.RadionuclideCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert float(radio.RadionuclideHalfLife) == pytest.approx(13.22 * 3600, rel=0.01)
    det = ds.DetectorInformationSequence[0]
    assert det.ViewCodeSequence[0].CodeMeaning == "Anterior projection" and det.CollimatorType == "PARA"
    assert [float(v) for v in det.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert int(ds.CountsAccumulated) == int(case.counts.sum(dtype=np.int64))
    assert ds.AcquisitionDate == "20240506" and ds.AcquisitionTime == "093015" and int(ds.ActualFrameDuration) == 300000
    assert ds.Manufacturer == "nmkit phantom"
    assert np.array_equal(ds.pixel_array, case.counts)

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    assert np.array_equal(arr.reshape(case.counts.shape), case.counts)
    assert img.GetSpacing()[:2] == pytest.approx(case.spacing, rel=1e-5)

    from nmkit.io.nm import read_nm_planar

    views = read_nm_planar(path)
    assert len(views) == 1
    image = next(iter(views.values()))
    assert np.array_equal(image.array, case.counts)
    geometry = planar_image_geometry(path)
    assert image.spacing == pytest.approx(geometry["spacing"]) and image.origin == pytest.approx(geometry["origin"])


@pytest.mark.parametrize("isotope,low,high,code", [("Tc99m", 126.45, 154.55, "72454006"), ("I131", 328.05, 400.95, "1368003")])
def test_energy_window_and_radionuclide_per_isotope(tmp_path, isotope, low, high, code):
    import pydicom

    case = simulate_thyroid(2, "normal", isotope, "pinhole", 60_000, matrix=64)
    ds = pydicom.dcmread(write_nm_planar(case.counts, tmp_path / "a.dcm", case.params, _info(isotope)))
    rng_item = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    assert float(rng_item.EnergyWindowLowerLimit) == pytest.approx(low, abs=0.06)
    assert float(rng_item.EnergyWindowUpperLimit) == pytest.approx(high, abs=0.06)
    assert ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeValue == code
    assert ds.DetectorInformationSequence[0].CollimatorType == "PINH"
    assert ds.Rows == ds.Columns == 64


def test_dicom_writer_is_deterministic_and_rejects_bad_counts(tmp_path):
    case = simulate_thyroid(4, "normal", "Tc99m", "pinhole", 80_000, matrix=128)
    a = write_nm_planar(case.counts, tmp_path / "a.dcm", case.params, _info())
    b = write_nm_planar(case.counts, tmp_path / "b.dcm", case.params, _info())
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(InputError, match="bad.dcm"):
        write_nm_planar(case.counts.astype(np.int32) - 5, tmp_path / "bad.dcm", case.params, _info())
    with pytest.raises(InputError, match="patient_id"):
        write_nm_planar(case.counts, tmp_path / "bad.dcm", case.params, {k: v for k, v in _info().items() if k != "patient_id"})
