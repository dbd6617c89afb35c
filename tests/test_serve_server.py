"""The server end to end on 127.0.0.1: routing to two instances, quiet period -> job -> SEG/SR/overlay sent
back, hot model swap during a stream, shadow mode, poison jobs, the regression gate, the status endpoint,
kill -9 mid-job (exactly-once results) and Orthanc as the PACS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from nmkit.errors import InputError
from nmkit.serve import demo
from nmkit.serve.config import parse_config
from nmkit.serve.db import Store
from nmkit.serve.registry import PromotionRefused, Registry
from nmkit.serve.routing import route, routing_attributes
from nmkit.serve.server import Server
from orthanc_pacs import ORTHANC, OrthancPacs
from test_serve_node import free_port, scu_send

ROOT = Path(__file__).resolve().parents[1]
SEG_CLASS, SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


# ----- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A trained thyroid bundle (v1.0.0), the same weights as v2.0.0, an untrained bad one, a validation manifest."""
    root = tmp_path_factory.mktemp("models")
    good = demo.train_thyroid_bundle(root / "good", epochs=12)
    v2 = Path(shutil.copytree(good, root / "v2"))
    desc = json.loads((v2 / "bundle.json").read_text())
    desc["version"] = "2.0.0"
    (v2 / "bundle.json").write_text(json.dumps(desc))
    bad = demo.untrained_bundle(root / "bad", good, version="0.0.1")
    manifest = demo.validation_manifest(root / "val", range(7000, 7004))
    return {"good": good, "v2": v2, "bad": bad, "manifest": manifest}


class CaptureSCP:
    """A minimal PACS stand-in that keeps every C-STORE it gets (duplicates included)."""

    def __init__(self, ae_title: str = "PACS"):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            with self.lock:
                self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def by_class(self, sop_class: str) -> list[pydicom.Dataset]:
        with self.lock:
            return [d for d in self.received if d.SOPClassUID == sop_class]

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs():
    p = CaptureSCP()
    yield p
    p.stop()


def server_config(tmp_path: Path, pacs_port: int, registry: Path, **extra) -> dict:
    cfg = {
        "ae_title": "NMKIT", "port": free_port(), "storage": str(tmp_path / "srv"), "registry": str(registry),
        "allowed_calling_aets": ["SCU", "ORTHANC"], "quiet_seconds": 0.5, "poll_seconds": 0.05, "lease_seconds": 4.0,
        "retry_base_seconds": 0.2, "max_attempts": 3, "workers": 1,
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "instances": [
            {"name": "thyroid", "ae_title": "NMKIT_THYR", "match": {"modality": "NM"}, "outputs": ["seg", "sr", "overlay"],
             "destinations": ["pacs"]},
            {"name": "thyroid_rules", "model": "thyroid", "match": {"modality": "NM", "series_description": "thyroid", "tracer": "pertechnetate"},
             "outputs": ["seg"], "destinations": ["pacs"]},
        ],
    }
    cfg.update(extra)
    return cfg


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def delivered(store, n: int, timeout: float = 60) -> None:
    """Wait until ``n`` results have been delivered from the outbox."""
    wait_for(lambda: store.query("SELECT COUNT(*) AS n FROM outbox WHERE state='sent'")[0]["n"] >= n, timeout, f"{n} deliveries")


def registry_with(path: Path, models, *versions: str, current: str = "1.0.0") -> Registry:
    reg = Registry(path)
    for v in versions:
        reg.register("thyroid", models[{"1.0.0": "good", "2.0.0": "v2", "0.0.1": "bad"}[v]])
    reg.promote("thyroid", current)
    return reg


# ----- configuration, routing, queue --------------------------------------------------------------
def test_config_validation_names_the_problem(tmp_path):
    base = {"destinations": {"pacs": {"ae_title": "PACS", "port": 104}}, "instances": [{"name": "a", "ae_title": "A", "destinations": ["pacs"]}]}
    cfg = parse_config(base, "server.yaml", tmp_path)
    assert cfg.instance("a").model_name == "a" and cfg.destinations["pacs"].host == "127.0.0.1"
    bad_cases = [
        ({**base, "colour": 1}, "unknown configuration key"),
        ({**base, "instances": [{"name": "a", "ae_title": "A", "destinations": ["nowhere"]}]}, "not defined"),
        ({**base, "instances": [{"name": "a", "match": {"modality": "("}}]}, "bad regular expression"),
        ({**base, "instances": [{"name": "a"}]}, "needs an ae_title or match"),
        ({**base, "instances": [{"name": "a", "ae_title": "A", "outputs": ["pdf"]}]}, "unknown output"),
    ]
    for data, text in bad_cases:
        with pytest.raises(InputError, match=text) as info:
            parse_config(data, "server.yaml", tmp_path)
        assert "server.yaml" in str(info.value)


