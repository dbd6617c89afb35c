"""Multi-channel (PET+CT) server instances: one job per study, started by the PET series, waiting for the study's CT.

A tiny two-channel own-engine bundle (channels PT, CT; untrained, fixed seed: a deterministic function of both
channels, so any difference in reading, stacking or resampling shows as changed voxels) is served. A study's PET
and CT arrive by C-STORE; the SEG that comes back equals ``nmkit predict BUNDLE PT_DIR CT_DIR`` voxel for voxel. A
study with only a PET: the job is parked with "no CT series in study ... within N s"; the CT sent later plus
``nmkit jobs requeue`` gives the result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from nmkit.cli import main
from nmkit.serve.config import parse_config
from nmkit.serve.registry import Registry
from nmkit.serve.server import Server
from test_segment_train3d import _study
from test_serve_node import scu_send
from test_serve_server import SEG_CLASS, CaptureSCP, wait_for

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

STUDY_TAGS = {"PatientName": "Test^Petct", "PatientSex": "O", "PatientBirthDate": "", "AccessionNumber": "", "StudyID": "1",
              "ReferringPhysicianName": "", "PositionReferenceIndicator": "", "StudyDate": "20260101", "StudyTime": "093000",
              "SeriesDate": "20260101", "SeriesTime": "093000", "AcquisitionDate": "20260101", "AcquisitionTime": "093000"}
ROOT_UID = "1.2.826.0.1.3680043.8.498.77"


def petct_bundle(out: Path) -> Path:
    """An untrained 3D UNet bundle with channels PT (z-score) and CT (window), 16^3 windows, labels {1: lesion}."""
    import torch

    from nmkit.segment.bundle import write_bundle
    from nmkit.segment.nets import build_network
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig

    torch.manual_seed(3)
    prep = Preprocessing(normalisation="zscore", spatial_dims=3, target_size=None, patch_size=(16, 16, 16), channels=("PT", "CT"),
                         channel_normalisations=("zscore", "window"))
    config = TrainConfig(network="unet", network_options={"channels": [4, 8], "strides": [2], "num_res_units": 0}, labels={1: "lesion"})
    model = build_network("unet", 3, 2, 2, **dict(config.network_options))
    return write_bundle(out, model, config, prep, name="petct", version="1.0.0")


def petct_study(folder: Path, k: int, with_ct: bool = True) -> dict:
    """A PET (3 x 3 x 6 mm, Bq/ml slices) and a CT (2x finer grid, HU) of one study, same frame of reference, as DICOM."""
    from nmkit.phantoms.spect_dicom import write_ct_series, write_pt_series

    pet, ct, _ = _study(np.random.default_rng(k))
    uid = lambda part: f"{ROOT_UID}.{k}.{part}"  # noqa: E731
    common = {**STUDY_TAGS, "PatientID": f"PETCT{k}", "StudyInstanceUID": uid(1), "FrameOfReferenceUID": uid(2)}
    out = {"study_uid": uid(1), "pt_series": uid(3), "ct_series": uid(4), "pt_dir": folder / f"s{k}" / "PT", "ct_dir": folder / f"s{k}" / "CT"}
    out["pt"] = write_pt_series(pet, out["pt_dir"], common, uid(3), "PET AC", 2, total_activity_mbq=200.0)
    out["ct"] = write_ct_series(ct, out["ct_dir"], common, uid(4), series_number=1) if with_ct else []
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("petct")
    bundle = petct_bundle(root / "bundle")
    reg = Registry(root / "registry")
    reg.register("petct", bundle)
    reg.promote("petct", "1.0.0")
    return {"root": root, "bundle": bundle, "registry": root / "registry"}


def config(tmp_path: Path, pacs_port: int, registry: Path, **instance) -> dict:
    from test_serve_node import free_port

    return {"ae_title": "NMKIT", "port": free_port(), "storage": str(tmp_path / "srv"), "registry": str(registry),
            "allowed_calling_aets": ["SCU"], "quiet_seconds": 0.5, "poll_seconds": 0.05, "lease_seconds": 10.0, "retry_base_seconds": 0.2,
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
            "instances": [{"name": "petct", "ae_title": "NMKIT_PETCT", "outputs": ["seg"], "destinations": ["pacs"], **instance}]}


@pytest.fixture
def pacs():
    p = CaptureSCP()
    yield p
    p.stop()


def predicted_mask(bundle: Path, study: dict, out: Path, capsys) -> np.ndarray:
    """``nmkit predict BUNDLE PT_DIR CT_DIR``'s label map (z, y, x) on the PET grid."""
    from nmkit.io.volume_files import read_volume

    code = main(["predict", str(bundle), str(study["pt_dir"]), str(study["ct_dir"]), "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    return np.asarray(read_volume(out / f"{study['pt_dir'].name}.nii.gz").array)


def seg_mask(seg: pydicom.Dataset, study: dict, where: Path) -> np.ndarray:
    """The SEG's segment 1 on the PET grid."""
    from nmkit.io.reader import read_series_files
    from nmkit.io.seg import read_seg

    where.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(where / "seg.dcm"), enforce_file_format=True)
    pet = read_series_files(sorted(study["pt_dir"].iterdir()))
    return np.asarray(read_seg(where / "seg.dcm", reference=pet).array)[0]


def test_petct_study_gives_one_seg_equal_to_predict(tmp_path, registry, pacs, capsys):
    """PET then CT by C-STORE to a PET+CT instance: one job (the CT makes none), its SEG references the PET series and
    equals ``nmkit predict`` on the same two series, voxel for voxel."""
    study = petct_study(tmp_path, 1)
    cfg = parse_config(config(tmp_path, pacs.port, registry["registry"], companion_wait_seconds=30), None, tmp_path)
    with Server(cfg) as server:
        assert set(scu_send(server.port, study["pt"], called="NMKIT_PETCT")) == {0}
        time.sleep(1.0)  # the PET is quiet first: its job starts and waits for the CT
        assert set(scu_send(server.port, study["ct"], called="NMKIT_PETCT")) == {0}
        wait_for(lambda: pacs.by_class(SEG_CLASS), 90, "the SEG")
        time.sleep(1.0)  # the CT's quiet period has passed too: it must not have made a job
        jobs = server.store.jobs()
    assert [j.state for j in jobs] == ["done"], [(j.state, j.reason) for j in jobs]
    assert jobs[0].result["companions"][0]["channel"] == "CT" and jobs[0].result["companions"][0]["files"] == len(study["ct"])
    assert jobs[0].result["companions"][0]["same_frame_of_reference"] is True
    segs = pacs.by_class(SEG_CLASS)
    assert len(segs) == 1 and segs[0].ReferencedSeriesSequence[0].SeriesInstanceUID == study["pt_series"]
    served = seg_mask(segs[0], study, tmp_path / "served")
    expected = predicted_mask(registry["bundle"], study, tmp_path / "pred", capsys) == 1
    assert served.shape == expected.shape == (10, 24, 24)
    assert 0.05 < expected.mean() < 0.95  # a mask with both labels: the comparison can fail
    assert np.array_equal(served, expected)
    # the CT matters: the same PET with another CT gives another mask
    other = petct_study(tmp_path / "other", 2)
    other["pt_dir"] = study["pt_dir"]
    assert not np.array_equal(predicted_mask(registry["bundle"], other, tmp_path / "pred2", capsys) == 1, expected)


def test_pet_without_ct_fails_with_reason_then_requeue(tmp_path, registry, pacs, capsys):
    """Only a PET: the job waits companion_wait_seconds, then is parked with a clear reason (in /status and `nmkit
    jobs list`), nothing is delivered. The CT sent later makes no job of its own; `nmkit jobs requeue` runs the study."""
    import urllib.request

    import yaml

    study = petct_study(tmp_path, 3)
    raw = config(tmp_path, pacs.port, registry["registry"], companion_wait_seconds=2, channel_series={"CT": "*CT*"})
    raw["http"] = {"port": 0}
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, None, tmp_path)
    with Server(cfg) as server:
        assert set(scu_send(server.port, study["pt"], called="NMKIT_PETCT")) == {0}
        waiting = wait_for(lambda: [j for j in server.store.jobs("queued") if j.reason], 30, "the job to wait")
        assert "waiting for the CT series" in waiting[0].reason
        job = wait_for(lambda: server.store.jobs("parked"), 30, "the job to be parked")[0]
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/status", timeout=10).read())
        assert job.attempts == 1 and "no CT (SeriesDescription '*CT*') series in study" in job.reason and "within 2 s" in job.reason, job.reason
        assert study["study_uid"] not in job.reason  # the study is named by its hash, as in the logs
        assert status["parked_jobs"][0]["reason"] == job.reason
        code = main(["jobs", "--config", str(path), "list"])
        out = capsys.readouterr().out
        assert code == 0 and "parked" in out and "no CT" in out
        assert pacs.received == []
        assert set(scu_send(server.port, study["ct"], called="NMKIT_PETCT")) == {0}
        time.sleep(1.5)  # quiet: the CT is a companion, no job
        assert [j.id for j in server.store.jobs()] == [job.id]
        assert main(["jobs", "--config", str(path), "requeue", job.id]) == 0
        wait_for(lambda: pacs.by_class(SEG_CLASS), 90, "the SEG after requeue")
        done = server.store.job(job.id)
    assert done.state == "done" and done.reason is None
    served = seg_mask(pacs.by_class(SEG_CLASS)[0], study, tmp_path / "served")
    assert np.array_equal(served, predicted_mask(registry["bundle"], study, tmp_path / "pred", capsys) == 1)


