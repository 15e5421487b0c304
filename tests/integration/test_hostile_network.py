"""The phone network is hostile: certmgr's WPI role (real TLS listener, poll listener, dispatcher) against an
attacker on other loopback addresses of the same block, and the real phone on its own.

Each test reproduces one finding of the issue "Safe on a hostile phone network" — each failed before:

1. a refused ``solicited`` from a foreign address changed the inventory and superseded the phone's deployment;
2. a ``start-up`` from a foreign address moved a verified phone (the next key went there);
3. a foreign ``fragment="next"`` opening occupied the phone's interaction and locked the real phone out;
4. ``contact-me-uri`` steered certmgr's HTTP client anywhere (server-side request forgery);
6. unauthenticated openings grew the interaction table and buffers without bound;
7. connections trickling bytes were never closed.

(5, poll hijack, is in ``test_wpi_server.py``; 8 to 10 elsewhere.)
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, Deployment, DeploymentState, Device
from certmgr.deploy import queue
from certmgr.inventory.enrollment import approve_device
from certmgr.runtime import Runtime
from certmgr.settings import Settings
from certmgr.simulator.ports import free_port
from certmgr.wpi.codec import parse_dls
from certmgr.wpi.messages import Action, Fragment, Item, Reason, ReplyStatus, WorkpointMessage
from tests.integration.fake_phone import Behaviour, FakePhone, Stack, address_block, wait_for
from tests.integration.test_wpi_server import _deployment, _runtime, _state

pytestmark = pytest.mark.timeout(120)

S = DeploymentState


@pytest.fixture
def block() -> int:
    return address_block()


@pytest.fixture
def world(settings: Settings, tmp_path: Path, block: int) -> Iterator[tuple[Runtime, Stack, list[FakePhone]]]:
    """The WPI role (callback window 30 s) and a list the test appends its phones to (closed at teardown)."""
    runtime = _runtime(
        settings,
        tmp_path,
        block,
        callback_timeout_seconds=30,
        wpi_max_open_per_peer=3,
        wpi_max_untrusted=12,
        wpi_max_buffered_per_peer=64 * 1024,
        wpi_max_buffered=1024 * 1024,
        wpi_untrusted_timeout_seconds=2.0,
        request_timeout_seconds=1.0,
        address_proof_interval_seconds=0,
    )
    stack = Stack(runtime)
    phones: list[FakePhone] = []
    try:
        yield runtime, stack, phones
    finally:
        for phone in phones:
            phone.close()
        stack.close()
        runtime.close()


def _phone(runtime: Runtime, stack: Stack, tmp: Path, ip: str, mac: str, **behaviour: Any) -> FakePhone:
    return FakePhone(
        ip=ip,
        mac=mac,
        wpi_url=stack.wpi_url,
        wbm_port=runtime.settings.wbm_port,
        tmp=tmp / f"phone-{ip}",
        behaviour=Behaviour(**behaviour),
    )


def _device(runtime: Runtime, mac: str) -> Device:
    with session_scope(runtime.engine) as s:
        return s.exec(select(Device).where(col(Device.mac) == mac)).one()


def _actions(runtime: Runtime, mac: str) -> list[str]:
    with session_scope(runtime.engine) as s:
        return [e.action for e in s.exec(select(AuditEvent).where(col(AuditEvent.subject_id) == mac)).all()]


def _awaiting_callback(runtime: Runtime, phone: FakePhone) -> Deployment:
    """The phone reported and certmgr sent its contact-me; the phone (``callback=False``) has not called back."""
    phone.report()
    return wait_for(lambda: _state(runtime, phone.mac, S.AWAITING_CALLBACK), 30)  # type: ignore[no-any-return]


def _post(phone: FakePhone, source: str, msg: WorkpointMessage) -> httpx.Response:
    with phone.client(source) as client:
        return phone.post(client, msg)


def _items(phone: FakePhone, ip: str, port: int) -> tuple[Item, ...]:
    """The phone's items, but naming ``ip`` in its contact-me-uri (what a sender at ``ip`` would claim)."""
    uri = f"http://{ip}:{port}/contact_dls.html/ContactDLS"
    return tuple(Item(it.name, uri) if it.name == "contact-me-uri" else it for it in phone.basic_items())