def test_routing_by_called_ae_and_attributes(tmp_path):
    st = demo.thyroid_study(tmp_path, 1)
    attrs = routing_attributes(pydicom.dcmread(str(st["path"])))
    assert attrs["modality"] == "NM" and "pertechnetate" in attrs["tracer"].lower()
    cfg = parse_config(server_config(tmp_path, 1, tmp_path / "reg"), None, tmp_path)
    assert route(cfg.instances, "NMKIT_THYR", attrs, "NMKIT") == ["thyroid"]
    assert route(cfg.instances, "NMKIT", attrs, "NMKIT") == ["thyroid_rules"]
    assert route(cfg.instances, "NMKIT", {**attrs, "tracer": "Sodium iodide I131"}, "NMKIT") == []
    assert route(cfg.instances, "NMKIT_THYR", {**attrs, "modality": "SEG"}, "NMKIT") == []  # our own results never loop


def test_queue_lease_expiry_backoff_and_parking(tmp_path):
    store = Store(tmp_path / "q.sqlite")
    for i in range(2):
        store.record_received(sop_uid=f"1.2.{i}", instances=["a"], series_uid="9.9", study_uid="8.8", path=f"/x/{i}", sop_class_uid="1",
                              calling_ae="SCU", called_ae="A", when=100.0 + i)
    assert store.enqueue_quiet_series(5.0, now=103.0) == []  # not quiet yet
    (jid,) = store.enqueue_quiet_series(5.0, now=110.0)
    assert "9.9" not in jid  # no UIDs in job ids
    job = store.claim("w1", lease_seconds=10, max_attempts=3, now=200.0)
    assert job.id == jid and job.attempts == 1
    assert store.claim("w2", 10, 3, now=205.0) is None  # leased
    job2 = store.claim("w2", 10, 3, now=211.0)  # lease expired (worker died): re-run
    assert job2.id == jid and job2.attempts == 2
    assert not store.complete(jid, "w1", {})  # the dead worker can no longer complete it
    t = time.time()
    assert store.fail(jid, "w2", "boom", max_attempts=3, retry_base_seconds=100) == "failed"
    assert store.job(jid).state == "failed" and store.counts()["queue"]["failed"] == 1
    row = store.query("SELECT next_try FROM jobs")[0]
    assert 200 <= row["next_try"] - t <= 205  # back-off 100 * 2**(attempt 2 - 1)
    assert store.claim("w3", 10, 3) is None  # not due yet
    job3 = store.claim("w3", 10, 3, now=t + 1000)
    assert job3.attempts == 3
    assert store.fail(jid, "w3", "boom again", 3, 100) == "parked"
    assert store.job(jid).state == "parked" and store.job(jid).reason == "boom again"
    # a late instance of a processed series makes a new revision (new job); a duplicate does not
    store.record_received(sop_uid="1.2.0", instances=["a"], series_uid="9.9", study_uid="8.8", path="/x/0", sop_class_uid="1",
                          calling_ae="SCU", called_ae="A", when=300.0)
    assert store.enqueue_quiet_series(5.0, now=400.0) == []
    store.record_received(sop_uid="1.2.7", instances=["a"], series_uid="9.9", study_uid="8.8", path="/x/7", sop_class_uid="1",
                          calling_ae="SCU", called_ae="A", when=300.0)
    (jid2,) = store.enqueue_quiet_series(5.0, now=400.0)
    assert jid2 != jid and jid2.endswith("r1")
    # sent records
    assert not store.was_sent(jid2, "seg", "pacs")
    store.mark_sent(jid2, "seg", "pacs", "1.2.3")
    store.mark_sent(jid2, "seg", "pacs", "1.2.3")
    assert store.was_sent(jid2, "seg", "pacs") and store.counts()["sent"] == 1


