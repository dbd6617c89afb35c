"""Server configuration (YAML): the DICOM node, interpretation instances, destinations, queue and registry.

An *interpretation instance* is one clinical AI service (e.g. "thyroid"): it is reached through its own
called AE title and/or routing rules on DICOM attributes, runs the current model of its name in the
registry, makes the listed outputs and sends them to its destinations. See ``examples/server.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

OUTPUT_KINDS = ("seg", "sr", "overlay")


DESTINATION_KINDS = ("dicom", "dicomweb")


@dataclass
class Destination:
    """Where results go: a DICOM node by C-STORE (``kind: dicom``: ae_title, host, port) or a DICOMweb server by
    STOW-RS (``kind: dicomweb``: the base ``url``, e.g. http://pacs:8042/dicom-web). No secret is held here, only
    where it is (``auth``: an environment variable or a file, read at each delivery), so that a configuration
    dump, /status or a log line never shows a password."""

    name: str
    ae_title: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    tls: dict[str, Any] | None = None  # dicom: cert, key, ca, check_hostname; dicomweb: verify, ca, cert, key, check_hostname
    kind: str = "dicom"
    url: str | None = None  # dicomweb: the DICOMweb base URL; STOW-RS posts to {url}/studies
    auth: dict[str, Any] | None = None  # dicomweb: {type: basic, username, password_env|password_file} or {type: bearer, token_env|token_file}
    timeout_seconds: float | None = None  # one delivery try; None: the server's send_timeout_seconds


@dataclass
class Instance:
    """One interpretation service: routing, model name (registry key), outputs and destinations."""

    name: str
    ae_title: str | None = None
    match: dict[str, str] = field(default_factory=dict)  # modality, series_description, tracer, body_part -> regex
    model: str | None = None  # registry name; defaults to the instance name
    outputs: list[str] = field(default_factory=lambda: list(OUTPUT_KINDS))
    destinations: list[str] = field(default_factory=list)
    validation: str | None = None  # manifest CSV (image, mask, split) for the promotion gate
    validation_split: str | None = None
    gate_metric: str = "dice"
    gate_tolerance: float = 0.02
    gate_min_dice: float = 0.5  # the first promotion (nothing to compare with) needs at least this Dice on the validation set
    keep_largest: bool = False
    head: str | None = None  # multi-reader bundles: whose delineation to send (default: the bundle's default head)
    # multi-channel models (e.g. PET+CT): one job per study, started by the first channel's series
    channels: list[str] | None = None  # DICOM Modality of each model channel, in the model's order (default: the model's names)
    companion_wait_seconds: float = 120.0  # how long a job waits for the other channels' series after its own series
    channel_series: dict[str, str] = field(default_factory=dict)  # channel -> SeriesDescription glob (e.g. CT: "*CTAC*")

    @property
    def model_name(self) -> str:
        return self.model or self.name


@dataclass
class ServerConfig:
    ae_title: str = "NMKIT"
    host: str = "127.0.0.1"
    port: int = 11112
    storage: Path = Path("nmkit-server")
    allowed_calling_aets: list[str] | None = None  # None: any calling AE accepted
    tls: dict[str, Any] | None = None  # cert, key, [ca, require_client_cert]
    quiet_seconds: float = 10.0
    poll_seconds: float = 0.2
    lease_seconds: float = 60.0
    max_attempts: int = 3
    retry_base_seconds: float = 5.0
    send_attempts: int = 3  # kept for older configurations; delivery now uses the outbox back-off below
    send_retry_base_seconds: float = 5.0  # outbox: first retry after 5 s, doubling ...
    send_max_backoff_seconds: float = 600.0  # ... up to 10 min between tries
    send_horizon_hours: float = 24.0  # then the result is parked (visible in /status, `nmkit jobs`)
    send_timeout_seconds: float = 30.0
    # denial-of-service limits of the DICOM listener
    association_timeout_seconds: float = 10.0  # the whole A-ASSOCIATE-RQ must arrive within this time
    idle_timeout_seconds: float = 60.0  # an association (or a TLS handshake) silent this long is closed
    tls_handshake_timeout_seconds: float = 5.0
    max_associations: int = 32  # connections at once (pending + established)
    max_associations_per_ip: int = 8
    allowed_ips: list[str] | None = None  # addresses or networks (CIDR); None: any
    # storage guards and retention
    min_free_disk_mb: float = 1024.0  # refuse new objects with 0xA700 below this free space
    max_object_mb: float = 2048.0  # refuse larger objects with 0xA700
    resend_policy: str = "new_revision"  # a re-sent image with changed content: new_revision (new job) or ignore
    unrouted_policy: str = "keep"  # objects no instance takes: keep (tracked, retained) or refuse (status 0x0124)
    unrouted_retention_days: float = 7.0
    retention_days: float | None = None  # inputs/results of finished jobs deleted after this (None: kept)
    log_max_mb: float = 50.0  # log rotation
    log_backups: int = 5
    workers: int = 1
    # expert corrections (serve.feedback): reader name used when the correction's header names nobody
    # (ContentCreatorName, OperatorsName and the RTSTRUCT's ROI Interpreter all empty)
    feedback_reader: str | None = None
    dask: dict[str, Any] | None = None  # {"scheduler": "tcp://..."} or {"local": true, "n_workers": 2}
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    http_token: str | None = None  # when set, /status and /metrics need "Authorization: Bearer <token>"
    http_threads: int = 8
    registry: Path | None = None
    log_file: str | None = None
    device: str = "cpu"
    max_pdu: int = 262144  # largest PDU we accept (bytes): bounds the memory of receiving a large object (0: unlimited)
    destinations: dict[str, Destination] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)
    source: str | None = None

    @property
    def registry_path(self) -> Path:
        return self.registry or (self.storage / "registry")

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(f"no interpretation instance named {name!r}; configured: {[i.name for i in self.instances]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for provenance and /status)."""
        from dataclasses import asdict

        d = asdict(self)
        d["storage"] = str(self.storage)
        d["registry"] = str(self.registry_path)
        if d.get("tls"):
            d["tls"] = {k: ("***" if "key" in k or "password" in k else v) for k, v in d["tls"].items()}
        return d


_TOP_KEYS = {f for f in ServerConfig.__dataclass_fields__} - {"destinations", "instances", "source", "http_host", "http_port", "http_token",
                                                              "http_threads"}
_HTTP_KEYS = {"host", "port", "token", "token_file", "threads"}
_INSTANCE_KEYS = set(Instance.__dataclass_fields__)
_MATCH_KEYS = {"modality", "series_description", "tracer", "body_part", "sop_class_uid", "study_description"}


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "Path": (str, Path), "None": (type(None),)}


