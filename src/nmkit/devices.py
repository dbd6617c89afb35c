"""One place that turns a requested torch device into a usable one.

Every network (diffusion training and sampling, segmentation training and inference, nnU-Net, MONAI bundles, the
SPECT simulator) asks here, so "a GPU is used automatically when present" holds everywhere, and a device the
machine lacks (``--device cuda`` on a CPU-only torch, ``cuda:3`` on a one-GPU machine, a misspelt name) is one
clear error instead of a torch assertion deep inside a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import NmkitError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: requests that mean "choose for me": CUDA when torch sees a GPU, else the CPU (Apple's MPS is not chosen: MONAI's 3D
#: ops and nnU-Net are not reliable there)
AUTO = ("auto", "")
#: the help text of every ``--device`` option
DEVICE_HELP = "cpu | cuda | cuda:N (default: a CUDA GPU when torch sees one, else the CPU)"


class DeviceError(NmkitError):
    """A requested torch device that does not exist on this machine."""


def torch_device(requested: "str | torch.device | None" = None) -> "torch.device":
    """``requested`` checked against this machine, or CUDA when torch sees a GPU, else the CPU (``None``/'auto')."""
    import torch

    if requested is None or (isinstance(requested, str) and requested.strip().lower() in AUTO):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested.strip() if isinstance(requested, str) else requested)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown device {str(requested)!r}; use cpu, cuda or cuda:N (or leave it out: a GPU is used when present)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise DeviceError(f"device {str(requested)!r} is not available ({why}); leave the device out to run on the CPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(requested)!r} is not available (this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"numbered from 0)")
    elif device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {str(requested)!r} is not supported; use cpu, cuda or cuda:N")
    return device


def device_name(requested: "str | torch.device | None" = None) -> str:
    """:func:`torch_device` as a string, for APIs that take one (nnU-Net's predictor, MONAI bundle configs)."""
    return str(torch_device(requested))


def device_option(text: str) -> str:
    """An argparse type for ``--device``: the device checked before any data is read (argparse: one line, exit 2)."""
    import argparse

    try:
        return device_name(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


device_option.__name__ = "device"