def test_registry_gate_shadow_and_rollback(tmp_path, models):
    reg = Registry(tmp_path / "reg")
    assert reg.register("thyroid", models["good"]) == "1.0.0"
    reg.register("thyroid", models["bad"])
    reg.register("thyroid", models["v2"])
    with pytest.raises(InputError, match="immutable"):
        reg.register("thyroid", models["good"])
    assert reg.current("thyroid").version is None
    reg.promote("thyroid", "1.0.0", validation=str(models["manifest"]))  # first promotion: nothing to compare with
    with pytest.raises(PromotionRefused, match="refused") as info:
        reg.promote("thyroid", "0.0.1", validation=str(models["manifest"]), tolerance=0.02)
    assert "Dice" in str(info.value)
    assert reg.current("thyroid").version == "1.0.0"
    metrics = {r["version"]: r["metric"] for r in reg.versions("thyroid")}
    assert metrics["1.0.0"] > 0.6 and metrics["0.0.1"] < metrics["1.0.0"] - 0.02
    out = reg.promote("thyroid", "2.0.0", validation=str(models["manifest"]))  # same weights: passes the gate
    assert out["previous"] == "1.0.0" and out["candidate"]["dice"] == pytest.approx(out["current"]["dice"])
    assert reg.current("thyroid").version == "2.0.0"
    reg.set_shadow("thyroid", "0.0.1")
    assert reg.current("thyroid").shadow_version == "0.0.1"
    assert reg.rollback("thyroid") == "1.0.0" and reg.current("thyroid").version == "1.0.0"
    reg.promote("thyroid", "0.0.1", force=True)
    assert reg.current("thyroid").version == "0.0.1"
    assert [h["action"] for h in reg.history("thyroid")].count("refused") == 1


def test_cli_model_commands(tmp_path, models):
    import yaml

    cfg = server_config(tmp_path, 1, tmp_path / "reg")
    cfg["instances"][0]["validation"] = str(models["manifest"])
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from nmkit.cli import main

    assert main(["model", "--config", str(path), "register", "thyroid", str(models["good"])]) == 0
    assert main(["model", "--config", str(path), "register", "thyroid", str(models["bad"])]) == 0
    assert main(["model", "--config", str(path), "promote", "thyroid", "1.0.0"]) == 0
    assert main(["model", "--config", str(path), "promote", "thyroid", "0.0.1"]) == 2  # gate refuses, clear error
    assert main(["model", "--config", str(path), "shadow", "thyroid", "0.0.1"]) == 0
    assert Registry(tmp_path / "reg").current("thyroid").version == "1.0.0"
    assert main(["model", "--config", str(path), "list", "thyroid", "--json"]) == 0


# ----- the running server -------------------------------------------------------------------------
def _statuses(s: Server) -> dict:
    return s.store.counts()["queue"]


