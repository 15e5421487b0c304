"""Security rules of the phone-facing listeners, through the real listeners of ``certmgr serve`` (uvicorn as
:func:`certmgr.serve.build_listeners` configures it, real TLS on loopback, fake phones on their own addresses):

* the TCP peer is what D10 checks — ``X-Forwarded-For``, ``Forwarded`` and ``X-Real-IP`` are ignored;
* a WPI body over the cap is a 413 before it is read: a declared oversize ``Content-Length`` and a chunked body;
* a configured trusted NAT/proxy address is accepted instead of the phone's own, and a dual-stack listener's
  IPv4-mapped peer (``::ffff:127.0.x.y``) is the phone's IPv4 address.

Each test's docstring names the check it pins; each fails when that check is removed.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import DeploymentState, Device
from certmgr.runtime import Runtime
from certmgr.settings import Settings
from certmgr.wpi.codec import encode_workpoint, parse_dls
from certmgr.wpi.messages import Action, DLSMessage, Reason, WorkpointMessage
from tests.integration.fake_phone import FakePhone, Stack, address_block, wait_for
from tests.integration.test_wpi_server import _deployment, _events, _phone, _runtime, _state

pytestmark = pytest.mark.timeout(120)

#: uvicorn's default ``forwarded_allow_ips``: the one peer whose forwarding headers uvicorn would believe if
#: ``proxy_headers`` were on — so the foreign peer of these tests is exactly that address.
FOREIGN = "127.0.0.1"
#: How long a test waits for an answer that must come without the rest of a body (a bounded wait, not a sleep).
ANSWER_DEADLINE_S = 15.0


@pytest.fixture
def block() -> int:
    return address_block()


@pytest.fixture
def waiting(settings: Settings, tmp_path: Path, block: int) -> Iterator[tuple[Runtime, Stack]]:
    """A stack whose phones ack contact-me but never call back: their deployments wait for a callback, with a
    callback window long enough for the test."""
    runtime = _runtime(settings, tmp_path, block, callback_timeout_seconds=120)
    stack = Stack(runtime)
    try:
        yield runtime, stack
    finally:
        stack.close()
        runtime.close()


def _awaiting_callback(runtime: Runtime, phone: FakePhone) -> None:
    phone.report()
    wait_for(lambda: phone.contact_mes and _state(runtime, phone.mac, DeploymentState.AWAITING_CALLBACK), 40)


def _solicited_from(phone: FakePhone, source: str, headers: dict[str, str]) -> DLSMessage:
    """One ``solicited`` naming ``phone`` (its MAC, items and contact-me URI), sent from ``source``."""
    body = encode_workpoint(WorkpointMessage(phone.nonce(), Reason.SOLICITED, phone.basic_items(), max_items=-1))
    with phone.client(source) as client:
        r = client.post(
            phone.wpi_url + "/DeploymentService/LoginService",
            content=body,
            headers={"Content-Type": "text/xml", **headers},
        )
    assert r.status_code == 200, r.text
    return parse_dls(r.content)


def _device_ip(runtime: Runtime, mac: str) -> str | None:
    with session_scope(runtime.engine) as s:
        return s.exec(select(Device).where(col(Device.mac) == mac)).one().ip


def test_forwarding_headers_are_ignored_on_the_wpi_listener(
    waiting: tuple[Runtime, Stack], tmp_path: Path, block: int
) -> None:
    """Pins ``proxy_headers: False`` of the phone listeners in ``certmgr.serve.build_listeners`` (and that
    ``certmgr.phones.listener`` takes the peer from the TCP connection only).

    Two phones wait for certmgr's call-back. A foreign peer — 127.0.0.1, which uvicorn would trust as a proxy
    by default — sends ``solicited`` for each: for phone A claiming A's address in ``X-Forwarded-For``,
    ``Forwarded`` and ``X-Real-IP``, for phone B without headers. Both must be treated alike, as the foreign
    peer: CleanUp, no key, a refusal naming 127.0.0.1, no change (address, deployment), and the real phone's
    call-back is served afterwards. With ``proxy_headers=True`` the listener believes the header, A's solicited
    passes D10 and the PKCS#12 goes to the foreign peer."""
    runtime, stack = waiting
    a = _phone(stack, runtime, tmp_path, block, 1, callback=False)
    b = _phone(stack, runtime, tmp_path, block, 2, callback=False)
    try:
        _awaiting_callback(runtime, a)
        _awaiting_callback(runtime, b)
        before = {p.mac: _deployment(runtime, p.mac) for p in (a, b)}
        claim = {"X-Forwarded-For": a.ip, "Forwarded": f"for={a.ip};proto=https", "X-Real-IP": a.ip}
        answers = {"a": _solicited_from(a, FOREIGN, claim), "b": _solicited_from(b, FOREIGN, {})}
        for name, answer in answers.items():
            assert answer.action is Action.CLEAN_UP, name
            assert answer.item("wbm-server-certificate") is None, name
        refusals = {e.subject_id: e.details for e in _events(runtime, "wpi.refused")}
        for phone in (a, b):
            assert refusals[phone.mac]["peer"] == FOREIGN
            assert "peer address" in refusals[phone.mac]["reason"]
            dep, was = _deployment(runtime, phone.mac), before[phone.mac]
            assert dep is not None
            assert was is not None
            assert (dep.id, dep.state, dep.written_at) == (was.id, DeploymentState.AWAITING_CALLBACK, None)
            assert _device_ip(runtime, phone.mac) == phone.ip  # no change
            assert phone.installed is None
        # ... and the real phone, calling back from its own address, still gets its certificate.
        assert [m.action for m in a.solicited_flow()] == [Action.WRITE_ITEMS, Action.READ_ITEMS, Action.CLEAN_UP]
        assert a.installed is not None
    finally:
        a.close()
        b.close()


