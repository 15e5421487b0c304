"""A minimal fake DLS (TLS + HTTP/1.1 keep-alive + the WPI codec) for the simulator tests, and its self-tests.

The fake DLS implements the reference state machine of wpi-protocol.md §9 just far enough: start-up /
local-changes → CleanUp; solicited with a pending job → WriteItems; accepted → ReadItems info → CleanUp;
busy → CleanUp + send-solicited; failed → CleanUp; fragment="next" → GetNextFragment. It records every message
with the TCP peer address and the cookie the phone sent.

Addresses: each test gets its own ``127.0.<N>.0/24`` (and ``127.128.<N>.0/24`` for ``ip-change``), N from a
per-xdist-worker slice of 100..249, so tests can run in parallel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certmgr.clock import SystemClock
from certmgr.pki.ca import CADefinition, CAHierarchyDefinition, build_issuing, build_root
from certmgr.pki.keys import PrivateKey
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.pkcs12 import build_pkcs12
from certmgr.pki.store import Issuer
from certmgr.pki.types import KeyType, Pkcs12Profile
from certmgr.simulator.phone import self_signed
from certmgr.wpi.codec import encode_dls, parse_workpoint
from certmgr.wpi.contactme import build_contact_me
from certmgr.wpi.messages import (
    ITEM_WBM_CERTIFICATE,
    ITEM_WBM_CERTIFICATE_INFO,
    Action,
    DLSMessage,
    Fragment,
    Item,
    Reason,
    ReplyStatus,
    WorkpointMessage,
    cleanup_message,
)

T = TypeVar("T")
PASSWORD = b"sim-p12-password"
_slots = itertools.count()


def fresh_net(span: int = 1) -> int:
    """A third octet N for this test: 127.0.N.0/24 … 127.0.(N+span-1).0/24 are ours alone (each xdist worker
    draws from its own slice of 100..249, sequentially)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    width = 150 // workers
    start = next(_slots) % width
    if start + span > width:
        start = 0
    for _ in range(span - 1):
        next(_slots)
    return 100 + index * width + start


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a fresh loop, bounded by ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --- PKI material -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Material:
    key: PrivateKey
    cert: x509.Certificate
    issuer: Issuer

    def pkcs12(self, profile: Pkcs12Profile, password: bytes | None = PASSWORD) -> bytes:
        pw = None if profile is Pkcs12Profile.PLAIN else password
        return build_pkcs12(self.key, self.cert, self.issuer.chain, profile, pw, b"wbm")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(Encoding.DER)).hexdigest()


def make_material(cn: str = "phone.example.net") -> Material:
    now = datetime.now(UTC)

    def level(name: str, path_length: int) -> CADefinition:
        return CADefinition(name, None, None, None, KeyType.EC_P256, timedelta(days=365), path_length)

    defn = CAHierarchyDefinition(level("Sim Root", 1), level("Sim Issuing", 0))
    root_key, root = build_root(defn, now)
    ca_key, ca_cert = build_issuing(defn, root_key, root, now)
    issuer = Issuer(cert=ca_cert, key=ca_key, chain=(ca_cert,), root=root)
    spec = LeafSpec(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        dns_names=(cn,),
        ip_addresses=(),
        validity=timedelta(days=30),
    )
    key, cert = issue_key_and_leaf(spec, KeyType.RSA_2048, issuer, now)
    return Material(key=key, cert=cert, issuer=issuer)


@pytest.fixture(scope="session")
def material() -> Material:
    return make_material()