# --- 1. a refused message changes nothing ---------------------------------------------------------------------
def test_refused_solicited_from_a_foreign_address_changes_nothing(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.1", f"00:1A:E8:{block:02X}:01:01", callback=False)
    phones.append(phone)
    pending = _awaiting_callback(runtime, phone)
    attacker = f"127.0.{block}.66"
    before = _device(runtime, phone.mac)
    forged = tuple(
        Item(it.name, "+4900666") if it.name == "e164" else Item(it.name, "V9") if it.name == "software-version" else it
        for it in _items(phone, attacker, 8085)
    )
    msg = WorkpointMessage(phone.nonce(), Reason.SOLICITED, forged, max_items=-1)
    answer = parse_dls(_post(phone, attacker, msg).content)
    assert answer.action is Action.CLEAN_UP
    after = _device(runtime, phone.mac)
    assert (after.ip, after.e164, after.software_version, after.contact_me_uri, after.pending_ip) == (
        before.ip, before.e164, before.software_version, before.contact_me_uri, None
    )  # fmt: skip
    dep = _deployment(runtime, phone.mac)
    assert dep is not None
    assert (dep.id, dep.state) == (pending.id, S.AWAITING_CALLBACK)  # not superseded, not touched
    assert dep.transcript == pending.transcript
    assert "wpi.refused" in _actions(runtime, phone.mac)
    # The real phone's call-back is served as if nothing had happened.
    phone.solicited_flow()
    wait_for(lambda: _state(runtime, phone.mac, S.VERIFIED), 30)
    assert phone.writes == 1


# --- 2. a phone moves only on proof of possession ---------------------------------------------------------------
def _verified(runtime: Runtime, phone: FakePhone) -> Device:
    phone.report()
    wait_for(lambda: _state(runtime, phone.mac, S.VERIFIED), 30)
    return _device(runtime, phone.mac)


def test_a_start_up_from_another_address_does_not_move_a_verified_phone(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.2", f"00:1A:E8:{block:02X}:01:02")
    phones.append(phone)
    before = _verified(runtime, phone)
    # The attacker owns its address and answers contact-me there; its WBM serves its own certificate.
    attacker = _phone(runtime, stack, tmp_path, f"127.0.{block}.67", phone.mac)
    phones.append(attacker)
    attacker.report()  # a well-formed start-up, contact-me-uri = its own address
    held = wait_for(lambda: (d := _device(runtime, phone.mac)).pending_ip and d, 30)
    assert held.pending_ip == attacker.ip
    assert held.ip == before.ip  # not moved
    assert "device.move-held" in _actions(runtime, phone.mac)
    assert attacker.contact_mes == []
    assert attacker.writes == 0
    answer = attacker.solicited_flow()  # and its call-back gets no key
    assert [d.action for d in answer] == [Action.CLEAN_UP]
    # The phone itself reports from its address: the claim is withdrawn.
    phone.report()
    assert _device(runtime, phone.mac).pending_ip is None
    assert "device.move-withdrawn" in _actions(runtime, phone.mac)


def test_a_phone_that_proves_its_key_moves_and_gets_a_certificate_there(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.3", f"00:1A:E8:{block:02X}:01:03")
    phones.append(phone)
    device = _verified(runtime, phone)
    # The same phone, now at a new address, still serving the certificate certmgr deployed (it holds the key).
    moved = _phone(runtime, stack, tmp_path, f"127.0.{block}.33", phone.mac)
    phones.append(moved)
    moved.wbm.load(phone.tmp / "wbm.pem", phone.tmp / "wbm.key")
    moved.report()
    wait_for(lambda: _device(runtime, phone.mac).ip == moved.ip, 30)
    assert "device.moved" in _actions(runtime, phone.mac)
    # A certificate for the new address is issued and deployed there.
    new = wait_for(
        lambda: (
            (d := _state(runtime, phone.mac, S.VERIFIED)) and d.certificate_id != device.current_certificate_id and d
        ),
        60,
    )
    assert moved.writes == 1
    assert new.certificate_id != device.current_certificate_id


def test_an_operator_approves_a_held_move(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.4", f"00:1A:E8:{block:02X}:01:04")
    phones.append(phone)
    _verified(runtime, phone)
    replaced = _phone(runtime, stack, tmp_path, f"127.0.{block}.44", phone.mac)  # e.g. factory-reset, new address
    phones.append(replaced)
    replaced.report()
    wait_for(lambda: _device(runtime, phone.mac).pending_ip == replaced.ip, 30)
    with session_scope(runtime.engine) as s:
        approve_device(s, phone.mac, runtime.clock.now(), actor="token:alice", move_to=replaced.ip)
    assert _device(runtime, phone.mac).ip == replaced.ip
    wait_for(lambda: replaced.writes == 1 and _state(runtime, phone.mac, S.VERIFIED), 60)


# --- 3. one message cannot lock a phone out ----------------------------------------------------------------------
def test_a_foreign_fragment_does_not_occupy_the_phones_interaction(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.5", f"00:1A:E8:{block:02X}:01:05", callback=False)
    phones.append(phone)
    _awaiting_callback(runtime, phone)
    attacker = f"127.0.{block}.68"
    first = WorkpointMessage(
        phone.nonce(), Reason.START_UP, _items(phone, attacker, 8085), max_items=-1, fragment=Fragment.NEXT
    )
    assert parse_dls(_post(phone, attacker, first).content).action is Action.GET_NEXT_FRAGMENT
    seen = phone.solicited_flow()
    assert seen[0].action is Action.WRITE_ITEMS  # not "interaction in progress"
    wait_for(lambda: _state(runtime, phone.mac, S.VERIFIED), 30)


def test_the_phones_cookie_from_another_address_does_not_continue_its_interaction(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    """An attacker who learns the session cookie of a phone's running interaction and answers in its place from
    another address (claiming the write was accepted) does not continue it: no write is recorded, nothing more is
    sent to it, and the phone's own interaction goes on."""
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.9", f"00:1A:E8:{block:02X}:01:09", callback=False)
    phones.append(phone)
    _awaiting_callback(runtime, phone)
    attacker = f"127.0.{block}.69"
    with phone.client() as own, phone.client(attacker) as foreign:
        first = phone.post(own, WorkpointMessage(phone.nonce(), Reason.SOLICITED, phone.basic_items(), max_items=-1))
        write = parse_dls(first.content)
        assert write.action is Action.WRITE_ITEMS
        assert own.cookies, "the service names the interaction with a cookie"
        foreign.cookies.update(own.cookies)
        forged = WorkpointMessage(
            phone.nonce(), Reason.REPLY_TO, (Item("mac-addr", phone.mac),), fragment=Fragment.FINAL,
            reply_action=Action.WRITE_ITEMS, reply_status=ReplyStatus.ACCEPTED,
        )  # fmt: skip
        answer = phone.post(foreign, forged)
        assert answer.status_code < 500
        if answer.status_code == 200:
            assert parse_dls(answer.content).action not in (Action.READ_ITEMS, Action.WRITE_ITEMS)
        assert _state(runtime, phone.mac, S.WRITTEN, S.VERIFYING, S.VERIFIED) is None, "the forged answer counted"
        assert "deployment.written" not in _actions(runtime, phone.mac)
        # The phone's own answer continues its interaction.
        following = parse_dls(phone.post(own, phone._answer(write)).content)
        assert following.action is Action.READ_ITEMS
        assert parse_dls(phone.post(own, phone._answer(following)).content).action is Action.CLEAN_UP
    wait_for(lambda: _state(runtime, phone.mac, S.VERIFIED), 30)
    assert phone.writes == 1


# --- 4. contact-me only goes to the phone ------------------------------------------------------------------------
class _Trap:
    """An HTTP server that counts the requests it gets (a service on the host an attacker wants certmgr to hit)."""

    def __init__(self, host: str) -> None:
        self.hits: list[str] = []
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                trap.hits.append(self.path)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        self.port = free_port(host)
        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_stored_contact_me_uri_is_checked_again_before_sending(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    """A URI recorded before the rule existed (or a phone whose address changed) is never used to send."""
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.9", f"00:1A:E8:{block:02X}:01:09", callback=False)
    phones.append(phone)
    _awaiting_callback(runtime, phone)  # the first contact-me went out; nothing else touches the deployment now
    trap = _Trap("127.0.0.1")
    try:
        with session_scope(runtime.engine) as s:
            device = s.exec(select(Device).where(col(Device.mac) == phone.mac)).one()
            device.contact_me_uri = f"http://127.0.0.1:{trap.port}/contact_dls.html/ContactDLS"
            device.last_contact_me_at = None
            s.add(device)
            dep = s.exec(select(Deployment).where(col(Deployment.device_id) == device.id)).one()
            dep.state, dep.next_attempt_at, dep.lease_until = S.QUEUED, None, None  # due again now
            s.add(dep)
        wait_for(lambda: _device(runtime, phone.mac).contact_me_uri is None, 30)  # the dispatcher dropped it
        assert "device.bad-contact-me-uri" in _actions(runtime, phone.mac)
        assert trap.hits == []
    finally:
        trap.close()


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost:{port}/internal/admin/reset",  # a DNS name
        "http://127.0.0.1:{port}/contact_dls.html/ContactDLS",  # another host
        "http://{ip}:{port}/internal/admin/reset",  # the phone's address, another path
    ],
)
def test_contact_me_uri_cannot_steer_the_contact_me(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int, uri: str
) -> None:
    runtime, stack, phones = world
    ip = f"127.0.{block}.6"
    trap = _Trap("127.0.0.1" if "{ip}" not in uri else ip)
    try:
        victim = _phone(runtime, stack, tmp_path, ip, f"00:1A:E8:{block:02X}:01:06")
        phones.append(victim)
        control = _phone(runtime, stack, tmp_path, f"127.0.{block}.7", f"00:1A:E8:{block:02X}:01:07")
        phones.append(control)
        bad = uri.format(port=trap.port, ip=ip)
        items = tuple(Item(it.name, bad) if it.name == "contact-me-uri" else it for it in victim.basic_items())
        _post(victim, ip, WorkpointMessage(victim.nonce(), Reason.START_UP, items, max_items=-1))
        assert _device(runtime, victim.mac).contact_me_uri is None
        assert "device.bad-contact-me-uri" in _actions(runtime, victim.mac)
        assert [t.mac for t in queue.claim_due(runtime, runtime.clock.now())] == []  # nothing to contact
        control.report()
        wait_for(lambda: _state(runtime, control.mac, S.VERIFIED), 30)  # the dispatcher ran meanwhile
        assert trap.hits == []
    finally:
        trap.close()


# --- 6. bounded unauthenticated state -----------------------------------------------------------------------------
def test_a_flood_of_openings_is_bounded_and_the_phone_is_still_served(
    world: tuple[Runtime, Stack, list[FakePhone]], tmp_path: Path, block: int
) -> None:
    runtime, stack, phones = world
    phone = _phone(runtime, stack, tmp_path, f"127.0.{block}.8", f"00:1A:E8:{block:02X}:01:08", callback=False)
    phones.append(phone)
    _awaiting_callback(runtime, phone)
    settings = runtime.settings
    padding = Item("padding", "x" * 16_000)
    statuses: list[int] = []
    for sender in range(100, 108):
        source = f"127.0.{block}.{sender}"
        with phone.client(source) as client:
            for n in range(6):
                mac = f"00:1A:E8:{sender:02X}:{n:02X}:00"
                msg = WorkpointMessage(
                    phone.nonce(), Reason.START_UP, (Item("mac-addr", mac), padding), max_items=-1,
                    fragment=Fragment.NEXT,
                )  # fmt: skip
                client.cookies.clear()  # every message opens a new interaction
                statuses.append(phone.post(client, msg).status_code)
                held = stack.hub.held()
                assert held["untrusted"] <= settings.wpi_max_untrusted
                assert held["buffered"] <= settings.wpi_max_buffered + 20_000
    assert 429 in statuses  # past the caps: a defined answer, no 5xx
    assert all(s in (200, 429) for s in statuses)
    # The phone with a pending deployment is served during the flood.
    assert phone.solicited_flow()[0].action is Action.WRITE_ITEMS
    wait_for(lambda: _state(runtime, phone.mac, S.VERIFIED), 30)
    # Untrusted interactions expire quickly; what they held is returned.
    wait_for(lambda: stack.hub.held()["untrusted"] == 0 and stack.hub.held()["buffered"] == 0, 30)
    # Nor does the table of per-(peer, phone) locks keep an entry per sender once its requests are answered (it
    # kept up to 10,000: the service's memory grew with the number of phones ever seen).
    assert stack.hub.held()["locks"] == 0


# --- 7. idle and slow connections are closed ------------------------------------------------------------------------
def _closed_by_server(sock: socket.socket) -> bool:
    """Block (bounded by the socket's timeout) until the server closes the connection."""
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return True
    except TimeoutError:
        return False


def test_trickling_connections_are_closed_on_every_phone_listener(
    world: tuple[Runtime, Stack, list[FakePhone]],
) -> None:
    runtime, _stack, _phones = world
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opened: list[socket.socket] = []
    try:
        for port, tls in ((runtime.settings.wpi_port, True), (runtime.settings.wpi_poll_port, False)):
            for _ in range(20):
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock = context.wrap_socket(raw) if tls else raw
                sock.sendall(b"P")  # one byte of a request line, then nothing more
                opened.append(sock)
        assert all(_closed_by_server(sock) for sock in opened)  # each within the 1 s read deadline (+ slack)
    finally:
        for sock in opened:
            sock.close()
