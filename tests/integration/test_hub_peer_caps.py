"""The per-peer caps of :class:`certmgr.phones.hub.DeploymentHub`, driven directly (no sockets; SQLite and the
injected :class:`~certmgr.clock.ManualClock`):

* ``wpi_max_open_per_peer`` — one address cannot hold more than that many untrusted interactions, even while the
  pool as a whole (``wpi_max_untrusted``) has room;
* ``wpi_max_buffered_per_peer`` — one address cannot buffer more than that many bytes of unfinished fragmented
  messages, even while the total (``wpi_max_buffered``) has room.

In each test one foreign address goes past its own cap while the total caps are far away: it gets the defined
answer (429 with ``Retry-After``, or CleanUp "protocol error" with the cookie cleared), another foreign address is
still admitted, and the real phone — calling back from its known address for its pending certificate — gets its
``WriteItems``. Each test fails when its per-peer check in ``DeploymentHub`` is removed (tried: the flood test of
``test_hostile_network.py`` only reaches the overall caps and passes without them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import Deployment, DeploymentState, Device
from certmgr.deploy import queue
from certmgr.deploy.reconcile import Reconciler
from certmgr.inventory.enrollment import record_report
from certmgr.phones.hub import DeploymentHub, WpiResponse
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from certmgr.wpi.codec import encode_workpoint, parse_dls
from certmgr.wpi.messages import Action, AnyAction, Fragment, Item, Reason, WorkpointMessage
from tests.conftest import REPO

PHONE_MAC = "00:1A:E8:00:00:01"
PHONE_IP = "10.1.2.3"
ATTACKER = "10.6.6.6"
BYSTANDER = "10.6.6.7"  # another foreign address: the pool still has room for it
PATH = "/DeploymentService/LoginService"


def _items(mac: str, ip: str) -> tuple[Item, ...]:
    return (
        Item("mac-addr", mac),
        Item("e164", "4989700"),
        Item("device-type", "OpenStage 60"),
        Item("software-version", "V3 R5.21.0"),
        Item("contact-me-uri", f"http://{ip}:8085/contact_dls.html/ContactDLS"),
    )


def _runtime(settings: Settings, clock: ManualClock, tmp_path: Path, **caps: object) -> Runtime:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.toml").write_text((REPO / "policies" / "default.toml").read_text())
    return open_runtime(
        settings.model_copy(
            update={
                "policy_dir": policies,
                "issuance_workers": 1,  # keys in this process: no worker processes for a handful of phones
                "callback_timeout_seconds": 600,
                "wpi_untrusted_timeout_seconds": 10.0,
                "wpi_max_untrusted": 100,
                "wpi_max_buffered": 1024 * 1024,
                **caps,
            }
        ),
        clock,
        create_ca=True,
    )


def _awaiting_callback(runtime: Runtime) -> None:
    """The phone at PHONE_IP reported, its certificate was issued and certmgr sent its contact-me: its
    ``solicited`` call-back from PHONE_IP is now due (D10)."""
    now = runtime.clock.now()
    with session_scope(runtime.engine) as s:
        record_report(
            s,
            mac=PHONE_MAC,
            items={it.name: it.value for it in _items(PHONE_MAC, PHONE_IP)},
            reason="start-up",
            peer=PHONE_IP,
            now=now,
            policies=runtime.policies,
        )
    assert Reconciler(runtime).run(now) == 1
    tasks = queue.claim_due(runtime, now)
    assert [t.mac for t in tasks] == [PHONE_MAC]
    queue.contact_result(runtime, tasks[0].deployment_id, now, error=None)
    with session_scope(runtime.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == PHONE_MAC)).one()
        dep = s.exec(select(Deployment).where(col(Deployment.device_id) == device.id)).one()
        assert dep.state is DeploymentState.AWAITING_CALLBACK


@pytest.fixture
def clock_runtime(
    settings: Settings, clock: ManualClock, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Runtime]:
    caps: dict[str, object] = request.param
    runtime = _runtime(settings, clock, tmp_path, **caps)
    try:
        _awaiting_callback(runtime)
        yield runtime
    finally:
        runtime.close()


_nonces = iter(range(1, 1_000_000))


def _opening(mac: str, padding: int = 0) -> bytes:
    """A ``start-up`` opening a fragmented message (``fragment="next"``) for ``mac``, ``padding`` bytes bigger."""
    items = (Item("mac-addr", mac), *((Item("padding", "x" * padding),) if padding else ()))
    msg = WorkpointMessage(f"{next(_nonces):032X}", Reason.START_UP, items, max_items=-1, fragment=Fragment.NEXT)
    return encode_workpoint(msg)


async def _send(hub: DeploymentHub, body: bytes, peer: str) -> WpiResponse:
    return await hub.handle(body, peer=peer, cookie=None, path=PATH)


def _action(answer: WpiResponse) -> AnyAction:
    assert answer.status == 200, answer.body
    return parse_dls(answer.body).action


async def _phone_is_served(hub: DeploymentHub) -> None:
    """The real phone's call-back from its known address gets its certificate (WriteItems)."""
    solicited = WorkpointMessage("C0FFEE" * 4, Reason.SOLICITED, _items(PHONE_MAC, PHONE_IP), max_items=-1)
    assert _action(await _send(hub, encode_workpoint(solicited), PHONE_IP)) is Action.WRITE_ITEMS