def _check_types(cls: type, raw: dict[str, Any], source: str | None, where: str) -> None:
    """Each value of ``raw`` must have the type its dataclass field is annotated with (e.g. ``int | None``)."""
    for key, value in raw.items():
        annotation = str(cls.__dataclass_fields__[key].type)
        allowed: tuple[type, ...] = ()
        for part in annotation.split("|"):
            name = part.strip().split("[")[0]
            allowed += {"dict": (dict,), "list": (list,)}.get(name, _TYPES.get(name, (object,)))
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed and object not in allowed)
        if not ok:
            raise _fail(source, f"{where}{key}: expected {annotation.replace('Path', 'path')}, got {type(value).__name__} {value!r}")


def _fail(source: str | None, problem: str) -> InputError:
    return InputError(source, problem)


def parse_config(data: dict[str, Any], source: str | Path | None = None, base: Path | None = None) -> ServerConfig:
    """Validate a configuration mapping (as read from YAML); relative paths (storage, registry, log_file, tls files,
    validation manifests) are resolved against ``base`` (the configuration file's folder).

    Every problem found is reported, one per line of the error (so an operator fixes them all in one go)."""
    src = str(source) if source else None
    if not isinstance(data, dict):
        raise _fail(src, "the configuration must be a mapping")
    base = base or Path.cwd()
    problems: list[str] = []
    data = dict(data)
    http = data.pop("http", None) or {}
    dests_raw = data.pop("destinations", None) or {}
    insts_raw = data.pop("instances", None) or []
    for key, value, kind in (("http", http, dict), ("destinations", dests_raw, dict), ("instances", insts_raw, list)):
        if not isinstance(value, kind):
            raise _fail(src, f"{key}: expected a {'mapping' if kind is dict else 'list'}, got {type(value).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        problems.append(f"unknown configuration key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS | {'http', 'destinations', 'instances'})}")
        data = {k: v for k, v in data.items() if k not in unknown}
    _check_types(ServerConfig, data, src, "")
    cfg = ServerConfig(**data)
    cfg.source = src
    cfg.storage = (base / Path(cfg.storage)).resolve()
    if cfg.registry is not None:
        cfg.registry = (base / Path(cfg.registry)).resolve()
    if cfg.log_file:
        cfg.log_file = str((base / cfg.log_file).resolve())
    bad_http = set(http) - _HTTP_KEYS
    if bad_http:
        problems.append(f"http: unknown key(s) {sorted(bad_http)}; known: {sorted(_HTTP_KEYS)}")
    cfg.http_host = str(http.get("host", cfg.http_host))
    cfg.http_port = http.get("port")
    if cfg.http_port is not None and (not isinstance(cfg.http_port, int) or not 0 <= cfg.http_port <= 65535):
        problems.append(f"http: port must be an integer 0-65535, got {cfg.http_port!r}")
    cfg.http_threads = int(http.get("threads", cfg.http_threads))
    cfg.http_token = http.get("token")
    if http.get("token_file"):
        token_path = (base / str(http["token_file"])).resolve()
        try:
            cfg.http_token = token_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"http: token_file {token_path}: cannot be read ({exc.strerror or exc})")
    if not 0 <= cfg.port <= 65535:
        problems.append(f"port must be 0-65535, got {cfg.port}")
    if len(cfg.ae_title) > 16:
        problems.append(f"ae_title {cfg.ae_title!r} is longer than 16 characters")
    for key in ("association_timeout_seconds", "idle_timeout_seconds", "tls_handshake_timeout_seconds", "send_retry_base_seconds",
                "send_max_backoff_seconds", "send_horizon_hours", "send_timeout_seconds", "max_object_mb", "quiet_seconds",
                "lease_seconds", "poll_seconds", "unrouted_retention_days"):
        if getattr(cfg, key) <= 0:
            problems.append(f"{key} must be > 0, got {getattr(cfg, key)}")
    for key in ("max_associations", "max_associations_per_ip", "workers", "max_attempts"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.min_free_disk_mb < 0:
        problems.append(f"min_free_disk_mb must be >= 0, got {cfg.min_free_disk_mb}")
    if cfg.resend_policy not in ("new_revision", "ignore"):
        problems.append(f"resend_policy must be new_revision or ignore, got {cfg.resend_policy!r}")
    if cfg.unrouted_policy not in ("keep", "refuse"):
        problems.append(f"unrouted_policy must be keep or refuse, got {cfg.unrouted_policy!r}")
    if cfg.allowed_ips is not None:
        import ipaddress

        for net in cfg.allowed_ips:
            try:
                ipaddress.ip_network(str(net), strict=False)
            except ValueError:
                problems.append(f"allowed_ips: {net!r} is not an IP address or network (e.g. 10.1.2.0/24)")
    if cfg.tls:
        for key in ("cert", "key"):
            if not cfg.tls.get(key):
                problems.append(f"tls needs '{key}' (path to a PEM file)")
                continue
            cfg.tls[key] = str((base / cfg.tls[key]).resolve())
            if not Path(cfg.tls[key]).is_file():
                problems.append(f"tls: {key} file {cfg.tls[key]} not found")
        if cfg.tls.get("ca"):
            cfg.tls["ca"] = str((base / cfg.tls["ca"]).resolve())
    for name, d in dests_raw.items():
        dest, dest_problems = parse_destination(str(name), d, base)
        problems += dest_problems
        if dest is not None:
            cfg.destinations[str(name)] = dest
    for raw in insts_raw:
        if not isinstance(raw, dict) or "name" not in raw:
            problems.append("each instance needs a 'name'")
            continue
        unknown = set(raw) - _INSTANCE_KEYS
        if unknown:
            problems.append(f"instance {raw['name']!r}: unknown key(s) {sorted(unknown)}; known: {sorted(_INSTANCE_KEYS)}")
            continue
        _check_types(Instance, raw, src, f"instance {raw['name']!r}: ")
        inst = Instance(**raw)
        problems += _instance_problems(inst, cfg, base, {str(n) for n in dests_raw})
        cfg.instances.append(inst)
    if problems:
        raise _fail(src, problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + " | ".join(problems))
    return cfg


_DICOM_KEYS = {"kind", "ae_title", "host", "port", "tls", "timeout_seconds"}
_DICOMWEB_KEYS = {"kind", "url", "auth", "tls", "timeout_seconds"}
_DICOMWEB_TLS_KEYS = {"verify", "ca", "cert", "key", "check_hostname"}
#: per auth type: the required key, and the two ways of giving its secret (an environment variable or a file)
_AUTH = {"basic": ("username", ("password_env", "password_file")), "bearer": (None, ("token_env", "token_file"))}


def parse_destination(name: str, raw: Any, base: Path) -> tuple[Destination | None, list[str]]:
    """One entry of ``destinations:``; problems are named by their key (``destinations.NAME.KEY: ...``)."""
    where = f"destinations.{name}"
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping (kind, ae_title/host/port or url), got {type(raw).__name__}"]
    kind = raw.get("kind", "dicom")
    if kind not in DESTINATION_KINDS:
        return None, [f"{where}.kind: must be one of {list(DESTINATION_KINDS)}, got {kind!r}"]
    known = _DICOM_KEYS if kind == "dicom" else _DICOMWEB_KEYS
    problems = [f"{where}: unknown key(s) {sorted(map(str, set(raw) - known))} for kind {kind}; known: {sorted(known)}"] if set(raw) - known else []
    timeout = raw.get("timeout_seconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        problems.append(f"{where}.timeout_seconds: must be a number of seconds > 0, got {timeout!r}")
    tls = raw.get("tls")
    if tls is not None and not isinstance(tls, dict):
        problems.append(f"{where}.tls: expected a mapping, got {type(tls).__name__}")
        tls = None
    if tls:
        tls = {k: (str((base / v).resolve()) if k in ("ca", "cert", "key") and isinstance(v, str) else v) for k, v in tls.items()}
        for key in ("ca", "cert", "key"):
            if key in tls and not Path(str(tls[key])).is_file():
                problems.append(f"{where}.tls.{key}: file {tls[key]} not found")
    if kind == "dicom":
        problems += _dicom_problems(where, raw)
        if problems:
            return None, problems
        return Destination(name=name, ae_title=str(raw["ae_title"]), host=str(raw.get("host", "127.0.0.1")), port=int(raw["port"]),
                           tls=tls or None, timeout_seconds=timeout), []
    problems += _dicomweb_problems(where, raw, tls or {})
    auth = _resolve_auth(where, raw.get("auth"), base, problems)
    if problems:
        return None, problems
    return Destination(name=name, kind="dicomweb", url=str(raw["url"]).rstrip("/"), tls=tls or None, auth=auth, timeout_seconds=timeout), []


def _dicom_problems(where: str, raw: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(raw.get("ae_title"), str) or not raw["ae_title"].strip() or len(raw["ae_title"]) > 16:
        problems.append(f"{where}.ae_title: a C-STORE destination needs an AE title of 1-16 characters, got {raw.get('ae_title')!r}")
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        problems.append(f"{where}.port: a C-STORE destination needs a port 1-65535, got {port!r}")
    if not isinstance(raw.get("host", "127.0.0.1"), str):
        problems.append(f"{where}.host: expected a host name or address, got {raw['host']!r}")
    return problems


def _dicomweb_problems(where: str, raw: dict[str, Any], tls: dict[str, Any]) -> list[str]:
    from urllib.parse import urlsplit

    url = raw.get("url")
    if not isinstance(url, str) or not url.strip():
        return [f"{where}.url: a DICOMweb destination needs the STOW-RS base URL (e.g. http://pacs:8042/dicom-web), got {url!r}"]
    problems = []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{where}.url: must be an http:// or https:// URL with a host, got {url!r}")
    if parts.username or parts.password:
        problems.append(f"{where}.url: credentials in the URL are not allowed (they would be printed); use {where}.auth")
    if parts.query or parts.fragment:
        problems.append(f"{where}.url: the base URL takes no ?query or #fragment")
    bad = set(tls) - _DICOMWEB_TLS_KEYS
    if bad:
        problems.append(f"{where}.tls: unknown key(s) {sorted(bad)}; known: {sorted(_DICOMWEB_TLS_KEYS)}")
    for key in ("verify", "check_hostname"):
        if key in tls and not isinstance(tls[key], bool):
            problems.append(f"{where}.tls.{key}: expected true or false, got {tls[key]!r}")
    if tls and parts.scheme == "http":
        problems.append(f"{where}.tls: given for a plain http:// URL; use https:// (or drop tls)")
    return problems


def _resolve_auth(where: str, auth: Any, base: Path, problems: list[str]) -> dict[str, Any] | None:
    """Check ``auth`` and resolve its secret file against the configuration's folder; the secret itself is only
    checked to exist here (it is read at each delivery, so a rotated token needs no restart)."""
    if auth is None:
        return None
    if not isinstance(auth, dict):
        problems.append(f"{where}.auth: expected a mapping (type: basic|bearer, ...), got {type(auth).__name__}")
        return None
    kind = auth.get("type")
    if kind not in _AUTH:
        problems.append(f"{where}.auth.type: must be basic or bearer, got {kind!r}")
        return None
    user_key, secret_keys = _AUTH[kind]
    for inline in ("password", "token"):
        if inline in auth:
            problems.append(f"{where}.auth.{inline}: secrets are not written in the configuration; "
                            f"use {' or '.join(secret_keys)} (an environment variable or a file)")
    known = {"type", *secret_keys, *([user_key] if user_key else [])}
    bad = set(auth) - known - {"password", "token"}
    if bad:
        problems.append(f"{where}.auth: unknown key(s) {sorted(map(str, bad))} for type {kind}; known: {sorted(known)}")
    if user_key and (not isinstance(auth.get(user_key), str) or not auth[user_key]):
        problems.append(f"{where}.auth.{user_key}: basic authentication needs a user name")
    given = [k for k in secret_keys if auth.get(k)]
    if len(given) != 1:
        if not any(inline in auth for inline in ("password", "token")):
            problems.append(f"{where}.auth: give exactly one of {' or '.join(secret_keys)}")
        return None
    out = {k: v for k, v in auth.items() if k in known}
    key = given[0]
    if key.endswith("_env"):
        if not os.environ.get(str(auth[key])):
            problems.append(f"{where}.auth.{key}: environment variable {auth[key]} is not set (or empty)")
    else:
        out[key] = str((base / str(auth[key])).resolve())
        try:
            if not Path(out[key]).read_text(encoding="utf-8").strip():
                problems.append(f"{where}.auth.{key}: file {out[key]} is empty")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{where}.auth.{key}: file {out[key]} cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})")
    return out


def _instance_problems(inst: Instance, cfg: ServerConfig, base: Path, defined: set[str]) -> list[str]:
    """Every problem of one interpretation instance (against the destinations named in the file, valid or not, and
    the instances read so far)."""
    problems = []
    bad = set(inst.match) - _MATCH_KEYS
    if bad:
        problems.append(f"instance {inst.name!r}: unknown match attribute(s) {sorted(bad)}; use {sorted(_MATCH_KEYS)}")
    for key, pattern in inst.match.items():
        try:
            re.compile(str(pattern))
        except re.error as exc:
            problems.append(f"instance {inst.name!r}: bad regular expression for {key}: {exc}")
    bad_out = set(inst.outputs) - set(OUTPUT_KINDS)
    if bad_out:
        problems.append(f"instance {inst.name!r}: unknown output(s) {sorted(bad_out)}; use {list(OUTPUT_KINDS)}")
    missing = [d for d in inst.destinations if d not in defined]
    if missing:
        problems.append(f"instance {inst.name!r}: destination(s) {missing} not defined under 'destinations'")
    if not inst.destinations:
        problems.append(f"instance {inst.name!r} has no destinations (its results would go nowhere); list at least one")
    if inst.ae_title and len(inst.ae_title) > 16:
        problems.append(f"instance {inst.name!r}: ae_title longer than 16 characters")
    if inst.validation:
        inst.validation = str((base / inst.validation).resolve())
    if not inst.ae_title and not inst.match:
        problems.append(f"instance {inst.name!r} needs an ae_title or match rules (else it would take every series)")
    if any(i.name == inst.name for i in cfg.instances):
        problems.append(f"instance name {inst.name!r} used twice")
    return problems + channel_problems(inst, inst.channels)


#: DICOM modalities a model channel can be matched to (SeriesInstanceUID of the same study, Modality attribute)
CHANNEL_MODALITIES = ("PT", "CT", "MR", "NM", "US", "CR", "DX", "MG", "XA", "OT")


def channel_key(name: str) -> str:
    """The DICOM Modality a model channel name stands for (PET/SUV -> PT, SPECT -> NM, MRI -> MR; others upper-cased)."""
    from ..segment.engines.channels import _modality_key

    return _modality_key(str(name))


def channel_problems(inst: Instance, channels: list[str] | None, where: str = "") -> list[str]:
    """Problems of an instance's channel keys (``channels``, ``companion_wait_seconds``, ``channel_series``) against the
    model's channels (``channels``: the configured list, or the current model's; None when unknown). ``where`` names
    the model the channels came from, for the message."""
    name = f"instance {inst.name!r}"
    problems = []
    wait = inst.companion_wait_seconds
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait <= 0:
        problems.append(f"{name}: companion_wait_seconds must be a number of seconds > 0, got {wait!r}")
    if inst.channels is not None:
        if not isinstance(inst.channels, list) or not all(isinstance(c, str) and c.strip() for c in inst.channels):
            return problems + [f"{name}: channels must be a list of DICOM modalities (e.g. [PT, CT]), got {inst.channels!r}"]
        if len(inst.channels) < 2:
            return problems + [f"{name}: channels needs the Modality of every model channel (two or more, e.g. [PT, CT]); "
                               f"a single-channel instance needs no channels key"]
        bad = [c for c in inst.channels if channel_key(c) not in CHANNEL_MODALITIES]
        if bad:
            problems.append(f"{name}: channels {bad} are not DICOM modalities; use e.g. [PT, CT] ({', '.join(CHANNEL_MODALITIES)})")
    if not isinstance(inst.channel_series, dict) or not all(isinstance(v, str) and v for v in inst.channel_series.values()):
        return problems + [f"{name}: channel_series must map a channel to a SeriesDescription glob (e.g. {{CT: \"*CTAC*\"}}), "
                           f"got {inst.channel_series!r}"]
    if channels is not None and len(channels) < 2:
        if inst.channel_series or inst.channels:
            problems.append(f"{name}: channels/channel_series given but the model{where} has one input channel")
        return problems
    if channels is None:
        return problems
    if inst.channels and len(inst.channels) != len(channels):
        return problems + [f"{name}: channels {inst.channels} name {len(inst.channels)} modalities but the model{where} has "
                           f"{len(channels)} input channels ({', '.join(map(str, channels))})"]
    keys = [channel_key(c) for c in (inst.channels or channels)]
    bad = [c for c in inst.channel_series if channel_key(c) not in keys]
    if bad:
        problems.append(f"{name}: channel_series key(s) {sorted(map(str, bad))} are not channels of the model{where} ({', '.join(keys)})")
    unknown = [c for c in keys if c not in CHANNEL_MODALITIES]
    if unknown and inst.channels is None:  # (configured channels were checked above)
        problems.append(f"{name}: the model{where} has channel(s) {unknown} that are not DICOM modalities; give the instance "
                        f"'channels: [...]' with the Modality of each, in the model's order")
    pattern = inst.match.get("modality")
    if pattern is not None:
        refused = [c for c in keys if not _search(str(pattern), c)]
        if refused:
            problems.append(f"{name}: match.modality {pattern!r} refuses the {'/'.join(refused)} series the model{where} needs "
                            f"(use e.g. '^({'|'.join(keys)})$' or the instance's own ae_title)")
    if "tracer" in inst.match and any(c not in ("PT", "NM") for c in keys):
        problems.append(f"{name}: match.tracer would refuse the {'/'.join(c for c in keys if c not in ('PT', 'NM'))} series "
                        f"(no radiopharmaceutical in them); route a multi-channel instance by ae_title or modality")
    return problems


def _search(pattern: str, text: str) -> bool:
    try:
        return bool(re.search(pattern, text, flags=re.IGNORECASE))
    except re.error:
        return True  # reported as a bad regular expression already


def prepare_folders(cfg: ServerConfig) -> None:
    """Create the storage, registry and log folders; a folder that cannot be made is an error naming its key."""
    from ..errors import InputError

    targets = [("storage", cfg.storage), ("registry", cfg.registry_path)]
    if cfg.log_file:
        targets.append(("log_file", Path(cfg.log_file).parent))
    for key, folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(cfg.source, f"{key}: cannot create folder {folder} ({exc.strerror or exc})") from None
        if not os.access(folder, os.W_OK):
            raise InputError(cfg.source, f"{key}: folder {folder} is not writable")


def load_config(path: str | Path) -> ServerConfig:
    """Read and validate a YAML server configuration."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise InputError(path, "configuration file not found")
    if path.is_dir():
        raise InputError(path, "is a folder; give the server's YAML configuration file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise InputError(path, "not a YAML text file (binary content)") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {' '.join(str(exc).split())}") from exc
    return parse_config(data, path, path.parent)
