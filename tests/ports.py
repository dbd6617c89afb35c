"""Free loopback ports for test servers (Orthanc, nmkit's DICOM node, C-MOVE listeners).

The kernel may hand the same ephemeral port to two bind-and-release calls in a row, and a test that asks for
several ports before starting its servers (Orthanc's DICOM and HTTP ports plus the C-MOVE destination) then had two
servers on one port ("Address already in use", seen once in the slow suite). ``free_port`` never returns a port it
has already returned in this process.
"""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, different from every port this function returned before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
