"""The delivery outcomes of one try (ok / retry / failed / permanent) shared by the C-STORE sender and STOW-RS."""

from __future__ import annotations


def status_outcome(status: int, destination: str) -> tuple[str, str]:
    """A DICOM C-STORE status (or STOW-RS failure reason) as a delivery outcome: success and warnings are "ok",
    0xA7xx (out of resources) "retry", any other refusal "failed"."""
    if status == 0x0000 or (status & 0xF000) == 0xB000:
        return "ok", ""
    if (status & 0xFF00) == 0xA700:
        return "retry", f"status 0x{status:04X} (out of resources at {destination})"
    return "failed", f"status 0x{status:04X}"