def test_check_validates_channel_keys_against_the_model(tmp_path, registry, capsys):
    """`nmkit serve --check`: channel keys that do not fit the registered PET+CT model are one line naming the file."""
    import yaml

    cases = [({"channel_series": {"MR": "*T1*"}}, "channel_series key(s) ['MR'] are not channels of the model petct 1.0.0 (PT, CT)"),
             ({"channels": ["PT", "CT", "MR"]}, "name 3 modalities but the model petct 1.0.0 has 2 input channels"),
             ({"ae_title": None, "match": {"modality": "^PT$"}}, "match.modality '^PT$' refuses the CT series"),
             ({"companion_wait_seconds": -1}, "companion_wait_seconds must be a number of seconds > 0")]
    for extra, message in cases:
        raw = config(tmp_path, 104, registry["registry"], **extra)
        raw["instances"][0] = {k: v for k, v in raw["instances"][0].items() if v is not None}
        path = tmp_path / "server.yaml"
        path.write_text(yaml.safe_dump(raw))
        code = main(["serve", "--config", str(path), "--check"])
        err = capsys.readouterr().err
        assert code != 0 and message in err and str(path) in err, err
        assert len(err.strip().splitlines()) == 1
    raw = config(tmp_path, 104, registry["registry"], channel_series={"CT": "*CTAC*"})
    path.write_text(yaml.safe_dump(raw))
    assert main(["serve", "--config", str(path), "--check"]) == 0


