"""Structures are kept apart by NUMBER: a QIN-style SEG whose segments share a label, repeated RTSTRUCT names,
`load_rois(..., selector=)`, and `nmkit roi2mask` writing one mask file per structure plus the dataset.csv case table."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import need
from nmkit.cli import main
from nmkit.dataset import read_dataset
from nmkit.errors import InputError
from nmkit.io.dicom_series import stack_slices
from nmkit.io.image import Mask
from nmkit.io.roi import load_rois, structure_names
from nmkit.io.rtstruct import write_rtstruct
from nmkit.io.volume_files import read_label_map
from test_io_rtstruct import synthetic_ct_series

PRIMARY, SECONDARY = "Neoplasm, Primary", "Neoplasm, Secondary"


@pytest.fixture(autouse=True)
def _quiet_highdicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _lesions(shape) -> dict[int, np.ndarray]:
    """Segment number -> a separate box lesion of known size (voxels = product of the box's edges)."""
    boxes = {1: (slice(1, 5), slice(4, 12), slice(4, 14)),    # 4 x 8 x 10 = 320 voxels
             2: (slice(2, 4), slice(20, 23), slice(6, 10)),   # 2 x 3 x 4 = 24
             3: (slice(5, 8), slice(14, 19), slice(30, 35)),  # 3 x 5 x 5 = 75
             4: (slice(8, 9), slice(30, 32), slice(20, 21))}  # 1 x 2 x 1 = 2
    out = {}
    for number, box in boxes.items():
        layer = np.zeros(shape, bool)
        layer[box] = True
        out[number] = layer
    return out


def _qin_style_seg(folder: Path, files: list[Path], lesions: dict[int, np.ndarray], image) -> Path:
    """A BINARY SEG written with highdicom directly: segment 1 "Neoplasm, Primary", 2.. all "Neoplasm, Secondary"."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in files]
    by_sop = {str(ds.SOPInstanceUID): ds for ds in sources}
    sources = [by_sop[sop] for sop in image.meta["SOPInstanceUIDs"]]  # in the image's slice order
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=PRIMARY if n == 1 else SECONDARY,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.NeoplasmPrimary if n == 1 else codes.SCT.NeoplasmSecondary,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n in sorted(lesions)]
    pixels = np.stack([lesions[n] for n in sorted(lesions)], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
        content_creator_name="Reader^One")
    path = folder / "qin_seg.dcm"
    seg.save_as(str(path))
    return path


@pytest.fixture()
def qin_case(tmp_path):
    in_dir = tmp_path / "study"
    files, _ = synthetic_ct_series(in_dir / "ct")
    image, _ = stack_slices(files)
    lesions = _lesions(image.spatial_shape)
    seg = _qin_style_seg(in_dir, files, lesions, image)
    return in_dir, image, lesions, seg


def test_seg_with_repeated_labels_keeps_every_segment_by_number(qin_case):
    in_dir, image, lesions, seg = qin_case
    assert structure_names(seg) == {1: PRIMARY, 2: SECONDARY, 3: SECONDARY, 4: SECONDARY}
    everything = load_rois(seg, image)
    assert everything.labels == {1: PRIMARY, 2: SECONDARY, 3: SECONDARY, 4: SECONDARY}
    for number, layer in lesions.items():
        np.testing.assert_array_equal(everything.binary(number), layer)
    assert everything.meta["readers"] == {n: "Reader^One" for n in lesions}
    three = load_rois(seg, image, selector="3")
    assert three.labels == {3: SECONDARY} and three.voxel_count(3) == 75
    np.testing.assert_array_equal(three.binary(3), lesions[3])
    by_name = load_rois(seg, image, selector="neoplasm, secondary")  # case-insensitive; a repeated name selects all
    assert sorted(by_name.labels) == [2, 3, 4]
    assert load_rois(seg, image, roi_numbers=[1, 4]).labels == {1: PRIMARY, 4: SECONDARY}
    assert sorted(load_rois(seg, image, selector=["1", "4"]).labels) == [1, 4]
    assert sorted(load_rois(seg, image, selector="Neoplasm*").labels) == [1, 2, 3, 4]
    with pytest.raises(InputError, match="ROI number 9 not found"):
        load_rois(seg, image, selector="9")


def test_roi2mask_writes_one_file_per_segment_and_a_readable_case_table(qin_case, tmp_path, capsys):
    in_dir, image, lesions, seg = qin_case
    out = tmp_path / "out"
    assert main(["roi2mask", str(in_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _read_csv(out / "roi_summary.csv")
    files = sorted(Path(r["mask_file"]).name for r in rows)
    assert files == ["Neoplasm_Primary.nii.gz", "Neoplasm_Secondary__seg02.nii.gz", "Neoplasm_Secondary__seg03.nii.gz",
                     "Neoplasm_Secondary__seg04.nii.gz"]
    case_dir = out / "PHANTOM01" / "2024-01-02_synthetic_water_phantom"
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(files + ["image.nii.gz"])  # every segment on disk, none overwritten
    assert "4 mask file(s) for 1 image(s)" in printed
    for r in rows:
        number = int(r["segment"])
        written = read_label_map(r["mask_file"])
        assert written.same_grid(image)
        assert written.voxel_count() == int(r["voxels"]) == int(lesions[number].sum())
        np.testing.assert_array_equal(written.binary(), lesions[number])
        assert float(r["volume_ml"]) == pytest.approx(lesions[number].sum() * image.voxel_volume / 1000, rel=1e-3)
    table = read_dataset(out / "dataset.csv", need_masks=True)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["patient_id"] == "PHANTOM01" and row["modality"] == "CT" and row["study_date"] == "20240102"
    assert row["series_uid"] == image.meta["SeriesInstanceUID"] and row["series_description"] == "synthetic water phantom"
    assert Path(row["image"]) == case_dir / "image.nii.gz"
    masks = sorted(row["masks"], key=lambda m: m.segment)
    assert [(m.segment, m.structure, m.label, m.kind) for m in masks] == [
        (1, PRIMARY, 1, "labelmap"), (2, SECONDARY, 1, "labelmap"), (3, SECONDARY, 1, "labelmap"), (4, SECONDARY, 1, "labelmap")]
    assert {m.reader for m in masks} == {"Reader^One"}
    for m in masks:
        assert read_label_map(m.file).voxel_count() == int(lesions[m.segment].sum())
    provenance = json.loads((out / "dataset.provenance.json").read_text())
    assert provenance["schema"] == "nmkit-dataset/1" and provenance["rows"] == 1


def test_roi2mask_roi_number_extracts_exactly_that_segment(qin_case, tmp_path, capsys):
    in_dir, image, lesions, seg = qin_case
    out = tmp_path / "out3"
    assert main(["roi2mask", str(in_dir), str(out), "--roi", "3"]) == 0
    rows = _read_csv(out / "roi_summary.csv")
    assert [(r["segment"], r["roi_name"], int(r["voxels"])) for r in rows] == [("3", SECONDARY, 75)]
    np.testing.assert_array_equal(read_label_map(rows[0]["mask_file"]).binary(), lesions[3])
    assert "1 mask file(s)" in capsys.readouterr().out
    # repeatable selectors: the union, each segment in its own file
    out2 = tmp_path / "out14"
    assert main(["roi2mask", str(in_dir), str(out2), "--roi", "1", "--roi", "4"]) == 0
    assert sorted(int(r["segment"]) for r in _read_csv(out2 / "roi_summary.csv")) == [1, 4]
    # a selector no file matches: the file is reported (names what it has) and the exit code says nothing converted
    assert main(["roi2mask", str(in_dir), str(tmp_path / "none"), "--roi", "GTV*"]) == 1
    assert "no ROI matches 'GTV*'" in capsys.readouterr().out


def test_rtstruct_repeated_names_and_two_readers_never_overwrite(tmp_path):
    in_dir = tmp_path / "study"
    files, sphere = synthetic_ct_series(in_dir / "ct", shape=(8, 32, 40), spacing=(1.0, 1.0, 2.0))
    image, _ = stack_slices(files)
    box = np.zeros_like(sphere)
    box[1:3, 2:6, 2:7] = True  # 2 x 4 x 5 = 40 voxels, away from the sphere
    two = Mask.like(image, np.stack([sphere, box]), labels={3: "GTV", 7: "GTV"}, overlapping=True)
    write_rtstruct(two, image, in_dir / "reader1.dcm")
    write_rtstruct(Mask.like(image, box[None], labels={1: "image"}, overlapping=True), image, in_dir / "reader2.dcm")
    names = structure_names(in_dir / "reader1.dcm")
    assert names == {3: "GTV", 7: "GTV"}  # ROI Numbers written from the label values, read back as the label values
    mask = load_rois(in_dir / "reader1.dcm", image)
    assert mask.labels == {3: "GTV", 7: "GTV"} and mask.voxel_count(7) == 40
    out = tmp_path / "out"
    assert main(["roi2mask", str(in_dir), str(out)]) == 0
    rows = {Path(r["mask_file"]).name: r for r in _read_csv(out / "roi_summary.csv")}
    assert set(rows) == {"GTV__roi03.nii.gz", "GTV__roi07.nii.gz", "image__roi01.nii.gz"}  # 'image' is the image's name
    assert int(rows["GTV__roi03.nii.gz"]["voxels"]) == int(sphere.sum())
    assert int(rows["GTV__roi07.nii.gz"]["voxels"]) == int(rows["image__roi01.nii.gz"]["voxels"]) == 40
    table = read_dataset(out / "dataset.csv", need_masks=True)
    assert len(table) == 1 and sorted(m.segment for m in table.iloc[0]["masks"]) == [1, 3, 7]


def test_roi2mask_on_pet_sts_builds_the_case_table(external_data, tmp_path):
    root = need(external_data, "pet_sts/sts_images")
    out = tmp_path / "out"
    assert main(["roi2mask", str(root), str(out), "--suv", "bw"]) == 0
    table = read_dataset(out / "dataset.csv", need_masks=True)
    assert sorted(table["patient_id"]) == ["STS_001", "STS_002", "STS_003"]
    assert set(table["modality"]) == {"PT"} and all(t.startswith("FDG") for t in table["tracer"])
    assert set(table["units"]) == {"g/ml"} and set(table["suv"]) == {""}  # already SUV: units recorded, nothing to convert
    for _, row in table.iterrows():
        folder = Path(row["image"]).parent
        assert folder.parent.name == row["patient_id"]
        assert folder.name.startswith(row["acquisition_datetime"][:10] + "_IBSI_1_" + row["patient_id"] + "_PET")
        (m,) = row["masks"]
        assert (m.segment, m.structure, m.label) == (1, "GTV_Mass_PET", 1)
        expected = read_label_map(need(external_data, f"pet_sts/sts_images_flat/nifti/{row['patient_id']}_PET_mask.nii.gz"))
        assert read_label_map(m.file).voxel_count() == expected.voxel_count()
    factors = json.loads((out / "dataset.provenance.json").read_text())["suv_factors"]
    assert {round(f["factor"], 6) for f in factors.values()} == {1.0}  # Units GML: pixels are SUVbw already


@pytest.mark.slow
def test_roi2mask_suv_on_lu177_time_points(external_data, tmp_path):
    root = need(external_data, "spect_lu177")
    out = tmp_path / "out"
    assert main(["roi2mask", str(root), str(out), "--suv", "bw"]) == 0
    table = read_dataset(out / "dataset.csv", need_masks=True).sort_values("time_point")
    assert list(table["time_point"]) == ["TP1", "TP2"] and set(table["tracer"]) == {"177 Lutetium"}
    assert list(table["acquisition_datetime"].str[:10]) == ["2018-11-15", "2018-11-16"]
    ds = pydicom.dcmread(next((root / "SCAN_001" / "image").glob("*.dcm")), stop_before_pixels=True)
    # DecayCorrection ADMIN: SUVbw = Bq/ml x weight (g) / injected activity (Bq), no decay term
    factor = float(ds.PatientWeight) * 1000 / float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose)
    assert float(table.iloc[0]["suv_factor"]) == pytest.approx(factor, rel=1e-9)
    for _, row in table.iterrows():
        assert row["units"] == "g/ml" and row["reader"] == "Avery"
        assert [(m.segment, m.structure) for m in row["masks"]] == [(1, "lesion1 liver R lobe"), (2, "lesion2 liver L lateral")]
