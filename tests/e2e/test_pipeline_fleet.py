"""End to end: certmgr's WPI role (real TLS listener + dispatcher) and five simulated phones, loopback only."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import CheckProbe, Deployment, DeploymentState, Device, DeviceStatus
from certmgr.settings import Settings
from certmgr.simulator.fleet import Fleet
from certmgr.simulator.ports import free_port, port_free_on_all
from tests.integration.fake_phone import Stack, address_block, wait_for
from tests.integration.test_wpi_server import _runtime

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def test_five_simulated_phones_all_verified(settings: Settings, tmp_path: Path) -> None:
    block = address_block()
    hosts = [f"127.0.{block}.{n}" for n in range(1, 6)]
    runtime = _runtime(settings, tmp_path, block, wbm_port=port_free_on_all(hosts), contact_me_port=free_port(hosts[0]))
    stack = Stack(runtime)
    loop = asyncio.new_event_loop()
    stop = threading.Event()
    fleet = Fleet(
        5,
        base_ip=hosts[0],
        dls_url=f"{stack.wpi_url}/DeploymentService/LoginService",
        contact_gap=0,
        wbm_port=runtime.settings.wbm_port,
        contact_port=port_free_on_all(hosts),
        request_timeout=10,
    )

    def run_fleet() -> None:
        async def main() -> None:
            await fleet.start(send_startup=True)
            await asyncio.to_thread(stop.wait, 300)  # until the test is done (bounded)
            await fleet.stop()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run_fleet, daemon=True)
    thread.start()
    try:

        def all_verified() -> bool:
            with session_scope(runtime.engine) as s:
                rows = s.exec(select(Deployment).where(col(Deployment.state) == DeploymentState.VERIFIED.value)).all()
                return len(rows) == 5

        wait_for(all_verified, 90, 0.25)
        with session_scope(runtime.engine) as s:
            devices = s.exec(select(Device)).all()
            assert len(devices) == 5
            assert all(d.status is DeviceStatus.VERIFIED for d in devices)
            assert all(d.ip in hosts for d in devices)
            deps = s.exec(select(Deployment)).all()
            assert all(d.check_probe is CheckProbe.PASSED for d in deps)
        totals = fleet.summary()["totals"]
        assert totals["writes_accepted"] == 5
        assert totals["factory_cert"] == 0
    finally:
        stop.set()
        thread.join(30)
        stack.close()
        runtime.close()
