"""Paired reconstruction comparison on simulated pairs with a known PSF difference (classic vs CT-guided-like)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from scipy.ndimage import gaussian_filter

from nmkit.io.image import Image, Mask, resample_to
from nmkit.quality.paired import PairedCase, measure_cases, paired_statistics, pooled_lesion_table, threshold_segmenter, write_report
from nmkit.quality.resolution import SIGMA_TO_FWHM

VOXEL = 4.0
FWHM_A, FWHM_B = 14.0, 8.0  # classic OSEM-like vs resolution-recovered (CT-guided-like) reconstructions


def simulate_patient(seed: int) -> PairedCase:
    """Uniform body with a liver-like region, an L4-like cylinder and 2-3 hot spherical lesions (8-24 mm);
    reconstruction A/B = truth blurred with FWHM 14/8 mm plus Poisson noise; B lives on a different grid."""
    rng = np.random.default_rng(seed)
    shape = (36, 44, 44)
    zz, yy, xx = np.indices(shape).astype(float) * VOXEL
    centre = np.array(shape) * VOXEL / 2
    act = np.zeros(shape)
    labels = np.zeros(shape, np.uint8)
    body = ((yy - centre[1]) / 80) ** 2 + ((xx - centre[2]) / 80) ** 2 <= 1
    act[body] = 5000.0
    liver = body & (np.abs(zz - centre[0]) < 30) & ((yy - centre[1] + 30) ** 2 + (xx - centre[2] - 35) ** 2 <= 25**2)
    act[liver] = 6000.0
    labels[liver] = 1
    spine = body & ((yy - centre[1] - 40) ** 2 + (xx - centre[2]) ** 2 <= 14**2)
    act[spine] = 15000.0
    labels[spine] = 2
    truth = {}
    spots = [(-40.0, -30.0), (30.0, 20.0), (-30.0, 45.0)]
    names = {1: "liver", 2: "l4_body"}
    for n, (dy, dx) in enumerate(spots[: rng.integers(2, 4)]):
        d = float(rng.uniform(8, 24))
        conc = 5000.0 * float(rng.uniform(4, 8))
        c = centre + [rng.uniform(-10, 10), dy, dx]
        ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= (d / 2) ** 2
        act[ball] = conc
        labels[ball] = 10 + n
        names[10 + n] = f"lesion{n + 1}"
        truth[f"lesion{n + 1}"] = conc
    truth["liver"], truth["l4_body"] = 6000.0, 15000.0

    def recon(fwhm: float, noise_seed: int) -> np.ndarray:
        blurred = gaussian_filter(act, fwhm / SIGMA_TO_FWHM / VOXEL)
        return np.random.default_rng(noise_seed).poisson(blurred / 100.0) * 100.0

    geo = dict(spacing=(VOXEL,) * 3, origin=(-88.0, -88.0, -72.0), modality="NM", units="BQML")
    img_a = Image(recon(FWHM_A, seed + 1000).astype(np.float32), **geo)
    img_b_native = Image(recon(FWHM_B, seed + 2000).astype(np.float32), **geo)
    # reconstruction B delivered on another grid (3.3 mm voxels, shifted origin): the comparison must resample it
    ref_b = Image(np.zeros((44, 53, 53), np.float32), spacing=(3.3, 3.3, 3.3), origin=(-87.0, -87.5, -71.0))
    img_b = resample_to(img_b_native, ref_b, "linear")
    mask = Mask.like(img_a, labels, labels=names)
    return PairedCase(f"P{seed:02d}", img_a, img_b, mask, truth)


@pytest.fixture(scope="module")
def measured():
    cases = [simulate_patient(s) for s in range(12)]
    table, skipped = measure_cases(cases, background="liver", uniform=("liver", "l4_body"),
                                   segmenter=threshold_segmenter(0.4), labels=("OSEM", "CTG"))
    return cases, table, skipped


def test_ct_guided_recovers_small_lesions_better(measured):
    _, table, skipped = measured
    assert not skipped and table["case"].nunique() == 12
    rc = pooled_lesion_table(table, "rc_mean", labels=("OSEM", "CTG"))
    assert len(rc) >= 24
    from nmkit.stats.paired import wilcoxon_paired

    r = wilcoxon_paired(rc["OSEM"], rc["CTG"])
    assert r["median_diff"] > 0 and r["p_wilcoxon"] < 0.001
    # the gain is largest for the smallest lesions: compare with the truth-table sizes via RC level
    small = rc[rc["OSEM"] < rc["OSEM"].median()]
    assert (small["CTG"] / small["OSEM"]).median() > (rc["CTG"] / rc["OSEM"]).median() * 0.99


def test_paired_statistics_and_report(measured, tmp_path):
    _, table, _ = measured
    stats = paired_statistics(table, labels=("OSEM", "CTG")).set_index("metric")
    # the 28 mm L4-like cylinder loses less to partial volume with the narrower PSF; the large liver region
    # keeps its mean (both reconstructions conserve counts) and agrees well between them
    assert stats.loc["l4_body:mean", "mean_b"] > stats.loc["l4_body:mean", "mean_a"]
    assert stats.loc["l4_body:mean", "p_holm"] < 0.05
    assert abs(stats.loc["liver:mean", "mean_rel_diff_pct"]) < 5
    assert stats.loc["liver:mean", "ccc"] < 1.0 and stats.loc["l4_body:mean", "ba_bias"] > 0
    # corrected p-values are never below raw ones, Holm never below BH
    ok = stats["p_wilcoxon"].notna()
    assert (stats.loc[ok, "p_holm"] >= stats.loc[ok, "p_wilcoxon"] - 1e-15).all()
    assert (stats.loc[ok, "p_holm"] >= stats.loc[ok, "p_bh"] - 1e-15).all()
    dice = table.drop_duplicates("case")["seg_dice"]
    assert dice.between(0.2, 1.0).all() and dice.median() < 0.99
    out = write_report(table, stats.reset_index(), tmp_path / "report.html", labels=("OSEM", "CTG"))
    html = out.read_text()
    assert html.count("data:image/png;base64,") >= 3 and "Bland-Altman" in html and "l4_body:cov" in html
    # every embedded figure decodes as a PNG of a sensible size
    import base64
    import io

    for chunk in html.split("data:image/png;base64,")[1:]:
        data = base64.b64decode(chunk.split('"', 1)[0])
        with PILImage.open(io.BytesIO(data)) as im:
            assert im.size[0] > 150 and im.size[1] > 150


def test_resampling_keeps_geometry_and_bad_case_is_skipped(measured):
    cases, _, _ = measured
    bad = PairedCase("BROKEN", cases[0].image_a, cases[0].image_b,
                     Mask(np.ones((3, 3, 3), np.uint8), spacing=(1, 1, 1), labels={1: "liver"}, origin=(500.0, 500.0, 500.0)))
    table, skipped = measure_cases([cases[0], bad], background="liver")
    assert set(skipped) == {"BROKEN"} and "does not overlap" in skipped["BROKEN"]
    assert set(table["case"]) == {cases[0].case_id}
    # B was delivered on a 3.3 mm grid: after alignment it is on A's grid and still carries A's geometry
    from nmkit.quality.paired import align_case

    a, b, m = align_case(cases[0])
    assert b.same_grid(a) and m.same_grid(a) and b.units == "BQML"
    assert float(b.array.sum()) == pytest.approx(float(a.array.sum()), rel=0.05)


def test_radiomics_on_both_reconstructions(measured):
    cases, _, _ = measured
    config = {"families": ["intensity_statistics", "intensity_histogram"], "discretisation": {"method": "FBN", "n_bins": 16}}
    table, skipped = measure_cases(cases[:6], background="liver", lesions=("lesion1",), radiomics=config)
    assert not skipped
    rad_cols = [c for c in table.columns if ":rad:" in c]
    assert rad_cols
    stats = paired_statistics(table)
    assert set(stats["family"]) == {"quality", "radiomics"}
    fam = stats[stats["family"] == "radiomics"]
    assert fam["p_holm"].notna().any()
    # the same ROI on the sharper reconstruction has a higher maximum (IBSI intensity statistics)
    mx = [c for c in rad_cols if c.endswith("stat_max")]
    assert mx and fam.set_index("metric").loc[mx[0], "median_diff"] > 0
    assert isinstance(table, pd.DataFrame)


def test_compare_cli_on_nifti_folders(measured, tmp_path):
    import json

    from nmkit.cli import main
    from nmkit.io.volume_files import write_volume

    cases, _, _ = measured
    rows = []
    for c in cases[:8]:
        write_volume(c.image_a, tmp_path / "osem" / f"{c.case_id}.nii.gz")
        write_volume(c.image_b, tmp_path / "ctg" / f"{c.case_id}.nii.gz")
        write_volume(c.mask, tmp_path / "rois" / f"{c.case_id}.nii.gz")
        (tmp_path / "rois" / f"{c.case_id}.labels.json").write_text(json.dumps({str(k): v for k, v in c.mask.labels.items()}))
        rows += [{"case": c.case_id, "roi": k, "value": v} for k, v in c.truth.items()]
    (tmp_path / "rois" / "EXTRA.nii.gz").write_bytes(b"not a volume")  # a case missing from the recon folders
    pd.DataFrame(rows).to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "out"
    rc = main(["compare", str(tmp_path / "osem"), str(tmp_path / "ctg"), "--rois", str(tmp_path / "rois"), "--out", str(out),
               "--labels", "OSEM", "CTG", "--background", "liver", "--uniform", "liver", "l4_body",
               "--truth", str(tmp_path / "truth.csv"), "--segment-threshold", "0.4"])
    assert rc == 0
    stats = pd.read_csv(out / "paired_statistics.csv").set_index("metric")
    assert stats.loc["lesion1:rc_mean", "mean_b"] > stats.loc["lesion1:rc_mean", "mean_a"]
    assert stats.loc["lesion1:rc_mean", "p_wilcoxon"] < 0.05  # 8 of 8 lesions recover better
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["case"].nunique() == 8 and set(metrics["recon"]) == {"OSEM", "CTG"}
    prov = json.loads((out / "provenance.json").read_text())
    assert "EXTRA" in prov["skipped"] and prov["config"]["labels"] == ["OSEM", "CTG"]
    assert (out / "report.html").stat().st_size > 10_000
    assert main(["compare", str(tmp_path / "osem"), str(tmp_path / "truth.csv"), "--rois", str(tmp_path / "rois"),
                 "--out", str(out)]) == 2  # not a folder: a clear error, exit code 2
