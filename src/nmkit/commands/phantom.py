"""`nmkit phantom <kind>`: digital phantoms and simulators (thyroid scintigraphy; NEMA / bone SPECT when present).

Each phantom module in ``nmkit.phantoms`` that defines ``register_phantom(subparsers)`` adds its own
sub-command here; adding one means adding its module name to ``PHANTOM_MODULES``. Phantom modules must
import heavy libraries (scipy, pydicom, SimpleITK, torch) only inside their functions.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

#: phantom modules tried in this order; missing ones (not written yet) are skipped silently
PHANTOM_MODULES = ("cohort", "nema", "bone_spect")  # cohort: `phantom thyroid` (the thyroid cohort writer)


def register(subparsers) -> None:
    parser = subparsers.add_parser("phantom", help="digital phantoms and simulators",
                                   description="Simulate phantoms and patient-like images with known truth.")
    sub = parser.add_subparsers(dest="phantom", metavar="PHANTOM")
    for name in PHANTOM_MODULES:
        try:
            module = importlib.import_module(f"nmkit.phantoms.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"nmkit.phantoms.{name}":
                raise
            continue
        register_phantom = getattr(module, "register_phantom", None)
        if register_phantom is not None:
            register_phantom(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])
