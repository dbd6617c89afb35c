"""Operations of the DICOM AI server: configuration paths and problems, model registration checks, the durable
outbox through a destination outage (exactly once, no re-inference), `nmkit jobs`, multi-image planar series,
and the HTTP endpoint (token, /health, /metrics, bounded threads). All on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml

from nmkit.cli import main
from nmkit.errors import InputError
from nmkit.serve import demo
from nmkit.serve.config import load_config, parse_config
from nmkit.serve.registry import Registry
from nmkit.serve.server import Server
from orthanc_pacs import ORTHANC, OrthancPacs
from test_serve_node import free_port, scu_send
from test_serve_server import SEG_CLASS, SR_CLASS, CaptureSCP, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A quickly trained thyroid bundle (the outputs, not the quality, matter here)."""
    return demo.train_thyroid_bundle(tmp_path_factory.mktemp("bundle") / "b", epochs=1, n_train=4)


def config(tmp_path: Path, dest_port: int, registry: Path, **extra) -> dict:
    cfg = {"ae_title": "NMKIT", "port": free_port(), "storage": str(tmp_path / "srv"), "registry": str(registry),
           "allowed_calling_aets": ["SCU"], "quiet_seconds": 0.3, "poll_seconds": 0.05, "lease_seconds": 10.0,
           "send_retry_base_seconds": 0.2, "send_max_backoff_seconds": 0.5, "send_timeout_seconds": 5.0,
           "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": dest_port}},
           "instances": [{"name": "thyroid", "ae_title": "NMKIT_THYR", "match": {"modality": "NM"}, "outputs": ["seg", "sr"],
                          "destinations": ["pacs"]}]}
    cfg.update(extra)
    return cfg


def registry(path: Path, bundle: Path) -> Path:
    reg = Registry(path)
    reg.register("thyroid", bundle)
    reg.promote("thyroid", "1.0.0")
    return path


