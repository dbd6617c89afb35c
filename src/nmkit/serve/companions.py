"""Multi-channel instances (e.g. a PET+CT model): which series of a study feed one job.

A model with several input channels gets ONE job per study. The job starts from a series of the first channel
(e.g. the PET) and waits, after its own quiet period, up to the instance's ``companion_wait_seconds`` for a quiet
series of each other channel in the same study: matched by Modality, optionally by a SeriesDescription glob per
channel (``channel_series``), preferring the first series' FrameOfReferenceUID, then the largest and the newest. The
worker then resamples the companions onto the first series' grid (``segment.engines.channels.stack_channels``).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import Instance, channel_key


@dataclass
class SeriesInfo:
    """One received series of an instance, with what matching needs from its first file's header."""

    series_uid: str
    study_uid: str
    modality: str
    description: str
    frame_of_reference: str
    n: int
    last_at: float
    files: list[str]


def model_channels(bundle_path: str | Path) -> list[str] | None:
    """The input channel names of a registered model, read from its description without loading the network
    (``bundle.json`` ``channels``; an nnU-Net bundle without them: its results' ``dataset.json`` ``channel_names``);
    None for a single-channel model or when nothing says."""
    folder = Path(bundle_path)
    try:
        desc = json.loads((folder / "bundle.json").read_text())
    except (OSError, ValueError):
        desc = {}
    channels = desc.get("channels")
    if not channels:  # an nnU-Net bundle or results folder: the channel names of its dataset.json
        spec = desc.get("nnunet") or {}
        results = folder / str(spec.get("results", "nnunet")) if spec else folder
        try:
            names = json.loads((results / "dataset.json").read_text()).get("channel_names") or {}
            channels = [str(names[k]) for k in sorted(names, key=int)]
        except (OSError, ValueError, AttributeError, KeyError):
            channels = None
    return list(channels) if channels and len(channels) > 1 else None


def instance_channels(inst: Instance, bundle_path: str | Path | None) -> list[str] | None:
    """The Modality of each channel of the instance's model, in the model's order; None for a single-channel model.
    The instance's ``channels`` key names them where the model's own names are not modalities."""
    names = model_channels(bundle_path) if bundle_path is not None else None
    if inst.channels:
        return [channel_key(c) for c in inst.channels]
    return [channel_key(c) for c in names] if names else None


def series_info(series_uid: str, study_uid: str, n: int, last_at: float, files: list[str]) -> SeriesInfo:
    """A series' matching attributes from its first file's header (pixel data not read)."""
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True) if files else None
    get = (lambda k: str(getattr(ds, k, "") or "")) if ds is not None else (lambda k: "")
    return SeriesInfo(series_uid=series_uid, study_uid=study_uid, modality=get("Modality").upper(), description=get("SeriesDescription"),
                      frame_of_reference=get("FrameOfReferenceUID"), n=n, last_at=last_at, files=files)


def takes(inst: Instance, channel: str, info: SeriesInfo) -> bool:
    """Whether a series can be the instance's ``channel`` (Modality, and the channel's SeriesDescription glob)."""
    if info.modality != channel:
        return False
    globs = {channel_key(k): v for k, v in (inst.channel_series or {}).items()}
    pattern = globs.get(channel)
    return pattern is None or fnmatch.fnmatch(info.description.lower(), str(pattern).lower())


def starts_job(inst: Instance, channels: Sequence[str], info: SeriesInfo) -> bool:
    """A quiet series makes a job when it is a series of the model's first channel; other channels' series wait as
    companions."""
    return takes(inst, channels[0], info)


def choose(inst: Instance, channel: str, primary: SeriesInfo, candidates: Sequence[SeriesInfo]) -> SeriesInfo | None:
    """The companion series for ``channel``: same study, Modality (and glob); the primary's frame of reference first,
    then the most images, then the newest."""
    fits = [c for c in candidates if c.series_uid != primary.series_uid and takes(inst, channel, c)]
    if not fits:
        return None
    same_frame = lambda c: bool(primary.frame_of_reference) and c.frame_of_reference == primary.frame_of_reference  # noqa: E731
    return max(fits, key=lambda c: (same_frame(c), c.n, c.last_at))


def find_companions(inst: Instance, channels: Sequence[str], primary: SeriesInfo, candidates: Sequence[SeriesInfo],
                    quiet_before: float) -> tuple[dict[str, SeriesInfo], list[str], list[str]]:
    """Companions per channel (after the first), and the channels still missing and still receiving.

    A candidate still receiving images (its last image after ``quiet_before``) is not used yet: the job waits for it."""
    found: dict[str, SeriesInfo] = {}
    missing: list[str] = []
    receiving: list[str] = []
    for channel in channels[1:]:
        best = choose(inst, channel, primary, candidates)
        if best is None:
            missing.append(channel)
        elif best.last_at > quiet_before:
            receiving.append(channel)
        else:
            found[channel] = best
    return found, missing, receiving


def summary(primary: SeriesInfo, found: dict[str, SeriesInfo]) -> list[dict[str, Any]]:
    """What the job used, without identifiers (hashed series UIDs), for the job's result and provenance."""
    from .logs import uid_hash

    return [{"channel": ch, "series": uid_hash(s.series_uid), "modality": s.modality, "files": len(s.files),
             "same_frame_of_reference": bool(primary.frame_of_reference) and s.frame_of_reference == primary.frame_of_reference}
            for ch, s in found.items()]