@pytest.mark.slow
def test_real_pet_with_its_ct_through_the_server(tmp_path, registry, pacs, external_data, capsys):
    """Real data (pet_sts STS_003): the PET as stored (DICOM, 51 slices of 30 x 29, 5.47 mm pixels) and the patient's
    CT (NIfTI, 0.98 mm pixels, written here as a DICOM CT series of the same study and frame of reference) sent by
    C-STORE: the SEG on the PET grid equals `nmkit predict BUNDLE PT_DIR CT_DIR` on the same two series."""
    from nmkit.io.volume_files import read_volume
    from nmkit.phantoms.spect_dicom import write_ct_series

    pt_dir = external_data / "pet_sts" / "sts_images" / "STS_003" / "PET" / "dicom" / "image"
    ct_nifti = external_data / "pet_sts" / "sts_images_flat" / "nifti" / "STS_003_CT_image.nii.gz"
    if not pt_dir.is_dir() or not ct_nifti.is_file():
        pytest.skip("pet_sts STS_003 PET DICOM / CT NIfTI not found")
    pet_files = sorted(pt_dir.glob("*.dcm"))
    head = pydicom.dcmread(str(pet_files[0]), stop_before_pixels=True)
    common = {**STUDY_TAGS, **{k: head.get(k) for k in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID",
                                                       "StudyDate", "StudyTime") if head.get(k) is not None}}
    ct_dir = tmp_path / "CT"
    ct_files = write_ct_series(read_volume(ct_nifti), ct_dir, common, f"{ROOT_UID}.9.4", series_number=3)
    study = {"pt_dir": pt_dir, "ct_dir": ct_dir}
    cfg = parse_config(config(tmp_path, pacs.port, registry["registry"], companion_wait_seconds=30), None, tmp_path)
    with Server(cfg) as server:
        assert set(scu_send(server.port, pet_files + ct_files, called="NMKIT_PETCT")) == {0}
        wait_for(lambda: pacs.by_class(SEG_CLASS), 120, "the SEG")
        jobs = server.store.jobs()
    assert [j.state for j in jobs] == ["done"] and jobs[0].result["companions"][0]["same_frame_of_reference"] is True
    seg = pacs.by_class(SEG_CLASS)[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == head.SeriesInstanceUID and seg.StudyInstanceUID == head.StudyInstanceUID
    served = seg_mask(seg, study, tmp_path / "served")
    expected = predicted_mask(registry["bundle"], study, tmp_path / "pred", capsys) == 1
    assert served.shape == expected.shape == (51, 30, 29) and 0.01 < expected.mean() < 0.99
    assert np.array_equal(served, expected)


def test_retention_purges_companion_series_with_their_study(tmp_path):
    """retention_days: a finished PET+CT job's inputs go, the CT (which made no job) included; a series of the study
    still arriving (not yet quiet, so no job yet) stays."""
    from nmkit.serve.db import Store

    store = Store(tmp_path / "db.sqlite")
    files = {}
    for series in ("pt", "ct"):
        files[series] = tmp_path / f"{series}.dcm"
        files[series].write_bytes(b"x")
        store.record_received(sop_uid=f"1.{len(files)}", instances=["petct"], series_uid=series, study_uid="9.9", path=str(files[series]),
                              sop_class_uid="", calling_ae="SCU", called_ae="NMKIT", when=0.0)
    assert len(store.enqueue_quiet_series(1.0, wants_job=lambda row: row["series_uid"] == "pt")) == 1
    late = tmp_path / "late.dcm"
    late.write_bytes(b"x")
    store.record_received(sop_uid="1.3", instances=["petct"], series_uid="late", study_uid="9.9", path=str(late), sop_class_uid="",
                          calling_ae="SCU", called_ae="NMKIT", when=time.time() + 100)
    job = store.claim("me", 10.0, 3)
    assert store.purge_finished(0.0, tmp_path) == 0 and files["ct"].exists()  # running: nothing purged
    store.complete(job.id, "me", {"outputs": {}})
    assert store.purge_finished(0.0, tmp_path, now=time.time() + 1) == 1
    assert not files["pt"].exists() and not files["ct"].exists() and late.exists()