def test_two_instances_hot_swap_shadow_and_status(tmp_path, models, pacs):
    registry_with(tmp_path / "reg", models, "1.0.0", "2.0.0", "0.0.1")
    cfg = parse_config(server_config(tmp_path, pacs.port, tmp_path / "reg", http={"port": 0}), None, tmp_path)
    with Server(cfg) as server:
        studies = [demo.thyroid_study(tmp_path / "in", s) for s in range(6)]
        # the first three go to the thyroid AE (SEG + SR + overlay), one also to the main AE (rules instance, SEG only)
        for st in studies[:3]:
            assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
        assert scu_send(server.port, [studies[0]["path"]], called="NMKIT") == [0]
        wait_for(lambda: _statuses(server)["done"] >= 4, 90, "first jobs")
        # hot swap while the server runs and the stream goes on: the next jobs use 2.0.0; 0.0.1 shadows
        reg = Registry(tmp_path / "reg")
        reg.promote("thyroid", "2.0.0")
        reg.set_shadow("thyroid", "0.0.1")
        for st in studies[3:]:
            assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
        wait_for(lambda: _statuses(server)["done"] >= 7, 90, "jobs after the swap")
        delivered(server.store, 6 * 3 + 1)
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/status", timeout=10).read())
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/health", timeout=10).read())
        jobs = server.store.jobs()
    assert health["status"] == "ok" and all(v is True for k, v in health["checks"].items() if k != "free_disk_mb")
    assert status["destinations"]["pacs"]["reachable"] and status["destinations"]["pacs"]["sent"] == 19
    assert status["queue"]["done"] == 7 and status["queue"]["parked"] == 0
    assert status["instances"]["thyroid"]["done"] == 6 and status["instances"]["thyroid_rules"]["done"] == 1
    assert status["instances"]["thyroid"]["mean_latency_s"] > 0
    assert status["models"]["thyroid"] == {"model": "thyroid", "version": "2.0.0", "shadow": "0.0.1"}
    # nothing lost: every study has exactly one SEG/SR/overlay from the thyroid instance, naming the version that made it
    segs, srs, scs = pacs.by_class(SEG_CLASS), pacs.by_class(SR_CLASS), pacs.by_class(SC_CLASS)
    assert len(segs) == 7 and len(srs) == 6 and len(scs) == 6
    version_of = {j.series_uid: j.model_version for j in jobs if j.instance == "thyroid"}
    for st in studies:
        seg = [d for d in segs if d.ReferencedSeriesSequence[0].SeriesInstanceUID == st["series_uid"] and "AI SEG" in d.SeriesDescription]
        version = version_of[st["series_uid"]]
        assert all(version in d.SeriesDescription and d.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == version
                   for d in seg)
        sr = [d for d in srs if d.StudyInstanceUID == st["study_uid"]]
        sc = [d for d in scs if d.StudyInstanceUID == st["study_uid"]]
        assert len(sr) == 1 and len(sc) == 1 and version in sr[0].SeriesDescription and version in sc[0].SeriesDescription
        assert all(d.StudyInstanceUID == st["study_uid"] for d in seg)
    assert [version_of[s["series_uid"]] for s in studies] == ["1.0.0"] * 3 + ["2.0.0"] * 3
    # the segmentation is a real thyroid segmentation (Dice against the phantom truth)
    st = studies[4]
    seg = next(d for d in segs if d.ReferencedSeriesSequence[0].SeriesInstanceUID == st["series_uid"])
    pred = seg.pixel_array.astype(bool).reshape(st["gland"].shape)
    dice = 2 * (pred & st["gland"]).sum() / (pred.sum() + st["gland"].sum())
    assert dice > 0.6, dice
    # SR measurements: gland area in mm^2 matches the SEG's pixel count
    area = _sr_value(srs[0], "Area")
    seg0 = next(d for d in segs if d.StudyInstanceUID == srs[0].StudyInstanceUID and d.SeriesDescription.startswith("AI SEG thyroid"))
    px = float(pydicom.dcmread(str(studies[0]["path"])).PixelSpacing[0])
    assert area == pytest.approx(seg0.pixel_array.astype(bool).sum() * px * px, rel=1e-6)
    # shadow results were made and kept but never sent
    shadow_jobs = [j for j in jobs if j.shadow_version == "0.0.1"]
    assert len(shadow_jobs) == 3 and all((cfg.storage / "results" / j.id / "shadow-0.0.1" / "seg.dcm").is_file() for j in shadow_jobs)
    assert not [d for d in segs if "0.0.1" in d.SeriesDescription]
    # logs and job ids carry no patient identifiers
    assert all("DEMO" not in j.id and studies[0]["series_uid"] not in j.id for j in jobs)


def _sr_value(sr: pydicom.Dataset, name: str) -> float:
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeMeaning == name:
            return float(item.MeasuredValueSequence[0].NumericValue)
        stack.extend(getattr(item, "ContentSequence", []))
    raise KeyError(name)


def test_poison_job_is_parked_with_reason(tmp_path, models, pacs):
    registry_with(tmp_path / "reg", models, "1.0.0")
    raw = server_config(tmp_path, pacs.port, tmp_path / "reg")
    raw["instances"][0]["match"] = {}  # take anything sent to the thyroid AE
    cfg = parse_config(raw, None, tmp_path)
    st = demo.thyroid_study(tmp_path / "in", 40)
    ds = pydicom.dcmread(str(st["path"]))
    ds.PixelSpacing = ["0", "0"]  # an image no reader can place in space
    broken = tmp_path / "broken.dcm"
    ds.save_as(str(broken))
    with Server(cfg) as server:
        assert scu_send(server.port, [broken], called="NMKIT_THYR") == [0]  # stored fine; the job fails
        wait_for(lambda: _statuses(server)["parked"] == 1, 60, "the job to be parked")
        job = server.store.jobs("parked")[0]
        assert scu_send(server.port, [st["path"]], called="NMKIT") == [0]  # the server keeps serving
    assert job.attempts == 1 and "spacing" in job.reason.lower(), job.reason  # an input error: parked at once, no retries
    assert pacs.received == []


