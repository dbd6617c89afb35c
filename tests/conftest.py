"""Shared fixtures: the external public data folder (skips cleanly when absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def external_data_root() -> Path:
    return Path(os.environ.get("NMKIT_EXTERNAL_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def external_data() -> Path:
    """The folder of real public data (../shared/data); tests skip with a clear reason when it is absent."""
    root = external_data_root()
    if not root.is_dir():
        pytest.skip(f"external data folder not found at {root} (set NMKIT_EXTERNAL_DATA)")
    return root


def need(root: Path, relative: str) -> Path:
    """A path inside the external data folder, skipping the test when that item is missing."""
    path = root / relative
    if not path.exists():
        pytest.skip(f"external data item missing: {path}")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: the CI machine is shared, and OpenMP oversubscription slows the
    projector/reconstruction tests many-fold (results do not depend on the thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
