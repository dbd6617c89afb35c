"""Shared, cached whole-body phantoms for the tests/test_petwb_*.py files (built once per test session)."""

from __future__ import annotations

from functools import lru_cache

from nmkit.petwb.phantom import WholeBodyPhantom, make_phantom


@lru_cache(maxsize=4)
def phantom(seed: int = 3, voxel_mm: float = 4.0) -> WholeBodyPhantom:
    """The default phantom (5 lesions); do not modify the returned arrays."""
    return make_phantom(seed=seed, voxel_mm=voxel_mm)
