"""NEMA IEC body phantom SPECT: phantom truth, projector physics, Poisson counts, both reconstructions, DICOM round trip.

Small grid (64 x 64 x 40 at 5 mm, 60 views) so the whole module runs in well under a minute; the full-size
128^3 / 120-view study is in bench/bench_spect_recon.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest

torch = pytest.importorskip("torch")

from nmkit.errors import InputError  # noqa: E402
from nmkit.io.dicom_series import stack_slices  # noqa: E402
from nmkit.io.nm import read_nm_recon  # noqa: E402
from nmkit.io.reader import read_image  # noqa: E402
from nmkit.io.volume_files import read_label_map, read_volume  # noqa: E402
from nmkit.phantoms.nema import (  # noqa: E402
    SPHERE_DIAMETERS_MM, NemaConfig, make_nema_phantom, recovery_coefficients, register_phantom, simulate_nema, write_nema_study,
)
from nmkit.phantoms.spect_sim import CameraModel, Projector, osem, simulate_projections  # noqa: E402

SMALL = dict(n=64, nz=40, voxel_mm=5.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def study():
    cfg = NemaConfig(**SMALL, sphere_ratio=8.0, seed=3, camera=CameraModel(n_views=60, time_per_view_s=40.0))
    return simulate_nema(cfg, device="cpu")


def test_phantom_truth_matches_nema_geometry():
    ph = make_nema_phantom(NemaConfig(**SMALL, sphere_ratio=4.0))
    v_ml = ph.activity.voxel_volume / 1000.0
    # the 37 mm sphere (26.5 ml) and the 28 mm sphere (11.5 ml) voxelised within 15 %
    for d in (37.0, 28.0):
        nominal = 4 / 3 * math.pi * (d / 20.0) ** 3
        assert ph.masks.voxel_count(f"sphere_{int(d)}mm") * v_ml == pytest.approx(nominal, rel=0.15)
    # total activity = background x (D-shaped body - lung insert - spheres and walls) + spheres, within 1 %
    area = 294 * 147 + 140 * 77 + math.pi * 77**2 / 2
    body_ml = area * 180 / 1000.0
    lung_ml = math.pi * 25**2 * 180 / 1000.0
    sph_ml = sum(4 / 3 * math.pi * (d / 20) ** 3 for d in SPHERE_DIAMETERS_MM)
    wall_ml = sum(4 / 3 * math.pi * (((d / 2 + 1) / 10) ** 3 - (d / 20) ** 3) for d in SPHERE_DIAMETERS_MM)
    expected = ph.background_bq_ml * (body_ml - lung_ml - sph_ml - wall_ml) + ph.sphere_bq_ml * sph_ml
    assert ph.activity_bq_per_voxel.sum() == pytest.approx(expected, rel=0.01)
    # concentrations, mu and HU per region
    bkg = ph.masks.binary("background")
    assert np.allclose(ph.activity.array[bkg], ph.background_bq_ml, rtol=1e-5)
    assert ph.activity.array[ph.masks.binary("sphere_37mm")].max() == pytest.approx(4 * ph.background_bq_ml, rel=1e-5)
    assert np.all(ph.activity.array[ph.masks.binary("lung_insert")] < 0.5 * ph.background_bq_ml)
    assert np.allclose(ph.mu.array[bkg], 0.0154, rtol=1e-4)
    lung_core = ph.masks.binary("lung_insert") & (ph.mu.array < 0.01)
    assert lung_core.sum() > 50 and abs(np.median(ph.ct.array[lung_core]) + 700) < 30
    assert abs(np.mean(ph.ct.array[bkg])) < 3 and 4 < np.std(ph.ct.array[bkg]) < 12
    assert np.all(ph.ct.array[0] < -990) and np.all(ph.activity.array[0] == 0)  # air outside the phantom


def test_projector_sensitivity_and_depth_dependent_resolution():
    cam = CameraModel(n_views=4, radius_mm=250.0)
    shape = (16, 96, 96)
    mu = np.zeros(shape, np.float32)
    x = np.zeros(shape, np.float32)
    y_index = 48 + 30  # a point source 120 mm from the rotation axis (posterior side)
    x[8, y_index, 48] = 1e6
    proj = Projector(mu, (4.0, 4.0, 4.0), cam, psf=True, device="cpu")
    p = proj.forward(x).numpy().astype(float)
    # unattenuated: every view sees all photons x sensitivity x time
    assert np.allclose(p.sum(axis=(1, 2)), 1e6 * cam.counts_per_bq, rtol=0.02)
    centre_y = 47.5
    for view, depth in ((0, 250 + (y_index - centre_y) * 4), (2, 250 - (y_index - centre_y) * 4)):
        profile = p[view].sum(axis=0)
        pos = np.arange(profile.size) * 4.0
        mean = np.sum(pos * profile) / profile.sum()
        fwhm = 2.3548 * math.sqrt(np.sum((pos - mean) ** 2 * profile) / profile.sum())
        model = float(cam.fwhm_mm(depth))
        assert fwhm == pytest.approx(model, rel=0.15), (view, fwhm, model)
    # the far view is blurrier than the near view; with attenuation the counts drop as exp(-mu L)
    assert p[0].max() < p[2].max()
    mu[:] = 0.0154
    p_att = Projector(mu, (4.0, 4.0, 4.0), cam, psf=False, device="cpu").forward(x).numpy().astype(float)
    path_near = (96 - y_index - 0.5) * 4.0  # voxels between the source and the low-y edge... view 0 looks from low y
    path_view0 = (y_index + 0.5) * 4.0
    assert p_att[0].sum() / (1e6 * cam.counts_per_bq) == pytest.approx(math.exp(-0.0154 * path_view0), rel=0.05)
    assert p_att[2].sum() / (1e6 * cam.counts_per_bq) == pytest.approx(math.exp(-0.0154 * path_near), rel=0.05)


def test_projection_counts_are_poisson(study):
    counts, expected = study.counts, study.expected
    assert counts.dtype.kind == "i" and counts.min() >= 0
    assert counts.shape == (60, 40, 64)
    # realistic count level: a few 1e4 counts per view; overall attenuation of a water body 20-60 %
    per_view = counts.sum(axis=(1, 2)).mean()
    unattenuated = study.phantom.activity_bq_per_voxel.sum() * study.config.camera.counts_per_bq
    assert 2e4 < per_view < 5e5
    assert 0.15 < per_view / unattenuated < 0.6
    # a flat region: pixels with expected counts in a narrow band -> mean and variance both equal the mean
    band = (expected > 20) & (expected < 24)
    assert band.sum() > 2000
    sample = counts[band].astype(float)
    mean_exp = expected[band].mean()
    assert sample.mean() == pytest.approx(mean_exp, rel=0.02)
    assert sample.var() == pytest.approx(mean_exp + expected[band].var(), rel=0.08)
    z = (counts - expected)[expected > 5] / np.sqrt(expected[expected > 5])
    assert abs(z.mean()) < 0.02 and z.var() == pytest.approx(1.0, abs=0.05)


def test_recovery_follows_sphere_size(study):
    from scipy.stats import spearmanr

    for name, img in (("osem", study.osem), ("ct_guided", study.ct_guided)):
        rc = recovery_coefficients(img.array, study.phantom)
        diam = sorted(rc)
        values = [rc[d] for d in diam]
        assert rc[37.0] > rc[10.0] + 0.2, (name, rc)
        assert spearmanr(diam, values).statistic > 0.8, (name, rc)
        assert 0.0 < min(values) and max(values) < 1.2, (name, rc)


def test_ct_guided_recovers_small_spheres_better(study):
    rc_o = recovery_coefficients(study.osem.array, study.phantom)
    rc_c = recovery_coefficients(study.ct_guided.array, study.phantom)
    small = (10.0, 13.0, 17.0)
    assert np.mean([rc_c[d] for d in small]) > np.mean([rc_o[d] for d in small]) + 0.05, (rc_o, rc_c)
    assert rc_c[13.0] > rc_o[13.0] and rc_c[17.0] > rc_o[17.0]
    assert rc_c[10.0] > rc_o[10.0] - 0.02


def test_total_activity_and_background_are_quantitative(study):
    ph = study.phantom
    truth = ph.activity_bq_per_voxel.sum()
    v_ml = ph.activity.voxel_volume / 1000.0
    bkg = ph.masks.binary("background")
    for img in (study.osem, study.ct_guided):
        assert img.units == "BQML" and img.same_grid(ph.activity)
        assert img.array.sum() * v_ml == pytest.approx(truth, rel=0.10)
        assert img.array[bkg].mean() == pytest.approx(ph.background_bq_ml, rel=0.10)
        assert img.array[ph.masks.binary("lung_insert")].mean() < 0.5 * ph.background_bq_ml


def test_determinism_by_seed():
    cfg = NemaConfig(n=56, nz=34, voxel_mm=6.0, seed=5, camera=CameraModel(n_views=20))
    a, b = make_nema_phantom(cfg), make_nema_phantom(cfg)
    assert np.array_equal(a.activity.array, b.activity.array) and np.array_equal(a.ct.array, b.ct.array)
    args = (a.activity_bq_per_voxel, a.mu.array, a.activity.spacing, cfg.camera)
    e1, c1 = simulate_projections(*args, seed=5, device="cpu")
    e2, c2 = simulate_projections(*args, seed=5, device="cpu")
    _, c3 = simulate_projections(*args, seed=6, device="cpu")
    assert np.array_equal(c1, c2) and np.array_equal(e1, e2) and not np.array_equal(c1, c3)
    proj = Projector(a.mu.array, a.activity.spacing, cfg.camera, psf=True, device="cpu")
    r1 = osem(c1, proj, n_iter=1, n_subsets=5)
    r2 = osem(c2, proj, n_iter=1, n_subsets=5)
    assert np.array_equal(r1, r2)


def test_dicom_and_nifti_round_trip(study, tmp_path):
    import SimpleITK as sitk

    w = write_nema_study(study, tmp_path / "nema")
    ph = study.phantom
    ct, ct_ds = stack_slices(w["CT"])
    assert np.array_equal(ct.array, ph.ct.array) and ct.same_grid(ph.ct)
    uids = {(str(d.StudyInstanceUID), str(d.FrameOfReferenceUID)) for d in ct_ds}
    for name, img in (("OSEM", study.osem), ("CTGUIDED", study.ct_guided)):
        pt, pt_ds = stack_slices(w[f"{name}_PT"])
        assert pt.modality == "PT" and pt_ds[0].Units == "BQML" and pt.same_grid(img)
        tol = img.array.max(axis=(1, 2))[:, None, None] / 32767.0
        assert np.all(np.abs(pt.array - img.array) <= tol + 1e-6)
        uids |= {(str(d.StudyInstanceUID), str(d.FrameOfReferenceUID)) for d in pt_ds}
        nm = pydicom.dcmread(w[f"{name}_NM"])
        assert "RECON TOMO" in nm.ImageType and int(nm.NumberOfFrames) == img.array.shape[0] and nm.Units == "BQML"
        values = nm.pixel_array * float(nm.RescaleSlope)
        assert np.abs(values - img.array).max() <= float(nm.RescaleSlope)
        uids.add((str(nm.StudyInstanceUID), str(nm.FrameOfReferenceUID)))
        s = sitk.ReadImage(str(w[f"{name}_NM"]))
        assert s.GetSize() == img.size and np.allclose(s.GetSpacing(), img.spacing) and np.allclose(s.GetOrigin(), img.origin)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(w[f"{name}_PT"][0].parent)))
        sp = reader.Execute()
        assert np.allclose(sp.GetOrigin(), img.origin) and np.allclose(sitk.GetArrayFromImage(sp), img.array, atol=float(tol.max()) + 1e-6)
        got = read_nm_recon(w[f"{name}_NM"])  # our NM reader
        assert got.same_grid(img) and np.abs(got.array - img.array).max() <= float(nm.RescaleSlope)
        assert read_image(w[f"{name}_PT"][0].parent).same_grid(img)  # our generic entry point
    assert len(uids) == 1  # one study, one frame of reference
    truth = read_volume(w["truth_activity_bqml"])
    assert truth.same_grid(ph.activity) and np.allclose(truth.array, ph.activity.array)
    masks = read_label_map(w["truth_masks"])
    assert np.array_equal(masks.array, ph.masks.array)
    record = json.loads(w["provenance"].read_text())
    assert record["config"]["sphere_ratio"] == 8.0 and record["labels"]["masks"]["6"] == "sphere_37mm"
    assert set(record["rc_osem"]) == {str(d) for d in SPHERE_DIAMETERS_MM}


def test_cli_registration_parses_options():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    register_phantom(sub)
    args = parser.parse_args(["nema", "--out", "x", "--ratio", "4", "--matrix", "64", "--slices", "40", "--voxel-mm", "5"])
    assert args.func.__name__ == "run_nema" and args.ratio == [4.0] and args.matrix == 64


def test_too_small_grid_is_refused():
    with pytest.raises(InputError, match="too small"):
        make_nema_phantom(NemaConfig(n=32, nz=16, voxel_mm=4.0))
