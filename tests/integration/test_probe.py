"""The TLS probe of a phone's WBM (:func:`certmgr.phones.probe.probe_once`) against real loopback servers.

The probe waits on the socket during the handshake (it used to poll with a fixed 10 ms sleep); whatever the peer
does — answer, stay silent, hang up — the probe returns the served leaf's SHA-256 or a DeploymentError within its
timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from cryptography.hazmat.primitives import hashes

from certmgr.clock import SystemClock
from certmgr.errors import DeploymentError
from certmgr.phones.probe import probe_once
from certmgr.pki.types import KeyType
from certmgr.simulator.phone import self_signed

pytestmark = pytest.mark.timeout(60)


@contextmanager
def server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback listener whose every connection is handed to ``handle`` in a thread; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if not stop.is_set():
                    handle(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        with socket.create_connection(listener.getsockname(), timeout=5):
            pass  # wakes the accept() so that the thread sees ``stop``
        thread.join(10)
        listener.close()


def test_the_served_leaf_is_reported() -> None:
    ident = self_signed("WBM under test", KeyType.EC_P256, SystemClock())

    def tls(conn: socket.socket) -> None:
        try:
            with ident.context.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (ssl.SSLError, OSError):
            pass

    with server(tls) as port:
        assert probe_once("127.0.0.1", port, timeout=5) == ident.cert.fingerprint(hashes.SHA256()).hex()


def test_a_silent_peer_is_a_timeout() -> None:
    released = threading.Event()

    def silent(_conn: socket.socket) -> None:
        released.wait(30)  # holds the connection open without a byte until the probe has given up

    with server(silent) as port:
        try:
            with pytest.raises(DeploymentError, match="timed out"):
                probe_once("127.0.0.1", port, timeout=0.3)
        finally:
            released.set()


def test_a_peer_that_hangs_up_is_an_error() -> None:
    def hang_up(conn: socket.socket) -> None:
        conn.recv(1)

    with server(hang_up) as port, pytest.raises(DeploymentError):
        probe_once("127.0.0.1", port, timeout=5)


def test_a_peer_that_answers_garbage_is_an_error() -> None:
    def garbage(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 100)

    with server(garbage) as port, pytest.raises(DeploymentError):
        probe_once("127.0.0.1", port, timeout=5)
