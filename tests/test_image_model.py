"""The Image/Mask model: geometry round trips through SimpleITK and resampling in physical space."""

import numpy as np
import pytest

from nmkit.errors import GeometryError
from nmkit.io.image import Image, Mask, resample_to


def oblique_image() -> Image:
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    return Image(arr, spacing=(0.8, 1.2, 2.5), origin=(-10.0, 5.0, 30.0), direction=tuple(rot.ravel()), modality="CT", units="HU")


def test_sitk_round_trip_keeps_geometry_and_values():
    img = oblique_image()
    back = Image.from_sitk(img.to_sitk(), modality="CT")
    assert back.same_grid(img)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.size == (6, 5, 4)


def test_index_physical_round_trip_matches_sitk():
    img = oblique_image()
    sitk_img = img.to_sitk()
    idx = np.array([[1, 2, 3], [5, 0, 2]], float)
    phys = img.index_to_physical(idx)
    for i, p in zip(idx, phys):
        np.testing.assert_allclose(p, sitk_img.TransformContinuousIndexToPhysicalPoint(tuple(i)), atol=1e-9)
    np.testing.assert_allclose(img.physical_to_index(phys), idx, atol=1e-9)


def test_resample_identity_grid_is_exact_and_shift_moves_content():
    img = oblique_image()
    same = resample_to(img, img, "linear")
    np.testing.assert_allclose(same.array, img.array, atol=1e-4)
    # A reference grid shifted by exactly one voxel along x (in physical space) sees the next column.
    shift = img.direction_matrix[:, 0] * img.spacing[0]
    ref = Image(np.zeros_like(img.array), img.spacing, tuple(np.asarray(img.origin) + shift), img.direction)
    moved = resample_to(img, ref, "nearest")
    np.testing.assert_array_equal(moved.array[:, :, :-1], img.array[:, :, 1:])
    assert np.all(moved.array[:, :, -1] == 0)


def test_mask_resample_keeps_labels_and_binary_layers():
    img = oblique_image()
    lab = np.zeros(img.spatial_shape, np.uint8)
    lab[1:3, 1:4, 2:5] = 2
    mask = Mask.like(img, lab, labels={2: "tumour"})
    fine = Image(np.zeros((8, 10, 12), np.float32), spacing=(0.4, 0.6, 1.25), origin=img.origin, direction=img.direction)
    up = resample_to(mask, fine)
    assert isinstance(up, Mask) and up.labels == {2: "tumour"}
    # Volume is preserved by nearest-neighbour upsampling by an integer factor (within one voxel layer).
    assert abs(up.volume_ml("tumour") - mask.volume_ml("tumour")) / mask.volume_ml("tumour") < 0.35


def test_bad_geometry_is_refused():
    with pytest.raises(GeometryError):
        Image(np.zeros((3, 3)), spacing=(1.0, -1.0))
    img = oblique_image()
    with pytest.raises(GeometryError):
        Mask.like(img, np.zeros((2, 2, 2), np.uint8))


def test_input_errors_survive_pickling_across_process_pools():
    import pickle

    from nmkit.errors import DicomReadError, MissingTagError

    err = pickle.loads(pickle.dumps(MissingTagError("/data/pt/1.dcm", ["PatientWeight", "RadionuclideTotalDose"], "SUV")))
    assert isinstance(err, MissingTagError) and err.tags == ["PatientWeight", "RadionuclideTotalDose"]
    assert "/data/pt/1.dcm" in str(err) and "PatientWeight" in str(err)
    err2 = pickle.loads(pickle.dumps(DicomReadError("/x.dcm", "no pixel data")))
    assert type(err2) is DicomReadError and err2.path == "/x.dcm" and err2.problem == "no pixel data"
