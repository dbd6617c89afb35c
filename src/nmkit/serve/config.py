"""Server configuration (YAML): the DICOM node, interpretation instances, destinations, queue and registry.

An *interpretation instance* is one clinical AI service (e.g. "thyroid"): it is reached through its own
called AE title and/or routing rules on DICOM attributes, runs the current model of its name in the
registry, makes the listed outputs and sends them to its destinations. See ``examples/server.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

OUTPUT_KINDS = ("seg", "sr", "overlay")


@dataclass
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    tls: dict[str, Any] | None = None


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
    keep_largest: bool = False
    head: str | None = None  # multi-reader bundles: whose delineation to send (default: the bundle's default head)

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
    send_attempts: int = 3
    workers: int = 1
    dask: dict[str, Any] | None = None  # {"scheduler": "tcp://..."} or {"local": true, "n_workers": 2}
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    registry: Path | None = None
    log_file: str | None = None
    device: str = "cpu"
    max_pdu: int = 0
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


_TOP_KEYS = {f for f in ServerConfig.__dataclass_fields__} - {"destinations", "instances", "source", "http_host", "http_port"}
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
    """Validate a configuration mapping (as read from YAML); relative paths are resolved against ``base``."""
    src = str(source) if source else None
    if not isinstance(data, dict):
        raise _fail(src, "the configuration must be a mapping")
    base = base or Path.cwd()
    data = dict(data)
    http = data.pop("http", None) or {}
    dests_raw = data.pop("destinations", None) or {}
    insts_raw = data.pop("instances", None) or []
    for key, value, kind in (("http", http, dict), ("destinations", dests_raw, dict), ("instances", insts_raw, list)):
        if not isinstance(value, kind):
            raise _fail(src, f"{key}: expected a {'mapping' if kind is dict else 'list'}, got {type(value).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(src, f"unknown configuration key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS | {'http', 'destinations', 'instances'})}")
    _check_types(ServerConfig, data, src, "")
    cfg = ServerConfig(**data)
    cfg.source = src
    cfg.storage = (base / Path(cfg.storage)).resolve()
    if cfg.registry is not None:
        cfg.registry = (base / Path(cfg.registry)).resolve()
    cfg.http_host = http.get("host", cfg.http_host)
    cfg.http_port = http.get("port")
    if len(cfg.ae_title) > 16:
        raise _fail(src, f"ae_title {cfg.ae_title!r} is longer than 16 characters")
    if cfg.tls:
        for key in ("cert", "key"):
            if not cfg.tls.get(key):
                raise _fail(src, f"tls needs '{key}' (path to a PEM file)")
            cfg.tls[key] = str((base / cfg.tls[key]).resolve())
        if cfg.tls.get("ca"):
            cfg.tls["ca"] = str((base / cfg.tls["ca"]).resolve())
    for name, d in dests_raw.items():
        try:
            cfg.destinations[name] = Destination(name=name, ae_title=d["ae_title"], host=d.get("host", "127.0.0.1"), port=int(d["port"]),
                                                 tls=d.get("tls"))
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(src, f"destination {name!r} needs ae_title, host, port ({exc})") from exc
    seen_ae = set()
    for raw in insts_raw:
        if not isinstance(raw, dict) or "name" not in raw:
            raise _fail(src, "each instance needs a 'name'")
        unknown = set(raw) - _INSTANCE_KEYS
        if unknown:
            raise _fail(src, f"instance {raw['name']!r}: unknown key(s) {sorted(unknown)}")
        _check_types(Instance, raw, src, f"instance {raw['name']!r}: ")
        inst = Instance(**raw)
        bad = set(inst.match) - _MATCH_KEYS
        if bad:
            raise _fail(src, f"instance {inst.name!r}: unknown match attribute(s) {sorted(bad)}; use {sorted(_MATCH_KEYS)}")
        for key, pattern in inst.match.items():
            try:
                re.compile(str(pattern))
            except re.error as exc:
                raise _fail(src, f"instance {inst.name!r}: bad regular expression for {key}: {exc}") from exc
        bad_out = set(inst.outputs) - set(OUTPUT_KINDS)
        if bad_out:
            raise _fail(src, f"instance {inst.name!r}: unknown output(s) {sorted(bad_out)}; use {list(OUTPUT_KINDS)}")
        missing = [d for d in inst.destinations if d not in cfg.destinations]
        if missing:
            raise _fail(src, f"instance {inst.name!r}: destination(s) {missing} not defined under 'destinations'")
        if inst.ae_title and len(inst.ae_title) > 16:
            raise _fail(src, f"instance {inst.name!r}: ae_title longer than 16 characters")
        if inst.validation:
            inst.validation = str((base / inst.validation).resolve())
        if not inst.ae_title and not inst.match:
            raise _fail(src, f"instance {inst.name!r} needs an ae_title or match rules (else it would take every series)")
        if any(i.name == inst.name for i in cfg.instances):
            raise _fail(src, f"instance name {inst.name!r} used twice")
        seen_ae.add(inst.ae_title)
        cfg.instances.append(inst)
    return cfg


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
