"""The tests' port helper never hands out one port twice (two servers of one test on one port failed the pull test)."""

from __future__ import annotations

import ports


class FakeSocket:
    """Binds to the next port of a scripted sequence, as a kernel that reuses a released port would."""

    sequence: list[int] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def bind(self, address):
        self.port = FakeSocket.sequence.pop(0)

    def getsockname(self):
        return ("127.0.0.1", self.port)


def test_a_port_is_never_handed_out_twice(monkeypatch):
    monkeypatch.setattr(ports, "_HANDED_OUT", set())
    monkeypatch.setattr(ports.socket, "socket", FakeSocket)
    FakeSocket.sequence = [43035, 43035, 43035, 42625]
    assert [ports.free_port(), ports.free_port()] == [43035, 42625]
    assert FakeSocket.sequence == []


def test_real_ports_are_distinct_and_bindable():
    import socket

    got = [ports.free_port() for _ in range(20)]
    assert len(set(got)) == 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", got[-1]))