def test_forwarding_headers_are_ignored_on_the_poll_listener(settings: Settings, tmp_path: Path, block: int) -> None:
    """Pins ``proxy_headers: False`` of the poll listener in ``certmgr.serve.build_listeners``. Polls are bound to
    the phone's known address (``deploy.queue.poll``): two phones with a pending job are polled for from a foreign
    peer — 127.0.0.1, which uvicorn would trust as a proxy by default — one claiming its own address in
    ``X-Forwarded-For``, ``Forwarded`` and ``X-Real-IP``: both get the idle answer (200, nothing pending). The
    control: the phone polling from its own address gets the pending answer (202). With ``proxy_headers=True`` on
    the poll listener the claim is believed and the test fails (202 != 200)."""
    runtime = _runtime(settings, tmp_path, block, approve=True, contact_gap_seconds=3600, callback_timeout_seconds=30)
    stack = Stack(runtime)
    c = _phone(stack, runtime, tmp_path, block, 3, callback=False)
    d = _phone(stack, runtime, tmp_path, block, 4, callback=False)
    try:
        from certmgr.inventory.enrollment import approve_device

        for phone in (c, d):
            phone.report()
            with session_scope(runtime.engine) as s:
                device = s.exec(select(Device).where(col(Device.mac) == phone.mac)).one()
                device.last_contact_me_at = runtime.clock.now()  # the contact gap keeps the dispatcher away
                s.add(device)
                approve_device(s, phone.mac, runtime.clock.now(), actor="test")
            wait_for(lambda p=phone: _deployment(runtime, p.mac), 30)  # type: ignore[misc]
        url = f"{stack.poll_url}/dcmp/contact-me"
        transport = httpx.HTTPTransport(local_address=FOREIGN)
        with httpx.Client(transport=transport, timeout=10) as client:
            claim = {"X-Forwarded-For": c.ip, "Forwarded": f"for={c.ip}", "X-Real-IP": c.ip}
            with_claim = client.get(url, params={"device-id": c.mac}, headers=claim).status_code
            without = client.get(url, params={"device-id": d.mac}).status_code
        assert (with_claim, without) == (runtime.settings.poll_idle_status, runtime.settings.poll_idle_status)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=c.ip), timeout=10) as own:
            assert own.get(url, params={"device-id": c.mac}).status_code == runtime.settings.poll_pending_status
    finally:
        c.close()
        d.close()
        stack.close()
        runtime.close()


# --- body caps --------------------------------------------------------------------------------------------
def _tls(stack: Stack) -> ssl.SSLSocket:
    port = int(stack.wpi_url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_DEADLINE_S)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(raw)


def _status_line(sock: ssl.SSLSocket) -> bytes:
    """The answer's status line; fails the test if none comes within the socket's deadline."""
    answer = b""
    try:
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    except TimeoutError:
        pytest.fail(f"no answer within {ANSWER_DEADLINE_S:g} s: the server waits for the rest of the body")
    return answer.split(b"\r\n", 1)[0]