# --- TLS probe ----------------------------------------------------------------------------------------------
async def probe_sha256(ip: str, port: int = 443, timeout: float = 5.0) -> str:
    """SHA-256 of the leaf certificate served on ip:port (no verification, like a first browser visit)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port, ssl=ctx), timeout)
    try:
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


# --- the fake DLS -------------------------------------------------------------------------------------------
@dataclass
class Job:
    """A pending certificate deployment for one MAC."""

    p12: bytes
    password_item: tuple[str, str] | None = None


@dataclass(frozen=True)
class Seen:
    peer: str
    msg: WorkpointMessage
    cookie: str | None
    path: str


@dataclass
class _Session:
    mac: str | None = None
    fragments: list[Item] = field(default_factory=list)


Hook = Callable[[WorkpointMessage, str], DLSMessage | None]


class FakeDLS:
    """A TLS WPI endpoint on ``host:port``; see the module docstring."""

    def __init__(self, host: str, port: int = 18443) -> None:
        self.host, self.port = host, port
        self.jobs: dict[str, Job] = {}
        self.seen: list[Seen] = []
        self.sent: list[DLSMessage] = []
        self.infos: dict[str, str] = {}
        self.read_all: dict[str, tuple[Item, ...]] = {}
        self.events: list[tuple[str, str]] = []  # (mac, event)
        self.hook: Hook | None = None  # may override the answer to any message
        self._sessions: dict[str, _Session] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ctx = self_signed("fake-dls", KeyType.EC_P256, SystemClock()).context

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/DeploymentService/LoginService"

    async def __aenter__(self) -> FakeDLS:
        self._server = await asyncio.start_server(self._on_conn, self.host, self.port, ssl=self._ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    def from_mac(self, mac: str) -> list[Seen]:
        return [s for s in self.seen if s.msg.mac == mac or self._mac_of(s) == mac]

    def _mac_of(self, seen: Seen) -> str | None:
        return self._sessions.get(seen.cookie or "", _Session()).mac

    async def contact_me(
        self, phone_uri: str, *, method: str = "POST", dls: tuple[str, int] | None = None
    ) -> httpx.Response:
        target = dls or (self.host, self.port)
        body = build_contact_me(target[0], target[1])
        async with httpx.AsyncClient(timeout=10) as client:
            if method == "GET":
                return await client.get(f"{phone_uri}?{body.decode()}")
            return await client.post(
                phone_uri, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        for _ in range(int(timeout / 0.02) + 1):
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return predicate()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")[0]
        try:
            for _ in range(200):
                line = await asyncio.wait_for(reader.readline(), 15)
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                for _ in range(60):
                    h = await reader.readline()
                    if h in (b"\r\n", b""):
                        break
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                cookie = None
                for part in headers.get("cookie", "").split(";"):
                    if part.strip().startswith("JSESSIONID="):
                        cookie = part.strip().split("=", 1)[1]
                answer, new_cookie = self._answer(method, path, body, peer, cookie)
                extra = (
                    f"Set-Cookie: JSESSIONID={new_cookie}; Path=/DeploymentService; Secure\r\n" if new_cookie else ""
                )
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: {len(answer)}\r\n"
                    f"{extra}\r\n"
                )
                writer.write(head.encode() + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, method: str, path: str, body: bytes, peer: str, cookie: str | None) -> tuple[bytes, str | None]:
        msg = parse_workpoint(body)
        new_cookie = None
        if cookie is None or cookie not in self._sessions:
            cookie = new_cookie = secrets.token_hex(8)
            self._sessions[cookie] = _Session()
        session = self._sessions[cookie]
        if msg.mac:
            session.mac = msg.mac
        self.seen.append(Seen(peer=peer, msg=msg, cookie=None if new_cookie else cookie, path=path))
        reply = self.hook(msg, session.mac or "") if self.hook else None
        if reply is None:
            reply = self._decide(msg, session)
        self.sent.append(reply)
        if reply.action is Action.CLEAN_UP:
            self._sessions.pop(cookie, None)
        return encode_dls(reply), new_cookie

    def _decide(self, msg: WorkpointMessage, session: _Session) -> DLSMessage:
        mac = session.mac or ""
        nonce = msg.nonce
        if msg.fragment is Fragment.NEXT:
            session.fragments.extend(msg.items)
            return DLSMessage(nonce=nonce, action=Action.GET_NEXT_FRAGMENT)
        items = (*session.fragments, *msg.items)
        session.fragments = []
        if msg.reason is Reason.SOLICITED:
            job = self.jobs.get(mac)
            if job is None:
                return cleanup_message(nonce)
            write = [Item(ITEM_WBM_CERTIFICATE, base64.b64encode(job.p12).decode())]
            if job.password_item:
                write.append(Item(*job.password_item))
            return DLSMessage(nonce=nonce, action=Action.WRITE_ITEMS, items=tuple(write))
        if msg.reason is Reason.REPLY_TO:
            action = msg.reply_action
            if action is Action.WRITE_ITEMS:
                if msg.reply_status is ReplyStatus.BUSY:
                    self.events.append((mac, "busy"))
                    return cleanup_message(nonce, send_solicited=True)
                if msg.reply_status is ReplyStatus.FAILED:
                    self.events.append((mac, "failed"))
                    return cleanup_message(nonce, reason="write failed")
                if any(it.status for it in items):
                    self.events.append((mac, "item-failed"))
                    return cleanup_message(nonce, reason="item failed")
                self.events.append((mac, "accepted"))
                self.jobs.pop(mac, None)
                return DLSMessage(nonce=nonce, action=Action.READ_ITEMS, items=(Item(ITEM_WBM_CERTIFICATE_INFO),))
            if action is Action.READ_ITEMS:
                info = next((it.value for it in items if it.name == ITEM_WBM_CERTIFICATE_INFO), None)
                self.infos[mac] = info or ""
                self.events.append((mac, "info"))
                return cleanup_message(nonce)
            if action is Action.READ_ALL_ITEMS:
                self.read_all[mac] = items
                return cleanup_message(nonce)
        self.events.append((mac, msg.reason.value))
        return cleanup_message(nonce)


# --- self-tests of the helpers ------------------------------------------------------------------------------
def test_fresh_net_in_range() -> None:
    nets = {fresh_net() for _ in range(5)}
    assert all(100 <= n <= 249 for n in nets)


def test_fake_dls_answers_start_up_with_cleanup() -> None:
    from certmgr.wpi.codec import encode_workpoint, parse_dls

    async def body() -> None:
        net = fresh_net()
        async with FakeDLS(f"127.0.{net}.1") as dls:
            msg = WorkpointMessage(
                nonce="AB" * 16, reason=Reason.START_UP, items=(Item("mac-addr", "00:1A:E8:00:00:01"),)
            )
            async with httpx.AsyncClient(verify=False, timeout=5) as client:  # noqa: S501 - fake DLS
                resp = await client.post(dls.url, content=encode_workpoint(msg))
            reply = parse_dls(resp.content)
            assert reply.action is Action.CLEAN_UP
            assert reply.nonce == msg.nonce
            assert dls.seen[0].peer == "127.0.0.1"

    run(body())
