"""Result objects for a 3D series (PET slices): SEG referencing every slice, SR volumes/SUV, overlay slice."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from nmkit.io.image import Image, Mask
from nmkit.phantoms.spect_dicom import write_pt_series
from nmkit.serve.outputs import ModelTag, make_overlay, make_seg, make_sr, measurements, output_uid, overlay_rgb
from nmkit.serve.worker import read_series


@pytest.fixture
def pet_series(tmp_path):
    z, y, x = np.mgrid[:12, :32, :32]
    hot = (z - 6) ** 2 / 9 + ((y - 16) ** 2 + (x - 14) ** 2) / 36 <= 1
    activity = np.where(hot, 20000.0, 2000.0)  # Bq/ml
    img = Image(activity, spacing=(4.0, 4.0, 3.0), origin=(-64.0, -64.0, -20.0), modality="PT", units="BQML")
    common = {"PatientName": "Phantom^PET", "PatientID": "PET1", "StudyInstanceUID": pydicom.uid.generate_uid(), "StudyDate": "20240506",
              "StudyTime": "090000", "SeriesDate": "20240506", "SeriesTime": "100000", "AcquisitionDate": "20240506",
              "AcquisitionTime": "100000", "FrameOfReferenceUID": pydicom.uid.generate_uid(), "PatientWeight": 70.0, "PatientSex": "F",
              "PatientBirthDate": "19600101", "ReferringPhysicianName": "", "StudyID": "1", "AccessionNumber": ""}
    files = write_pt_series(img, tmp_path / "pt", common, pydicom.uid.generate_uid(), "PET test", 3, 370.0)
    return files, hot


def test_outputs_for_a_volume(pet_series, tmp_path):
    files, hot = pet_series
    image, datasets = read_series([str(f) for f in files])
    assert image.ndim_spatial == 3 and image.spatial_shape == (12, 32, 32) and len(datasets) == 12
    mask = Mask.like(image, hot.astype(np.uint8), labels={1: "lesion"})
    model = ModelTag("lesions", "3.1")
    seg = make_seg(mask, image, datasets, tmp_path / "seg.dcm", model, "job-1")
    assert seg.SOPInstanceUID == output_uid("job-1", "3.1", "seg", "sop")  # deterministic: a re-run makes the same object
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 12  # the whole source series
    assert seg.NumberOfFrames == int(hot.any(axis=(1, 2)).sum())
    rows = measurements(mask, image)
    assert rows[0]["volume_ml"] == pytest.approx(hot.sum() * 4 * 4 * 3 / 1000)
    assert image.units == "g/ml"  # PET is read as SUV (body weight) when its header allows
    bg = float(np.asarray(image.array)[~hot].mean())
    assert rows[0]["suv_mean"] == pytest.approx(10 * bg, rel=0.02) and rows[0]["suv_max"] >= rows[0]["suv_mean"]
    sr = make_sr(seg, datasets, rows, tmp_path / "sr.dcm", model, "job-1", planar=False)
    back = pydicom.dcmread(str(tmp_path / "sr.dcm"))
    assert back.SOPInstanceUID == sr.SOPInstanceUID == output_uid("job-1", "3.1", "sr", "sop")
    assert back.SeriesDescription == "AI SR lesions v3.1" and back.StudyInstanceUID == datasets[0].StudyInstanceUID
    text = str(back)
    assert "Volume" in text and "SUVbw" in text and str(seg.SOPInstanceUID) in text
    sc = make_overlay(mask, image, datasets, tmp_path / "sc.dcm", model, "job-1")
    assert sc.Rows == 32 and sc.PhotometricInterpretation == "RGB" and sc.StudyInstanceUID == datasets[0].StudyInstanceUID


def test_overlay_burns_contour_only():
    img = np.tile(np.linspace(0, 100, 20), (20, 1))
    lab = np.zeros((20, 20), int)
    lab[5:15, 5:15] = 1
    rgb = overlay_rgb(img, lab, [1])
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 40)
    assert red.sum() == 36 and red[5, 5] and not red[10, 10]  # a 10x10 square has a 36-pixel outline
    assert (rgb[10, 10] == rgb[10, 10, 0]).all()  # inside stays grey


def test_the_model_gets_pet_in_the_units_it_was_trained_on(pet_series, tmp_path):
    """One rule (segment.bundle.pet_suv_reading) for predict and the server: SUV for a model that normalises a channel
    as SUV or a foreign engine with a PET channel; as stored (Bq/ml) otherwise; SUV wanted but not computable -> the
    job fails with the missing tag named (never Bq/ml in place of SUV)."""
    from types import SimpleNamespace

    from nmkit.errors import InputError
    from nmkit.segment.bundle import pet_suv_reading
    from nmkit.serve.worker import as_model_reads

    def model(normalisation, channels=None, per_channel=None):
        return SimpleNamespace(preprocessing=SimpleNamespace(normalisation=normalisation, channel_normalisations=per_channel),
                               channels=channels)

    assert pet_suv_reading(model("suv")) == "bw"
    assert pet_suv_reading(model("zscore", ["PT", "CT"], ("suv", "window"))) == "bw"
    assert pet_suv_reading(model("engine", ["PET", "CT"])) == "bw"  # e.g. an autoPET nnU-Net results folder
    assert pet_suv_reading(model("engine", ["CT"])) is None
    assert pet_suv_reading(model("zscore")) is None

    files, hot = pet_series
    paths = [str(f) for f in files]
    image, _ = read_series(paths)
    assert image.units == "g/ml"
    stored = as_model_reads(model("zscore"), image, paths)
    assert stored.units != "g/ml" and float(np.asarray(stored.array)[hot].mean()) == pytest.approx(20000.0, rel=1e-3)
    assert as_model_reads(model("suv"), image, paths) is image
    no_weight = []
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PatientWeight
        out = tmp_path / "noweight" / f.name
        out.parent.mkdir(exist_ok=True)
        ds.save_as(out)
        no_weight.append(str(out))
    as_stored, _ = read_series(no_weight)
    assert as_stored.units != "g/ml"  # the SR then reports Bq/ml
    with pytest.raises(InputError, match="PatientWeight|weight"):
        as_model_reads(model("suv"), as_stored, no_weight)
