"""Polygon ROIs: pixel-centre rasterisation, tracing masks back to polygons, and the nmkit-polygons/1 JSON format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nmkit.errors import InputError
from nmkit.io.image import Image, Mask
from nmkit.io.polygons import fill_polygons, mask_to_polygons, read_polygons, write_polygons

DATA = Path(__file__).parent / "data" / "roi"


def circle(cx: float, cy: float, r: float, n: int = 720) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def planar_nm_image(oblique: bool = False) -> Image:
    """A 128x128 planar NM view with 2.4 mm pixels (a 2D image in a patient plane)."""
    if oblique:
        th = np.deg2rad(25)
        direction = (np.cos(th), -np.sin(th), np.sin(th), np.cos(th))
    else:
        direction = None
    counts = np.random.default_rng(0).poisson(5.0, size=(128, 128)).astype(np.float32)
    return Image(counts, spacing=(2.4, 2.4), origin=(-150.0, -140.0), direction=direction, modality="NM", units="counts")


def spect_volume(oblique: bool = False) -> Image:
    if oblique:
        th = np.deg2rad(15)
        rot = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
    else:
        rot = np.eye(3)
    arr = np.zeros((10, 64, 64), np.float32)
    return Image(arr, spacing=(4.42, 4.42, 4.42), origin=(-140.0, -150.0, 30.0), direction=tuple(rot.ravel()), modality="NM")


@pytest.mark.parametrize("radius", [6.3, 15.0, 40.7])
def test_circle_area_is_pi_r_squared(radius):
    mask = fill_polygons([circle(63.2, 60.9, radius)], (128, 128))
    assert mask.sum() == pytest.approx(np.pi * radius**2, rel=0.02)
    # every pixel whose centre is inside (distance < r) and no other, away from the ambiguous rim
    j, i = np.mgrid[:128, :128]
    d = np.hypot(i - 63.2, j - 60.9)
    assert mask[d < radius - 0.05].all() and not mask[d > radius + 0.05].any()


def test_even_odd_holes_and_half_open_pixel_centre_rule():
    outer = np.array([[2, 2], [10, 2], [10, 8], [2, 8]], float)  # corners on pixel centres
    hole = np.array([[4, 4], [7, 4], [7, 6], [4, 6]], float)
    m = fill_polygons([outer, hole], (12, 14))
    # centres with 2 <= x < 10 and 2 <= y < 8, minus 4 <= x < 7 and 4 <= y < 6
    assert m.sum() == 8 * 6 - 3 * 2
    assert not m[4:6, 4:7].any() and m[2, 2] and not m[8, 10]
    # two polygons sharing an edge never both claim a pixel: they tile the plane
    left = np.array([[0, 0], [5.5, 0], [5.5, 9.5], [0, 9.5]])
    right = np.array([[5.5, 0], [11, 0], [11, 9.5], [5.5, 9.5]])
    a, b = fill_polygons([left], (12, 14)), fill_polygons([right], (12, 14))
    assert not (a & b).any() and (a | b).sum() == 10 * 11
    # clipped at the grid border without wrapping
    assert fill_polygons([np.array([[-5, -5], [3, -5], [3, 3], [-5, 3]], float)], (6, 6)).sum() == 9


def test_traced_polygons_fill_back_to_the_same_mask():
    rng = np.random.default_rng(7)
    for _ in range(3):
        mask = rng.random((40, 50)) > 0.55  # many islands, holes and diagonal touches
        np.testing.assert_array_equal(fill_polygons(mask_to_polygons(mask), mask.shape), mask)
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_example_file_from_a_workstation(tmp_path):
    volume = Image(np.zeros((2, 24, 24), np.float32), spacing=(3.0, 3.0, 3.0))
    mask = read_polygons(DATA / "planar_two_readers.json", volume)
    assert mask.labels == {1: "thyroid", 2: "background"} and mask.meta["reader"] == "R1"
    thyroid = mask.binary("thyroid")
    assert thyroid[0].sum() == 60 - 6  # rectangle minus its hole (even-odd)
    assert thyroid[1].sum() == 6
    assert mask.voxel_count("background") == 12
    only = read_polygons(DATA / "planar_two_readers.json", volume, roi_names=["BACKGROUND"])
    assert only.labels == {2: "background"}  # structures keep their number (position of first appearance) when selected


@pytest.mark.parametrize("oblique", [False, True])
def test_pixel_and_patient_coordinates_give_identical_masks_2d(tmp_path, oblique):
    image = planar_nm_image(oblique)
    poly = circle(50.3, 70.8, 21.4)
    pixel_doc = {"format": "nmkit-polygons/1", "image": "ant.dcm", "coordinates": "pixel", "reader": "R2",
                 "rois": [{"name": "kidney", "frame": 0, "points": poly.tolist()}]}
    patient_pts = image.index_to_physical(poly)
    patient_doc = dict(pixel_doc, coordinates="patient",
                       rois=[{"name": "kidney", "frame": 0, "points": np.column_stack([patient_pts, np.zeros(len(poly))]).tolist()}])
    (tmp_path / "px.json").write_text(json.dumps(pixel_doc))
    (tmp_path / "mm.json").write_text(json.dumps(patient_doc))
    a = read_polygons(tmp_path / "px.json", image)
    b = read_polygons(tmp_path / "mm.json", image)
    assert a.voxel_count() > 0
    np.testing.assert_array_equal(a.array, b.array)
    assert a.volume_ml() * 1000 == pytest.approx(np.pi * (21.4 * 2.4) ** 2, rel=0.02)  # area in mm^2
    for coordinates in ("pixel", "patient"):  # a 2D mask written and read back is unchanged
        back = read_polygons(write_polygons(a, tmp_path / f"back_{coordinates}.json", coordinates=coordinates), image)
        np.testing.assert_array_equal(back.array, a.array)


@pytest.mark.parametrize("oblique", [False, True])
def test_pixel_and_patient_coordinates_identical_on_a_frame_of_a_volume(tmp_path, oblique):
    image = spect_volume(oblique)
    poly = circle(30.0, 33.5, 9.2)
    frame = 6
    mm = image.index_to_physical(np.column_stack([poly, np.full(len(poly), float(frame))]))
    for name, coords, pts in (("px", "pixel", poly), ("mm", "patient", mm)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"format": "nmkit-polygons/1", "image": "x", "coordinates": coords,
                                                          "rois": [{"name": "lesion", "frame": frame, "points": pts.tolist()}]}))
    a, b = read_polygons(tmp_path / "px.json", image), read_polygons(tmp_path / "mm.json", image)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.binary()[frame].sum() == a.voxel_count() > 0
    # patient points that are not on the stated frame are refused
    wrong = json.loads((tmp_path / "mm.json").read_text())
    wrong["rois"][0]["frame"] = 2
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(InputError, match="not in the plane of frame 2"):
        read_polygons(tmp_path / "wrong.json", image)


@pytest.mark.parametrize("coordinates", ["pixel", "patient"])
def test_write_then_read_polygons_round_trip(tmp_path, coordinates):
    image = spect_volume(oblique=True)
    k, j, i = np.mgrid[:10, :64, :64]
    liver = ((i - 25) ** 2 / 14**2 + (j - 30) ** 2 / 10**2 + (k - 5) ** 2 / 4**2) <= 1
    lesion = (i - 40) ** 2 + (j - 40) ** 2 + (k - 4) ** 2 <= 9
    ring = liver & ~((i - 25) ** 2 + (j - 30) ** 2 <= 16)  # a hole in some slices
    mask = Mask.like(image, np.stack([ring, lesion]), labels={1: "liver", 2: "lesion"}, overlapping=True)
    path = write_polygons(mask, tmp_path / "rois.json", image="series-1", coordinates=coordinates, reader="R1")
    doc = json.loads(path.read_text())
    assert doc["format"] == "nmkit-polygons/1" and doc["coordinates"] == coordinates
    assert len(doc["rois"][0]["points"][0]) == (2 if coordinates == "pixel" else 3)
    back = read_polygons(path, image)
    assert back.labels == {1: "liver", 2: "lesion"}
    np.testing.assert_array_equal(back.array, mask.array)


@pytest.mark.parametrize("content, problem", [
    ("not json", "not a readable JSON"),
    ('{"format": "other/1"}', "not an nmkit-polygons/1"),
    ('{"format": "nmkit-polygons/1", "coordinates": "cm", "rois": []}', "'coordinates'"),
    ('{"format": "nmkit-polygons/1", "coordinates": "pixel", "rois": [{"name": "a", "points": [[1, 2], [3, 4]]}]}', "at least 3"),
    ('{"format": "nmkit-polygons/1", "coordinates": "pixel", "rois": [{"name": "a", "frame": 19, "points": [[1, 2], [3, 4], [5, 1]]}]}', "frame 19"),
    ('{"format": "nmkit-polygons/1", "coordinates": "patient", "rois": [{"name": "a", "points": [[1, 2], [3, 4], [5, 1]]}]}', "x, y, z"),
])
def test_bad_polygon_files_fail_with_the_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "rois.json"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_polygons(path, spect_volume())
    assert str(path) in str(err.value) and problem in str(err.value)