# ----- configuration ------------------------------------------------------------------------------
def test_paths_relative_to_the_config_file_and_folders_created(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc" / "nmkit"
    conf_dir.mkdir(parents=True)
    raw = config(tmp_path, 104, Path("registry"), storage="data", log_file="logs/serve.log")
    (conf_dir / "server.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # elsewhere
    assert main(["serve", "--config", str(conf_dir / "server.yaml"), "--check"]) == 0
    cfg = load_config(conf_dir / "server.yaml")
    assert cfg.log_file == str(conf_dir / "logs" / "serve.log") and cfg.storage == conf_dir / "data"
    assert (conf_dir / "logs").is_dir() and (conf_dir / "data").is_dir() and (conf_dir / "registry").is_dir()
    # the shipped example resolves its log next to itself
    ex = load_config(ROOT / "examples" / "server.yaml")
    assert Path(ex.log_file).parent == (ROOT / "examples" / "nmkit-server").resolve()


def test_every_config_problem_is_named(tmp_path):
    raw = config(tmp_path, 104, tmp_path / "reg", port=70000, resend_policy="maybe", allowed_ips=["10.0.0.300"])
    raw["instances"].append({"name": "lonely", "ae_title": "LONELY"})
    with pytest.raises(InputError) as info:
        parse_config(raw, "server.yaml", tmp_path)
    text = str(info.value)
    assert text.startswith("server.yaml: 4 problems") and "\n" not in text
    for part in ("port must be 0-65535", "resend_policy", "10.0.0.300", "'lonely' has no destinations"):
        assert part in text


def test_model_register_checks_the_bundle_and_promote_records_refusals(tmp_path, bundle, capsys):
    raw = config(tmp_path, 104, tmp_path / "reg")
    raw["instances"][0]["validation"] = str(tmp_path / "missing.csv")
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(raw))
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    for w in broken.glob("*.safetensors"):
        w.write_bytes(b"not weights")
    assert main(["model", "--config", str(path), "register", "thyroid", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert Registry(tmp_path / "reg").versions("thyroid") == []
    assert main(["model", "--config", str(path), "register", "thyroid", str(bundle)]) == 0
    # the first promotion runs the gate too: here its manifest is missing -> refused with the reason, recorded
    assert main(["model", "--config", str(path), "promote", "thyroid", "1.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err
    assert main(["model", "--config", str(path), "promote", "thyroid", "9.9.9"]) == 2
    history = Registry(tmp_path / "reg").history("thyroid")
    assert [h["action"] for h in history] == ["register", "refused", "refused"]
    assert "no registered version" in json.loads(history[-1]["detail"])["error"]
    assert Registry(tmp_path / "reg").current("thyroid").version is None


# ----- outbox, jobs, multi-image series ------------------------------------------------------------
def _deliveries(store) -> dict:
    return {r["state"]: r["n"] for r in store.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")}


def test_results_wait_for_the_pacs_then_arrive_exactly_once(tmp_path, bundle, capsys):
    port = free_port()  # nothing listens there yet: the PACS is down
    raw = config(tmp_path, port, registry(tmp_path / "reg", bundle), http={"port": 0})
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, None, tmp_path)
    studies = [demo.thyroid_study(tmp_path / "in", s) for s in range(3)]
    with Server(cfg) as server:
        for st in studies:
            assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
        wait_for(lambda: len(server.store.jobs("done")) == 3, 60, "inference of the 3 studies")
        wait_for(lambda: not server.destination_state["pacs"]["reachable"], 20, "the PACS to be seen down")
        base = f"http://127.0.0.1:{server.http_port}"
        status = json.loads(urllib.request.urlopen(base + "/status", timeout=10).read())
        assert status["destinations"]["pacs"]["reachable"] is False and status["destinations"]["pacs"]["pending"] == 6
        assert "nmkit_destination_up{destination=\"pacs\"} 0" in urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
        time.sleep(1.0)  # several back-off rounds
        pacs = CaptureSCP.__new__(CaptureSCP)
        _start_capture(pacs, port)  # the PACS comes back
        try:
            wait_for(lambda: _deliveries(server.store).get("sent") == 6, 30, "all results delivered")
            time.sleep(0.5)
        finally:
            pacs.stop()
        jobs = server.store.jobs()
    uids = [d.SOPInstanceUID for d in pacs.received]
    assert len(uids) == 6 and len(set(uids)) == 6  # exactly once
    assert len(pacs.by_class(SEG_CLASS)) == 3 and len(pacs.by_class(SR_CLASS)) == 3
    assert [j.attempts for j in jobs] == [1, 1, 1]  # the model ran once per study
    rows = server.store.outbox()
    assert all(r["state"] == "sent" for r in rows) and max(r["attempts"] for r in rows) >= 2  # tried while down, then sent
    # `nmkit jobs`: list and show
    assert main(["jobs", "--config", str(tmp_path / "server.yaml"), "list"]) == 0
    out = capsys.readouterr().out
    assert "3 job(s)" in out and out.count("2 sent") == 3
    assert main(["jobs", "--config", str(tmp_path / "server.yaml"), "show", jobs[0].id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "done" and {d["state"] for d in shown["deliveries"]} == {"sent"}


def _start_capture(pacs: CaptureSCP, port: int) -> None:
    """A CaptureSCP on a given port (the PACS returning on its old address)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    pacs.received, pacs.lock, pacs.port = [], threading.Lock(), port
    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        with pacs.lock:
            pacs.received.append(ds)
        return 0x0000

    pacs.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def test_parked_deliveries_requeue_and_cancel(tmp_path, bundle, capsys):
    port = free_port()
    raw = config(tmp_path, port, registry(tmp_path / "reg", bundle), send_horizon_hours=1.5 / 3600, workers=1)
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, None, tmp_path)
    studies = [demo.thyroid_study(tmp_path / "in", s) for s in (10, 11)]
    with Server(cfg) as server:
        for st in studies:
            assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
        wait_for(lambda: _deliveries(server.store).get("parked") == 4, 30, "deliveries parked after the horizon")
        status = server.status()
        assert len(status["parked_deliveries"]) == 4 and status["parked_deliveries"][0]["reason"]
        (a, b) = server.store.jobs()
        assert main(["jobs", "--config", str(path), "list", "--undelivered"]) == 0
        assert capsys.readouterr().out.count("2 parked") == 2
        assert main(["jobs", "--config", str(path), "cancel", b.id]) == 0
        pacs = CaptureSCP.__new__(CaptureSCP)
        _start_capture(pacs, port)
        try:
            assert main(["jobs", "--config", str(path), "requeue", a.id]) == 0
            assert "model does not run again" in capsys.readouterr().out
            wait_for(lambda: _deliveries(server.store).get("sent") == 2, 30, "the requeued deliveries")
            time.sleep(0.5)
        finally:
            pacs.stop()
        assert server.store.job(a.id).attempts == 1 and server.store.job(b.id).state == "done"
        assert _deliveries(server.store) == {"sent": 2, "cancelled": 2}
    assert len(pacs.received) == 2 and {d.StudyInstanceUID for d in pacs.received} == {studies[0]["study_uid"]}
    assert main(["jobs", "--config", str(path), "requeue", "nope"]) == 2


def test_multi_image_planar_series_gives_one_result_per_image(tmp_path, bundle, pacs):
    raw = config(tmp_path, pacs.port, registry(tmp_path / "reg", bundle))
    raw["instances"][0]["outputs"] = ["seg"]
    cfg = parse_config(raw, None, tmp_path)
    base = demo.thyroid_study(tmp_path / "in", 30)
    files = []
    for k, seed in enumerate((30, 31, 32, 33), start=1):  # one planar series, four views (different acquisitions)
        st = demo.thyroid_study(tmp_path / "views", seed)
        ds = pydicom.dcmread(str(st["path"]))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = base["study_uid"], base["series_uid"]
        ds.InstanceNumber = k
        files.append(tmp_path / f"view{k}.dcm")
        ds.save_as(str(files[-1]))
    with Server(cfg) as server:
        assert scu_send(server.port, files, called="NMKIT_THYR") == [0] * 4
        (job,) = wait_for(lambda: server.store.jobs("done"), 60, "the series job")
        wait_for(lambda: len(pacs.by_class(SEG_CLASS)) == 4, 30, "four SEGs")
    segs = pacs.by_class(SEG_CLASS)
    sources = {d.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID for d in segs}
    assert sources == {pydicom.dcmread(str(f)).SOPInstanceUID for f in files}  # one SEG per image
    assert len({d.SOPInstanceUID for d in segs}) == 4 and job.result["images"] == 4
    assert sorted({m["image"] for m in job.result["measurements"]}) == [1, 2, 3, 4]


def test_retention_purges_inputs_and_results_of_delivered_jobs_only(tmp_path, bundle, pacs):
    raw = config(tmp_path, pacs.port, registry(tmp_path / "reg", bundle))
    cfg = parse_config(raw, None, tmp_path)
    study = demo.thyroid_study(tmp_path / "in", 40)
    with Server(cfg) as server:
        assert scu_send(server.port, [study["path"]], called="NMKIT_THYR") == [0]
        (job,) = wait_for(lambda: server.store.jobs("done"), 60, "the job")
        wait_for(lambda: _deliveries(server.store).get("sent") == 2, 30, "both results delivered")
        inputs = server.store.series_files(job.instance, job.series_uid)
        results = Path(cfg.storage) / "results" / job.id
        assert inputs and all(Path(f).is_file() for f in inputs) and results.is_dir()
        assert server.store.purge_finished(3600, Path(cfg.storage)) == 0  # finished less than an hour ago: kept
        assert server.store.purge_finished(0, Path(cfg.storage), now=time.time() + 1) == 1
        assert not any(Path(f).exists() for f in inputs) and not results.exists()
        assert server.store.purge_finished(0, Path(cfg.storage), now=time.time() + 1) == 0  # once only
        (after,) = server.store.jobs("done")
        assert after.result.get("purged") is True and len(pacs.by_class(SEG_CLASS)) == 1  # the PACS keeps its copy


@pytest.fixture
def pacs():
    p = CaptureSCP()
    yield p
    p.stop()


# ----- HTTP ------------------------------------------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def test_http_token_health_metrics_and_bounded_threads(tmp_path, bundle, monkeypatch):
    raw = config(tmp_path, free_port(), registry(tmp_path / "reg", bundle), http={"port": 0, "token": "s3cret", "threads": 2})
    cfg = parse_config(raw, None, tmp_path)
    with Server(cfg) as server:
        base = f"http://127.0.0.1:{server.http_port}"
        assert _get(base + "/status")[0] == 401 and _get(base + "/metrics", "wrong")[0] == 401
        code, body = _get(base + "/status", "s3cret")
        assert code == 200 and json.loads(body)["ae_title"] == "NMKIT"
        code, body = _get(base + "/metrics", "s3cret")
        assert code == 200 and "nmkit_jobs{state=\"done\"} 0" in body and "nmkit_free_disk_bytes" in body
        code, body = _get(base + "/health")
        checks = json.loads(body)["checks"]
        assert code == 200 and checks["dicom_listener"] is True and checks["database"] is True and checks["free_disk_mb"] > 0
        # a (simulated) full disk makes /health fail
        monkeypatch.setattr(server.node, "free_bytes", lambda: 0)
        code, body = _get(base + "/health")
        assert code == 503 and json.loads(body)["checks"]["disk"] is False
        monkeypatch.undo()
        # idle connections hold at most `threads` threads; the rest are answered 503 at once
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(10)]
        time.sleep(0.5)
        assert threading.active_count() - before <= 2
        idle[-1].settimeout(5)
        assert idle[-1].recv(100).startswith(b"HTTP/1.0 503")
        for s in idle:
            s.close()
        wait_for(lambda: _get(base + "/health")[0] == 200, 15, "the endpoint free again")
    assert server.http is not None


# ----- Orthanc outage during a stream (slow) ---------------------------------------------------------
OUTAGE_STUDIES = 50  # the acceptance: 50 studies, the PACS down for 2 minutes in the middle of the stream
OUTAGE_SECONDS = 120


@pytest.mark.slow
@pytest.mark.skipif(ORTHANC is None, reason="Orthanc not installed")
def test_orthanc_outage_during_a_stream(tmp_path, bundle):
    orthanc = OrthancPacs(tmp_path / "orthanc", name="nmkit-outage")
    dicom_port, http_port = orthanc.dicom_port, orthanc.http_port
    raw = config(tmp_path, dicom_port, registry(tmp_path / "reg", bundle), send_retry_base_seconds=1.0, send_max_backoff_seconds=4.0)
    raw["destinations"]["pacs"]["ae_title"] = "ORTHANC"
    cfg = parse_config(raw, None, tmp_path)
    studies = [demo.thyroid_study(tmp_path / "in", s) for s in range(100, 100 + OUTAGE_STUDIES)]
    try:
        with Server(cfg) as server:
            for i, st in enumerate(studies):
                assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
                if i == 3:
                    wait_for(lambda: _deliveries(server.store).get("sent", 0) >= 2, 60, "the first deliveries")
                    orthanc.stop()  # the PACS goes down in the middle of the stream
                    down = time.time()
                time.sleep(0.5)
            wait_for(lambda: len(server.store.jobs("done")) == OUTAGE_STUDIES, 300, "inference of all studies")
            assert not server.destination_state["pacs"]["reachable"]
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.time() - down)))
            orthanc = OrthancPacs(tmp_path / "orthanc", dicom_port=dicom_port, http_port=http_port, name="nmkit-outage")
            wait_for(lambda: _deliveries(server.store).get("sent") == 2 * OUTAGE_STUDIES, 180,
                     "every result after the PACS returned")
            jobs = server.store.jobs()
        studies_in_pacs = json.loads(_get(f"http://127.0.0.1:{http_port}/studies?expand")[1])
        assert len(studies_in_pacs) == OUTAGE_STUDIES
        for s in studies_in_pacs:
            assert len(s["Series"]) == 2  # SEG and SR, each once
        instances = json.loads(_get(f"http://127.0.0.1:{http_port}/instances")[1])
        assert len(instances) == 2 * OUTAGE_STUDIES
        assert [j.attempts for j in jobs] == [1] * OUTAGE_STUDIES  # inference once per study
        sent_events = server.store.query("SELECT COUNT(*) AS n FROM sent")[0]["n"]
        assert sent_events == 2 * OUTAGE_STUDIES
    finally:
        orthanc.stop()


def test_log_rotation_and_a_full_disk_do_not_spill_tracebacks(tmp_path, capsys):
    import logging

    from nmkit.serve.logs import configure, dropped_lines, event, log

    handler = configure(str(tmp_path / "serve.log"), logging.INFO, max_mb=0.001, backups=2)  # rotate every ~1 kB
    try:
        for i in range(40):
            event("stored", calling_ae="SCU", i=i)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["serve.log", "serve.log.1", "serve.log.2"]
        assert all(json.loads(line)["event"] == "stored" for line in (tmp_path / "serve.log").read_text().splitlines())
        before = dropped_lines()

        def full(*a, **k):
            raise OSError(28, "No space left on device")

        handler.stream.write = full  # the disk is full
        event("store_refused", logging.WARNING, reason="disk")
        event("store_refused", logging.WARNING, reason="disk")
        assert dropped_lines() == before + 2
        del handler.stream.write  # space again: logging resumes
        event("recovered")
        handler.flush()
        assert json.loads((tmp_path / "serve.log").read_text().splitlines()[-1])["event"] == "recovered"
    finally:
        log.removeHandler(handler)
        handler.close()
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err and "Traceback" not in captured.err + captured.out


def test_real_gamma_camera_image_with_impossible_birth_date_gives_a_seg(external_data, tmp_path):
    """A real Mediso planar image (PatientBirthDate '00000000'): the SEG builds on the source grid; the file stays as sent."""
    import numpy as np

    from conftest import need
    from nmkit.io.image import Mask
    from nmkit.serve.outputs import ModelTag, make_seg
    from nmkit.serve.worker import planar_units, read_series

    src = need(external_data, "qc_phantoms/nmqc_mediso_gammacamera/images/FourBar.dcm")
    assert pydicom.dcmread(str(src), stop_before_pixels=True).PatientBirthDate == "00000000"
    assert planar_units([str(src)]) == [[str(src)]]
    image, datasets = read_series([str(src)])
    assert datasets[0].PatientBirthDate == ""
    arr = np.zeros(image.array.shape[-2:], dtype=np.uint8)
    arr[200:300, 220:260] = 1
    mask = Mask(array=arr, spacing=tuple(image.spacing[-2:]), labels={1: "thyroid"})
    seg = make_seg(mask, image, datasets, tmp_path / "seg.dcm", ModelTag("thyroid", "1.0.0"), "job-1")
    assert (seg.Rows, seg.Columns) == arr.shape and int(pydicom.dcmread(str(tmp_path / "seg.dcm")).pixel_array.sum()) == int(arr.sum())
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == datasets[0].SOPInstanceUID
