"""An in-test fake OpenStage phone and a running certmgr WPI stack, over real sockets on loopback only.

The phone speaks WPI with the codec over real TLS (httpx bound to its own 127.x address, so the server's
peer-address checks are real), answers contact-me on its own address, and serves its WBM over TLS with the
certificate it was given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fastapi import FastAPI

from certmgr.phones.hub import DeploymentHub
from certmgr.pki.pkcs12 import open_pkcs12
from certmgr.runtime import Runtime
from certmgr.simulator.ports import free_port
from certmgr.wpi.certjudge import format_certificate_info
from certmgr.wpi.codec import encode_workpoint, parse_dls
from certmgr.wpi.messages import Action, DLSMessage, Fragment, Item, Reason, ReplyStatus, WorkpointMessage

_counter = itertools.count()
P12_PASSWORD = "test-p12-password"


def address_block() -> int:
    """A third octet unique to this xdist worker and test: 127.<100 + worker*50 + k>.x."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    return 100 + (n % 3) * 50 + next(_counter) % 50


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); returns that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return (
        *_write_pair(
            tmp,
            name,
            cert.public_bytes(Encoding.PEM),
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        ),
        cert,
    )


def _write_pair(tmp: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    c, k = tmp / f"{name}.pem", tmp / f"{name}.key"
    c.write_bytes(cert_pem)
    k.write_bytes(key_pem)
    return c, k


class _Wbm:
    """A TLS server on the phone's address serving its current WBM certificate."""

    def __init__(self, host: str, port: int, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def load(self, cert: Path, key: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.ctx = ctx

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(2)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls, contextlib.suppress(OSError):
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@dataclass
class Behaviour:
    """How the fake phone answers."""

    busy_times: int = 0  # answer the first N WriteItems with busy
    reject_profiles: int = 0  # answer the first N WriteItems with failed
    info: str = "good"  # good | mismatch | empty
    install: bool = True  # serve the received certificate on the WBM
    callback: bool = True  # call back after contact-me
    callback_from: str | None = None  # call back from this address instead of its own


@dataclass
class FakePhone:
    ip: str
    mac: str
    wpi_url: str
    wbm_port: int
    tmp: Path
    behaviour: Behaviour = field(default_factory=Behaviour)
    device_type: str = "OpenStage 60"
    software_version: str = "V3 R5.21.0"

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.contact_port = free_port(self.ip)
        cert, key, self.default_cert = _self_signed(self.tmp, "default")
        self.wbm = _Wbm(self.ip, self.wbm_port, cert, key)
        self.contact_mes: list[bytes] = []
        self.responses: list[bytes] = []
        self.installed: x509.Certificate | None = None
        self.writes = 0
        self._nonce = itertools.count(1)
        self._server = ThreadingHTTPServer((self.ip, self.contact_port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self._callbacks: list[threading.Thread] = []

    @property
    def contact_me_uri(self) -> str:
        return f"http://{self.ip}:{self.contact_port}/contact_dls.html/ContactDLS"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        phone = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                phone.contact_mes.append(self.rfile.read(min(length, 4096)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if phone.behaviour.callback:
                    t = threading.Thread(target=phone.solicited_flow, daemon=True)
                    phone._callbacks.append(t)
                    t.start()

            def log_message(self, *_args: Any) -> None:
                return

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for t in self._callbacks:
            t.join(10)
        self.wbm.close()

    # -- WPI --
    def client(self, source: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source or self.ip, verify=False)
        return httpx.Client(transport=transport, timeout=10, verify=False)  # noqa: S501 - a phone in Default Mode trusts any DLS cert

    def nonce(self) -> str:
        return f"{next(self._nonce):032X}"

    def basic_items(self) -> tuple[Item, ...]:
        return (
            Item("mac-addr", self.mac),
            Item("e164", "4989700"),
            Item("device-type", self.device_type),
            Item("software-version", self.software_version),
            Item("contact-me-uri", self.contact_me_uri),
            Item("user-pwd", "secret-user-pwd"),
        )

    def post(
        self, client: httpx.Client, msg: WorkpointMessage | bytes, path: str = "/DeploymentService/LoginService"
    ) -> httpx.Response:
        body = msg if isinstance(msg, bytes) else encode_workpoint(msg)
        response = client.post(self.wpi_url + path, content=body, headers={"Content-Type": "text/xml"})
        self.responses.append(response.content)
        return response

    def report(self, reason: Reason = Reason.START_UP, source: str | None = None) -> DLSMessage:
        with self.client(source) as client:
            response = self.post(client, WorkpointMessage(self.nonce(), reason, self.basic_items(), max_items=-1))
            assert response.status_code == 200, response.text
            return parse_dls(response.content)

    def solicited_flow(self, source: str | None = None) -> list[DLSMessage]:
        """Call in with ``solicited`` and follow certmgr's actions until CleanUp (bounded)."""
        source = source or self.behaviour.callback_from
        seen: list[DLSMessage] = []
        with self.client(source) as client:
            msg = WorkpointMessage(self.nonce(), Reason.SOLICITED, self.basic_items(), max_items=-1)
            for _ in range(20):
                response = self.post(client, msg)
                if response.status_code != 200:
                    return seen
                dls = parse_dls(response.content)
                seen.append(dls)
                if dls.action is Action.CLEAN_UP:
                    return seen
                msg = self._answer(dls)
        return seen

    def _answer(self, dls: DLSMessage) -> WorkpointMessage:
        nonce = self.nonce()
        if dls.action is Action.WRITE_ITEMS:
            self.writes += 1
            if self.behaviour.busy_times > 0:
                self.behaviour.busy_times -= 1
                return WorkpointMessage(
                    nonce,
                    Reason.REPLY_TO,
                    (),
                    fragment=Fragment.FINAL,
                    reply_action=Action.WRITE_ITEMS,
                    reply_status=ReplyStatus.BUSY,
                )
            if self.behaviour.reject_profiles > 0:
                self.behaviour.reject_profiles -= 1
                return WorkpointMessage(
                    nonce,
                    Reason.REPLY_TO,
                    (),
                    fragment=Fragment.FINAL,
                    reply_action=Action.WRITE_ITEMS,
                    reply_status=ReplyStatus.FAILED,
                )
            item = dls.item("wbm-server-certificate")
            assert item is not None
            assert item.value is not None
            data = base64.b64decode(item.value)
            try:
                key, cert, chain = open_pkcs12(data, None)
            except Exception:  # a password profile: the test fixture's PKCS#12 password
                key, cert, chain = open_pkcs12(data, P12_PASSWORD.encode())
            self.installed = cert
            if self.behaviour.install:
                c, k = _write_pair(
                    self.tmp,
                    "wbm",
                    b"".join(x.public_bytes(Encoding.PEM) for x in (cert, *chain)),
                    key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                )
                self.wbm.load(c, k)
            return WorkpointMessage(
                nonce,
                Reason.REPLY_TO,
                (),
                fragment=Fragment.FINAL,
                reply_action=Action.WRITE_ITEMS,
                reply_status=ReplyStatus.ACCEPTED,
            )
        if dls.action is Action.READ_ITEMS:
            cert = self.installed if self.behaviour.info == "good" and self.installed else self.default_cert
            value = None
            if self.behaviour.info != "empty":
                value = format_certificate_info(
                    serial=cert.serial_number,
                    subject=cert.subject.rfc4514_string(),
                    issuer=cert.issuer.rfc4514_string(),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    sha1=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303
                    sha256=cert.fingerprint(hashes.SHA256()).hex(),
                )
            return WorkpointMessage(
                nonce,
                Reason.REPLY_TO,
                (Item("wbm-server-certificate-info", value),),
                fragment=Fragment.FINAL,
                reply_action=Action.READ_ITEMS,
                reply_status=ReplyStatus.ACCEPTED,
            )
        raise AssertionError(f"unexpected action {dls.action}")


class Stack:
    """certmgr's WPI role (TLS listener, poll listener, dispatcher) running in a thread with its own loop; with
    ``role="all"``, every listener of ``certmgr serve`` (the API too) and its background work."""

    def __init__(self, runtime: Runtime, role: str = "wpi") -> None:
        from certmgr.serve import Role, build_listeners, run_forever

        self.runtime = runtime
        listeners, background = build_listeners(runtime, Role(role))
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None

        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await run_forever(listeners, background, announce=lambda _l: None, stop=self._stop)

        def runner() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(main())

        wpi_app = next(listener.app for listener in listeners if listener.name == "wpi")
        assert isinstance(wpi_app, FastAPI)
        self.hub: DeploymentHub = wpi_app.state.hub
        self._thread = threading.Thread(target=runner, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        s = runtime.settings
        self.wpi_url = f"https://127.0.0.1:{s.wpi_port}"
        self.poll_url = f"http://127.0.0.1:{s.wpi_poll_port}"
        ports = [listener.server.config.port for listener in listeners]
        wait_for(lambda: all(_connectable("127.0.0.1", port) for port in ports), 15)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running(runtime: Runtime) -> Iterator[Stack]:
    stack = Stack(runtime)
    try:
        yield stack
    finally:
        stack.close()
