"""DICOM SEG: mask -> SEG -> mask round trips on a synthetic CT series, and the SEG variants of the corpus."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import need
from nmkit.errors import DicomReadError, GeometryError, InputError
from nmkit.io.dicom_series import read_dataset, stack_slices
from nmkit.io.image import Mask
from nmkit.io.seg import SEG_SOP_CLASSES, read_seg, read_seg_fractions, write_seg
from nmkit.io.volume_files import read_label_map
from test_io_rtstruct import synthetic_ct_series

DCMQI = "dicom_corpus/dcmqi/data/segmentations"
HIGHDICOM = "dicom_corpus/highdicom/data/test_files"


@pytest.fixture(autouse=True)
def _quiet_highdicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture()
def ct(tmp_path):
    files, sphere = synthetic_ct_series(tmp_path / "ct")
    image, _ = stack_slices(files)
    box = np.zeros_like(sphere)
    box[2:9, 5:20, 10:30] = True  # overlaps the sphere
    return image, sphere, box


def test_binary_overlapping_seg_round_trip_is_identical(ct, tmp_path):
    image, sphere, box = ct
    mask = Mask.like(image, np.stack([sphere, box]), labels={1: "sphere", 2: "box"}, overlapping=True)
    out = write_seg(mask, image, tmp_path / "seg.dcm", algorithm_name="unit-test", algorithm_version="1.0")
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == image.meta["FrameOfReferenceUID"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == image.meta["SeriesInstanceUID"]
    assert ds.SegmentSequence[0].SegmentAlgorithmName == "unit-test"
    back = read_seg(out, image)
    assert back.labels == {1: "sphere", 2: "box"} and back.same_grid(image)
    np.testing.assert_array_equal(back.array, mask.array)
    # without the reference the SEG's own geometry is used: same physical voxels, cropped to non-empty slices
    own = read_seg(out)
    first = int(np.nonzero(mask.binary().any(axis=(1, 2)))[0][0])
    np.testing.assert_allclose(own.origin, image.index_to_physical([0, 0, first]), atol=1e-3)
    np.testing.assert_array_equal(own.binary("box"), box[first:first + own.spatial_shape[0]])


def test_labelmap_seg_round_trip_and_source_datasets(ct, tmp_path):
    image, sphere, box = ct
    labels = np.where(sphere, 1, np.where(box, 2, 0)).astype(np.uint8)
    mask = Mask.like(image, labels, labels={1: "sphere", 2: "shell"})
    sources = [read_dataset(f) for f in image.meta["source_files"]]
    out = write_seg(mask, sources, tmp_path / "labelmap.dcm", labelmap=True, algorithm_name=None)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    back = read_seg(out, image)
    assert back.meta["segmentation_type"] == "LABELMAP"
    for name in ("sphere", "shell"):
        np.testing.assert_array_equal(back.binary(name), mask.binary(name))
    overlapping = Mask.like(image, np.stack([sphere, box]), labels={1: "a", 2: "b"}, overlapping=True)
    with pytest.raises(InputError, match="overlapping"):
        write_seg(overlapping, image, tmp_path / "bad.dcm", labelmap=True)


def test_write_seg_refuses_a_mask_off_the_reference_grid(ct, tmp_path):
    image, sphere, _ = ct
    shifted = Mask(sphere, spacing=image.spacing, origin=tuple(np.add(image.origin, (5.0, 0, 0))), direction=image.direction)
    with pytest.raises(GeometryError):
        write_seg(shifted, image, tmp_path / "x.dcm")


def test_fractional_seg_threshold_and_fractions(external_data):
    path = need(external_data, f"{HIGHDICOM}/seg_image_ct_true_fractional.dcm")
    fractions = read_seg_fractions(path)
    assert fractions.meta["fractional_type"] == "PROBABILITY"
    values = np.unique(fractions.array)
    assert values.min() == 0 and values.max() <= 1 and len(values) > 2  # genuinely fractional
    default = read_seg(path)
    np.testing.assert_array_equal(default.binary(1), fractions.array[0] >= 0.5)
    assert read_seg(path, threshold=0.1).voxel_count() > default.voxel_count() > read_seg(path, threshold=0.9).voxel_count()


def test_dcmqi_segs_on_their_ct_match_the_nrrd_label_maps(external_data):
    root = need(external_data, DCMQI)
    for case in ("23x38x3", "24x38x3"):
        image, _ = stack_slices(sorted((root / case / "image").iterdir()))
        mask = read_seg(root / case / "seg" / "label.seg", image)
        expected = read_label_map(root / case / "nrrd" / "label.nrrd")
        assert mask.same_grid(expected) and mask.voxel_count() > 0
        np.testing.assert_array_equal(mask.binary(), expected.binary())
        own = read_seg(root / case / "seg" / "label.seg")  # the SEG's own geometry is the CT grid here
        assert own.same_grid(image)
    image, _ = stack_slices(sorted((root / "ct-3slice").iterdir()))
    overlaps = read_seg(root / "partial_overlaps.dcm", image)
    assert len(overlaps.labels) == 5
    assert (overlaps.array.sum(axis=0) > 1).any()  # the segments really overlap
    for part in (1, 2, 3):  # dcmqi's NRRDs each hold non-overlapping segments as labels
        nrrd = read_label_map(root / f"partial_overlaps-{part}.nrrd")
        assert nrrd.same_grid(image)
        for value in nrrd.labels:
            np.testing.assert_array_equal(overlaps.binary(value), nrrd.array == value)


def _corpus_segs(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() in {".csv", ".json", ".md", ".txt", ".nrrd", ".jpeg", ".png"}:
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except Exception:
            continue
        if str(getattr(ds, "SOPClassUID", "")) in SEG_SOP_CLASSES:
            out.append(path)
    return out


# well-formed SEGs in patient space and their number of segments
EXPECTED_SEGMENTS = {
    "dcmqi/data/segmentations/liver.dcm": 1,
    "dcmqi/data/segmentations/partial_overlaps.dcm": 5,
    "dcmqi/data/segmentations/sparse-labelmap-noppv.dcm": 1,
    "dcmqi/data/segmentations/sparse-labelmap-ppv5.dcm": 1,
    "dcmqi/data/sr-example/seg.dcm": 1,
    "highdicom/data/test_files/seg_image_ct_binary.dcm": 1,
    "highdicom/data/test_files/seg_image_ct_binary_fractional.dcm": 1,
    "highdicom/data/test_files/seg_image_ct_binary_overlap.dcm": 2,
    "highdicom/data/test_files/seg_image_ct_true_fractional.dcm": 1,
    "pydicom_data/data_store/data/liver.dcm": 1,
    "pydicom_data/data_store/data/liver_j2k.dcm": 1,
    "pydicom_data/data_store/data/liver_nonbyte_aligned.dcm": 1,
}


def test_every_corpus_seg_reads_or_fails_with_a_named_error(external_data):
    root = need(external_data, "dicom_corpus")
    segs = _corpus_segs(root)
    assert len(segs) >= 20
    read, failed = {}, {}
    for path in segs:
        rel = path.relative_to(root).as_posix()
        try:
            mask = read_seg(path)
        except DicomReadError as exc:
            assert str(path) in str(exc) and exc.problem  # names the file and says what is wrong
            failed[rel] = exc.problem
            continue
        assert mask.overlapping and mask.array.shape[0] == len(mask.labels) and mask.voxel_count() > 0
        read[rel] = len(mask.labels)
    for rel, count in EXPECTED_SEGMENTS.items():
        assert read.get(rel) == count, f"{rel}: {failed.get(rel, read.get(rel))}"
    # slide microscopy SEGs have no patient-space volume: refused with a clear reason
    assert any("slide" in problem for problem in failed.values())
    assert len(read) >= len(EXPECTED_SEGMENTS)
