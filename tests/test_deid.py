"""De-identification (PS3.15 basic profile): no identifier survives, images and ROI references still work."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import need
from nmkit.errors import InputError
from nmkit.io.deid import BASIC_PROFILE, DeidOptions, anonymize_tree, effective_actions, hashed_uid, is_well_known_uid
from nmkit.io.dicom_series import scan_series, stack_slices

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SALT = "unit-test-salt"
IDENTITY = {"PatientName": "DOE^JANE^Q", "PatientID": "HOSP-0042", "InstitutionName": "St Elsewhere Nuclear Medicine",
            "ReferringPhysicianName": "HOUSE^GREGORY", "OperatorsName": "TECH^ANNA", "AccessionNumber": "ACC778899",
            "StudyID": "ST1234", "StationName": "PETCT-ROOM3", "DeviceSerialNumber": "SN-99887"}


# ----- synthetic CT + SEG ------------------------------------------------------------------------------
def _ct_slices(folder: Path, study_uid: str, study_date: str, n: int = 4, shape=(16, 12)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, for_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_CLASS, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CT_CLASS, ds.SOPInstanceUID
        for kw, value in IDENTITY.items():
            setattr(ds, kw, value)
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge, ds.PatientWeight = "19530412", "F", "071Y", "63.5"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime = "081500", "082000", "082012.5"
        ds.StudyDescription, ds.SeriesDescription, ds.ProtocolName = "PET-CT Jane Doe follow-up", "CT AC low dose", "WB Doe"
        ds.Modality, ds.Manufacturer, ds.ImageType = "CT", "ACME", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber, ds.SeriesNumber = k + 1, 2
        ds.ImagePositionPatient = [-40.0, -30.0, 10.0 + 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [2.0, 1.5]
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, shape, dtype=np.int16).tobytes()
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID = "OLD-77", "Other Hospital"
        ds.OtherPatientIDsSequence = Sequence([other])
        req = Dataset()
        req.RequestedProcedureID, req.ScheduledProcedureStepID = "RP-55", "SPS-66"
        req.RequestedProcedureDescription = "PET Jane"
        ds.RequestAttributesSequence = Sequence([req])
        ds.ImageComments = "patient Jane Doe, room 3"
        ds.add_new(0x00090010, "LO", "ACME PRIVATE")
        ds.add_new(0x00091001, "LO", "Jane Doe private copy")
        ds.add_new(0x50000010, "US", 2)  # curve dimensions (retired)
        ds.add_new(0x60003000, "OW", b"\x00\x01" * 24)  # overlay data
        ds.add_new(0x60004000, "LT", "overlay by Dr House")
        if k > 0:  # reference the previous slice, as derived images do
            src = Dataset()
            src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = CT_CLASS, paths_uids[-1]
            ds.SourceImageSequence = Sequence([src])
        paths_uids = locals().get("paths_uids", []) + [ds.SOPInstanceUID]
        path = folder / f"ct_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _seg(ct_paths: list[Path], out: Path) -> Path:
    import highdicom as hd

    sources = [pydicom.dcmread(p) for p in ct_paths]
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[1:3, 4:9, 3:7] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="nmkit-test", manufacturer_model_name="synthetic", software_versions="1",
        device_serial_number="SEG-SN-1", content_creator_name="READER^ONE")
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out


@pytest.fixture()
def ct_seg_study(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    study_a, study_b = generate_uid(), generate_uid()
    ct_a = _ct_slices(root / "Jane_Doe" / "study1" / "ct", study_a, "20210305")
    _seg(ct_a, root / "Jane_Doe" / "study1" / "seg" / "seg.dcm")
    _ct_slices(root / "Jane_Doe" / "study2" / "ct", study_b, "20210617")
    return root


# ----- helpers -------------------------------------------------------------------------------------------
def _walk(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _identifying(ds: Dataset, actions: dict) -> set[tuple[int, str]]:
    """(tag, value) of every non-empty value of an X/D/Z attribute, walking sequences."""
    out = set()
    for elem in _walk(ds):
        if actions.get(elem.tag) in ("X", "D", "Z") and elem.VR != "SQ" and elem.value not in (None, "", b""):
            out.add((int(elem.tag), str(elem.value)))
    return out


def _uids(ds: Dataset) -> set[str]:
    out = set()
    for elem in _walk(ds):
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
            out |= {str(v) for v in values if not is_well_known_uid(str(v))}
    return out


def _read_all(folder: Path) -> list[tuple[Path, Dataset]]:
    return [(p, pydicom.dcmread(p)) for p in sorted(folder.rglob("*.dcm"))]


def _check_no_identifier_survives(src: Path, out: Path, options: DeidOptions) -> None:
    actions = effective_actions(options)
    originals = _read_all(src)
    anonymised = _read_all(out)
    assert len(anonymised) == len(originals)
    ident, uids = set(), set()
    for _, ds in originals:
        ident |= _identifying(ds, actions)
        uids |= _uids(ds) - {str(ds.SOPClassUID)}
    assert ident, "the test data must contain identifying values"
    for path, ds in anonymised:
        kept = _identifying(ds, actions)
        if options.date_mode == "shift":  # the modified-dates option keeps times (whole-day shift)
            kept = {(t, v) for t, v in kept if pydicom.datadict.dictionary_VR(t) != "TM"}
        assert not (kept & ident), f"{path}: identifying values survived: {kept & ident}"
        assert not (_uids(ds) & uids), f"{path}: original UIDs survived"
        assert not any(e.tag.is_private for e in _walk(ds)), f"{path}: private tags survived"
        assert not any(0x5000 <= e.tag.group <= 0x50FF or (0x6000 <= e.tag.group <= 0x60FF and e.tag.element in (0x3000, 0x4000))
                       for e in ds), f"{path}: curve/overlay survived"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


# ----- tests ---------------------------------------------------------------------------------------------
def test_profile_table_covers_the_direct_identifiers():
    kw = {pydicom.datadict.keyword_for_tag(t): a for t, a in BASIC_PROFILE.items()}
    assert len(kw) > 250
    assert set(kw.values()) <= {"D", "Z", "X", "K", "C", "U"}
    for name, action in {"PatientName": "Z", "PatientID": "Z", "PatientBirthDate": "Z", "InstitutionName": "X",
                         "SOPInstanceUID": "U", "FrameOfReferenceUID": "U", "OtherPatientIDsSequence": "X",
                         "ReferencedSOPInstanceUID": "U", "AccessionNumber": "Z"}.items():
        assert kw[name] == action
    assert effective_actions(DeidOptions(retain_patient_characteristics=True))[pydicom.tag.Tag("PatientWeight")] == "K"


@pytest.mark.parametrize("date_mode", ["shift", "remove"])
def test_synthetic_ct_seg(ct_seg_study: Path, tmp_path: Path, date_mode: str):
    out, mapping = tmp_path / "out", tmp_path / "secret" / "map.csv"
    options = DeidOptions(date_mode=date_mode)
    results = anonymize_tree(ct_seg_study, out, mapping, SALT, options)
    assert len(results) == 9 and not any(r.error for r in results)
    # (a) nothing identifying survives, also not as raw bytes anywhere in the files
    _check_no_identifier_survives(ct_seg_study, out, options)
    for path in out.rglob("*.dcm"):
        raw = path.read_bytes()
        for value in ("DOE^JANE", "HOSP-0042", "OLD-77", "Jane", "House", "St Elsewhere", "READER^ONE", "19530412"):
            assert value.encode() not in raw, f"{value} found in {path}"
    assert "Jane_Doe" not in str(list(out.rglob("*")))  # output paths carry no original names
    # (e) the mapping is written, outside OUT, and links the original ID to the pseudonym
    text = mapping.read_text()
    assert "HOSP-0042" in text and not str(mapping.resolve()).startswith(str(out.resolve()))
    anon = _read_all(out)
    pseudo = {str(ds.PatientID) for _, ds in anon}
    assert len(pseudo) == 1 and pseudo.pop() in text
    # dates: one per-patient offset keeps the interval between the two studies, or dates are gone
    dates = sorted({str(ds.StudyDate) for _, ds in anon if ds.Modality == "CT"})
    if date_mode == "shift":
        from datetime import date
        d = [date(int(s[:4]), int(s[4:6]), int(s[6:])) for s in dates]
        assert len(d) == 2 and (d[1] - d[0]).days == (date(2021, 6, 17) - date(2021, 3, 5)).days
        assert dates[0] != "20210305"
        assert all(ds.AcquisitionTime == "082012.5" for _, ds in anon if ds.Modality == "CT")  # kept for decay
    else:
        assert dates == [""]
        assert all(not e.value for _, ds in anon for e in _walk(ds) if e.VR in ("DA", "DT"))
    # (b) the series still load with identical pixels and geometry
    before = {s.description: s for s in scan_series(ct_seg_study).values()}
    after = [s for s in scan_series(out).values() if s.modality == "CT"]
    assert len(after) == 2
    for s in after:
        img_a, _ = stack_slices(s.files)
        originals = [v for v in before.values() if v.modality == "CT" and len(v.files) == len(s.files)]
        matches = [stack_slices(o.files)[0] for o in originals]
        assert any(np.array_equal(m.array, img_a.array) and m.same_grid(img_a) for m in matches)
    # (c) the SEG references the new CT UIDs
    seg = next(ds for _, ds in anon if ds.Modality == "SEG")
    seg_ct_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    ct = [ds for _, ds in anon if ds.Modality == "CT" and ds.SeriesInstanceUID == seg_ct_uid]
    assert len(ct) == 4
    ref_sops = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert ref_sops == {str(ds.SOPInstanceUID) for ds in ct}
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    per_frame = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in seg.PerFrameFunctionalGroupsSequence}
    assert per_frame <= ref_sops and per_frame
    # the SEG's pixels are untouched
    seg_src = next(ds for _, ds in _read_all(ct_seg_study) if ds.Modality == "SEG")
    assert seg.PixelData == seg_src.PixelData


def test_same_patient_same_pseudonyms_across_runs(ct_seg_study: Path, tmp_path: Path):
    r1 = anonymize_tree(ct_seg_study, tmp_path / "o1", tmp_path / "m1.csv", SALT)
    r2 = anonymize_tree(ct_seg_study, tmp_path / "o2", tmp_path / "m2.csv", SALT)  # fresh mapping, same salt
    names1 = sorted(Path(r.output).relative_to(tmp_path / "o1").as_posix() for r in r1)
    names2 = sorted(Path(r.output).relative_to(tmp_path / "o2").as_posix() for r in r2)
    assert names1 == names2  # same pseudonym, study, series and SOP UIDs
    # the mapping file wins over a different salt: the patient keeps its pseudonym
    r3 = anonymize_tree(ct_seg_study, tmp_path / "o3", tmp_path / "m1.csv", "another-salt")
    assert {Path(r.output).relative_to(tmp_path / "o3").parts[0] for r in r3} == {names1[0].split("/")[0]}
    # a different salt and no mapping gives different pseudonyms
    r4 = anonymize_tree(ct_seg_study, tmp_path / "o4", tmp_path / "m4.csv", "another-salt")
    assert {Path(r.output).relative_to(tmp_path / "o4").parts[0] for r in r4} != {names1[0].split("/")[0]}


def test_mapping_inside_output_is_refused_and_bad_files_are_skipped(ct_seg_study: Path, tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="outside the output folder"):
        anonymize_tree(ct_seg_study, out, out / "map.csv", SALT)
    (ct_seg_study / "notes.bin").write_bytes(b"this is not DICOM")
    results = anonymize_tree(ct_seg_study, out, tmp_path / "map.csv", SALT)
    bad = [r for r in results if r.error]
    assert len(bad) == 1 and "notes.bin" in bad[0].error
    assert len([r for r in results if r.output]) == 9


def test_options_keep_what_they_promise(ct_seg_study: Path, tmp_path: Path):
    options = DeidOptions(retain_patient_characteristics=True, keep=("SeriesDescription",))
    anonymize_tree(ct_seg_study, tmp_path / "o", tmp_path / "m.csv", SALT, options)
    ds = next(ds for _, ds in _read_all(tmp_path / "o") if ds.Modality == "CT")
    assert ds.PatientWeight == 63.5 and ds.PatientSex == "F" and ds.SeriesDescription == "CT AC low dose"
    assert "InstitutionName" not in ds and ds.PatientName != IDENTITY["PatientName"]
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113108"}


def test_cli_anonymize(ct_seg_study: Path, tmp_path: Path):
    from nmkit.cli import main

    rc = main(["anonymize", str(ct_seg_study), str(tmp_path / "o"), "--map", str(tmp_path / "m.csv"), "--salt", SALT])
    assert rc == 0
    assert len(list((tmp_path / "o").rglob("*.dcm"))) == 9
    assert (tmp_path / "m.report.json").exists()
    assert main(["anonymize", str(ct_seg_study), str(tmp_path / "o"), "--map", str(tmp_path / "o" / "m.csv"), "--salt", SALT]) == 2


def test_pet_rtstruct_sts(external_data: Path, tmp_path: Path):
    """Real FDG PET + RTSTRUCT (TCIA STS_001): identifiers gone, SUV-relevant data and the GTV mask unchanged."""
    src_root = need(external_data, "pet_sts/sts_images/STS_001/PET/dicom")
    src = tmp_path / "STS_001"
    shutil.copytree(src_root, src)
    out = tmp_path / "out"
    options = DeidOptions()
    results = anonymize_tree(src, out, tmp_path / "map.csv", SALT, options)
    assert not any(r.error for r in results)
    _check_no_identifier_survives(src, out, options)
    series_in = {s.modality: s for s in scan_series(src).values()}
    series_out = {s.modality: s for s in scan_series(out).values()}
    pet_in, _ = stack_slices(series_in["PT"].files)
    pet_out, ds_out = stack_slices(series_out["PT"].files)
    assert np.array_equal(pet_in.array, pet_out.array) and pet_in.same_grid(pet_out)
    assert ds_out[0].RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime == "103500.00"
    # this RTSTRUCT was drawn on the uncropped TCIA series: its references must map exactly like the UIDs
    rt_in = pydicom.dcmread(series_in["RTSTRUCT"].files[0])
    rt = pydicom.dcmread(series_out["RTSTRUCT"].files[0])
    refs_in, refs = rt_in.ReferencedFrameOfReferenceSequence[0], rt.ReferencedFrameOfReferenceSequence[0]
    assert refs.FrameOfReferenceUID == pet_out.meta["FrameOfReferenceUID"] == hashed_uid(refs_in.FrameOfReferenceUID, SALT)
    ser_in = refs_in.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    ser = refs.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ser.SeriesInstanceUID == hashed_uid(ser_in.SeriesInstanceUID, SALT)
    assert [c.ReferencedSOPInstanceUID for c in ser.ContourImageSequence] == \
        [hashed_uid(c.ReferencedSOPInstanceUID, SALT) for c in ser_in.ContourImageSequence]
    try:
        from nmkit.io.rtstruct import read_rtstruct
    except ImportError:  # pragma: no cover - written by another module owner
        return
    mask_in = read_rtstruct(series_in["RTSTRUCT"].files[0], pet_in)
    mask_out = read_rtstruct(series_out["RTSTRUCT"].files[0], pet_out)
    assert mask_in.voxel_count() > 0 and np.array_equal(mask_in.array, mask_out.array)


def test_ct_rtstruct_ibsi_phantom(external_data: Path, tmp_path: Path):
    """IBSI CT phantom (DICOM + RTSTRUCT on it): references point to the new image UIDs, mask unchanged."""
    src_root = need(external_data, "ibsi/ibsi_1_ct_radiomics_phantom/dicom")
    src = tmp_path / "phantom"
    shutil.copytree(src_root, src)  # tmp copy only: this data set is non-commercial, never in the repo
    out = tmp_path / "out"
    options = DeidOptions(date_mode="remove")
    assert not any(r.error for r in anonymize_tree(src, out, tmp_path / "map.csv", SALT, options))
    _check_no_identifier_survives(src, out, options)
    series_in = {s.modality: s for s in scan_series(src).values()}
    series_out = {s.modality: s for s in scan_series(out).values()}
    ct_in, _ = stack_slices(series_in["CT"].files)
    ct_out, _ = stack_slices(series_out["CT"].files)
    assert np.array_equal(ct_in.array, ct_out.array) and ct_in.same_grid(ct_out)
    rt = pydicom.dcmread(series_out["RTSTRUCT"].files[0])
    refs = rt.ReferencedFrameOfReferenceSequence[0]
    assert refs.FrameOfReferenceUID == ct_out.meta["FrameOfReferenceUID"]
    ser = refs.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ser.SeriesInstanceUID == ct_out.meta["SeriesInstanceUID"]
    assert {c.ReferencedSOPInstanceUID for c in ser.ContourImageSequence} == set(ct_out.meta["SOPInstanceUIDs"])
    try:
        from nmkit.io.rtstruct import read_rtstruct
    except ImportError:  # pragma: no cover
        return
    mask_in = read_rtstruct(series_in["RTSTRUCT"].files[0], ct_in)
    mask_out = read_rtstruct(series_out["RTSTRUCT"].files[0], ct_out)
    assert mask_in.voxel_count() > 1000 and np.array_equal(mask_in.array, mask_out.array)


def test_safe_private_option_and_burned_in_flag(tmp_path: Path):
    from nmkit.io.deid import Deidentifier, profile_options

    paths = _ct_slices(tmp_path / "in", generate_uid(), "20200101", n=1)
    ds = pydicom.dcmread(paths[0])
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.000551")  # SUV scale factor: safe, and needed for Philips SUV
    block.add_new(0x01, "LO", "Jane Doe")  # not on the safe list
    ds.BurnedInAnnotation = "YES"
    ds.save_as(paths[0])
    kept = Deidentifier(SALT, DeidOptions(keep_safe_private=True)).deidentify(pydicom.dcmread(paths[0]))
    private = {(e.tag.group, e.tag.element & 0xFF): e.value for e in kept if e.tag.is_private and e.tag.element > 0xFF}
    assert private == {(0x7053, 0x00): "0.000551"}
    assert "113111" in {i.CodeValue for i in kept.DeidentificationMethodCodeSequence}
    dropped = Deidentifier(SALT, profile_options("basic")).deidentify(pydicom.dcmread(paths[0]))
    assert not any(e.tag.is_private for e in dropped)
    result = anonymize_tree(tmp_path / "in", tmp_path / "out", tmp_path / "map.csv", SALT)[0]
    assert result.burned_in_annotation == "YES"  # flagged, not fixed: pixels are kept as they are
    assert pydicom.dcmread(result.output).PixelData == pydicom.dcmread(paths[0]).PixelData


def test_cli_ignores_non_dicom_files_but_fails_on_broken_dicom(ct_seg_study: Path, tmp_path: Path, capsys):
    """A LICENSE next to the images is not a failure; a DICOM file (preamble present) that breaks is."""
    from nmkit.cli import main

    (ct_seg_study / "LICENSE").write_text("CC BY 4.0\n")
    args = ["anonymize", str(ct_seg_study), str(tmp_path / "o"), "--map", str(tmp_path / "m.csv"), "--salt", SALT]
    assert main(args) == 0
    assert "9 file(s) de-identified" in capsys.readouterr().out
    broken = next(ct_seg_study.rglob("ct_000.dcm")).read_bytes()[:200]  # preamble + truncated header
    (ct_seg_study / "broken.dcm").write_bytes(broken)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "1 non-DICOM file(s) ignored" in out
