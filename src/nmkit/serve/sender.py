"""Sending results to a destination: C-STORE (pynetdicom SCU) or, for ``kind: dicomweb``, STOW-RS
(:mod:`nmkit.serve.stow`). :func:`try_send` is one try with one of four outcomes (the server's outbox decides
back-off, horizon and parking from it); :func:`send_with_retry` retries in place."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any

from .config import Destination
from .logs import event
from .outcomes import status_outcome  # noqa: F401 - the C-STORE status mapping, shared with serve.stow


class SendError(RuntimeError):
    """A result could not be stored at its destination."""


def client_ssl_context(tls: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.get("ca"))
    ctx.check_hostname = bool(tls.get("check_hostname", False))
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls.get("key"))
    return ctx


def c_store(destination: Destination, path: Path, calling_ae: str, timeout_s: float = 30.0) -> int:
    """Store one file; returns the DICOM status (raises SendError when no association or no response)."""
    import pydicom
    from pynetdicom import AE
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if destination.kind != "dicom":
        raise SendError(f"{destination.name} is a {destination.kind} destination, not a C-STORE one; use try_send")
    ds = pydicom.dcmread(str(path))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    syntaxes = [str(ds.file_meta.TransferSyntaxUID)]
    syntaxes += [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if s not in syntaxes]
    ae.add_requested_context(ds.SOPClassUID, syntaxes)
    tls = (client_ssl_context(destination.tls), destination.host if destination.tls.get("check_hostname") else None) if destination.tls else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls)
    if not assoc.is_established:
        raise SendError(f"association with {destination.name} ({destination.ae_title}) not established")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise SendError(f"no C-STORE response from {destination.name}")
    return int(status.Status)


def try_send(destination: Destination, path: Path, calling_ae: str, timeout_s: float = 30.0) -> tuple[str, str]:
    """One delivery try, by C-STORE or STOW-RS after the destination's kind: ("ok", ""), ("retry", why) for a
    destination that is down, busy or refuses nmkit itself (connection refused, timeout, out-of-resources status,
    HTTP 5xx/401/403/404), ("failed", why) for a refusal of this object by a DICOM status, ("permanent", why) when
    the result file is gone or a DICOMweb server refuses the request (HTTP 4xx).
    ``timeout_s`` applies unless the destination sets its own ``timeout_seconds``."""
    timeout_s = destination.timeout_seconds or timeout_s
    if not Path(path).is_file():
        return "permanent", f"result file {path} is missing"
    if destination.kind == "dicomweb":
        from .stow import stow

        return stow(destination, [Path(path)], timeout_s)[0]
    try:
        status = c_store(destination, Path(path), calling_ae, timeout_s)
    except SendError as exc:
        return "retry", str(exc)
    except (OSError, RuntimeError) as exc:
        return "retry", f"{type(exc).__name__}: {exc}"
    except ValueError as exc:
        return "failed", f"{type(exc).__name__}: {exc}"
    return status_outcome(status, destination.name)


def send_with_retry(destination: Destination, path: Path, calling_ae: str, attempts: int = 3, base_delay_s: float = 1.0) -> None:
    """C-STORE (or STOW-RS) with retries (1, 2, 4... s); success and warning statuses are accepted."""
    last, attempt = "", 0
    for attempt in range(1, attempts + 1):
        if destination.kind == "dicomweb":
            outcome, last = try_send(destination, path, calling_ae)
            if outcome == "ok":
                return
            if outcome == "permanent":
                break
            event("send_retry", logging.WARNING, destination=destination.name, attempt=attempt, reason=last[:200])
            if attempt < attempts:
                time.sleep(base_delay_s * 2 ** (attempt - 1))
            continue
        try:
            status = c_store(destination, path, calling_ae)
            if status == 0x0000 or (status & 0xF000) == 0xB000:
                return
            last = f"status 0x{status:04X}"
        except SendError as exc:
            last = str(exc)
        except (OSError, ValueError, RuntimeError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        event("send_retry", logging.WARNING, destination=destination.name, attempt=attempt, reason=last[:200])
        if attempt < attempts:
            time.sleep(base_delay_s * 2 ** (attempt - 1))
    raise SendError(f"sending to {destination.name} failed after {attempt} attempt(s): {last}")
