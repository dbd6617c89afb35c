"""Named radiomics presets (``presets/*.yaml`` shipped with nmkit) and user YAML configuration files.

Shipped: ``ibsi-digital-phantom``, ``ibsi-a`` .. ``ibsi-e`` (IBSI-1 reference configurations, see
ibsi1_configs.md), ``lifex-pet`` (LIFEx-like PET settings) and ``pet-native`` (clinical PET numbers and first-order
features on the PET's own grid, no texture); the PET presets set ``native_pet`` (documented in their YAML files);
``relative-64`` (64 grey levels over each ROI's range on the native grid: images in counts or arbitrary units).

``default_preset(modalities)`` is the preset used when the user names none: ``ibsi-c`` for CT (and when the
modality is unknown, e.g. NIfTI), ``relative-64`` for every other modality; a cohort that mixes CT with other
modalities must name one.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from ..errors import InputError
from .config import RadiomicsConfig

PRESET_DIR = Path(__file__).with_name("presets")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def default_preset(modalities: set[str], where: Any = None) -> str:
    """The preset for a cohort whose known modalities are ``modalities`` when no preset or config is named."""
    known = {m.upper() for m in modalities if m}
    if not known or known == {"CT"}:
        return "ibsi-c"
    if "CT" in known:
        raise InputError(where, f"the cohort mixes CT with {', '.join(sorted(known - {'CT'}))}: name a preset for it "
                                "(--preset ibsi-c for CT, relative-64 for counts/arbitrary units, lifex-pet for PET in SUV) "
                                "or select one modality")
    return "relative-64"


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; parsed once per file version (path, size, mtime) per process."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(path, f"cannot read radiomics config: {exc}") from exc
    return copy.deepcopy(_parse_yaml(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _parse_yaml(path: str, _size: int, _mtime_ns: int) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: same result, faster
    try:
        data = yaml.load(Path(path).read_text(), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read radiomics config: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, "a radiomics config must be a YAML mapping")
    return data


def load_config(name_or_path: str | Path) -> RadiomicsConfig:
    """A preset by name (``ibsi-c``; case-insensitive, ``_`` == ``-``) or a user YAML file.

    A user file may start from a preset with ``base: ibsi-c`` and override keys."""
    text = str(name_or_path)
    key = text.lower().replace("_", "-")
    if (PRESET_DIR / f"{key}.yaml").is_file() and not Path(text).is_file():
        data = _read_yaml(PRESET_DIR / f"{key}.yaml")
    else:
        path = Path(text)
        if not path.is_file():
            raise InputError(path, f"no such radiomics config file or preset (presets: {', '.join(available_presets())})")
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:
            merged = load_config(base).to_dict()
            merged.update(data)
            data = merged
    try:
        return RadiomicsConfig.from_dict(data)
    except TypeError as exc:
        raise InputError(text, f"invalid radiomics config: {exc}") from exc
    except InputError as exc:  # a bad key or value (e.g. in the filter section): name the file it came from
        if exc.path is not None:
            raise
        raise InputError(text, exc.problem) from exc