@pytest.mark.slow
def test_kill9_mid_job_exactly_once(tmp_path, models, pacs):
    import yaml

    registry_with(tmp_path / "reg", models, "1.0.0")
    raw = server_config(tmp_path, pacs.port, tmp_path / "reg", lease_seconds=3.0, quiet_seconds=0.3)
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "nmkit", "serve", "--config", str(config)]

    def start(n: int):
        log = tmp_path / f"serve{n}.log"
        proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: proc.poll() is not None or "listening" in log.read_text(), 60, "the server to listen")
        assert proc.poll() is None, log.read_text()
        return proc

    studies = [demo.thyroid_study(tmp_path / "in", s) for s in range(20, 23)]
    proc = start(1)
    try:
        assert scu_send(raw["port"], [s["path"] for s in studies], called="NMKIT_THYR") == [0, 0, 0]
        store = Store(Path(raw["storage"]) / "server.sqlite")
        wait_for(lambda: store.query("SELECT 1 FROM jobs WHERE state='running'"), 60, "a running job", interval=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = {j.id: j.state for j in store.jobs()}
        assert "running" in before.values()  # killed mid-job
        proc = start(2)
        wait_for(lambda: len(store.jobs("done")) == 3, 120, "all jobs done after restart")
        delivered(store, 9)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0
    # every study's results arrived exactly once (the capture PACS counts duplicates)
    uids = [d.SOPInstanceUID for d in pacs.received]
    assert len(uids) == 9 and len(set(uids)) == 9
    for st in studies:
        assert len([d for d in pacs.received if d.StudyInstanceUID == st["study_uid"]]) == 3
    assert max(j.attempts for j in store.jobs()) >= 2  # the killed job ran again


# ----- Orthanc as the PACS ------------------------------------------------------------------------
@pytest.mark.skipif(ORTHANC is None, reason="Orthanc (Debian package orthanc) not installed")
def test_orthanc_thyroid_study_comes_back_as_seg_sr_overlay(tmp_path, models):
    registry_with(tmp_path / "reg", models, "1.0.0")
    our_port = free_port()
    orthanc = OrthancPacs(tmp_path / "orthanc", {"nmkit": ["NMKIT_THYR", "127.0.0.1", our_port]})
    try:
        raw = server_config(tmp_path, orthanc.dicom_port, tmp_path / "reg", port=our_port)
        raw["destinations"]["pacs"]["ae_title"] = "ORTHANC"
        cfg = parse_config(raw, None, tmp_path)
        st = demo.thyroid_study(tmp_path / "in", 50)
        with Server(cfg) as server:
            # the modality stores the study in the PACS; the PACS forwards it to the thyroid AE
            assert scu_send(orthanc.dicom_port, [st["path"]], called="ORTHANC") == [0]
            (study_id,) = orthanc.get("/studies")
            req = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/modalities/nmkit/store", data=study_id.encode(), method="POST")
            urllib.request.urlopen(req, timeout=60).read()
            wait_for(lambda: len(orthanc.get(f"/studies/{study_id}/series")) == 4, 90, "SEG, SR and overlay in Orthanc")
            (job,) = wait_for(lambda: server.store.jobs("done"), 30, "the job to be marked done")
        series = orthanc.get(f"/studies/{study_id}/series?expand")
        by_modality = {s["MainDicomTags"]["Modality"]: s["MainDicomTags"].get("SeriesDescription", "") for s in series}
        assert set(by_modality) == {"NM", "SEG", "SR", "OT"}
        assert by_modality["SEG"] == "AI SEG thyroid v1.0.0" and "v1.0.0" in by_modality["SR"] and "v1.0.0" in by_modality["OT"]
        assert job.model_version == "1.0.0" and job.result["measurements"][0]["area_mm2"] > 500
    finally:
        orthanc.stop()


def test_dask_backend_and_json_logs_without_identifiers(tmp_path, models, pacs):
    import logging

    from nmkit.serve.logs import configure, log

    registry_with(tmp_path / "reg", models, "1.0.0")
    cfg = parse_config(server_config(tmp_path, pacs.port, tmp_path / "reg", dask={"local": True, "n_workers": 1}), None, tmp_path)
    handler = configure(str(tmp_path / "serve.log"), logging.DEBUG)
    try:
        st = demo.thyroid_study(tmp_path / "in", 60)
        with Server(cfg) as server:
            assert server._dask_client is not None
            assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
            (job,) = wait_for(lambda: server.store.jobs("done"), 90, "the job on Dask")
            delivered(server.store, 3)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert len(pacs.by_class(SEG_CLASS)) == 1 and job.result["version"] == "1.0.0"
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    events = {r["event"] for r in lines}
    assert {"dicom_node_started", "stored", "job_queued", "job_started", "sent", "job_done"} <= events
    text = (tmp_path / "serve.log").read_text()
    ds = pydicom.dcmread(str(st["path"]))
    for identifier in (str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert identifier not in text


def test_example_configuration_is_valid():
    from nmkit.serve.config import load_config

    cfg = load_config(ROOT / "examples" / "server.yaml")
    assert [i.name for i in cfg.instances] == ["thyroid", "bone_spect"]
    assert cfg.instance("bone_spect").model_name == "bone_lesions" and cfg.http_port == 8080
    assert cfg.storage == (ROOT / "examples" / "nmkit-server").resolve()
