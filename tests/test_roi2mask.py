"""`load_rois` dispatch (RTSTRUCT, SEG, polygons, label maps with name sidecars) and `nmkit roi2mask` on folders."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import need
from nmkit.cli import main
from nmkit.errors import InputError
from nmkit.io.dicom_series import stack_slices
from nmkit.io.image import Mask
from nmkit.io.polygons import write_polygons
from nmkit.io.roi import detect_roi_kind, load_rois, read_named_label_map
from nmkit.io.rtstruct import write_rtstruct
from nmkit.io.seg import write_seg
from nmkit.io.volume_files import read_label_map, read_volume, write_volume
from test_io_rtstruct import dice, synthetic_ct_series


@pytest.fixture(autouse=True)
def _quiet_highdicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_roi2mask_on_a_copy_of_the_ibsi_ct_phantom(external_data, tmp_path):
    root = need(external_data, "ibsi/ibsi_1_ct_radiomics_phantom")
    in_dir = tmp_path / "in"
    shutil.copytree(root / "dicom", in_dir)  # a temporary copy: non-commercial data never enters the repo
    out = tmp_path / "out"
    assert main(["roi2mask", str(in_dir), str(out)]) == 0
    rows = _read_csv(out / "roi_summary.csv")
    assert [r["roi_name"] for r in rows] == ["GTV-1"]
    expected = read_label_map(root / "nifti" / "mask" / "mask.nii.gz")
    mask = read_label_map(rows[0]["mask_file"])
    assert mask.same_grid(expected)
    assert dice(mask.binary(), expected.binary()) >= 0.99
    assert int(rows[0]["voxels"]) == mask.voxel_count()
    assert float(rows[0]["volume_ml"]) == pytest.approx(mask.volume_ml(), rel=1e-4)
    written = read_volume(rows[0]["image_file"])
    assert written.same_grid(read_volume(root / "nifti" / "image" / "phantom.nii.gz"))
    summary = json.loads((out / "roi_summary.json").read_text())
    assert summary["failed"] == [] and summary["provenance"]["inputs"] == [rows[0]["source_file"]]
    assert summary["provenance"]["config"]["command"] == "roi2mask"


def test_roi2mask_converts_every_format_and_skips_a_broken_file(tmp_path, caplog):
    in_dir = tmp_path / "study"
    files, sphere = synthetic_ct_series(in_dir / "ct", shape=(8, 32, 40), spacing=(1.0, 1.0, 2.0))
    image, _ = stack_slices(files)
    box = np.zeros_like(sphere)
    box[1:4, 4:12, 5:15] = True
    write_rtstruct(Mask.like(image, np.stack([sphere, box]), labels={1: "lesion", 2: "muscle"}, overlapping=True), image,
                   in_dir / "rois" / "rs.dcm")
    write_seg(Mask.like(image, box.astype(np.uint8), labels={1: "box"}), image, in_dir / "rois" / "seg.dcm")
    # a polygon drawn on one slice, referenced by its SOPInstanceUID
    k = 4
    sop = image.meta["SOPInstanceUIDs"][k]
    planar = Mask(sphere[k : k + 1], spacing=image.spacing, origin=image.index_to_physical([0, 0, k]), direction=image.direction,
                  labels={1: "sphere_slice"})
    write_polygons(planar, in_dir / "rois" / "reader1.json", image=sop, reader="R1")
    broken = in_dir / "rois" / "broken_rs.dcm"
    data = (in_dir / "rois" / "rs.dcm").read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated mid-contour
    out = tmp_path / "out"
    assert main(["roi2mask", str(in_dir), str(out)]) == 0
    rows = {r["roi_name"]: r for r in _read_csv(out / "roi_summary.csv")}
    assert set(rows) == {"lesion", "muscle", "box", "sphere_slice"}
    assert int(rows["lesion"]["voxels"]) == int(sphere.sum())
    assert int(rows["box"]["voxels"]) == int(box.sum()) == int(rows["muscle"]["voxels"])
    assert int(rows["sphere_slice"]["voxels"]) == int(sphere[k].sum())
    assert rows["lesion"]["series_uid"] == image.meta["SeriesInstanceUID"]
    np.testing.assert_array_equal(read_label_map(rows["lesion"]["mask_file"]).binary(), sphere)
    summary = json.loads((out / "roi_summary.json").read_text())
    assert [f["file"] for f in summary["failed"]] == [str(broken)]
    assert str(broken) in summary["failed"][0]["error"]


def test_roi2mask_returns_error_code_when_nothing_converts(tmp_path):
    in_dir = tmp_path / "in"
    files, _ = synthetic_ct_series(in_dir / "ct", shape=(3, 8, 8))
    (in_dir / "orphan.json").write_text(json.dumps({"format": "nmkit-polygons/1", "image": "1.2.3.4", "coordinates": "pixel",
                                                    "rois": [{"name": "x", "frame": 0, "points": [[1, 1], [5, 1], [5, 5]]}]}))
    assert main(["roi2mask", str(in_dir), str(tmp_path / "out")]) == 1


def test_load_rois_dispatches_and_label_map_names_come_from_sidecar(tmp_path):
    files, sphere = synthetic_ct_series(tmp_path / "ct", shape=(6, 24, 28), spacing=(1.0, 1.0, 2.0))
    image, _ = stack_slices(files)
    labels = Mask.like(image, np.where(sphere, 1, 0).astype(np.uint8) + np.pad(np.ones((1, 4, 4), np.uint8) * 2, ((0, 5), (0, 20), (0, 24))),
                       labels={1: "a", 2: "b"})
    path = write_volume(labels, tmp_path / "labels.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen", "3": "kidney"}))
    assert detect_roi_kind(path) == "labelmap"
    named = read_named_label_map(path)
    assert named.labels == {1: "liver", 2: "spleen", 3: "kidney"}
    assert named.voxel_count("spleen") == 16
    on_ref = load_rois(path, image, roi_names=["Liver"])
    assert on_ref.labels == {1: "liver"} and on_ref.same_grid(image)
    np.testing.assert_array_equal(on_ref.binary("liver"), sphere)
    # a label map on a finer grid is resampled (nearest neighbour) onto the reference grid
    from nmkit.io.image import Image, resample_to

    fine = Image(np.zeros((12, 48, 56), np.float32), spacing=(0.5, 0.5, 1.0),
                 origin=tuple(np.asarray(image.origin) - np.array([0.25, 0.25, 0.5])), direction=image.direction)
    fine_path = write_volume(resample_to(labels, fine), tmp_path / "fine.nii.gz")
    back = load_rois(fine_path, image)
    assert back.same_grid(image)
    assert dice(back.binary(1), sphere) > 0.95
    with pytest.raises(InputError, match="needs the reference image"):
        load_rois(write_rtstruct(Mask.like(image, sphere.astype(np.uint8)), image, tmp_path / "rs.dcm"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a supported ROI file"):
        load_rois(tmp_path / "notes.txt", image)
    (tmp_path / "bad.json").write_text('{"1": 5}')
    with pytest.raises(InputError, match="bad.json"):
        read_named_label_map(path, labels=tmp_path / "bad.json")


def test_roi2mask_finds_re_exported_series_by_frame_of_reference(external_data, tmp_path):
    # the STS RTSTRUCTs name a series UID the shipped (re-exported) PET images no longer carry; they share the frame of reference
    root = need(external_data, "pet_sts/sts_images/STS_002/PET/dicom")
    expected = read_label_map(need(external_data, "pet_sts/sts_images_flat/nifti/STS_002_PET_mask.nii.gz"))
    shutil.copytree(root, tmp_path / "in")
    out = tmp_path / "out"
    assert main(["roi2mask", str(tmp_path / "in"), str(out), "--roi", "GTV_Mass_PET"]) == 0
    rows = _read_csv(out / "roi_summary.csv")
    assert [r["roi_name"] for r in rows] == ["GTV_Mass_PET"]
    mask = read_label_map(rows[0]["mask_file"])
    assert mask.same_grid(expected)
    np.testing.assert_array_equal(mask.binary(), expected.binary())


def test_roi2mask_reads_the_thyroid_phantom_readers_polygons(tmp_path):
    """Polygon files name their image relative to the cohort root (rois/R1/x.json -> dicom/x/ANT.dcm)."""
    from nmkit.dataset import read_dataset
    from nmkit.phantoms.cohort import generate_cohort

    generate_cohort(tmp_path / "ph", n=1, seed=5, workers=1, progress=False)
    assert main(["roi2mask", str(tmp_path / "ph"), str(tmp_path / "out")]) == 0
    table = read_dataset(tmp_path / "out" / "dataset.csv", need_masks=True)
    refs = table.masks[0]
    assert sorted(m.reader for m in refs) == ["R1", "R2", "R3"]
    names = sorted(Path(m.file).name for m in refs if m.structure == "thyroid")
    assert names == ["thyroid.nii.gz", "thyroid__R2.nii.gz", "thyroid__R3.nii.gz"]
