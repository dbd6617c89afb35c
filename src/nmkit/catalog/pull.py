"""Pull a cohort from a PACS: query (C-FIND or QIDO-RS), retrieve (C-MOVE, C-GET or WADO-RS), de-identify, index.

Why: a research cohort is built from the department's PACS, not from folders on a disk. ``pull`` asks the PACS
which series match (patient, study, accession, modality, date range, description), compares each series'
SOP Instance UIDs with the files already in the destination, fetches only the missing ones, optionally
de-identifies every instance as it arrives (``nmkit.io.deid``, same salt -> same pseudonyms and UIDs as
``nmkit anonymize``) and finally indexes the destination into the catalog (``catalog.index.index_folder``).

Files are written as ``OUT/<patient>/<study>/<series>/<sop>.dcm`` (the de-identified UIDs when a profile is
chosen) through a temporary ``.part`` name and an atomic rename, so a pull killed at any moment leaves only
complete files; a re-run sees them by name and fetches the rest (resumable, no duplicates). The catalog is
written only after retrieval, by the incremental indexer, so a failed query or association leaves it untouched.

PACS addresses: ``AET@host:port`` (DIMSE: C-FIND, then C-MOVE to nmkit's own temporary store SCP, or C-GET on
the same association) or ``http(s)://host:port/dicom-web`` (DICOMweb: QIDO-RS, then WADO-RS, multipart/related
parsed here without extra dependencies).
"""

from __future__ import annotations

import fnmatch
from io import BytesIO
import json
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pydicom.dataset import Dataset

from ..errors import InputError
from ..io.dicom_warnings import DicomWarnings
from ..io.dicom_write import instance_path, set_file_meta

log = logging.getLogger(__name__)

METHODS = ("move", "get", "wado")
#: C-MOVE/C-GET final statuses that say why nothing (or not everything) came back
RETRIEVE_STATUS = {
    0xA701: "PACS out of resources (cannot calculate the number of matches)",
    0xA702: "PACS out of resources (cannot perform sub-operations)",
    0xA801: "move destination unknown to the PACS",
    0xA900: "identifier does not match the SOP class",
    0xB000: "some sub-operations failed",
    0xC000: "PACS could not process the request",
    0xFE00: "cancelled",
}
_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")


# ----- what to pull ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PullQuery:
    """Filters; empty means any. ``date`` is ``YYYYMMDD``, ``A-B``, ``A-`` or ``-B`` (DICOM range matching)."""

    patient: str = ""
    study: str = ""
    accession: str = ""
    modality: str = ""
    date: str = ""
    description: str = ""  # glob, case-insensitive, on the series or the study description

    def __post_init__(self) -> None:
        match = _DATE.match(self.date)
        if self.date and (not match or not (match.group(1) or match.group(3))
                          or (match.group(1) and match.group(3) and not match.group(2))):
            raise InputError(None, f"--date {self.date!r}: expected YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD")
        object.__setattr__(self, "modality", self.modality.strip().upper())  # CS values are upper case


@dataclass
class SeriesPlan:
    """One series at the PACS and its instances (original UIDs)."""

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    modality: str
    description: str
    instances: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> SOP Class UID
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs not yet in the destination


@dataclass
class PullReport:
    """What a pull did (counts of instances) and what failed and why."""

    series: int = 0
    instances: int = 0
    present: int = 0
    fetched: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (series UID or "", reason)
    dry_run: bool = False

    @property
    def failed(self) -> int:
        return self.instances - self.present - self.fetched

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        head = f"{self.series} series, {self.instances} instance(s) at the PACS: {self.present} already here, "
        if self.dry_run:
            return head + f"{self.instances - self.present} to fetch"
        return head + f"{self.fetched} fetched, {self.failed} failed"


# ----- PACS addresses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimse:
    """A DIMSE peer ``AET@host:port``."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_pacs(text: str) -> Dimse | str:
    """``AET@host:port`` -> :class:`Dimse`; ``http(s)://...`` -> the DICOMweb base URL (no trailing slash)."""
    if text.startswith(("http://", "https://")):
        return text.rstrip("/")
    match = re.match(r"^([^@]{1,16})@([^:@]+):(\d{1,5})$", text)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise InputError(None, f"PACS {text!r}: expected AET@host:port (DIMSE) or http(s)://host:port/dicom-web (DICOMweb)")
    return Dimse(match.group(1), match.group(2), int(match.group(3)))


