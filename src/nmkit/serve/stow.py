"""STOW-RS delivery (DICOMweb Store Instances, PS3.18 10.5) for the server's outbox; HTTP through urllib only.

One POST to ``{url}/studies`` carries one or several DICOM Part-10 files as ``multipart/related;
type="application/dicom"``. The answer (HTTP status and, when the server returns one, the Store Instances Response
in DICOM JSON or XML: ReferencedSOPSequence, FailedSOPSequence with FailureReason) becomes one outcome per file,
with the meanings of the C-STORE sender (:func:`nmkit.serve.sender.try_send`), so the outbox's back-off, horizon and
parking work unchanged:

- ``ok``: HTTP 200 (all stored); 202 with the instance in the ReferencedSOPSequence (a warning is a success, as
  C-STORE's 0xBxxx).
- ``retry``: the destination is down, busy, or refuses nmkit itself, so all its results wait together: no
  connection, timeout, TLS failure, HTTP 5xx, 408, 429, a redirect (never followed: a POST must not turn into a
  GET), 401/403 (credentials: once fixed, delivery resumes without re-queueing, as after a rejected C-STORE
  association), 404/405 (no STOW-RS service at that URL: a configuration error), failure reason 0xA7xx (out of
  resources).
- ``permanent``: any other 4xx (400, 409, 413, 415, ...): the server refuses this request's content; parked at
  once with the reason (the failure reason of the instance when the answer lists it).
- ``failed``: a failure reason for one instance of a 200/202 answer, as a C-STORE refusal status (retried on its
  own back-off until the horizon); also a file that is not DICOM.

Credentials come from the destination's ``auth`` (an environment variable or a file, read at each try); they are
sent only in the Authorization header and never appear in a reason, a log line or an error.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from .config import Destination
from .outcomes import status_outcome

#: PS3.18 Table 10.5.3-1 / PS3.4 C-STORE statuses a STOW-RS server may give as FailureReason (0008,1197)
FAILURE_REASONS = {0x0110: "processing failure", 0x0111: "duplicate SOP instance", 0x0122: "SOP class not supported",
                   0x0124: "not authorized", 0xA700: "out of resources", 0xA900: "data set does not match SOP class",
                   0xC000: "cannot understand", 0xC122: "transfer syntax not supported"}
RETRY_HTTP = {408, 429}  # request timeout, too many requests: come back later
DESTINATION_HTTP = {401: "check the destination's auth", 403: "check the destination's auth and its permissions",
                    404: "no STOW-RS service at this URL; check url", 405: "this URL does not accept STOW-RS; check url"}
MAX_ANSWER_BYTES = 4 * 2**20


class StowError(OSError):
    """The STOW-RS request did not get an HTTP answer (or its credentials could not be read)."""


@dataclass
class StowAnswer:
    """The server's answer: HTTP status, and per SOP Instance UID the stored ones (with a warning code or None)
    and the failed ones (with their failure reason or None)."""

    status: int
    phrase: str = ""
    referenced: dict[str, int | None] = field(default_factory=dict)
    failed: dict[str, int | None] = field(default_factory=dict)
    message: str = ""  # a short text the server gave (e.g. Orthanc's "Message"), for the reason
    location: str = ""  # a redirect's target


# ----- request ------------------------------------------------------------------------------------------
def multipart_body(parts: list[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """The ``multipart/related; type="application/dicom"`` body of ``parts`` and its Content-Type (RFC 2387)."""
    while boundary is None or any(f"--{boundary}".encode() in data for data in parts):
        if boundary is not None and not boundary.startswith("nmkit-"):
            raise ValueError("the multipart boundary occurs in the payload")
        boundary = f"nmkit-{uuid.uuid4().hex}"  # a fresh random one (a clash with the payload is vanishingly rare)
    chunks = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def read_secret(auth: dict[str, Any]) -> str:
    """The password or token named by ``auth`` (``*_env`` variable or ``*_file``), read now (a rotated token
    needs no restart). Raises :class:`StowError` naming where it looked, never the value."""
    for key in ("password_env", "token_env"):
        if auth.get(key):
            value = os.environ.get(str(auth[key]), "").strip()
            if not value:
                raise StowError(f"auth: environment variable {auth[key]} is not set")
            return value
    for key in ("password_file", "token_file"):
        if auth.get(key):
            try:
                value = Path(auth[key]).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise StowError(f"auth: {key} {auth[key]} cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
            if not value:
                raise StowError(f"auth: {key} {auth[key]} is empty")
            return value
    raise StowError("auth: no password_env/password_file or token_env/token_file")


def auth_headers(destination: Destination) -> dict[str, str]:
    """The Authorization header of a destination (none without ``auth``)."""
    auth = destination.auth
    if not auth:
        return {}
    secret = read_secret(auth)
    if auth.get("type") == "basic":
        return {"Authorization": "Basic " + base64.b64encode(f"{auth['username']}:{secret}".encode()).decode("ascii")}
    return {"Authorization": f"Bearer {secret}"}


def https_context(tls: dict[str, Any] | None) -> ssl.SSLContext:
    """Server verification (system CAs, or ``ca``), hostname check unless ``check_hostname: false``; ``verify: false``
    turns both off (a test server only); ``cert``/``key``: a client certificate."""
    tls = tls or {}
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.get("ca"))
    if tls.get("verify", True) is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.get("check_hostname") is False:
        ctx.check_hostname = False
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls.get("key"))
    return ctx


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would repeat a redirected POST as a GET without its body (and a GET of /studies answers 200)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


def post(destination: Destination, body: bytes, content_type: str, timeout_s: float) -> StowAnswer:
    """POST ``body`` to ``{url}/studies``; the answer whatever its HTTP status. Raises :class:`StowError` when no
    HTTP answer comes (refused, timeout, TLS, reset)."""
    url = f"{destination.url}/studies"
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json, application/dicom+xml;q=0.5, application/json;q=0.4",
               "User-Agent": "nmkit-stow", **auth_headers(destination)}
    handlers: list[Any] = [_NoRedirect()]
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=https_context(destination.tls)))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return parse_answer(response.status, response.reason, response.headers.get("Content-Type", ""),
                                response.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read(MAX_ANSWER_BYTES)
        except (OSError, ValueError):
            data = b""
        answer = parse_answer(exc.code, str(exc.reason or ""), exc.headers.get("Content-Type", "") if exc.headers else "", data)
        answer.location = (exc.headers.get("Location", "") if exc.headers else "") or ""
        return answer
    except urllib.error.URLError as exc:
        raise StowError(f"cannot reach {destination.name} at {url}: {_why(exc.reason)}") from None
    except (socket.timeout, TimeoutError):
        raise StowError(f"no answer from {destination.name} at {url} within {timeout_s:g} s") from None
    except (OSError, ValueError) as exc:  # reset, TLS error after connecting, a bad status line
        raise StowError(f"{destination.name} at {url}: {_why(exc)}") from None


def _why(reason: Any) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {reason.verify_message or reason} (set tls.ca to the server's CA)"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


# ----- answer -------------------------------------------------------------------------------------------
FAILED_SOP_SEQ, REFERENCED_SOP_SEQ = "00081198", "00081199"
SOP_INSTANCE_UID, FAILURE_REASON, WARNING_REASON = "00081155", "00081197", "00081196"


def parse_answer(status: int, phrase: str, content_type: str, data: bytes) -> StowAnswer:
    """Read a Store Instances Response (DICOM JSON or XML); other bodies give at most a short message."""
    answer = StowAnswer(status=int(status), phrase=str(phrase or ""))
    ctype = (content_type or "").lower()
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return answer
    if "xml" in ctype or text.startswith("<?xml") or text.startswith("<NativeDicomModel"):
        _parse_xml(text, answer)
    elif "json" in ctype or text.startswith("{"):
        try:
            _parse_json(json.loads(text), answer)
        except ValueError:
            pass
    elif "html" not in ctype:
        answer.message = " ".join(text.split())[:200]
    return answer


def _json_items(doc: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = doc.get(tag) or {}
    return [i for i in (element.get("Value") or []) if isinstance(i, dict)] if isinstance(element, dict) else []


def _json_value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _parse_json(doc: Any, answer: StowAnswer) -> None:
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if not isinstance(doc, dict):
        return
    if FAILED_SOP_SEQ not in doc and REFERENCED_SOP_SEQ not in doc:  # not DICOM: e.g. Orthanc's error JSON
        for key in ("Message", "message", "error", "Details", "OrthancError"):
            if isinstance(doc.get(key), str) and doc[key]:
                answer.message = " ".join(doc[key].split())[:200]
                break
        return
    for item in _json_items(doc, REFERENCED_SOP_SEQ):
        uid = _json_value(item, SOP_INSTANCE_UID)
        if uid:
            answer.referenced[str(uid)] = _int_or_none(_json_value(item, WARNING_REASON))
    for item in _json_items(doc, FAILED_SOP_SEQ):
        uid = _json_value(item, SOP_INSTANCE_UID)
        if uid:
            answer.failed[str(uid)] = _int_or_none(_json_value(item, FAILURE_REASON))


def _parse_xml(text: str, answer: StowAnswer) -> None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError:
        return

    def local(el: Any) -> str:
        return el.tag.rsplit("}", 1)[-1]

    def value(item: Any, tag: str) -> str | None:
        for attr in item:
            if local(attr) == "DicomAttribute" and attr.get("tag", "").upper() == tag:
                for v in attr:
                    if local(v) == "Value" and (v.text or "").strip():
                        return v.text.strip()
        return None

    for attr in root:
        if local(attr) != "DicomAttribute" or attr.get("tag", "").upper() not in (FAILED_SOP_SEQ, REFERENCED_SOP_SEQ):
            continue
        for item in (i for i in attr if local(i) == "Item"):
            uid = value(item, SOP_INSTANCE_UID)
            if not uid:
                continue
            if attr.get("tag", "").upper() == FAILED_SOP_SEQ:
                answer.failed[uid] = _int_or_none(value(item, FAILURE_REASON))
            else:
                answer.referenced[uid] = _int_or_none(value(item, WARNING_REASON))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def failure_text(code: int | None) -> str:
    if code is None:
        return "no failure reason given"
    return f"failure reason 0x{code:04X}" + (f" ({FAILURE_REASONS[code]})" if code in FAILURE_REASONS else "")


def classify(answer: StowAnswer, sop_uid: str, destination: str, n_instances: int = 1) -> tuple[str, str]:
    """The outcome of one instance of a STOW-RS request from the server's answer (see the module doc)."""
    head = f"HTTP {answer.status}{' ' + answer.phrase if answer.phrase else ''} from {destination}"
    said = f": {answer.message}" if answer.message else ""
    code = answer.failed.get(sop_uid)
    if 300 <= answer.status < 400:
        target = f" to {answer.location}" if answer.location else ""
        return "retry", f"{head}: redirected{target} (not followed; set url to the final address)"
    if answer.status in DESTINATION_HTTP:
        return "retry", f"{head}{said} ({DESTINATION_HTTP[answer.status]})"
    if answer.status in RETRY_HTTP or answer.status >= 500:
        return "retry", f"{head}{said}"
    if 400 <= answer.status < 500:
        if code is not None and (code & 0xFF00) == 0xA700:
            return "retry", f"{head}: {failure_text(code)}"
        detail = failure_text(code) if sop_uid in answer.failed else (answer.message or "the request was refused")
        batch = f" (one of {n_instances} instances in the request)" if n_instances > 1 and sop_uid not in answer.failed else ""
        return "permanent", f"{head}: {detail}{batch}"
    if answer.status in (200, 202):
        if sop_uid in answer.failed:
            outcome, _ = status_outcome(code if code is not None else 0xC000, destination)
            return ("failed" if outcome == "ok" else outcome), f"{head}: instance not stored, {failure_text(code)}"
        if sop_uid in answer.referenced or (answer.status == 200 and not answer.referenced and not answer.failed):
            return "ok", ""
        return "failed", f"{head}: the instance is not in the server's answer"
    return "failed", f"{head}{said} (unexpected status for STOW-RS)"


