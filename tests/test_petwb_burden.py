"""`nmkit burden` (issue #17): TMTV, TLG, Dmax and SDmax on the whole-body phantom against its known lesions, and on a
real expert GTV."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from conftest import need
from nmkit.cli import main
from nmkit.petwb.burden import body_surface_area, patient_burden
from nmkit.petwb.delineate import delineate, seed_regions
from petwb_common import phantom as cached_phantom

#: partial-volume tolerance of TMTV from a 41 % SUVmax delineation of 3-12 ml spheres on 4 mm voxels, FWHM 6 mm
PV_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def phantom():
    return cached_phantom(3)


def _true_dmax(truth: list[dict]) -> float:
    centres = [np.array([t["centre_x_mm"], t["centre_y_mm"], t["centre_z_mm"]]) for t in truth]
    return max(float(np.sqrt(((a - b) ** 2).sum())) for a, b in combinations(centres, 2))


def test_tmtv_and_dmax_match_the_phantom_truth(phantom):
    true_tmtv = sum(t["volume_ml"] for t in phantom.truth)
    seeds = seed_regions(phantom.pet, np.ones(phantom.pet.array.shape, bool), seed_mask=phantom.lesions.array > 0)
    lesions = delineate(phantom.pet, "rel41", seeds=seeds).labels
    patient, rows = patient_burden(phantom.pet, lesions)
    assert patient["lesion_count"] == 5
    assert patient["tmtv_ml"] == pytest.approx(true_tmtv, rel=PV_TOLERANCE)
    assert patient["tlg_total_g"] == pytest.approx(sum(r["suv_mean"] * r["volume_ml"] for r in rows))
    # Dmax: distance between the two farthest true lesion centres, by hand (lesions 4 and 5 here)
    assert patient["dmax_mm"] == pytest.approx(_true_dmax(phantom.truth), abs=2.0)
    c4, c5 = np.array([60.0, 40.0, 90.0]), np.array([120.0, -10.0, 480.0])
    assert _true_dmax(phantom.truth) == pytest.approx(np.linalg.norm(c4 - c5))
    # SDmax = Dmax (m) / BSA (m^2); Mosteller BSA of 75 kg, 175 cm = sqrt(75 x 175 / 3600)
    bsa = np.sqrt(75 * 175 / 3600)
    assert patient["bsa_m2"] == pytest.approx(bsa)
    assert patient["sdmax_per_m"] == pytest.approx(patient["dmax_mm"] / 1000 / bsa)
    # the voxelised truth itself: TMTV within 2 % of the analytic sphere volumes
    exact, _ = patient_burden(phantom.pet, phantom.lesions)
    assert exact["tmtv_ml"] == pytest.approx(true_tmtv, rel=0.02)
    assert exact["suv_max"] < max(t["suv"] for t in phantom.truth) * 1.3  # noise, not a unit error


def test_body_surface_area_formulas():
    assert body_surface_area(70, 1.70, "dubois") == pytest.approx(1.81, abs=0.01)  # Du Bois 1916 nomogram value
    assert body_surface_area(70, 1.70, "mosteller") == pytest.approx(1.82, abs=0.01)
    with pytest.raises(Exception, match="centimetres"):
        body_surface_area(70, 170, "mosteller")


def test_cli_burden_on_real_gtv(external_data, tmp_path):
    from nmkit.io.volume_files import read_label_map

    folder = need(external_data, "pet_sts/sts_images/STS_001/PET/dicom")
    out = tmp_path / "b"
    assert main(["burden", str(folder / "image"), str(folder / "mask" / "RS.dcm"), str(out), "--components"]) == 0
    p = pd.read_csv(out / "burden_patients.csv").iloc[0]
    gtv = read_label_map(external_data / "pet_sts/sts_images_flat/nifti/STS_001_PET_mask.nii.gz")
    assert p.case_id == "STS_001" and p.lesion_count == 1 and p.dmax_mm == 0.0
    assert p.tmtv_ml == pytest.approx(gtv.volume_ml(1), rel=1e-6)
    assert p.weight_kg > 0 and p.bsa_m2 == pytest.approx(body_surface_area(p.weight_kg, p.height_m))
    # the same numbers in the DICOM SR (TID 1500), referencing the PET series
    import pydicom

    sr = pydicom.dcmread(out / "STS_001_burden_sr.dcm")
    assert sr.Modality == "SR" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    nums = {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
            for i in sr.ContentSequence[-1].ContentSequence[0].ContentSequence if i.ValueType == "NUM"}
    assert nums["Total metabolic tumour volume"] == pytest.approx(p.tmtv_ml, rel=1e-9)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == pydicom.dcmread(
        next((folder / "image").glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    lesion = pd.read_csv(out / "burden_lesions.csv").iloc[0]
    assert lesion.suv_peak <= lesion.suv_max and lesion.tlg_g == pytest.approx(lesion.suv_mean * lesion.volume_ml)
    assert "SUV g/ml" in lesion.units and "Dmax mm" in p.units  # every number says its unit


def test_cli_burden_reads_delineate_case_table(phantom, tmp_path):
    from nmkit.io.volume_files import write_volume
    from nmkit.petwb.inputs import write_label_map

    write_volume(phantom.pet, tmp_path / "pet.nii.gz")
    write_label_map(phantom.organs, tmp_path / "organs.nii.gz")
    assert main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "dl"), "--assume-suv", "--method", "percist",
                 "--liver", str(tmp_path / "organs.nii.gz"), "--liver-roi", "liver", "--exclude", str(tmp_path / "organs.nii.gz"),
                 "--exclude-roi", "bladder", "--exclude-roi", "brain", "--exclude-roi", "kidney*", "--exclude-roi", "heart"]) == 0
    assert main(["burden", str(tmp_path / "dl" / "dataset.csv"), str(tmp_path / "b"), "--assume-suv",
                 "--weight-kg", "75", "--height-m", "1.75"]) == 0
    p = pd.read_csv(tmp_path / "b" / "burden_patients.csv").iloc[0]
    assert p.lesion_count == 5 and p.dmax_mm == pytest.approx(_true_dmax(phantom.truth), abs=3.0)
    assert p.tmtv_ml == pytest.approx(sum(t["volume_ml"] for t in phantom.truth), rel=0.25)