def _check_reachable(peer: Dimse, timeout: float) -> None:
    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError(None, f"PACS {peer} unreachable: {exc.strerror or exc} (is it running, are host and port right?)") from exc


# ----- the destination ------------------------------------------------------------------------------
def present_uids(out: Path) -> set[str]:
    """SOP Instance UIDs already in ``out`` (file names ``<sop>.dcm``); stale ``.part`` files are removed."""
    if not out.is_dir():
        return set()
    for part in out.rglob("*.dcm.part"):
        part.unlink(missing_ok=True)
    return {p.name[:-4] for p in out.rglob("*.dcm")}


class Sink:
    """Writes received instances (de-identified when a Deidentifier is given) atomically under ``out``."""

    def __init__(self, out: Path, deid=None, on_file: Callable[[], None] | None = None,
                 dicom_warnings: DicomWarnings | None = None):
        self.out = out
        self.dicom_warnings = dicom_warnings if dicom_warnings is not None else DicomWarnings()
        self.deid = deid
        self.on_file = on_file or (lambda: None)
        self.lock = threading.Lock()
        self.written: set[str] = set()  # original SOP Instance UIDs stored in this run
        self.errors: list[tuple[str, str]] = []

    def target_uid(self, sop_uid: str) -> str:
        """The SOP Instance UID the file of ``sop_uid`` has in the destination."""
        return self.deid.uid(sop_uid) if self.deid is not None else sop_uid

    def store(self, ds: Dataset | Callable[[], Dataset], transfer_syntax: str) -> bool:
        """De-identify and write one instance (or the one a callable decodes); False (and why, kept) on failure.

        pydicom warnings of decoding and writing are collected under the instance's original SOP UID.
        """
        original = ""
        with self.lock:
            try:
                with self.dicom_warnings.capture("incoming instance") as messages:
                    ds = ds() if callable(ds) else ds
                    original = str(ds.get("SOPInstanceUID", "") or "")
                    _store_file(self, ds, transfer_syntax)
                if messages:
                    self.dicom_warnings.by_file[f"instance {original}"] = self.dicom_warnings.by_file.pop("incoming instance")
            except Exception as exc:  # one bad instance must not stop the pull: record why
                self.errors.append((original, f"{type(exc).__name__}: {exc}"))
                log.warning("cannot store instance %s: %s", original, exc)
                return False
            self.written.add(original)
        self.on_file()
        return True


def _store_file(sink: Sink, ds: Dataset, transfer_syntax: str) -> Path:
    """Write ``ds`` to ``OUT/<patient>/<study>/<series>/<sop>.dcm`` via ``.part`` + rename (never half a file)."""
    if sink.deid is not None:
        sink.deid.deidentify(ds)
    set_file_meta(ds, transfer_syntax, "NMKIT_PULL")
    target = instance_path(sink.out, ds)
    if target.exists():
        return target  # already here (e.g. sent twice by the PACS): no duplicate
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    ds.save_as(str(part), enforce_file_format=True)
    os.replace(part, target)
    return target


