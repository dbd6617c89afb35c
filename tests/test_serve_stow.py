"""STOW-RS delivery (issue 20, item 2) without a PACS: a tiny HTTP server in the test answers as a DICOMweb server
would (or fails as one does), and the outcomes must be those the outbox acts on: ok, retry (destination down),
failed, permanent (parked at once). Also: the destination's configuration and its secrets, HTTPS verification, and
the running server delivering to an unreachable and to a refusing DICOMweb destination while it keeps serving."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from nmkit.catalog.pull import multipart_parts
from nmkit.errors import InputError
from nmkit.serve import demo
from nmkit.serve.config import Destination, load_config, parse_config
from nmkit.serve.sender import send_with_retry, SendError, try_send
from nmkit.serve.stow import parse_answer, stow
from test_serve_node import free_port, scu_send
from test_serve_server import CaptureSCP, wait_for

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BUNDLE = ROOT / "src" / "nmkit" / "data" / "bundles" / "thyroid-unet2d"


# ----- a DICOMweb server stand-in -------------------------------------------------------------------
class FakeDicomWeb:
    """Answers POST /dicom-web/studies with what the test sets (status, body, content type, delay); keeps every
    request (method, path, headers, body). ``answer=None``: a real-looking 200 that references every posted UID."""

    def __init__(self, tls: tuple[Path, Path] | None = None):
        self.requests: list[dict] = []
        self.answer: tuple[int, str, str, dict] | None = None
        self.delay_s = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(outer.delay_s)
                status, ctype, text, extra = outer.answer or (200, "application/dicom+json", outer.referencing(body, self.headers), {})
                data = text.encode()
                self.send_response(status)
                for k, v in {"Content-Type": ctype, "Content-Length": str(len(data)), **extra}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = _serve

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def referencing(body: bytes, headers) -> str:
        items = []
        for part in multipart_parts(body, headers.get("Content-Type", "")):
            ds = pydicom.dcmread(__import__("io").BytesIO(part), stop_before_pixels=True)
            items.append({"00081150": {"vr": "UI", "Value": [ds.SOPClassUID]}, "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]}})
        return json.dumps({"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ", "Value": items}})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web():
    w = FakeDicomWeb()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studies")
    return [demo.thyroid_study(folder, s) for s in (1, 2)]


def dest(url: str, **kw) -> Destination:
    return Destination(name="web", kind="dicomweb", url=url, **kw)


def failed_json(uid: str, reason: int) -> str:
    return json.dumps({"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]},
                                                           "00081197": {"vr": "US", "Value": [reason]}}]}})


# ----- the request --------------------------------------------------------------------------------------
def test_posts_the_files_as_multipart_related_with_basic_auth(web, studies, monkeypatch):
    monkeypatch.setenv("NMKIT_TEST_STOW_PW", "s3cret-pw")
    d = dest(web.url, auth={"type": "basic", "username": "nmkit", "password_env": "NMKIT_TEST_STOW_PW"})
    paths = [s["path"] for s in studies]
    assert stow(d, paths, timeout_s=5) == [("ok", ""), ("ok", "")]
    (req,) = web.requests
    assert req["method"] == "POST" and req["path"] == "/dicom-web/studies"
    ctype = req["headers"]["Content-Type"]
    assert ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    assert "application/dicom+json" in req["headers"]["Accept"]
    assert multipart_parts(req["body"], ctype) == [Path(p).read_bytes() for p in paths]  # the Part-10 files, byte for byte
    scheme, token = req["headers"]["Authorization"].split()
    assert scheme == "Basic" and base64.b64decode(token).decode() == "nmkit:s3cret-pw"


def test_bearer_token_is_read_at_each_try_and_never_shown(web, studies, tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    d = dest(web.url, auth={"type": "bearer", "token_file": str(token)})
    assert try_send(d, studies[0]["path"], "NMKIT") == ("ok", "")
    token.write_text("tok-2")  # rotated: no restart needed
    assert try_send(d, studies[0]["path"], "NMKIT") == ("ok", "")
    assert [r["headers"]["Authorization"] for r in web.requests] == ["Bearer tok-1", "Bearer tok-2"]
    web.answer = (401, "application/json", json.dumps({"Message": "Bad credentials"}), {})
    outcome, why = try_send(d, studies[0]["path"], "NMKIT")
    assert outcome == "retry" and "HTTP 401" in why and "auth" in why and "tok-2" not in why
    token.unlink()  # the secret disappears: the destination waits (retry), the reason names the file, not a value
    outcome, why = try_send(d, studies[0]["path"], "NMKIT")
    assert outcome == "retry" and "token_file" in why and str(token) in why and len(web.requests) == 3


# ----- the answer -> outbox outcomes --------------------------------------------------------------------
def test_each_answer_becomes_the_outcome_the_outbox_acts_on(web, studies):
    uid = studies[0]["sop_uid"]
    d = dest(web.url, timeout_seconds=5)
    cases = [
        ((409, "application/dicom+json", failed_json(uid, 0xC000), {}), "permanent", ["HTTP 409", "0xC000 (cannot understand)"]),
        ((400, "application/json", json.dumps({"HttpError": "Bad Request", "Message": "Bad file format"}), {}), "permanent",
         ["HTTP 400", "Bad file format"]),
        ((415, "text/plain", "unsupported media type", {}), "permanent", ["HTTP 415", "unsupported media type"]),
        ((409, "application/dicom+json", failed_json(uid, 0xA700), {}), "retry", ["0xA700 (out of resources)"]),
        ((202, "application/dicom+json", failed_json(uid, 0x0110), {}), "failed", ["HTTP 202", "0x0110 (processing failure)"]),
        ((503, "text/html", "<html>down for maintenance</html>", {}), "retry", ["HTTP 503"]),
        ((500, "application/json", "{}", {}), "retry", ["HTTP 500"]),
        ((429, "text/plain", "slow down", {}), "retry", ["HTTP 429", "slow down"]),
        ((404, "text/plain", "", {}), "retry", ["HTTP 404", "check url"]),
        ((403, "text/plain", "", {}), "retry", ["HTTP 403", "auth"]),
        ((302, "text/plain", "", {"Location": "https://elsewhere/dicom-web/studies"}), "retry",
         ["HTTP 302", "redirected to https://elsewhere/dicom-web/studies", "not followed"]),
        ((202, "application/dicom+json", json.dumps({"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [uid]}, "00081196": {"vr": "US", "Value": [0xB000]}}]}}), {}), "ok", []),
        ((202, "application/dicom+json", json.dumps({"00081199": {"vr": "SQ", "Value": []}}), {}), "failed", ["not in the server's answer"]),
    ]
    for answer, outcome, parts in cases:
        web.answer = answer
        got, why = try_send(d, studies[0]["path"], "NMKIT")
        assert got == outcome, (answer[0], got, why)
        for part in parts:
            assert part in why, (answer[0], why)
        assert "\n" not in why
    assert all(r["method"] == "POST" for r in web.requests)  # the redirect was not followed as a GET
    assert len(web.requests) == len(cases)


def test_xml_answers_are_read_too():
    xml = ('<?xml version="1.0"?><NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
           '<DicomAttribute tag="00081198" vr="SQ"><Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3'
           '</Value></DicomAttribute><DicomAttribute tag="00081197" vr="US"><Value number="1">49152</Value></DicomAttribute></Item>'
           '</DicomAttribute><DicomAttribute tag="00081199" vr="SQ"><Item number="1"><DicomAttribute tag="00081155" vr="UI">'
           '<Value number="1">1.2.4</Value></DicomAttribute></Item></DicomAttribute></NativeDicomModel>')
    answer = parse_answer(202, "Accepted", "application/dicom+xml", xml.encode())
    assert answer.failed == {"1.2.3": 0xC000} and answer.referenced == {"1.2.4": None}


def test_several_instances_in_one_request_get_their_own_outcomes(web, studies, tmp_path):
    uids = [s["sop_uid"] for s in studies]
    web.answer = (202, "application/dicom+json", json.dumps({
        "00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uids[1]]}, "00081197": {"vr": "US", "Value": [0xC122]}}]},
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uids[0]]}}]}}), {})
    (tmp_path / "notdicom.dcm").write_bytes(b"\0" * 200)
    out = stow(dest(web.url), [studies[0]["path"], studies[1]["path"], tmp_path / "notdicom.dcm", tmp_path / "gone.dcm"], timeout_s=5)
    assert out[0] == ("ok", "")
    assert out[1][0] == "failed" and "0xC122 (transfer syntax not supported)" in out[1][1]
    assert out[2][0] == "failed" and "not a readable DICOM file" in out[2][1] and "force=True" not in out[2][1]
    assert out[3] == ("permanent", f"result file {tmp_path / 'gone.dcm'} is missing")
    assert len(multipart_parts(web.requests[0]["body"], web.requests[0]["headers"]["Content-Type"])) == 2  # only the DICOM files


def test_unreachable_and_silent_servers_are_retried(web, studies):
    outcome, why = try_send(dest(f"http://127.0.0.1:{free_port()}/dicom-web"), studies[0]["path"], "NMKIT", timeout_s=2)
    assert outcome == "retry" and "connection refused" in why and "cannot reach web" in why
    web.delay_s = 3.0
    t0 = time.monotonic()
    outcome, why = try_send(dest(web.url, timeout_seconds=0.5), studies[0]["path"], "NMKIT", timeout_s=30)
    assert outcome == "retry" and ("timed out" in why or "within 0.5 s" in why), why
    assert time.monotonic() - t0 < 2.5  # the destination's own timeout applied, not the 30 s default
    with pytest.raises(SendError, match="after 2 attempt"):
        send_with_retry(dest(f"http://127.0.0.1:{free_port()}/dicom-web"), studies[0]["path"], "NMKIT", attempts=2, base_delay_s=0.01)


def _self_signed_for_ip(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = folder / "web.pem", folder / "web.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_is_verified_unless_told_otherwise(studies, tmp_path):
    cert, key = _self_signed_for_ip(tmp_path)
    server = FakeDicomWeb(tls=(cert, key))
    try:
        outcome, why = try_send(dest(server.url), studies[0]["path"], "NMKIT", timeout_s=5)
        assert outcome == "retry" and "certificate verify failed" in why and "tls.ca" in why
        assert try_send(dest(server.url, tls={"ca": str(cert)}), studies[0]["path"], "NMKIT", timeout_s=5) == ("ok", "")
        assert try_send(dest(server.url, tls={"verify": False}), studies[0]["path"], "NMKIT", timeout_s=5) == ("ok", "")
        assert len(server.requests) == 2
    finally:
        server.stop()


# ----- configuration ------------------------------------------------------------------------------------
BASE = {"instances": [{"name": "a", "ae_title": "A", "destinations": ["web"]}]}


def _conf(web: dict) -> dict:
    return {**BASE, "destinations": {"web": web}}


def test_dicomweb_destination_config(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "stow.token").write_text("abc")
    cfg = parse_config(_conf({"kind": "dicomweb", "url": "https://pacs.example:8042/dicom-web/", "timeout_seconds": 12,
                              "auth": {"type": "bearer", "token_file": "secrets/stow.token"}, "tls": {"ca": "secrets/stow.token"}}),
                       "server.yaml", tmp_path)
    d = cfg.destinations["web"]
    assert (d.kind, d.url, d.timeout_seconds) == ("dicomweb", "https://pacs.example:8042/dicom-web", 12)
    assert d.auth["token_file"] == str(tmp_path / "secrets" / "stow.token") and d.tls["ca"] == str(tmp_path / "secrets" / "stow.token")
    assert "abc" not in json.dumps(cfg.to_dict()) and "abc" not in repr(cfg)  # only where the secret is, never its value
    # a C-STORE destination is unchanged (kind defaults to dicom)
    assert parse_config({**BASE, "destinations": {"web": {"ae_title": "PACS", "port": 104}}}, None, tmp_path).destinations["web"].kind == "dicom"


@pytest.mark.parametrize("web, message", [
    ({"kind": "stow"}, "destinations.web.kind: must be one of ['dicom', 'dicomweb'], got 'stow'"),
    ({"kind": "dicomweb"}, "destinations.web.url: a DICOMweb destination needs the STOW-RS base URL"),
    ({"kind": "dicomweb", "url": "ftp://pacs/dicom-web"}, "destinations.web.url: must be an http:// or https:// URL"),
    ({"kind": "dicomweb", "url": "http://u:pw@pacs/dicom-web"}, "destinations.web.url: credentials in the URL are not allowed"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "ae_title": "X"}, "destinations.web: unknown key(s) ['ae_title'] for kind dicomweb"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "timeout_seconds": 0}, "destinations.web.timeout_seconds: must be a number"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "tls": {"verify": False}}, "destinations.web.tls: given for a plain http:// URL"),
    ({"kind": "dicomweb", "url": "https://pacs/dicom-web", "tls": {"verify": "no"}}, "destinations.web.tls.verify: expected true or false"),
    ({"kind": "dicomweb", "url": "https://pacs/dicom-web", "tls": {"ca": "missing.pem"}}, "destinations.web.tls.ca: file"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "auth": {"type": "digest"}}, "destinations.web.auth.type: must be basic or bearer"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "auth": {"type": "basic", "username": "u", "password": "hunter2"}},
     "destinations.web.auth.password: secrets are not written in the configuration; use password_env or password_file"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "auth": {"type": "basic", "password_env": "NMKIT_TEST_SET"}},
     "destinations.web.auth.username: basic authentication needs a user name"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "auth": {"type": "bearer", "token_env": "NMKIT_TEST_UNSET_VAR"}},
     "destinations.web.auth.token_env: environment variable NMKIT_TEST_UNSET_VAR is not set"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "auth": {"type": "bearer", "token_file": "nope.token"}},
     "destinations.web.auth.token_file: file"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "auth": {"type": "bearer", "token_env": "A", "token_file": "b"}},
     "destinations.web.auth: give exactly one of token_env or token_file"),
    ({"ae_title": "PACS"}, "destinations.web.port: a C-STORE destination needs a port 1-65535, got None"),
    ({"ae_title": "PACS", "port": 104, "url": "http://x"}, "destinations.web: unknown key(s) ['url'] for kind dicom"),
])
def test_bad_destination_is_one_line_naming_file_and_key(tmp_path, monkeypatch, web, message):
    monkeypatch.setenv("NMKIT_TEST_SET", "pw")
    monkeypatch.delenv("NMKIT_TEST_UNSET_VAR", raising=False)
    path = tmp_path / "server.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_conf(web)))
    with pytest.raises(InputError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text
    assert "not defined under 'destinations'" not in text  # the bad destination is not also reported as missing
    assert "hunter2" not in text


# ----- the server: outbox with DICOMweb destinations ------------------------------------------------------
def _copy_as_result(spec: dict) -> dict:
    """Stands in for the model (the delivery path is under test here; the Orthanc test runs the real one): the
    received image itself is the job's one result."""
    out = Path(spec["out_dir"]) / "seg.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(spec["files"][0], out)
    return {"outputs": {"seg": {"path": str(out), "sop_uid": str(pydicom.dcmread(out, stop_before_pixels=True).SOPInstanceUID)}},
            "measurements": [], "model": spec["model_name"], "version": spec["version"]}


