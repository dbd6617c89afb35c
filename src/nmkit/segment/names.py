"""The names segmentation options accept, in one torch-free place.

The CLI builds its argparse ``choices=`` from these at start-up (so a wrong ``--network`` or ``--loss`` fails at parse
time, before any data is read) without importing torch; ``segment.nets``, ``segment.losses`` and
``segment.preprocess`` import the same tuples, so a name listed here is a name the builders accept.
"""

from __future__ import annotations

NETWORK_NAMES = ("unet", "attention-unet", "unetr", "swin-unetr", "hrnet", "diffusion-unet")
LOSS_NAMES = ("dice", "dice-ce", "dice-boundary")
BOUNDARY_SCHEDULES = ("constant", "increase", "adaptive")
NORMALISATIONS = ("counts", "peak", "zscore", "suv", "window", "percentile")


def sided_names(names) -> list[str]:
    """The label names that name a body side (``right_lung``, ``kidney_left``, ``Left parotid``...).

    A left-right flip turns a right structure into a left one without changing its label, so training augmentation
    and test-time flips must not flip such a model along the left-right axis."""
    import re

    pattern = re.compile(r"(^|[^a-z])(left|right)([^a-z]|$)")
    return [str(n) for n in names if pattern.search(str(n).lower())]


def side_safe_axes(names, axes, spatial_dims: int) -> tuple[tuple[int, ...], list[str]]:
    """``axes`` (flip axes, negative or not) without the left-right one - the last spatial axis - when a label of
    ``names`` names a body side; returns the kept axes and the sided names that caused a drop (empty: unchanged)."""
    axes = tuple(axes)
    lateral = {-1, spatial_dims - 1}
    sided = sided_names(names) if lateral & set(axes) else []
    if not sided:
        return axes, []
    return tuple(a for a in axes if a not in lateral), sided