# ----- DIMSE ----------------------------------------------------------------------------------------
class DimsePacs:
    """C-FIND / C-MOVE / C-GET against one peer (Study Root information model)."""

    def __init__(self, peer: Dimse, calling_aet: str = "NMKIT", timeout: float = 30.0):
        self.peer, self.calling_aet, self.timeout = peer, calling_aet, timeout
        self._find_assoc = None  # one association for every C-FIND of a pull (cheaper than one per query)

    def close(self) -> None:
        """Release the C-FIND association (if open)."""
        if self._find_assoc is not None and self._find_assoc.is_established:
            self._find_assoc.release()
        self._find_assoc = None

    def _associate(self, contexts: Iterable[str], roles: Iterable[str] = (), scp_handlers=None):
        from pynetdicom import AE, build_role
        from pynetdicom.presentation import build_context

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for cx in contexts:
            ae.add_requested_context(cx)
        from pynetdicom import ALL_TRANSFER_SYNTAXES

        roles = list(roles)
        role_items = [build_role(uid, scp_role=True) for uid in roles]
        for uid in roles:  # storage contexts we accept as SCP on this association (C-GET)
            ae.requested_contexts.append(build_context(uid, ALL_TRANSFER_SYNTAXES))
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.aet, ext_neg=role_items or None,
                             evt_handlers=scp_handlers or [])
        if not assoc.is_established:
            raise InputError(None, f"PACS {self.peer}: association refused or aborted (check its AE title "
                                   f"{self.peer.aet!r} and that it accepts calling AE {self.calling_aet!r})")
        return assoc

    def find(self, level: str, keys: dict[str, str]) -> list[Dataset]:
        """C-FIND at ``level`` (STUDY/SERIES/IMAGE); ``keys`` are matching or return keys (empty = return)."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        if self._find_assoc is None or not self._find_assoc.is_established:
            _check_reachable(self.peer, self.timeout)
            self._find_assoc = self._associate([FIND])
        out: list[Dataset] = []
        try:
            for status, identifier in self._find_assoc.send_c_find(query, FIND):
                if status is None or "Status" not in status:
                    raise InputError(None, f"PACS {self.peer}: C-FIND aborted or unanswered (does the PACS accept "
                                           f"calling AE {self.calling_aet!r}? timeout {self.timeout:g} s)")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    out.append(identifier)
                elif code != 0x0000:
                    raise InputError(None, f"PACS {self.peer}: C-FIND {level} failed with status 0x{code:04X}")
        except InputError:
            self.close()
            raise
        return out

    def retrieve(self, method: str, plan: SeriesPlan, sops: list[str], sink: Sink, move_aet: str) -> str:
        """C-MOVE (to ``move_aet``, our store SCP) or C-GET of ``sops`` of ``plan``; '' or the reason it failed."""
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        identifiers = _retrieve_identifiers(plan, sops)
        if method == "get":
            def on_store(event):
                return 0x0000 if sink.store(lambda: _received(event), event.context.transfer_syntax) else 0xA700

            classes = sorted(set(plan.instances.values()) - {""})
            if len(classes) < len(set(plan.instances.values())):  # the PACS did not say: offer the common ones
                from pynetdicom import StoragePresentationContexts

                classes = sorted(set(classes) | {cx.abstract_syntax for cx in StoragePresentationContexts})
            classes = classes[:120]  # at most 128 presentation contexts per association
            assoc = self._associate([GET], roles=classes, scp_handlers=[(evt.EVT_C_STORE, on_store)])
            send = lambda ds: assoc.send_c_get(ds, GET)  # noqa: E731
        else:
            assoc = self._associate([MOVE])
            send = lambda ds: assoc.send_c_move(ds, move_aet, MOVE)  # noqa: E731
        reasons = []
        try:
            for identifier in identifiers:
                final, comment = None, ""
                for status, _ in send(identifier):
                    if status is None or "Status" not in status:
                        reasons.append("no answer from the PACS (timeout or aborted association)")
                        break
                    if int(status.Status) not in (0xFF00, 0xFF01):
                        final, comment = int(status.Status), str(status.get("ErrorComment", "") or "")
                if final == 0xA801:
                    raise InputError(None, f"PACS {self.peer}: C-MOVE destination {move_aet!r} unknown to the PACS "
                                           f"(add AE title {move_aet!r} with this host and --store-port to its modalities)")
                if final not in (None, 0x0000):
                    text = RETRIEVE_STATUS.get(final, "failed")
                    reasons.append(f"C-{method.upper()} status 0x{final:04X} ({text}{': ' + comment if comment else ''})")
        finally:
            if assoc.is_established:
                assoc.release()
        return "; ".join(dict.fromkeys(reasons))


def _received(event) -> Dataset:
    ds = event.dataset
    ds.file_meta = event.file_meta
    return ds


def _retrieve_identifiers(plan: SeriesPlan, sops: list[str]) -> list[Dataset]:
    """One SERIES-level identifier when the whole series is missing, else one IMAGE-level per instance."""
    def ident(level: str, sop: str = "") -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.StudyInstanceUID, ds.SeriesInstanceUID = plan.study_uid, plan.series_uid
        if sop:
            ds.SOPInstanceUID = sop
        return ds

    if len(sops) == len(plan.instances):
        return [ident("SERIES")]
    return [ident("IMAGE", sop) for sop in sops]


class StoreSCP:
    """nmkit's own temporary Storage SCP, the C-MOVE destination for the duration of a pull."""

    def __init__(self, aet: str, port: int, sink: Sink, host: str = "0.0.0.0"):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, StoragePresentationContexts, evt

        ae = AE(ae_title=aet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)

        def on_store(event):
            return 0x0000 if sink.store(lambda: _received(event), event.context.transfer_syntax) else 0xA700

        try:
            self.server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as exc:
            raise InputError(None, f"--store-port {port}: cannot listen for C-MOVE ({exc.strerror or exc}; port in use?)") from exc

    def stop(self) -> None:
        self.server.shutdown()