# ----- one delivery -------------------------------------------------------------------------------------
def stow(destination: Destination, paths: list[Path], timeout_s: float = 30.0) -> list[tuple[str, str]]:
    """Store ``paths`` in one STOW-RS request; one (outcome, reason) per path, in order."""
    import pydicom

    outcomes: list[tuple[str, str] | None] = [None] * len(paths)
    parts: list[bytes] = []
    uids: list[tuple[int, str]] = []
    for k, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            outcomes[k] = ("permanent", f"result file {path} is missing")
            continue
        except OSError as exc:
            outcomes[k] = ("retry", f"result file {path} cannot be read ({exc.strerror or exc})")
            continue
        try:
            uid = str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a non-DICOM file
            from ..io.dicom_series import unreadable_reason

            outcomes[k] = ("failed", f"{Path(path).name}: {unreadable_reason(exc)}"[:300])
            continue
        parts.append(data)
        uids.append((k, uid))
    if parts:
        try:
            body, ctype = multipart_body(parts)
            answer = post(destination, body, ctype, timeout_s)
        except StowError as exc:
            for k, _ in uids:
                outcomes[k] = ("retry", str(exc))
        else:
            for k, uid in uids:
                outcomes[k] = classify(answer, uid, destination.name, len(uids))
    return [o if o is not None else ("failed", "not sent") for o in outcomes]