def test_chunked_body_over_the_cap_is_413_before_it_ends(waiting: tuple[Runtime, Stack]) -> None:
    """Pins the streaming cap in ``certmgr.phones.listener.create_wpi_app`` (count the bytes while they arrive,
    413 once past ``wpi_max_body``). A chunked body carries no length, so only that loop can stop it: the test
    sends a little more than the cap and never the final chunk. An answer proves the server stopped reading
    — a listener that read the whole body first (``await request.body()``) would wait for the end that never
    comes, and the test fails at its deadline."""
    runtime, stack = waiting
    cap = runtime.settings.wpi_max_body
    with _tls(stack) as sock:
        sock.sendall(
            b"POST /DeploymentService/LoginService HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"<" * 4096
        for _ in range(cap // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert _status_line(sock) == b"HTTP/1.1 413 Request Entity Too Large"


def test_declared_oversize_content_length_is_413_without_a_body(waiting: tuple[Runtime, Stack]) -> None:
    """Pins the ``Content-Length`` check in ``create_wpi_app``: a declared length over the cap is refused before
    a byte of the body is read. The test sends the headers only; without the check the server waits for the
    body and the test fails at its deadline."""
    runtime, stack = waiting
    for declared in (runtime.settings.wpi_max_body + 1, 10 * 1024 * 1024 * 1024):
        with _tls(stack) as sock:
            sock.sendall(
                b"POST /DeploymentService/LoginService HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                b"Content-Length: %d\r\n\r\n" % declared
            )
            assert _status_line(sock) == b"HTTP/1.1 413 Request Entity Too Large"


def test_body_at_the_cap_is_read(waiting: tuple[Runtime, Stack]) -> None:
    """The control: a chunked body of exactly the cap is read to its end and parsed (a 400 for not-XML)."""
    runtime, stack = waiting
    cap = runtime.settings.wpi_max_body
    with _tls(stack) as sock:
        sock.sendall(
            b"POST /DeploymentService/LoginService HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (cap, b" " * cap)
        )
        assert _status_line(sock) == b"HTTP/1.1 400 Bad Request"


# --- trusted proxy and IPv4-mapped peers through a dual-stack listener ----------------------------------------
class DualStackStack(Stack):
    """:class:`Stack` with the WPI listener on a dual-stack socket (``::`` with ``IPV6_V6ONLY`` off), so every
    IPv4 phone is seen as ``::ffff:127.0.x.y``. The listeners and their uvicorn configuration are still those of
    :func:`certmgr.serve.build_listeners`; only the socket is handed in. (``wpi_host = "::"`` alone would not do:
    asyncio binds ``::`` IPv6-only.)"""

    def __init__(self, runtime: Runtime) -> None:
        import functools

        import certmgr.serve as serve_module

        self._sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("::", runtime.settings.wpi_port))
        original = serve_module.build_listeners

        def build(rt: Runtime, role: serve_module.Role) -> tuple[list[serve_module.Listener], list[object]]:
            listeners, background = original(rt, role)
            for listener in listeners:
                if listener.name == "wpi":
                    server = listener.server
                    server.serve = functools.partial(type(server).serve, server, sockets=[self._sock])  # type: ignore[method-assign]
            return listeners, background  # type: ignore[return-value]

        serve_module.build_listeners = build  # type: ignore[assignment]
        try:
            super().__init__(runtime)
        finally:
            serve_module.build_listeners = original

    def close(self) -> None:
        super().close()
        self._sock.close()


def test_trusted_proxy_and_ipv4_mapped_peers_through_a_dual_stack_listener(
    settings: Settings, tmp_path: Path, block: int
) -> None:
    """Pins, through the listener, ``same_ip`` (IPv4-mapped unwrapping) and ``peer_is_trusted_proxy`` as
    ``certmgr.deploy.admission.admit`` uses them, with the WPI listener on a dual-stack socket so that every
    IPv4 phone is seen as ``::ffff:127.0.x.y``:

    * phone 1 calls back from its own address → served and verified (mapped peer = known address);
    * phone 2 calls back through the configured trusted NAT address .9 → served and verified;
    * phone 3 calls back from .8, which is no trusted proxy → refused, no key.

    Without the unwrapping in ``same_ip`` phone 1 is refused; without the trusted-proxy check in ``admit`` (or
    its unwrapping in ``peer_is_trusted_proxy``) phone 2 is."""
    nat, stranger = f"127.0.{block}.9", f"127.0.{block}.8"
    runtime = _runtime(settings, tmp_path, block, trusted_proxies=[nat])
    stack = DualStackStack(runtime)
    own = _phone(stack, runtime, tmp_path, block, 1)
    proxied = _phone(stack, runtime, tmp_path, block, 2, callback_from=nat)
    refused = _phone(stack, runtime, tmp_path, block, 3, callback_from=stranger)
    try:
        phones = (own, proxied, refused)
        for phone in phones:
            phone.report()

        def settled(phone: FakePhone) -> bool:  # verified, or refused at least once
            refused_macs = {e.subject_id for e in _events(runtime, "wpi.refused")}
            return phone.mac in refused_macs or _state(runtime, phone.mac, DeploymentState.VERIFIED) is not None

        wait_for(lambda: all(settled(p) for p in phones), 60)
        assert {e.subject_id for e in _events(runtime, "wpi.refused")} == {refused.mac}
        for phone in (own, proxied):
            wait_for(lambda p=phone: _state(runtime, p.mac, DeploymentState.VERIFIED), 60)  # type: ignore[misc]
            assert phone.installed is not None
        refusal = next(e for e in _events(runtime, "wpi.refused") if e.subject_id == refused.mac)
        assert refusal.details["peer"] == f"::ffff:{stranger}"  # the listener really saw mapped peers
        assert refused.installed is None
        assert all(b'wbm-server-certificate"' not in body for body in refused.responses)
        for phone in (own, proxied):
            assert _device_ip(runtime, phone.mac) == phone.ip
    finally:
        for phone in (own, proxied, refused):
            phone.close()
        stack.close()
        runtime.close()
