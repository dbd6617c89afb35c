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
