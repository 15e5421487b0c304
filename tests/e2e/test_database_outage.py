"""Acceptance: the PostgreSQL server is stopped and restarted while ``certmgr serve`` is delivering to simulated
phones. Meanwhile phones get HTTP 503 with Retry-After (never a 500 or a traceback) and ``/readyz`` answers 503;
the log says once that the database is unavailable and once that it is back; then every phone ends verified by
itself, each written exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from certmgr.db.models import DeploymentState
from certmgr.wpi.codec import encode_workpoint
from certmgr.wpi.messages import Item, Reason, WorkpointMessage
from tests.e2e.conftest import E2E, wait_until
from tests.pg import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]

PHONES = 6


def _ready(world: E2E) -> int:
    try:
        return httpx.get(f"{world.api_url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_postgres_stopped_and_restarted_mid_delivery(e2e_factory: Callable[..., E2E], own_pg: PostgresServer) -> None:
    url = own_pg.create_database()
    world = e2e_factory(PHONES, settings={"database_url": url, "max_attempts": 10})
    world.service.role = "all"
    world.service.start()
    # Slow phones (2 s per round trip): the deliveries are under way when the server goes.
    phones = world.add_phones(["slow=2"] * PHONES)
    world.start_phones(phones)
    mid = {DeploymentState.CONTACTING, DeploymentState.AWAITING_CALLBACK, DeploymentState.WRITTEN}

    def delivering() -> bool:
        deps = world.deployments()
        return len(deps) == PHONES and any(d[-1].state in mid for d in deps.values())

    wait_until(delivering, 60, 0.1, "deliveries under way")
    assert _ready(world) == 200
    world.engine.dispose()
    own_pg.pause()
    try:
        wait_until(lambda: _ready(world) == 503, 30, 0.2, "/readyz 503 while the database is away")
        wait_until(lambda: "unavailable:" in world.service.log(), 30, 0.2, "the outage noticed and logged")
        start_up = encode_workpoint(
            WorkpointMessage("N1", Reason.START_UP, (Item("mac-addr", "00:1A:E8:FF:FF:01"),), max_items=-1)
        )
        with httpx.Client(verify=False, timeout=10) as client:  # noqa: S501 - the WPI listener's own certificate
            answer = client.post(world.wpi_url, content=start_up, headers={"Content-Type": "text/xml"})
        assert (answer.status_code, answer.headers.get("retry-after")) == (503, "30")
    finally:
        own_pg.resume()
        resumed = time.monotonic()
    wait_until(lambda: _ready(world) == 200, 60, 0.5, "/readyz 200 once the database is back")

    def all_verified() -> bool:
        deps = world.deployments()
        return len(deps) == PHONES and all(d[-1].state is DeploymentState.VERIFIED for d in deps.values())

    try:
        wait_until(all_verified, 150, 0.5, "every phone verified after the outage")
    except BaseException:
        states = {m: [(d.state.value, d.attempts, d.last_error) for d in ds] for m, ds in world.deployments().items()}
        print(states, world.service.log()[-6000:])
        raise
    print(f"\nall {PHONES} phones verified {time.monotonic() - resumed:.1f} s after PostgreSQL came back")
    assert all(p.stats.writes_accepted == 1 for p in phones), [p.stats.writes_accepted for p in phones]
    log = world.service.log()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert log.count("unavailable:") == 1, log
    assert log.count("is back") == 1