# ----- DICOMweb -------------------------------------------------------------------------------------
class DicomWebPacs:
    """QIDO-RS queries and WADO-RS retrieval against a DICOMweb base URL (plain urllib)."""

    def __init__(self, base: str, timeout: float = 60.0, page: int = 1000):
        self.base, self.timeout, self.page = base, timeout, page

    def _get(self, path: str, accept: str) -> tuple[bytes, str]:
        url = f"{self.base}{path}"
        request = urllib.request.Request(url, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            hint = " (not a DICOMweb endpoint? give the base URL, e.g. http://host:8042/dicom-web)" if exc.code == 404 else ""
            raise InputError(url, f"HTTP {exc.code} {exc.reason}{hint}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(url, f"DICOMweb server unreachable: {getattr(reason, 'strerror', None) or reason}") from exc

    def qido(self, path: str, params: dict[str, str]) -> list[Dataset]:
        """A QIDO-RS search (``/studies``, ``/studies/X/series`` ...) as datasets, paged by ``limit``/``offset``
        (servers cap the size of an answer; a page shorter than ``self.page`` is the last)."""
        out: list[Dataset] = []
        while True:
            page = self._qido_page(path, {**params, "limit": str(self.page), "offset": str(len(out)) if out else ""})
            out += page
            if len(page) < self.page:
                return out

    def _qido_page(self, path: str, params: dict[str, str]) -> list[Dataset]:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v}, safe="*,?")  # some servers do not decode %2A
        body, _ = self._get(f"{path}?{query}" if query else path, "application/dicom+json")
        if not body.strip():
            return []  # 204 No Content: no match
        try:
            items = json.loads(body)
        except ValueError as exc:
            raise InputError(f"{self.base}{path}", "QIDO-RS answer is not DICOM JSON (is this a DICOMweb base URL?)") from exc
        return [Dataset.from_json(item) for item in items]

    def wado(self, plan: SeriesPlan, sops: list[str], sink: Sink) -> str:
        """WADO-RS of ``sops`` (the whole series in one request when all are missing); '' or why it failed."""
        import pydicom

        base = f"/studies/{plan.study_uid}/series/{plan.series_uid}"
        paths = [base] if len(sops) == len(plan.instances) else [f"{base}/instances/{sop}" for sop in sops]
        reasons = []
        for path in paths:
            try:
                body, ctype = self._get(path, 'multipart/related; type="application/dicom"; transfer-syntax=*')
            except InputError as exc:
                reasons.append(exc.problem)
                continue
            for part in multipart_parts(body, ctype):
                try:
                    with sink.dicom_warnings.capture("WADO-RS part"):
                        ds = pydicom.dcmread(BytesIO(part), force=True)
                        ts = str(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian))
                except Exception as exc:
                    reasons.append(f"unreadable part in the WADO-RS answer ({type(exc).__name__}: {exc})")
                    continue
                sink.store(ds, ts)
        return "; ".join(dict.fromkeys(reasons))


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a ``multipart/related`` payload (RFC 2046), without their part headers."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise InputError(None, f"WADO-RS answer is not multipart (Content-Type {content_type!r})")
    delimiter = b"\r\n--" + match.group(1).encode()
    parts = []
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # close delimiter
        _, sep, content = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(content)
    return parts


