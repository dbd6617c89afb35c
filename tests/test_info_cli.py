"""`nmkit info` on the real data: NRRD/NIfTI folders, mixed folders, NM TOMO breakdown, SEG segments, SUV, quiet logs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from nmkit.cli import main

from conftest import need


def _info_json(capsys, *args: str) -> list[dict]:
    assert main(["info", *args, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_nrrd_folder_is_described_with_size_spacing_and_range(external_data: Path, capsys):
    import SimpleITK as sitk

    folder = need(external_data, "mr_pyradiomics")
    records = {Path(r["path"]).name: r for r in _info_json(capsys, str(folder))}
    nrrd = sorted(p.name for p in folder.rglob("*.nrrd"))
    assert sorted(records) == nrrd and len(nrrd) == 10  # every NRRD, nothing else (csv/npy are not images)
    ref = sitk.ReadImage(str(folder / "data" / "brain1_image.nrrd"))
    brain = records["brain1_image.nrrd"]
    assert brain["status"] == "ok" and brain["size"] == list(ref.GetSize())
    assert brain["spacing"] == pytest.approx(ref.GetSpacing(), abs=1e-4)
    arr = sitk.GetArrayFromImage(ref)
    assert brain["value_range"] == [float(arr.min()), float(arr.max())]
    assert records["brain1_label.nrrd"]["distinct_values"] == [0, 1]
    # the table says it too, with units; the old "no DICOM series found" is gone
    assert main(["info", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "size 256x256x25  spacing 0.7812x0.7812x6.5 mm" in out and "10 NIfTI/NRRD file(s)" in out


def test_mixed_folder_lists_dicom_and_nifti_with_suv(external_data: Path, capsys):
    folder = need(external_data, "pet_sts")
    records = _info_json(capsys, str(folder))
    kinds = Counter(r["kind"] for r in records)
    assert kinds == {"dicom": 6, "volume": 18}
    pet = next(r for r in records if r["description"] == "IBSI_1_STS_001_PET_image")
    files = sorted((folder / "sts_images" / "STS_001" / "PET" / "dicom" / "image").glob("*.dcm"))
    raw = [pydicom.dcmread(f) for f in files]
    assert {str(d.Units) for d in raw} == {"GML"}  # stored as SUVbw already
    values = np.concatenate([(d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)).ravel() for d in raw])
    assert pet["units"] == "g/ml" and pet["suv"]["max_g_per_ml"] == pytest.approx(values.max(), rel=1e-4)
    assert pet["suv"]["mean_g_per_ml"] == pytest.approx(values.mean(), rel=1e-3)
    nifti = next(r for r in records if r["description"].endswith("STS_001_PET_image.nii.gz"))
    assert nifti["value_range"][1] == pytest.approx(values.max(), rel=1e-4)  # the NIfTI copy holds the same SUV
    rs = next(r for r in records if r["description"] == "IBSI_1_STS_001_PET_mask")
    assert rs["structures"] == [{"number": 1, "name": "GTV_Mass_PET", "contours": 32}]


def test_bqml_pet_gets_suvbw_from_its_tags(external_data: Path, capsys):
    folder = need(external_data, "spect_lu177/SCAN_001/image")
    (pet,) = _info_json(capsys, str(folder))
    raw = [pydicom.dcmread(f) for f in sorted(folder.rglob("*.dcm"))]
    ref = raw[0]
    assert ref.Units == "BQML" and ref.DecayCorrection == "ADMIN"  # decay-corrected to injection: SUV = C * W / D
    c_max = max(float((d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)).max()) for d in raw)
    dose = float(ref.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose)
    suv_max = c_max * float(ref.PatientWeight) * 1000.0 / dose
    assert pet["suv"]["max_g_per_ml"] == pytest.approx(suv_max, rel=1e-4)
    assert pet["stored_units"] == "Bq/ml" and pet["stored_value_range"][1] == pytest.approx(c_max, rel=1e-4)


def test_nm_tomo_projections_show_their_breakdown(external_data: Path, capsys):
    folder = need(external_data, "nm_tomo_projections")
    records = [r for r in _info_json(capsys, str(folder)) if r["modality"] == "NM"]
    assert len(records) == 2
    for r in records:
        ds = pydicom.dcmread(r["path"], stop_before_pixels=True)
        distinct = {kw: len(set(int(v) for v in ds[kw].value)) for kw in
                    ("DetectorVector", "EnergyWindowVector", "RotationVector", "AngularViewVector")}
        assert r["nm_breakdown"] == {"detectors": distinct["DetectorVector"], "energy_windows": distinct["EnergyWindowVector"],
                                     "rotations": distinct["RotationVector"], "views": distinct["AngularViewVector"]}
        assert r["nm_breakdown"] == {"detectors": 1, "energy_windows": 6, "rotations": 1, "views": 60}
        assert r["nm_frames"] == int(ds.NumberOfFrames) == 1 * 6 * 1 * 60
        assert len(r["energy_windows"]) == int(ds.NumberOfEnergyWindows) == 6
        assert r["rotations"][0]["AngularStep"] == 6.0 and r["rotations"][0]["ScanArc"] == 360.0
    assert sorted((r["bed"], r["beds"]) for r in records) == [(1, 2), (2, 2)]
    assert main(["info", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "TOMO bed 1 of 2: 1 detector x 6 energy windows x 1 rotation x 60 views = 360 frame(s)" in out
    assert "Lu177_EM 187.2-228.8 keV" in out


def test_seg_lists_segments_with_voxels(external_data: Path, capsys):
    path = need(external_data, "dicom_corpus/highdicom/data/test_files/seg_image_ct_binary_overlap.dcm")
    (record,) = _info_json(capsys, str(path))
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), -1)
    segment_of_frame = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in ds.PerFrameFunctionalGroupsSequence]
    expected = [{"number": int(s.SegmentNumber), "label": str(s.SegmentLabel),
                 "voxels": int(sum(np.count_nonzero(fr) for fr, k in zip(frames, segment_of_frame) if k == s.SegmentNumber))}
                for s in ds.SegmentSequence]
    assert record["segments"] == expected
    assert [s["voxels"] for s in expected] == [64, 16] and [s["label"] for s in expected] == ["first segment", "second segment"]
    assert main(["info", str(path), "--no-progress"]) == 0
    assert "segment 2: 'second segment' 16 voxels" in capsys.readouterr().out


def test_info_on_the_corpus_is_quiet_and_counts_files(external_data: Path):
    folder = need(external_data, "dicom_corpus")
    done = subprocess.run([sys.executable, "-m", "nmkit.cli", "info", str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr.splitlines()
    assert len(err) < 60  # was 1556 lines (each pydicom warning twice, the folder rescanned per series)
    assert not any("UserWarning" in line or "warn_and_log" in line for line in err)
    warned = [line for line in err if "DICOM warning (" in line]
    firsts = [line.split("DICOM warning (", 1)[1].split(")", 1)[0].split("first ")[-1] for line in warned]
    assert warned and len(firsts) == len(set(firsts))  # at most one line per file
    summary = done.stdout.strip().splitlines()[-1]
    assert "17 NIfTI/NRRD file(s)" in summary and "unreadable DICOM file(s)" in summary and "other file(s) not read" in summary
    assert "segment 1: 'first segment'" in done.stdout  # the SEG files list their segments


def test_info_errors_are_one_line(tmp_path: Path, external_data: Path, capsys):
    assert main(["info", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "no DICOM series or NIfTI/NRRD image" in err[0]
    readme = need(external_data, "README.md")
    assert main(["info", str(readme)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "README.md" in err[0]


def test_info_counts_the_voxels_of_a_single_frame_seg(tmp_path, capsys):
    """The server's SEG of a planar image has one frame whose segment is named in the shared functional groups."""
    import numpy as np
    import pydicom

    from nmkit.cli import main as cli_main
    from nmkit.io.image import Mask
    from nmkit.io.reader import read_image
    from nmkit.phantoms.cohort import generate_cohort
    from nmkit.serve.outputs import ModelTag, make_seg

    generate_cohort(tmp_path / "ph", n=1, seed=3, workers=1, progress=False)
    dcm = tmp_path / "ph" / "dicom" / "case00000" / "ANT.dcm"
    image = read_image(dcm)
    labels = np.zeros(image.array.shape, np.uint8)
    labels[..., 20:40, 30:41] = 1
    make_seg(Mask.like(image, labels, labels={1: "thyroid"}), image, [pydicom.dcmread(dcm)], tmp_path / "seg.dcm",
             ModelTag(name="t", version="1"), "job")
    assert cli_main(["info", str(tmp_path / "seg.dcm")]) == 0
    assert "segment 1: 'thyroid' 220 voxels" in capsys.readouterr().out