def test_server_parks_unreachable_and_refusing_dicomweb_destinations_and_keeps_serving(tmp_path, web, monkeypatch):
    """One instance, three destinations: a C-STORE PACS (up), a DICOMweb server nobody listens for (retried with
    back-off, then parked at the horizon with the reason), and one that answers 409 (parked at once)."""
    from nmkit.serve import registry as registry_mod
    from nmkit.serve import server as server_mod

    monkeypatch.setattr(registry_mod, "check_bundle", lambda bundle: None)  # no torch import: the model is not used
    monkeypatch.setattr(server_mod, "compute_outputs", _copy_as_result)
    reg = registry_mod.Registry(tmp_path / "reg")
    reg.register("thyroid", SHIPPED_BUNDLE, version="1.0.0")
    reg.promote("thyroid", "1.0.0")
    Server = server_mod.Server
    pacs = CaptureSCP()
    web.answer = (409, "application/dicom+json", json.dumps({"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["x"]}, "00081197": {"vr": "US", "Value": [0xC000]}}]}}), {})
    raw = {"ae_title": "NMKIT", "port": free_port(), "storage": str(tmp_path / "srv"), "registry": str(tmp_path / "reg"),
           "allowed_calling_aets": ["SCU"], "quiet_seconds": 0.3, "poll_seconds": 0.05, "lease_seconds": 10.0,
           "send_retry_base_seconds": 0.1, "send_max_backoff_seconds": 0.3, "send_timeout_seconds": 2.0,
           "send_horizon_hours": 3.0 / 3600, "http": {"port": 0},
           "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                            "down": {"kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"},
                            "refusing": {"kind": "dicomweb", "url": web.url}},
           "instances": [{"name": "thyroid", "ae_title": "NMKIT_THYR", "match": {"modality": "NM"}, "outputs": ["seg"],
                          "destinations": ["pacs", "down", "refusing"]}]}
    cfg = parse_config(raw, None, tmp_path)
    study = [demo.thyroid_study(tmp_path / "in", s) for s in (5, 6)]
    try:
        with Server(cfg) as server:
            assert scu_send(server.port, [study[0]["path"]], called="NMKIT_THYR") == [0]

            def rows(dest: str) -> list[dict]:
                return [r for r in server.store.outbox() if r["destination"] == dest]

            wait_for(lambda: len(rows("refusing")) == 1 and rows("refusing")[0]["state"] == "parked", 30, "the 409 parked")
            assert all(r["attempts"] == 1 and "HTTP 409" in r["last_error"] and "0xC000" not in r["last_error"] for r in rows("refusing"))
            wait_for(lambda: len(rows("down")) == 1 and rows("down")[0]["state"] == "parked", 30, "the horizon")
            assert all("connection refused" in r["last_error"] for r in rows("down"))
            assert rows("down")[0]["attempts"] >= 3  # retried with back-off before the horizon
            status = server.status()
            assert status["destinations"]["down"]["reachable"] is False and "connection refused" in status["destinations"]["down"]["last_error"]
            assert status["destinations"]["down"]["parked"] == 1 and status["destinations"]["refusing"]["parked"] == 1
            # the server keeps serving: a second study is segmented and reaches the PACS
            assert scu_send(server.port, [study[1]["path"]], called="NMKIT_THYR") == [0]
            wait_for(lambda: sum(r["state"] == "sent" for r in rows("pacs")) == 2, 30, "both studies at the PACS")
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/health", timeout=10).read())
            assert health["status"] == "ok"
            assert [j.attempts for j in server.store.jobs()] == [1, 1]  # delivery failures never re-run the model
    finally:
        pacs.stop()
    assert sorted(d.SOPInstanceUID for d in pacs.received) == sorted(st["sop_uid"] for st in study)
