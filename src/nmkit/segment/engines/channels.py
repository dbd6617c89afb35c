"""Multi-channel input (e.g. PET+CT of one study) for models with several input channels: find each channel's image
in a case table or an ordered file list, and stack them on the first channel's grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError

_ALIASES = {"PET": "PT", "PT": "PT", "SUV": "PT", "CT": "CT", "MR": "MR", "MRI": "MR", "SPECT": "NM", "NM": "NM"}


def _modality_key(name: str) -> str:
    name = str(name).strip().upper()
    return _ALIASES.get(name, name)


def study_key(row: dict[str, Any]) -> str:
    """Which rows of a case table belong to one multi-channel case: the study UID, else patient and time point."""
    study = str(row.get("study_uid") or "").strip()
    return study or f"{row.get('patient_id', '')}|{row.get('time_point', '')}"


def group_rows(rows: Sequence[dict[str, Any]], channels: Sequence[str], where: str | Path | None) -> list[list[dict[str, Any]]]:
    """One list of rows per case, in channel order (channel names matched to the ``modality`` column: PET=PT)."""
    wanted = [_modality_key(c) for c in channels]
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(study_key(row), {}).setdefault(_modality_key(row.get("modality") or ""), row)
    out = []
    for key, by_modality in groups.items():
        missing = [c for c, w in zip(channels, wanted) if w not in by_modality]
        if missing:
            have = ", ".join(sorted(m for m in by_modality if m)) or "none"
            raise InputError(where, f"case {key}: no row of modality {', '.join(missing)} for the model's channels "
                                    f"{', '.join(channels)} (modalities there: {have})")
        out.append([by_modality[w] for w in wanted])
    return out


def stack_channels(images: Sequence[Any]):
    """One image with a leading channel axis on the first image's grid (others resampled, linear)."""
    from ...io.image import resample_to

    ref = images[0]
    stacked = np.empty((len(images), *np.shape(ref.array)), dtype=np.float32)  # filled in place: no per-channel copies
    stacked[0] = ref.array
    for c, other in enumerate(images[1:], start=1):
        if other.ndim_spatial != ref.ndim_spatial:
            raise InputError(None, f"channels of different dimensionality ({ref.ndim_spatial}D and {other.ndim_spatial}D)")
        same = other.spatial_shape == ref.spatial_shape and np.allclose(other.spacing, ref.spacing) \
            and np.allclose(other.origin, ref.origin) and np.allclose(other.direction, ref.direction)
        stacked[c] = (other if same else resample_to(other, ref, "linear")).array
    return ref.with_array(stacked, modality=ref.modality, units=ref.units, meta=dict(ref.meta))
