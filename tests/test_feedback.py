"""Expert feedback (issue #20 items 3-4): a corrected SEG of an AI result is linked to it, scored (Dice, HD95,
added/removed size checked independently with numpy), reported per model version and exported as a dataset that
read_dataset accepts; a correction for an unknown study is quarantined with a clear message, nothing half-written.

These tests build the server's state directly (a finished job with its AI SEG, made by the server's own
``make_seg``), so no model is trained; tests/test_feedback_server.py runs the whole loop through the server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from nmkit.cli import main
from nmkit.dataset import read_dataset
from nmkit.serve import demo
from nmkit.serve.db import Store
from nmkit.serve.feedback import compare, import_path, referenced_uids, score_pending
from nmkit.serve.outputs import ModelTag, make_seg
from nmkit.serve.worker import read_series

NM_CLASS = "1.2.840.10008.5.1.4.1.1.20"


def edit_seg(ai_path: str | Path, out: str | Path, add: tuple[slice, slice], remove_rows_below: int | None = None,
             creator: str = "Expert^Anna", study_uid: str | None = None, refs: str = "keep",
             content_date: str = "20261201") -> tuple[np.ndarray, np.ndarray]:
    """The expert's edit of a planar AI SEG: a block of pixels added, the gland's rows from ``remove_rows_below`` on
    removed; a new SEG object (new UIDs, the expert as content creator). Returns (AI mask, corrected mask)."""
    from pydicom.pixels import pack_bits

    ds = pydicom.dcmread(str(ai_path))
    ai = ds.pixel_array.astype(bool).reshape(int(ds.Rows), int(ds.Columns))
    new = ai.copy()
    new[add] = True
    if remove_rows_below is not None:
        new[remove_rows_below:, :] &= ~ai[remove_rows_below:, :]
    ds.PixelData = pack_bits(new.astype(np.uint8).ravel())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ContentCreatorName = creator
    ds.Manufacturer = "ReviewStation"
    ds.SeriesDescription = "thyroid corrected"
    ds.ContentLabel = "CORRECTED"
    ds.ContentDate, ds.ContentTime = content_date, "101500"
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if refs == "unknown":  # references nothing this server knows
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
        for item in ds.PerFrameFunctionalGroupsSequence:
            for d in item.DerivationImageSequence:
                for src in d.SourceImageSequence:
                    src.ReferencedSOPInstanceUID = generate_uid()
        ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.save_as(str(out), enforce_file_format=True)
    return ai, new


def server_with_ai_result(tmp_path: Path, seed: int = 1, version: str = "1.0.0", storage: Path | None = None) -> dict:
    """A server storage holding one received thyroid scan and a finished job whose AI SEG is the phantom's gland
    grown by one pixel row (the 'AI' output)."""
    from nmkit.io.image import Mask

    storage = storage or tmp_path / "srv"
    store = Store(storage / "server.sqlite")
    st = demo.thyroid_study(storage / "incoming", seed)
    store.record_received(sop_uid=st["sop_uid"], instances=["thyroid"], series_uid=st["series_uid"], study_uid=st["study_uid"],
                          path=str(st["path"]), sop_class_uid=NM_CLASS, calling_ae="SCU", called_ae="NMKIT")
    (jid,) = store.enqueue_quiet_series(0.0, now=time.time() + 1)
    store.claim("w", 60, 3)
    image, datasets = read_series([str(st["path"])])
    ai = st["gland"] | np.roll(st["gland"], 1, axis=0)
    out = storage / "results" / jid / version / "seg.dcm"
    seg = make_seg(Mask(array=ai.astype(np.uint8), spacing=image.spacing, labels={1: "thyroid"}), image, datasets, out,
                   ModelTag("thyroid", version), jid)
    assert store.complete(jid, "w", {"outputs": {"seg": {"path": str(out), "sop_uid": str(seg.SOPInstanceUID)}}, "model": "thyroid",
                                     "version": version})
    return {"store": store, "storage": storage, "job": jid, "seg": out, "study": st, "pixel_mm": float(image.spacing[0])}


def expected(ai: np.ndarray, new: np.ndarray, pixel_mm: float) -> dict:
    area = pixel_mm * pixel_mm
    return {"dice": 2 * (ai & new).sum() / (ai.sum() + new.sum()), "added_mm2": (new & ~ai).sum() * area,
            "removed_mm2": (ai & ~new).sum() * area}


def test_correction_is_linked_scored_reported_and_exported(tmp_path):
    srv = server_with_ai_result(tmp_path)
    fix = tmp_path / "corr.dcm"
    ai, new = edit_seg(srv["seg"], fix, add=(slice(2, 6), slice(2, 9)), remove_rows_below=36)
    want = expected(ai, new, srv["pixel_mm"])
    assert want["added_mm2"] > 0 and want["removed_mm2"] > 0 and 0.3 < want["dice"] < 0.95
    assert main(["feedback", "import", str(fix), "--server-dir", str(srv["storage"])]) == 0
    row = srv["store"].feedback_rows()[0]
    assert row["state"] == "scored" and row["job_id"] == srv["job"] and row["reader"] == "Expert^Anna"
    assert row["model"] == "thyroid" and row["model_version"] == "1.0.0" and row["linked_by"] in ("ai_sop", "source_series")
    # the report: HTML + CSV with the independently computed numbers
    assert main(["feedback", "report", "--server-dir", str(srv["storage"]), "--out", str(tmp_path / "rep" / "report.html")]) == 0
    seg = pd.read_csv(tmp_path / "rep" / "report.csv")
    assert len(seg) == 1 and seg.loc[0, "reader"] == "Expert^Anna" and seg.loc[0, "week"] == "2026-W49"
    assert seg.loc[0, "dice"] == pytest.approx(want["dice"], rel=1e-9)
    assert seg.loc[0, "added_mm2"] == pytest.approx(want["added_mm2"]) and seg.loc[0, "removed_mm2"] == pytest.approx(want["removed_mm2"])
    assert seg.loc[0, "hd95_mm"] > srv["pixel_mm"]  # the added block lies away from the gland
    by_version = pd.read_csv(tmp_path / "rep" / "report_by_version.csv")
    assert by_version.loc[0, "corrections"] == 1 and by_version.loc[0, "model_version"] == "1.0.0"
    units = json.loads((tmp_path / "rep" / "report.units.json").read_text())
    assert units["hd95_mm"] == "mm" and units["added_mm2"] == "mm2" and units["dice"] == "1" and all(units.values())
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64" in html and "Expert^Anna" in html
    # the export: a case table read_dataset accepts, whose mask is the correction
    out = tmp_path / "ds" / "dataset.csv"
    assert main(["feedback", "export", "--server-dir", str(srv["storage"]), "--out", str(out)]) == 0
    table = read_dataset(out, require=("image", "split"), need_masks=True)
    assert len(table) == 1 and table.loc[0, "reader"] == "Expert^Anna" and table.loc[0, "ai_model_version"] == "1.0.0"
    mref = table.loc[0, "masks"][0]
    assert mref.kind == "labelmap" and mref.structure == "thyroid" and mref.label == 1
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(mref.file)) == 1, new)
    assert pydicom.dcmread(table.loc[0, "image"]).SOPInstanceUID == srv["study"]["sop_uid"]
    prov = json.loads((tmp_path / "ds" / "dataset.provenance.json").read_text())
    assert prov["ai_models"] == ["thyroid v1.0.0"] and prov["readers"] == ["Expert^Anna"] and prov["schema"] == "nmkit-dataset/1"


def test_link_by_the_ai_seg_uid_and_resend(tmp_path):
    srv = server_with_ai_result(tmp_path)
    fix = tmp_path / "corr.dcm"
    edit_seg(srv["seg"], fix, add=(slice(2, 4), slice(2, 4)))
    ds = pydicom.dcmread(str(fix))
    ai_sop = pydicom.dcmread(str(srv["seg"]), stop_before_pixels=True).SOPInstanceUID
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ai_sop
    ds.PredecessorDocumentsSequence = pydicom.Sequence([item])  # "this SEG replaces the AI's"
    ds.save_as(str(fix), enforce_file_format=True)
    assert ai_sop in referenced_uids(ds)[1]
    res = import_path(srv["store"], srv["storage"], fix)
    assert res[0]["linked"] and res[0]["outcome"] == "new"
    assert srv["store"].feedback_rows()[0]["linked_by"] == "ai_sop"
    assert import_path(srv["store"], srv["storage"], fix)[0]["outcome"] == "duplicate"
    assert score_pending(srv["store"]) == {"scored": 1, "failed": 0}
    assert len(srv["store"].feedback_scores()) == 1
    # the labelled case keeps its own link to the scan: the server's retention of job inputs does not break the export
    Path(srv["study"]["path"]).unlink()
    out = tmp_path / "ds" / "dataset.csv"
    assert main(["feedback", "export", "--server-dir", str(srv["storage"]), "--out", str(out)]) == 0
    table = read_dataset(out, need_masks=True)
    assert pydicom.dcmread(table.loc[0, "image"]).SOPInstanceUID == srv["study"]["sop_uid"]


def test_report_per_model_version_and_week(tmp_path):
    """Two model versions, corrections in two ISO weeks by two readers: the summaries count and average them apart."""
    from nmkit.serve.feedback_report import report_tables

    first = server_with_ai_result(tmp_path, seed=1, version="1.0.0")
    second = server_with_ai_result(tmp_path, seed=2, version="2.0.0", storage=first["storage"])
    store = first["store"]
    want = {}
    for srv, version, date, who in ((first, "1.0.0", "20261130", "Expert^Anna"), (second, "2.0.0", "20261208", "Expert^Ben")):
        fix = tmp_path / f"fix-{version}.dcm"
        ai, new = edit_seg(srv["seg"], fix, add=(slice(2, 5), slice(2, 5)), content_date=date, creator=who)
        want[version] = expected(ai, new, srv["pixel_mm"])
        assert import_path(store, first["storage"], fix)[0]["linked"]
    assert score_pending(store) == {"scored": 2, "failed": 0}
    tables = report_tables(store)
    by_version = tables["by_version"].set_index("model_version")
    assert list(by_version.index) == ["1.0.0", "2.0.0"] and by_version["corrections"].tolist() == [1, 1]
    for version in ("1.0.0", "2.0.0"):
        assert by_version.loc[version, "dice_mean"] == pytest.approx(want[version]["dice"])
        assert by_version.loc[version, "added_mm2_mean"] == pytest.approx(want[version]["added_mm2"])
        assert by_version.loc[version, "removed_mm2_mean"] == 0 and by_version.loc[version, "unchanged_fraction"] == 0
    assert tables["by_week"]["week"].tolist() == ["2026-W49", "2026-W50"]  # Mon 30 Nov 2026 and Tue 8 Dec 2026
    assert set(tables["segments"]["reader"]) == {"Expert^Anna", "Expert^Ben"}


def test_correction_for_unknown_study_is_quarantined(tmp_path, capsys):
    srv = server_with_ai_result(tmp_path)
    fix = tmp_path / "stranger.dcm"
    edit_seg(srv["seg"], fix, add=(slice(2, 6), slice(2, 9)), study_uid=generate_uid(), refs="unknown")
    assert main(["feedback", "import", str(fix), "--server-dir", str(srv["storage"])]) == 2
    err = capsys.readouterr()
    assert "unknown study" in err.out and "no correction matches an AI result" in err.err and str(fix) in err.err
    store = srv["store"]
    assert store.feedback_rows() == [] and store.feedback_scores() == []  # nothing half-written
    assert not [p for p in (srv["storage"] / "feedback").iterdir() if p.name != "unlinked"]
    (q,) = store.unlinked_rows()
    assert "unknown study" in q["reason"] and Path(q["path"]).is_file() and q["via"] == "import"
    # the study is known but the correction references none of its AI results: also quarantined, with its own reason
    other = tmp_path / "other.dcm"
    edit_seg(srv["seg"], other, add=(slice(2, 6), slice(2, 9)), refs="unknown")
    (res,) = import_path(store, srv["storage"], other)
    assert not res["linked"] and "a study this server received" in res["reason"]
    assert main(["feedback", "export", "--server-dir", str(srv["storage"]), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no scored correction" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


def test_bad_server_dir_and_non_correction(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["feedback", "report", "--server-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no server.sqlite" in capsys.readouterr().err
    srv = server_with_ai_result(tmp_path)
    src = srv["study"]["path"]  # an NM image is not a correction
    assert main(["feedback", "import", str(src), "--server-dir", str(srv["storage"])]) == 2
    assert "not a correction" in capsys.readouterr().err
    assert main(["feedback", "report", "--server-dir", str(srv["storage"]), "--out", str(tmp_path / "r.html")]) == 0
    assert "No scored correction yet" in (tmp_path / "r.html").read_text()


def test_volume_scores_in_ml_on_anisotropic_voxels():
    """3D: sizes in ml from the voxel volume (spacing x, y, z = 2, 2, 5 mm -> 20 mm3 per voxel)."""
    ai = np.zeros((10, 20, 20), bool)
    ai[2:8, 5:15, 5:15] = True  # 600 voxels
    fix = ai.copy()
    fix[2:8, 5:15, 15:17] = True  # +120 voxels
    fix[7, 5:15, 5:15] = False  # -100 voxels
    row = compare(ai, fix, (2.0, 2.0, 5.0))
    assert row["geometry"] == "volume" and row["voxel_mm3"] == 20.0
    assert row["added_ml"] == pytest.approx(120 * 20 / 1000) and row["removed_ml"] == pytest.approx(100 * 20 / 1000)
    assert row["ai_ml"] == pytest.approx(12.0) and row["corrected_ml"] == pytest.approx(620 * 20 / 1000)
    assert row["dice"] == pytest.approx(2 * 500 / (600 + 620)) and row["added_mm2"] is None
    assert row["hd95_mm"] == pytest.approx(5.0, abs=1.0)  # the removed slice: 5 mm along z; the added columns: 4 mm
    same = compare(ai, ai, (2.0, 2.0, 5.0))
    assert same["dice"] == 1.0 and same["hd95_mm"] == 0.0 and same["added_voxels"] == same["removed_voxels"] == 0


def test_rtstruct_correction_of_a_volume_scored_in_ml(tmp_path):
    """A PET volume: the AI SEG (an ellipsoid) corrected by an RTSTRUCT (a block added, one slice removed) whose author
    is in OperatorsName; linked by the source series it references; sizes in ml checked with numpy."""
    from nmkit.io.image import Image, Mask
    from nmkit.io.rtstruct import write_rtstruct
    from nmkit.phantoms.spect_dicom import write_pt_series

    z, y, x = np.mgrid[:12, :32, :32]
    hot = (z - 6) ** 2 / 9 + ((y - 16) ** 2 + (x - 14) ** 2) / 36 <= 1
    img = Image(np.where(hot, 20000.0, 2000.0), spacing=(4.0, 4.0, 3.0), origin=(-64.0, -64.0, -20.0), modality="PT", units="BQML")
    common = {"PatientName": "Phantom^PET", "PatientID": "PET1", "StudyInstanceUID": generate_uid(), "StudyDate": "20240506",
              "StudyTime": "090000", "SeriesDate": "20240506", "SeriesTime": "100000", "AcquisitionDate": "20240506",
              "AcquisitionTime": "100000", "FrameOfReferenceUID": generate_uid(), "PatientWeight": 70.0, "PatientSex": "F",
              "PatientBirthDate": "19600101", "ReferringPhysicianName": "", "StudyID": "1", "AccessionNumber": ""}
    storage = tmp_path / "srv"
    series = generate_uid()
    files = write_pt_series(img, storage / "incoming" / "pt", common, series, "PET test", 3, 370.0)
    store = Store(storage / "server.sqlite")
    for f in files:
        h = pydicom.dcmread(str(f), stop_before_pixels=True)
        store.record_received(sop_uid=str(h.SOPInstanceUID), instances=["lesions"], series_uid=series, study_uid=common["StudyInstanceUID"],
                              path=str(f), sop_class_uid=str(h.SOPClassUID), calling_ae="SCU", called_ae="NMKIT")
    (jid,) = store.enqueue_quiet_series(0.0, now=time.time() + 1)
    store.claim("w", 60, 3)
    image, datasets = read_series([str(f) for f in files])
    seg = make_seg(Mask.like(image, hot.astype(np.uint8), labels={1: "lesion"}), image, datasets, storage / "results" / "seg.dcm",
                   ModelTag("lesions", "3.1"), jid)
    store.complete(jid, "w", {"outputs": {"seg": {"path": str(storage / "results" / "seg.dcm"), "sop_uid": str(seg.SOPInstanceUID)}},
                              "model": "lesions", "version": "3.1"})
    fixed = hot.copy()
    fixed[2:5, 2:8, 2:8] = True  # 3 x 6 x 6 = 108 voxels added
    fixed[8] = False  # the AI's top slice removed
    rt = tmp_path / "rt.dcm"
    write_rtstruct(Mask.like(image, fixed.astype(np.uint8), labels={1: "Lesion"}), image, rt)
    ds = pydicom.dcmread(str(rt))
    ds.OperatorsName = "Expert^Carl"
    ds.save_as(str(rt))
    (res,) = import_path(store, storage, rt)
    assert res["linked"] and store.feedback_rows()[0]["linked_by"] == "source_series"
    assert score_pending(store) == {"scored": 1, "failed": 0}
    (row,) = store.feedback_scores()
    voxel_ml = 4 * 4 * 3 / 1000
    assert row["reader"] == "Expert^Carl" and row["model"] == "lesions" and row["geometry"] == "volume" and row["structure"] == "lesion"
    assert row["added_voxels"] == 108 and row["added_ml"] == pytest.approx(108 * voxel_ml)
    assert row["removed_voxels"] == int((hot & ~fixed).sum()) > 0
    assert row["removed_ml"] == pytest.approx((hot & ~fixed).sum() * voxel_ml)
    assert row["dice"] == pytest.approx(2 * (hot & fixed).sum() / (hot.sum() + fixed.sum()))
    assert row["ai_ml"] == pytest.approx(hot.sum() * voxel_ml) and row["added_mm2"] is None


def test_feedback_tables_migrate_additively(tmp_path):
    """A database made before a column was added gets it (ALTER TABLE ADD COLUMN); its rows and other tables stay."""
    import sqlite3

    db = tmp_path / "server.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE feedback (id TEXT PRIMARY KEY, sop_uid TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, reader TEXT, "
                 "job_id TEXT NOT NULL, instance TEXT, model TEXT, model_version TEXT, ai_output TEXT, ai_sop_uid TEXT, ai_path TEXT, "
                 "source_series_uid TEXT, study_uid TEXT, linked_by TEXT, via TEXT, calling_ae TEXT, received_at REAL NOT NULL, "
                 "corrected_at REAL, state TEXT NOT NULL, reason TEXT, scored_at REAL, label_map TEXT)")
    conn.execute("INSERT INTO feedback(id, sop_uid, path, kind, job_id, received_at, state) VALUES ('fb-1', '1.2', '/x', 'seg', 'j', 1.0, 'scored')")
    conn.commit()
    conn.close()
    store = Store(db)
    (row,) = store.feedback_rows()
    assert row["id"] == "fb-1" and "image" in row and row["image"] is None
    assert store.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0


def test_correction_arriving_before_its_ai_result_is_linked_later(tmp_path):
    from nmkit.serve.feedback import relink_unlinked

    srv = server_with_ai_result(tmp_path)
    store = srv["store"]
    fix = tmp_path / "early.dcm"
    edit_seg(srv["seg"], fix, add=(slice(2, 6), slice(2, 9)))
    with store.tx() as c:  # the job has not finished yet when the correction arrives
        c.execute("UPDATE jobs SET state='running'")
    (res,) = import_path(store, srv["storage"], fix, reader="Dr^Override")
    assert not res["linked"] and Path(res["path"]).is_file() and relink_unlinked(store, srv["storage"]) == 0
    with store.tx() as c:
        c.execute("UPDATE jobs SET state='done'")
    assert relink_unlinked(store, srv["storage"]) == 1
    assert store.unlinked_rows() == [] and not Path(res["path"]).exists()  # out of the quarantine, file and row
    (row,) = store.feedback_rows()
    assert row["via"] == "import" and row["reader"] == "Expert^Anna" and row["job_id"] == srv["job"]
    assert score_pending(store) == {"scored": 1, "failed": 0}
    # an explicit reader (`feedback import --reader`) wins over the header
    again = tmp_path / "again.dcm"
    edit_seg(srv["seg"], again, add=(slice(2, 3), slice(2, 3)))
    assert import_path(store, srv["storage"], again, reader="Dr^Override")[0]["linked"]
    assert {r["reader"] for r in store.feedback_rows()} == {"Expert^Anna", "Dr^Override"}


def test_two_instances_on_one_series_the_structure_names_decide(tmp_path):
    """The thyroid and a nodule instance both segmented the series (the nodule job finished last); a correction of the
    thyroid outline that references only the source series is linked to the thyroid result by its segment label."""
    from nmkit.io.image import Mask

    srv = server_with_ai_result(tmp_path)
    store, st = srv["store"], srv["study"]
    store.record_received(sop_uid=st["sop_uid"], instances=["nodules"], series_uid=st["series_uid"], study_uid=st["study_uid"],
                          path=str(st["path"]), sop_class_uid=NM_CLASS, calling_ae="SCU", called_ae="NMKIT")
    (jid,) = store.enqueue_quiet_series(0.0, now=time.time() + 1)
    store.claim("w", 60, 3)
    image, datasets = read_series([str(st["path"])])
    nod = np.zeros(image.spatial_shape, np.uint8)
    nod[30:34, 20:24] = 1
    out = srv["storage"] / "results" / jid / "seg.dcm"
    seg = make_seg(Mask(array=nod, spacing=image.spacing, labels={1: "nodule"}), image, datasets, out, ModelTag("nodules", "0.9"), jid)
    time.sleep(0.01)
    assert store.complete(jid, "w", {"outputs": {"seg": {"path": str(out), "sop_uid": str(seg.SOPInstanceUID)}}, "model": "nodules",
                                     "version": "0.9"})
    fix = tmp_path / "thyroid-fix.dcm"
    edit_seg(srv["seg"], fix, add=(slice(2, 4), slice(2, 4)))
    (res,) = import_path(store, srv["storage"], fix)
    row = store.feedback_rows()[0]
    assert res["linked"] and row["linked_by"] == "source_series" and row["job_id"] == srv["job"] and row["model"] == "thyroid"


def test_configured_reader_names_anonymous_corrections():
    """`feedback_reader` in server.yaml is the reader of a correction whose header names nobody; a named one keeps its name."""
    import pytest as _pytest
    from pydicom.dataset import Dataset

    from nmkit.errors import InputError
    from nmkit.serve.config import parse_config
    from nmkit.serve.feedback import reader_of

    cfg = parse_config({"feedback_reader": "Dr Expert", "instances": {}, "destinations": {}})
    assert cfg.feedback_reader == "Dr Expert"
    assert reader_of(Dataset(), cfg.feedback_reader) == "Dr Expert"
    named = Dataset()
    named.ContentCreatorName = "Expert^Anna"
    assert reader_of(named, cfg.feedback_reader) == "Expert^Anna"
    with _pytest.raises(InputError, match="feedback_reader"):
        parse_config({"feedback_reader": 3, "instances": {}, "destinations": {}}, source="server.yaml")