@pytest.mark.parametrize("clock_runtime", [{"wpi_max_open_per_peer": 2}], indirect=True)
def test_one_address_is_held_to_its_own_number_of_open_interactions(clock_runtime: Runtime, clock: ManualClock) -> None:
    """Pins the ``wpi_max_open_per_peer`` check in ``DeploymentHub._open``: the attacker's third opening is a 429
    while the pool holds 2 of 100; without the check it is admitted (GetNextFragment) and the test fails."""
    runtime = clock_runtime
    hub = DeploymentHub(runtime)

    async def scenario() -> None:
        try:
            for n in range(2):
                assert _action(await _send(hub, _opening(f"00:1A:E8:66:00:{n:02X}"), ATTACKER)) is (
                    Action.GET_NEXT_FRAGMENT
                )
            over = await _send(hub, _opening("00:1A:E8:66:00:02"), ATTACKER)
            assert (over.status, over.retry_after) == (429, 10)
            assert b"from this address" in over.body
            assert hub.held()["untrusted"] == 2  # the total cap (100) is far away
            # Another address is admitted, and the phone with a pending deployment is served.
            assert _action(await _send(hub, _opening("00:1A:E8:67:00:00"), BYSTANDER)) is Action.GET_NEXT_FRAGMENT
            await _phone_is_served(hub)
            # The attacker's place comes back once its interactions expired (untrusted timeout, injected clock).
            clock.advance(timedelta(seconds=runtime.settings.wpi_untrusted_timeout_seconds + 1))
            assert _action(await _send(hub, _opening("00:1A:E8:66:00:03"), ATTACKER)) is Action.GET_NEXT_FRAGMENT
        finally:
            await hub.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "clock_runtime", [{"wpi_max_open_per_peer": 10, "wpi_max_buffered_per_peer": 64 * 1024}], indirect=True
)
def test_one_address_is_held_to_its_own_buffered_bytes(clock_runtime: Runtime) -> None:
    """Pins the ``wpi_max_buffered_per_peer`` check in ``DeploymentHub._take``: three 25 kB openings from one
    address pass its 64 KiB while the total (1 MiB) is far away; the third is stopped — CleanUp "protocol error",
    the cookie cleared, its bytes released. Without the check it is buffered (GetNextFragment) and the test
    fails."""
    runtime = clock_runtime
    hub = DeploymentHub(runtime)
    size = 25_000

    async def scenario() -> None:
        try:
            for n in range(2):
                assert _action(await _send(hub, _opening(f"00:1A:E8:66:01:{n:02X}", size), ATTACKER)) is (
                    Action.GET_NEXT_FRAGMENT
                )
            held = hub.held()["buffered"]
            assert 2 * size < held < runtime.settings.wpi_max_buffered_per_peer
            over = await _send(hub, _opening("00:1A:E8:66:01:02", size), ATTACKER)
            assert _action(over) is Action.CLEAN_UP
            assert over.set_cookie is not None
            assert "Max-Age=0" in over.set_cookie
            assert hub.held() == {"interactions": 2, "untrusted": 2, "buffered": held, "locks": 0}
            # Another address may still buffer as much, and the phone with a pending deployment is served.
            assert _action(await _send(hub, _opening("00:1A:E8:67:01:00", size), BYSTANDER)) is (
                Action.GET_NEXT_FRAGMENT
            )
            await _phone_is_served(hub)
        finally:
            await hub.close()

    asyncio.run(scenario())
