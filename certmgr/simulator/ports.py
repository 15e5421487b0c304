"""Listening ports for the simulator, the demo, the benchmarks and the tests: the one place a free port is chosen.

Binding port 0 gives a port from the kernel's *ephemeral* range — the range every outgoing connection takes its
source port from. Between choosing such a port and listening on it, any connection made meanwhile (a test's hundreds
of client connections, the other test worker's) can be given the same port, and the listener then fails to start
with EADDRINUSE: a rare but real failure of a whole test (seen in CI: uvicorn exited with STARTUP_FAILURE). So ports
are chosen *outside* the ephemeral range, walking from a random start so that two processes rarely walk the same
ports at the same time, never handing the same port out twice in one process, each checked by binding it on every
host that will listen on it.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # below: well-known and registered services (PostgreSQL, 8080, ...)
DEFAULT_EPHEMERAL = (32_768, 60_999)

_lock = threading.Lock()
_handed: set[int] = set()
_walk: Iterator[int] | None = None


def ephemeral_range(text: str | None = None) -> tuple[int, int]:
    """The kernel's ephemeral port range (from ``text`` or the proc file; Linux's default when unreadable)."""
    try:
        low, high = (int(part) for part in (text if text is not None else PORT_RANGE_FILE.read_text()).split()[:2])
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return (low, high) if 0 < low <= high <= 65_535 else DEFAULT_EPHEMERAL


def band(ephemeral: tuple[int, int]) -> range:
    """The larger stretch of ports at or above :data:`LOWEST` that is outside ``ephemeral``."""
    low, high = ephemeral
    below = range(LOWEST, max(LOWEST, low))
    above = range(max(LOWEST, high + 1), 65_536)
    return below if len(below) >= len(above) else above


def _next_candidate() -> int:
    global _walk
    if _walk is None:
        ports = band(ephemeral_range())
        start = random.SystemRandom().randrange(len(ports))
        _walk = (ports[(start + k) % len(ports)] for k in range(len(ports)))
    for port in _walk:
        if port not in _handed:
            return port
    raise RuntimeError("every port outside the ephemeral range was handed out in this process")


def _bindable(port: int, hosts: Sequence[str]) -> bool:
    try:
        for host in hosts:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
    except OSError:
        return False
    return True


def port_free_on_all(hosts: Sequence[str], *, preferred: Sequence[int] = (), tries: int = 200) -> int:
    """A TCP port that can be bound on every one of ``hosts`` now (``preferred`` ones first; bounded tries): the
    simulated phones of a fleet listen on the same port, each on its own loopback address.

    Raises:
        RuntimeError: if no such port turns up.
    """
    with _lock:
        for port in preferred:
            if port not in _handed and _bindable(port, hosts):
                _handed.add(port)
                return port
        for _ in range(tries):
            port = _next_candidate()
            _handed.add(port)  # tried once, never again: a port that failed may be someone else's listener
            if _bindable(port, hosts):
                return port
    raise RuntimeError(f"no port free on all {len(hosts)} hosts after {tries} tries")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, outside the ephemeral range, not handed out before in this process."""
    return port_free_on_all([host])
