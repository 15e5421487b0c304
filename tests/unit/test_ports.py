"""The one place a free port is chosen: outside the kernel's ephemeral range, never twice in a process.

A port from the ephemeral range (what binding port 0 gives) can be taken by any outgoing connection before the
listener binds it; CI once lost a test that way (uvicorn STARTUP_FAILURE, EADDRINUSE).
"""

from __future__ import annotations

import socket

from certmgr.simulator import ports


def test_the_ephemeral_range_is_read_and_a_bad_file_falls_back() -> None:
    assert ports.ephemeral_range("32768\t60999\n") == (32_768, 60_999)
    assert ports.ephemeral_range("1024 65535") == (1024, 65_535)
    assert ports.ephemeral_range("garbage") == ports.DEFAULT_EPHEMERAL
    assert ports.ephemeral_range("60999 32768") == ports.DEFAULT_EPHEMERAL


def test_the_band_lies_outside_the_ephemeral_range() -> None:
    assert ports.band((32_768, 60_999)) == range(10_000, 32_768)
    assert ports.band((10_000, 40_000)) == range(40_001, 65_536)
    for low, high in ((32_768, 60_999), (15_000, 30_000), (49_152, 65_535), (1_024, 65_535)):
        chosen = ports.band((low, high))
        assert not set(chosen) & set(range(low, high + 1))


def test_free_ports_are_bindable_distinct_and_never_ephemeral() -> None:
    low, high = ports.ephemeral_range()
    seen: list[int] = []
    for _ in range(50):
        port = ports.free_port()
        assert not low <= port <= high
        assert port >= ports.LOWEST
        with socket.socket() as s:  # free now: a listener can take it
            s.bind(("127.0.0.1", port))
            s.listen()
        seen.append(port)
    assert len(set(seen)) == len(seen)


def test_a_port_in_use_is_skipped() -> None:
    with socket.socket() as busy:
        port = ports.free_port()
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert ports.port_free_on_all(["127.0.0.1"], preferred=[port]) != port


def test_a_port_free_on_every_host() -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = ports.port_free_on_all(hosts)
    for host in hosts:
        with socket.socket() as s:
            s.bind((host, port))