# ----- query -> plan --------------------------------------------------------------------------------
def _s(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _matches(query: PullQuery, study_desc: str, series_desc: str, modality: str) -> bool:
    if query.modality and modality.upper() != query.modality.upper():
        return False
    if query.description:
        pattern = query.description.lower()
        if not any(fnmatch.fnmatchcase(d.lower(), pattern) for d in (series_desc, study_desc)):
            return False
    return True


def _study_keys(query: PullQuery) -> dict[str, str]:
    return {"PatientID": query.patient, "PatientName": "", "StudyInstanceUID": query.study, "StudyDate": query.date,
            "AccessionNumber": query.accession, "StudyDescription": ""}


def plan_dimse(pacs: DimsePacs, query: PullQuery) -> list[SeriesPlan]:
    """C-FIND studies, their series and instances matching ``query`` (on one association)."""
    try:
        return _plan_dimse(pacs, query)
    finally:
        pacs.close()


def _plan_dimse(pacs: DimsePacs, query: PullQuery) -> list[SeriesPlan]:
    plans = []
    for study in pacs.find("STUDY", _study_keys(query)):
        study_uid = _s(study, "StudyInstanceUID")
        for series in pacs.find("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "",
                                           "Modality": query.modality, "SeriesDescription": ""}):
            if not _matches(query, _s(study, "StudyDescription"), _s(series, "SeriesDescription"), _s(series, "Modality")):
                continue
            plan = SeriesPlan(_s(study, "PatientID"), _s(study, "PatientName"), study_uid, _s(series, "SeriesInstanceUID"),
                              _s(series, "Modality"), _s(series, "SeriesDescription"))
            for inst in pacs.find("IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": plan.series_uid,
                                            "SOPInstanceUID": "", "SOPClassUID": ""}):
                plan.instances[_s(inst, "SOPInstanceUID")] = _s(inst, "SOPClassUID")
            plans.append(plan)
    return plans


def plan_dicomweb(pacs: DicomWebPacs, query: PullQuery) -> list[SeriesPlan]:
    """QIDO-RS studies, their series and instances matching ``query``."""
    plans = []
    keys = {k: v for k, v in _study_keys(query).items() if v}
    keys["includefield"] = "PatientName,PatientID,StudyDescription"
    for study in pacs.qido("/studies", keys):
        study_uid = _s(study, "StudyInstanceUID")
        for series in pacs.qido(f"/studies/{study_uid}/series",
                                {"Modality": query.modality, "includefield": "SeriesDescription,Modality"}):
            if not _matches(query, _s(study, "StudyDescription"), _s(series, "SeriesDescription"), _s(series, "Modality")):
                continue
            plan = SeriesPlan(_s(study, "PatientID"), _s(study, "PatientName"), study_uid, _s(series, "SeriesInstanceUID"),
                              _s(series, "Modality"), _s(series, "SeriesDescription"))
            for inst in pacs.qido(f"/studies/{study_uid}/series/{plan.series_uid}/instances",
                                  {"includefield": "SOPClassUID"}):
                plan.instances[_s(inst, "SOPInstanceUID")] = _s(inst, "SOPClassUID")
            plans.append(plan)
    return plans


# ----- the pull -------------------------------------------------------------------------------------
@dataclass
class PullOptions:
    """How to retrieve and where to put the files."""

    out: Path
    db: Path | None = None
    method: str = ""  # "move" / "get" (DIMSE, default move) or "wado" (DICOMweb, the only choice there)
    calling_aet: str = "NMKIT"
    move_aet: str = ""  # C-MOVE destination and AE title of our store SCP (default: calling_aet)
    store_port: int = 11113  # where our C-MOVE store SCP listens (the PACS must know calling_aet at this port)
    deid_profile: str = ""  # "" = keep identities; "research" / "basic"
    salt: str = ""
    map_path: Path | None = None
    timeout_s: float = 30.0


def _deidentifier(opts: PullOptions):
    from ..io.deid import DeidMapping, Deidentifier, _inside, profile_options

    if not opts.deid_profile:
        return None
    if not opts.salt:
        raise InputError(None, "--anonymize needs a secret --salt (or $NMKIT_DEID_SALT) for reproducible pseudonyms")
    if opts.map_path is None:
        raise InputError(None, "--anonymize needs --map (the mapping CSV, kept secret outside --out)")
    if _inside(opts.map_path, opts.out):
        raise InputError(opts.map_path, f"the mapping file must be kept outside the output folder {opts.out}")
    return Deidentifier(opts.salt, profile_options(opts.deid_profile), DeidMapping.load(opts.map_path))


