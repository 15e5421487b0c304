"""Fleet and ``certmgr simulate`` against the fake DLS over loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from certmgr.pki.types import Pkcs12Profile
from certmgr.simulator.cli import run_simulate, simulate, simulate_app
from certmgr.simulator.faults import parse_fault_spec
from certmgr.simulator.fleet import FaultPlan, Fleet, parse_fault_every
from certmgr.simulator.phone import SimulatorError
from certmgr.wpi.messages import Reason
from tests.integration.test_simulator_fakedls import FakeDLS, Job, Material, fresh_net, make_material, probe_sha256, run


@pytest.fixture(scope="module")
def material() -> Material:
    return make_material()


def test_fleet_boots_deploys_and_reports(material: Material) -> None:
    async def body() -> None:
        net = fresh_net(span=2)
        async with FakeDLS(f"127.0.{net}.1") as dls:
            plan = FaultPlan(rules=(parse_fault_every("2:busy-first-write"), parse_fault_every("3:offline")))
            fleet = Fleet(6, base_ip=f"127.0.{net}.254", dls_url=dls.url, plan=plan, contact_gap=0, boot_concurrency=2)
            ips = [p.ip for p in fleet.phones]
            assert ips == [f"127.0.{net}.254", f"127.0.{net + 1}.1", *(f"127.0.{net + 1}.{i}" for i in range(2, 6))]
            await fleet.start()
            try:
                online = [p for p in fleet.phones if not p.faults.offline]
                assert len(online) == 4
                # every online phone booted from its own address
                startups = {s.peer: s.msg.mac for s in dls.seen if s.msg.reason is Reason.START_UP}
                assert startups == {p.ip: p.config.mac for p in online}
                for phone in online:
                    dls.jobs[phone.config.mac] = Job(material.pkcs12(Pkcs12Profile.PLAIN))
                responses = await asyncio.gather(*(dls.contact_me(p.contact_me_uri) for p in online))
                assert {r.status_code for r in responses} == {204}
                assert await dls.wait_for(
                    lambda: sum(1 for _m, e in dls.events if e == "info") == len(online), timeout=20
                )
                for phone in online:
                    assert await probe_sha256(phone.ip) == material.sha256
                summary = fleet.summary()
                totals = summary["totals"]
                assert totals["phones"] == 6
                assert totals["writes_accepted"] == 4
                assert totals["busy_replies"] == 2  # phones 2 and 4 (6 is offline)
                assert totals["factory_cert"] == 2  # the offline ones
                stats = {s["mac"]: s for s in summary["phones"]}
                assert stats["00:1A:E8:00:00:02"]["faults"] == "busy-first-write"
                assert stats["00:1A:E8:00:00:06"]["faults"] == "offline,busy-first-write"
                text = fleet.stats_json()
                assert "PRIVATE" not in text
                assert json.loads(text)["phones"][0]["current_cert_sha256"] == material.sha256
            finally:
                await fleet.stop()

    run(body(), timeout=90)


def test_fleet_start_fails_cleanly_on_bound_address() -> None:
    async def body() -> None:
        net = fresh_net()
        blocker = await asyncio.start_server(lambda r, w: None, f"127.0.{net}.2", 8085)
        try:
            fleet = Fleet(3, base_ip=f"127.0.{net}.1", dls_url=f"https://127.0.{net}.250:18443/x", contact_gap=0)
            with pytest.raises(SimulatorError, match="cannot bind"):
                await fleet.start(send_startup=False)
            assert not any(p.running for p in fleet.phones)
        finally:
            blocker.close()
            await blocker.wait_closed()

    run(body())


def test_simulate_writes_stats(tmp_path: Path) -> None:
    async def body() -> None:
        net = fresh_net()
        async with FakeDLS(f"127.0.{net}.1") as dls:
            out = tmp_path / "stats.json"
            lines: list[str] = []
            summary = await simulate(
                3,
                dls.url,
                base_ip=f"127.0.{net}.10",
                faults=["max-items-1"],
                fault_every=["3:slow=0.1"],
                contact_gap=0,
                duration=0.3,
                stats_out=out,
                announce=lines.append,
            )
            assert lines
            assert lines[0].startswith("simulating 3 phone(s)")
            written = json.loads(out.read_text())
            assert written == summary
            assert [p["faults"] for p in written["phones"]] == ["max-items-1", "max-items-1", "slow=0.1,max-items-1"]
            assert written["totals"]["interactions"] == 3

    run(body())


def test_run_simulate_blocking_and_cli(tmp_path: Path) -> None:
    net = fresh_net()
    dls_url = f"https://127.0.{net}.1:18443/DeploymentService/LoginService"  # nobody listens: errors recorded
    summary = run_simulate(2, dls_url, base_ip=f"127.0.{net}.10", duration=0.1, contact_gap=0)
    assert summary is not None
    assert summary["totals"]["with_error"] == 2

    out = tmp_path / "cli.json"
    result = CliRunner().invoke(
        simulate_app,
        [
            "--count", "2", "--dls", dls_url, "--base-ip", f"127.0.{net}.20", "--duration", "0.1",
            "--faults", "fragments", "--fault-every", "2:wrong-info", "--contact-gap", "0",
            "--stats-out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [p["faults"] for p in data["phones"]] == ["fragments", "wrong-info,fragments"]
    assert [p["ip"] for p in data["phones"]] == [f"127.0.{net}.20", f"127.0.{net}.21"]


def test_cli_rejects_bad_fault_spec() -> None:
    result = CliRunner().invoke(simulate_app, ["--count", "1", "--faults", "explode", "--duration", "0"])
    assert result.exit_code != 0
    assert parse_fault_spec("") == parse_fault_spec("none")
