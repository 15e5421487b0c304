"""TLS probe of a phone's WBM: which certificate does it serve? (pyOpenSSL, blocking; run it in a thread.)

The probe accepts any certificate (it only *looks* at the leaf, it trusts nothing) and allows old protocol
versions and ciphers, because the phones' TLS stacks are old (§6.1 note, open question 12).
"""

from __future__ import annotations

import contextlib
import hashlib
import selectors
import socket
import time

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from certmgr.errors import DeploymentError

#: Upper bounds, whatever the caller asks for.
MAX_TRIES = 20
MAX_TIMEOUT = 30.0
#: A TLS handshake is a handful of flights; a peer that keeps it going longer is cut off.
MAX_HANDSHAKE_STEPS = 64


def _ready(sock: socket.socket, *, readable: bool, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ if readable else selectors.EVENT_WRITE)
        return bool(sel.select(timeout))


def _context() -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    try:
        ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    except SSL.Error:  # pragma: no cover - depends on the OpenSSL build
        ctx.set_cipher_list(b"ALL")
    return ctx


def probe_once(host: str, port: int, timeout: float = 5.0) -> str:
    """Connect to ``host:port``, handshake and return the lower-case hex SHA-256 of the served leaf.

    Raises:
        DeploymentError: if the phone cannot be reached, the handshake fails or no certificate is served.
    """
    timeout = min(max(timeout, 0.1), MAX_TIMEOUT)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise DeploymentError(f"WBM {host}:{port} unreachable: {exc.strerror or type(exc).__name__}") from exc
    conn: SSL.Connection | None = None
    try:
        sock.settimeout(timeout)
        conn = SSL.Connection(_context(), sock)
        if not host.replace(".", "").isdigit() and ":" not in host:
            conn.set_tlsext_host_name(host.encode("idna"))
        conn.set_connect_state()
        deadline = time.monotonic() + timeout
        for _ in range(MAX_HANDSHAKE_STEPS):
            try:
                conn.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                # Wait for the socket itself (a fixed sleep here added up to 10 ms per round trip, and was half
                # of the probe threads' time under load: docs/benchmarks.md).
                remaining = deadline - time.monotonic()
                readable = isinstance(want, SSL.WantReadError)
                if remaining <= 0 or not _ready(sock, readable=readable, timeout=remaining):
                    raise DeploymentError(f"WBM {host}:{port}: TLS handshake timed out") from None
        else:
            raise DeploymentError(f"WBM {host}:{port}: TLS handshake did not complete")
        cert = conn.get_peer_certificate()
        if cert is None:
            raise DeploymentError(f"WBM {host}:{port} served no certificate")
        der = cert.to_cryptography().public_bytes(encoding=Encoding.DER)
        return hashlib.sha256(der).hexdigest()
    except SSL.Error as exc:
        raise DeploymentError(f"WBM {host}:{port}: TLS handshake failed") from exc
    except OSError as exc:
        raise DeploymentError(f"WBM {host}:{port}: {exc.strerror or type(exc).__name__}") from exc
    finally:
        if conn is not None:
            with contextlib.suppress(SSL.Error, OSError):
                conn.shutdown()
        sock.close()


def probe_until(
    host: str, port: int, expected_sha256: str, *, tries: int = 5, interval: float = 1.0, timeout: float = 5.0
) -> tuple[str | None, str | None]:
    """Probe up to ``tries`` times, ``interval`` seconds apart, until the expected certificate is served
    (the phone may need a moment to switch). Returns ``(last fingerprint seen, last error)``.

    Raises:
        DeploymentError: never (errors are returned), kept for the convention.
    """
    seen: str | None = None
    error: str | None = None
    expected = expected_sha256.lower()
    for n in range(max(1, min(tries, MAX_TRIES))):
        if n:
            time.sleep(min(max(interval, 0.0), 10.0))
        try:
            seen, error = probe_once(host, port, timeout), None
        except DeploymentError as exc:
            error = exc.message
            continue
        if seen == expected:
            break
    return seen, error