def pull(pacs_address: str, query: PullQuery, opts: PullOptions,
         progress: Callable[[int], object] | None = None, dry_run: bool = False,
         dicom_warnings: DicomWarnings | None = None) -> tuple[PullReport, list[SeriesPlan]]:
    """Query, fetch what is missing from ``opts.out``, index ``opts.out`` into ``opts.db``; the report and the plan.

    ``progress(total)`` returns an object with ``update(n)`` and ``close()`` (a tqdm); nothing is written (no
    folder, no catalog) before the query has succeeded.
    """
    peer = parse_pacs(pacs_address)
    method = opts.method or ("wado" if isinstance(peer, str) else "move")
    if isinstance(peer, str) != (method == "wado"):
        raise InputError(None, f"--method {method}: {'WADO-RS needs an http(s):// DICOMweb URL' if method == 'wado' else 'C-MOVE/C-GET need a DIMSE peer AET@host:port'}")
    deid = _deidentifier(opts)
    dicom_warnings = dicom_warnings if dicom_warnings is not None else DicomWarnings()
    with dicom_warnings.capture(f"query answers of {pacs_address}"):
        if isinstance(peer, str):
            web = DicomWebPacs(peer, timeout=opts.timeout_s)
            plans = plan_dicomweb(web, query)
        else:
            dimse = DimsePacs(peer, opts.calling_aet, timeout=opts.timeout_s)
            plans = plan_dimse(dimse, query)
    report = PullReport(series=len(plans), instances=sum(len(p.instances) for p in plans))
    sink = Sink(opts.out, deid, dicom_warnings=dicom_warnings)
    have = present_uids(opts.out)
    for plan in plans:
        if deid is not None:
            deid.pseudonym(plan.patient_id, plan.patient_name)  # recorded in the mapping even if nothing is fetched
        plan.missing = [sop for sop in plan.instances if sink.target_uid(sop) not in have]
        report.present += len(plan.instances) - len(plan.missing)
    todo = [p for p in plans if p.missing]
    if dry_run:
        report.dry_run = True
        return report, plans
    bar = progress(sum(len(p.missing) for p in todo)) if progress else None
    if bar is not None:
        sink.on_file = lambda: bar.update(1)
    move_aet = opts.move_aet or opts.calling_aet
    scp = StoreSCP(move_aet, opts.store_port, sink) if todo and method == "move" else None
    try:
        for plan in todo:
            if method == "wado":
                reason = web.wado(plan, plan.missing, sink)
            else:
                reason = dimse.retrieve(method, plan, plan.missing, sink, move_aet)
            arrived = sum(1 for sop in plan.missing if sop in sink.written)
            if method == "move" and plan is todo[0] and arrived == 0 and reason and not sink.errors:
                raise InputError(None, f"C-MOVE of the first series sent nothing to {move_aet!r} at port "
                                       f"{opts.store_port}: {reason}; does the PACS know {move_aet!r} (AE title, "
                                       "this host, --store-port) as a modality?")
            report.fetched += arrived
            if arrived < len(plan.missing):
                errors = [why for sop, why in sink.errors if sop in plan.instances]
                why = "; ".join(dict.fromkeys([reason] * bool(reason) + errors)) or "the PACS sent fewer instances than it listed"
                report.failures.append((plan.series_uid, f"{len(plan.missing) - arrived} of {len(plan.instances)} "
                                                         f"instance(s) missing: {why}"))
            if deid is not None and opts.map_path is not None:
                deid.mapping.save(opts.map_path)
    finally:
        if scp is not None:
            scp.stop()
        if bar is not None:
            bar.close()
        if deid is not None and opts.map_path is not None:
            deid.mapping.save(opts.map_path)
    if opts.db is not None and opts.out.is_dir():
        from .index import index_folder

        index_folder(opts.out, opts.db, collector=DicomWarnings())  # warnings were collected on arrival
    return report, plans
