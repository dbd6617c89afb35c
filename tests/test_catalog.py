"""Catalog: incremental header index, ROI links, cohort queries, read-only SQL, CLI."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import need
from nmkit.catalog.index import index_folder
from nmkit.catalog.query import Catalog
from nmkit.cli import main
from nmkit.errors import InputError

PET_CLASS, CT_CLASS, NM_CLASS = "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.20"
RT_CLASS, SEG_CLASS = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.66.4"


def _write(path: Path, sop_class: str, **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    for kw, value in attrs.items():
        setattr(ds, kw, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _tracer(name: str, nuclide: str, dose: float, half_life: float) -> Sequence:
    rp = Dataset()
    rp.Radiopharmaceutical, rp.RadionuclideTotalDose, rp.RadionuclideHalfLife = name, dose, half_life
    rp.RadiopharmaceuticalStartTime = "093000"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", nuclide
    rp.RadionuclideCodeSequence = Sequence([code])
    return Sequence([rp])


def _series(folder: Path, patient: str, study: str, modality: str, sop_class: str, n: int, **attrs) -> list[Dataset]:
    series_uid, out = generate_uid(), []
    for k in range(n):
        out.append(_write(folder / f"{k:03d}.dcm", sop_class, PatientID=patient, PatientName=f"{patient}^TEST",
                          PatientSex="F", StudyInstanceUID=study, SeriesInstanceUID=series_uid, Modality=modality,
                          InstanceNumber=k + 1, StudyDate="20240102", **attrs))
    return out


@pytest.fixture()
def archive(tmp_path: Path) -> dict:
    """Three patients: FDG PET with/without RTSTRUCT, a PSMA PET with SEG (per-instance refs), an NM SPECT."""
    root = tmp_path / "archive"
    facts: dict = {"root": root}
    for p in ("P1", "P2"):
        study, for_uid = generate_uid(), generate_uid()
        pet = _series(root / p / "pet", p, study, "PT", PET_CLASS, 3, SeriesDescription="WB FDG AC", Units="BQML",
                      FrameOfReferenceUID=for_uid, RadiopharmaceuticalInformationSequence=_tracer("Fludeoxyglucose", "^18^Fluorine", 3.5e8, 6586.2),
                      ReconstructionMethod="OSEM 3i21s")
        _series(root / p / "ct", p, study, "CT", CT_CLASS, 2, SeriesDescription="CT AC", FrameOfReferenceUID=for_uid)
        facts[f"{p}_pet"] = pet[0].SeriesInstanceUID
        if p == "P1":  # RTSTRUCT referencing the PET series
            ser = Dataset()
            ser.SeriesInstanceUID = pet[0].SeriesInstanceUID
            st = Dataset()
            st.RTReferencedSeriesSequence = Sequence([ser])
            fr = Dataset()
            fr.FrameOfReferenceUID, fr.RTReferencedStudySequence = for_uid, Sequence([st])
            obs = Dataset()
            obs.ROIInterpreter = "READER^A"
            _series(root / p / "rt", p, study, "RTSTRUCT", RT_CLASS, 1, FrameOfReferenceUID=for_uid,
                    ReferencedFrameOfReferenceSequence=Sequence([fr]), RTROIObservationsSequence=Sequence([obs]))
    study = generate_uid()
    psma = _series(root / "P3" / "pet", "P3", study, "PT", PET_CLASS, 2, SeriesDescription="PSMA xSPECT-like recon",
                   RadiopharmaceuticalInformationSequence=_tracer("PSMA-11", "^68^Gallium", 1.5e8, 4062.0))
    src = Dataset()
    src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = PET_CLASS, psma[1].SOPInstanceUID
    der = Dataset()
    der.SourceImageSequence = Sequence([src])
    frame = Dataset()
    frame.DerivationImageSequence = Sequence([der])
    _series(root / "P3" / "seg", "P3", study, "SEG", SEG_CLASS, 1, ContentCreatorName="READER^B", NumberOfFrames=1,
            PerFrameFunctionalGroupsSequence=Sequence([frame]))
    windows = []
    for name, lo, hi in (("EM1", 187.2, 228.8), ("SC1", 166.9, 186.3)):
        rng = Dataset()
        rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = lo, hi
        info = Dataset()
        info.EnergyWindowName, info.EnergyWindowRangeSequence = name, Sequence([rng])
        windows.append(info)
    det = Dataset()
    det.CollimatorGridName, det.CollimatorType = "MEGP", "PARA"
    nm = _series(root / "P3" / "nm", "P3", study, "NM", NM_CLASS, 1, NumberOfFrames=120,
                 EnergyWindowInformationSequence=Sequence(windows), DetectorInformationSequence=Sequence([det, det]),
                 RadiopharmaceuticalInformationSequence=_tracer("Lu-177 DOTATATE", "^177^Lutetium", 7.2e9, 574300.0))
    facts["P3_psma"], facts["P3_nm"] = psma[0].SeriesInstanceUID, nm[0].SeriesInstanceUID
    (root / "P3" / "nm" / "broken.dcm").write_bytes(b"DICM" + os.urandom(200))
    return facts


def test_index_and_cohort_queries(archive: dict, tmp_path: Path):
    db = tmp_path / "cat.sqlite"
    stats = index_folder(archive["root"], db)
    assert (stats.seen, stats.indexed, stats.errors) == (16, 15, 1)
    with Catalog(db) as cat:
        assert len(cat.sql("SELECT * FROM patient")) == 3
        assert len(cat.sql("SELECT * FROM study")) == 3
        series = cat.series()
        assert len(series) == 8 and series.n_instances.sum() == 15
        # the cohort example: PT series with an RTSTRUCT referencing them
        assert cat.series(modality="PT", roi_modality="RTSTRUCT").series_uid.tolist() == [archive["P1_pet"]]
        assert set(cat.series(modality="PT", has_roi=True).series_uid) == {archive["P1_pet"], archive["P3_psma"]}
        assert cat.series(modality="PT", has_roi=False).series_uid.tolist() == [archive["P2_pet"]]
        fdg = cat.series(modality="PT", tracer="FDG")
        assert set(fdg.series_uid) == {archive["P1_pet"], archive["P2_pet"]}
        assert fdg.injected_dose_bq.tolist() == [3.5e8, 3.5e8] and set(fdg.half_life_s) == {6586.2}
        assert cat.series(tracer="Ga68").series_uid.tolist() == [archive["P3_psma"]]
        assert cat.series(description_like="%xSPECT%").series_uid.tolist() == [archive["P3_psma"]]
        assert cat.series(patient="P2", modality="CT").n_instances.tolist() == [2]
        nm = cat.series(modality="NM").iloc[0]
        assert (nm.collimator, nm.n_frames, nm.n_energy_windows, nm.radionuclide) == ("MEGP", 120, 2, "^177^Lutetium")
        windows = cat.energy_windows(archive["P3_nm"])
        assert windows.name.tolist() == ["EM1", "SC1"] and windows.lower_kev.tolist() == [187.2, 166.9]
        rois = cat.rois(archive["P1_pet"])
        assert rois.modality.tolist() == ["RTSTRUCT"] and rois.roi_creator.tolist() == ["READER^A"]
        assert cat.rois(archive["P3_psma"]).roi_creator.tolist() == ["READER^B"]
        errors = cat.errors()
        assert len(errors) == 1 and errors.path[0].endswith("broken.dcm") and "broken.dcm" in errors.reason[0]
        assert len(cat.files(archive["P1_pet"])) == 3
        with pytest.raises(InputError, match="readonly"):
            cat.sql("DELETE FROM series")


def test_index_is_incremental(archive: dict, tmp_path: Path):
    db = tmp_path / "cat.sqlite"
    index_folder(archive["root"], db)
    again = index_folder(archive["root"], db)
    assert (again.indexed, again.skipped_unchanged, again.errors) == (0, 16, 0)
    # a changed file is re-read, a deleted one is removed, a new one is added
    ct_file = archive["root"] / "P2" / "ct" / "000.dcm"
    os.utime(ct_file, ns=(ct_file.stat().st_atime_ns, ct_file.stat().st_mtime_ns + 10**9))
    (archive["root"] / "P1" / "rt" / "000.dcm").unlink()
    _series(archive["root"] / "P4" / "ct", "P4", generate_uid(), "CT", CT_CLASS, 1)
    third = index_folder(archive["root"], db)
    assert (third.indexed, third.removed, third.skipped_unchanged) == (2, 1, 14)
    with Catalog(db) as cat:
        assert cat.series(modality="PT", roi_modality="RTSTRUCT").empty
        assert len(cat.sql("SELECT * FROM patient")) == 4
        assert cat.series(modality="CT").n_instances.tolist() == [2, 2, 1]


def test_missing_db_and_folder_are_clear_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        Catalog(tmp_path / "none.sqlite")
    with pytest.raises(InputError, match="does not exist"):
        index_folder(tmp_path / "nowhere", tmp_path / "c.sqlite")


def test_cli_index_and_query(archive: dict, tmp_path: Path, capsys):
    db = tmp_path / "cat.sqlite"
    assert main(["index", str(archive["root"]), "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["query", "--db", str(db), "--modality", "PT", "--has-roi", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["series_uid"] for r in rows} == {archive["P1_pet"], archive["P3_psma"]}
    assert main(["query", "--db", str(db), "--tracer", "FDG", "--format", "csv", "--columns", "patient_id", "modality"]) == 0
    assert capsys.readouterr().out.split() == ["patient_id,modality", "P1,PT", "P2,PT"]
    assert main(["query", "--db", str(db), "--sql", "SELECT COUNT(*) AS n FROM instance", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "15"]
    assert main(["query", "--db", str(db), "--sql", "DROP TABLE series"]) == 2
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM series").fetchone()[0] == 8


def test_real_nuclear_medicine_data(external_data: Path, tmp_path: Path):
    """Index (read-only, in place) FDG PET + RTSTRUCT, Lu-177 xSPECT + RTSTRUCT and GE NM TOMO projections."""
    db = tmp_path / "cat.sqlite"
    for rel in ("pet_sts/sts_images", "spect_lu177", "nm_tomo_projections"):
        index_folder(need(external_data, rel), db)
    with Catalog(db) as cat:
        fdg = cat.series(modality="PT", tracer="FDG")
        assert fdg.patient_id.tolist() == ["STS_001", "STS_002", "STS_003"]
        assert fdg.n_instances.tolist() == [59, 48, 51]
        # the STS contours reference the uncropped TCIA series: linked through the shared frame of reference
        assert len(cat.series(modality="PT", tracer="FDG", roi_modality="RTSTRUCT")) == 3
        xspect = cat.series(modality="PT", description_like="%xSPECT%", has_roi=True)
        assert len(xspect) == 2 and set(xspect.radionuclide) == {"177 Lutetium"} and set(xspect.units) == {"BQML"}
        assert (xspect.n_instances == 199).all() and (xspect.half_life_s == 574300).all()
        links = cat.sql("SELECT via FROM roi_link l JOIN series s ON s.series_uid = l.image_series_uid WHERE s.units = 'BQML'")
        assert set(links.via) == {"reference"}  # explicit RTSTRUCT -> series references
        nm = cat.series(modality="NM")
        assert len(nm) == 2 and (nm.n_frames == 360).all() and (nm.n_energy_windows == 6).all() and set(nm.collimator) == {"MEGP"}
        windows = cat.energy_windows(nm.series_uid[0])
        photopeak = windows[(windows.lower_kev < 208) & (windows.upper_kev > 208)]
        assert len(photopeak) == 1 and photopeak.name.iloc[0] == "Lu177_EM"
        assert cat.errors().path.str.endswith("LICENSE").all()
