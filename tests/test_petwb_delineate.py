"""`nmkit delineate` (issue #17): every method on the real pet_sts FDG-PET against the expert GTV, the methods' rules
checked on the whole-body phantom, the DICOM SEG / case-table outputs, and bad input (PET without SUV tags, NIfTI
without units, lesion on the volume edge, empty VOI)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from conftest import need
from nmkit.cli import main
from nmkit.petwb.delineate import METHODS, delineate, search_region, seed_regions
from petwb_common import phantom as cached_phantom

STS = "pet_sts/sts_images/{p}/PET/dicom"


@pytest.fixture(scope="module")
def phantom():
    return cached_phantom(3)


@pytest.mark.external
def test_every_method_against_expert_gtv_is_finite_reproducible_and_plausible(external_data):
    from nmkit.io.reader import read_image
    from nmkit.io.volume_files import read_label_map
    from nmkit.petwb.bench import delineation_table

    need(external_data, "pet_sts/sts_images_flat/nifti")
    table = delineation_table(external_data)
    assert len(table) == 3 * len(METHODS)
    assert set(table.method) == set(METHODS)
    values = table[["dice", "hd95_mm", "volume_ratio", "dice_matched", "hd95_matched_mm"]].to_numpy()
    assert np.isfinite(values).all()
    again = delineation_table(external_data)
    pd.testing.assert_frame_equal(table, again)  # the RESULTS.md table is reproducible
    assert ((table.dice > 0.05) & (table.dice < 0.95)).all()
    mean = table.groupby("method").dice.mean()
    assert mean["rel41"] > 0.5 and mean["rel41"] > mean["rel50"]  # 41 % keeps more of a heterogeneous sarcoma than 50 %
    # one number independently: rel41 on STS_003 = the 41 %-of-max component around the GTV's SUVmax, by numpy/scipy
    pet = read_image(need(external_data, STS.format(p="STS_003") + "/image"), suv="bw")
    gtv = read_label_map(external_data / "pet_sts/sts_images_flat/nifti/STS_003_PET_mask.nii.gz").array > 0
    box = np.zeros_like(gtv)
    box[ndimage.find_objects(gtv.astype(int))[0]] = True
    near = ndimage.distance_transform_edt(~box, sampling=pet.spacing[::-1]) <= 10.0
    suv = pet.array.astype(float)
    peak = np.unravel_index(np.argmax(np.where(near, suv, -np.inf)), suv.shape)
    comps, _ = ndimage.label(near & (suv >= 0.41 * suv[peak]), np.ones((3, 3, 3)))
    seg = comps == comps[peak]
    dice = 2 * (seg & gtv).sum() / (seg.sum() + gtv.sum())
    row = table[(table.patient == "STS_003") & (table.method == "rel41")].iloc[0]
    assert row.dice == pytest.approx(dice, rel=1e-12)
    assert row.volume_ratio == pytest.approx(seg.sum() / gtv.sum(), rel=1e-12)


def test_methods_follow_their_rules_on_the_phantom(phantom):
    pet, truth = phantom.pet, phantom.lesions.array > 0
    seeds = seed_regions(pet, np.ones(truth.shape, bool), seed_mask=truth, margin_mm=10.0)
    assert len(seeds) == 5
    suv = pet.array.astype(float)
    for method in ("rel41", "rel50", "adaptive", "grow"):
        result = delineate(pet, method, seeds=seeds)
        assert len(result.lesions) == 5, method
        maxima = [r["suv_max"] for r in result.lesions]
        assert maxima == sorted(maxima, reverse=True)  # labels by decreasing SUVmax
        for r in result.lesions:
            roi = result.labels.array == r["label"]
            assert (truth & roi).any()  # every delineated lesion lies on a true one
            if method.startswith("rel"):
                frac = int(method[3:]) / 100
                assert r["threshold_suv"] == pytest.approx(frac * suv[roi].max())
                assert suv[roi].min() >= r["threshold_suv"]
            if method == "adaptive":
                assert 0.0 < r["background_suv"] < r["threshold_suv"] < r["suv_max"]
    # a larger fraction never gives a larger lesion
    v41 = sum(r["volume_ml"] for r in delineate(pet, "rel41", seeds=seeds).lesions)
    v50 = sum(r["volume_ml"] for r in delineate(pet, "rel50", seeds=seeds).lesions)
    assert v50 < v41


def test_organ_masks_remove_physiological_uptake(phantom):
    pet, organs = phantom.pet, phantom.organs
    bladder = organs.array == organs.label_value("bladder")
    everything = delineate(pet, "suv4.0")
    assert any((everything.labels.array == r["label"])[bladder].any() for r in everything.lesions)
    physiological = np.isin(organs.array, [organs.label_value(n) for n in ("bladder", "brain", "kidney_left", "kidney_right", "heart")])
    region = search_region(pet, exclude=physiological, exclude_margin_mm=8.0)
    cleaned = delineate(pet, "suv4.0", region=region)
    assert not (cleaned.labels.array > 0)[bladder | physiological].any()
    hit = {int(v) for v in np.unique(phantom.lesions.array[cleaned.labels.array > 0]) if v}
    assert hit == {1, 2, 3, 4, 5}  # every true lesion (SUV 5-9) is still found


def test_cli_on_real_dicom_writes_seg_label_map_and_case_table(external_data, tmp_path):
    from nmkit.dataset import read_dataset
    from nmkit.io.reader import read_image
    from nmkit.io.seg import read_seg
    from nmkit.io.volume_files import read_label_map

    folder = need(external_data, STS.format(p="STS_003"))
    out = tmp_path / "dl"
    assert main(["delineate", str(folder / "image"), str(out), "--method", "rel41", "--method", "suv2.5",
                 "--seed-roi", str(folder / "mask" / "RS.dcm")]) == 0
    pet = read_image(folder / "image", suv="bw")
    labels = read_label_map(out / "rel41" / "lesions.nii.gz")
    seg = read_seg(out / "rel41" / "lesions_seg.dcm", pet)
    assert np.array_equal(seg.binary(None), labels.array > 0)
    lesions = pd.read_csv(out / "lesions.csv")
    one = lesions[lesions.method == "rel41"].iloc[0]
    assert one.case_id == "STS_003"
    assert one.volume_ml == pytest.approx((labels.array == 1).sum() * np.prod(pet.spacing) / 1000)
    assert one.suv_max == pytest.approx(pet.array[labels.array == 1].max(), rel=1e-6)
    table = read_dataset(out / "dataset.csv", need_masks=True)
    assert list(table.case_id) == ["STS_003_rel41", "STS_003_suv2.5"]
    assert all(m.kind == "labelmap" for m in table.masks.iloc[1])


def test_pet_without_suv_tags_is_refused_in_one_line(external_data, tmp_path, capsys):
    import pydicom

    src = need(external_data, STS.format(p="STS_002") + "/image")
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        del ds.RadiopharmaceuticalInformationSequence  # and say the values are Bq/ml (they are stored as SUV, GML)
        ds.Units = "BQML"
        ds.save_as(tmp_path / f.name)
    code = main(["delineate", str(tmp_path), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "SUV" in err and "RadionuclideTotalDose" in err


def test_nifti_without_units_needs_assume_suv(external_data, tmp_path, capsys):
    nii = need(external_data, "pet_sts/sts_images_flat/nifti/STS_002_PET_image.nii.gz")
    assert main(["delineate", str(nii), str(tmp_path / "a")]) == 2
    assert "--assume-suv" in capsys.readouterr().err
    assert main(["delineate", str(nii), str(tmp_path / "b"), "--assume-suv", "--method", "suv4.0"]) == 0


def test_lesion_on_the_volume_edge_is_flagged_not_fatal(phantom, tmp_path, capsys, caplog):
    from nmkit.io.volume_files import write_volume

    # crop the phantom so that the liver lesion (centre z 250 mm, radius 14 mm) is cut by the top slice
    z_top = int(round((250.0 - phantom.pet.origin[2]) / phantom.pet.spacing[2]))
    from nmkit.io.image import Image

    pet = phantom.pet
    cropped = Image(array=pet.array[: z_top + 1].copy(), spacing=pet.spacing, origin=pet.origin, modality="PT")
    write_volume(cropped, tmp_path / "pet.nii.gz")
    code = main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "out"), "--assume-suv", "--method", "suv4.0"])
    assert code == 0
    lesions = pd.read_csv(tmp_path / "out" / "lesions.csv")
    assert lesions.touches_edge.any() and not lesions.touches_edge.all()
    assert "touches the image edge" in caplog.text


def test_empty_voi_and_unknown_method_are_clear_errors(phantom, tmp_path, capsys):
    from nmkit.io.image import Mask
    from nmkit.io.volume_files import write_volume
    from nmkit.petwb.inputs import write_label_map

    write_volume(phantom.pet, tmp_path / "pet.nii.gz")
    write_label_map(Mask.like(phantom.pet, np.zeros(phantom.pet.array.shape, np.uint8), labels={1: "body"}), tmp_path / "voi.nii.gz")
    assert main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "o"), "--assume-suv", "--voi", str(tmp_path / "voi.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "voi.nii.gz" in err and "empty" in err
    with pytest.raises(SystemExit):
        main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "o"), "--method", "rel141x"])
    assert "unknown delineation method" in capsys.readouterr().err
    assert main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "o"), "--assume-suv", "--method", "percist"]) == 2
    assert "--liver" in capsys.readouterr().err


def test_seed_points_and_voi_from_the_cli(phantom, tmp_path):
    from nmkit.io.image import Mask
    from nmkit.io.volume_files import read_label_map, write_volume
    from nmkit.petwb.inputs import write_label_map

    write_volume(phantom.pet, tmp_path / "pet.nii.gz")
    # a seed point on the pelvic lesion (true centre 60, 40, 90 mm) grows exactly one lesion there
    assert main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "a"), "--assume-suv", "--method", "grow",
                 "--method", "rel41", "--seed", "62,38,92"]) == 0
    for method in ("grow", "rel41"):
        labels = read_label_map(tmp_path / "a" / method / "lesions.nii.gz")
        assert set(np.unique(labels.array)) == {0, 1}
        assert set(np.unique(phantom.lesions.array[labels.array == 1])) <= {0, 4}
        assert (phantom.lesions.array[labels.array == 1] == 4).mean() > 0.5
    # a VOI around the thorax keeps only the thoracic lesions (lung, mediastinum, axilla: z 440-480 mm)
    z_mm = phantom.pet.origin[2] + np.arange(phantom.pet.array.shape[0]) * phantom.pet.spacing[2]
    voi = np.zeros(phantom.pet.array.shape, np.uint8)
    voi[(z_mm > 400) & (z_mm < 530)] = 1
    write_label_map(Mask.like(phantom.pet, voi, labels={1: "thorax"}), tmp_path / "voi.nii.gz")
    assert main(["delineate", str(tmp_path / "pet.nii.gz"), str(tmp_path / "b"), "--assume-suv", "--method", "suv4.0",
                 "--voi", str(tmp_path / "voi.nii.gz")]) == 0
    found = read_label_map(tmp_path / "b" / "suv4.0" / "lesions.nii.gz").array > 0
    assert {int(v) for v in np.unique(phantom.lesions.array[found]) if v} == {1, 3, 5}
    assert not found[voi == 0].any()
