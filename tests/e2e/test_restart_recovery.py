"""Acceptance: ``certmgr serve`` is SIGKILLed at each step of a deployment and restarted on the same data dir.

For each step — contact-me in flight (``contacting``), contact-me answered and the phone not yet called back
(``awaiting_callback``), WriteItems sent and its answer not yet back (``write-sent``: the phone installed the
certificate, certmgr does not know), WriteItems accepted (``written``), certificate info received and the TLS
probe running (``verifying``, also with no ``node_id`` configured) — three phones are held at that step by the
simulator's timing knobs (``slow``, ``callback_delay``, ``switch_delay``), the service is killed with SIGKILL the
moment the database shows all three there, and restarted. Every deployment must then finish ``verified`` — the
very same deployment record, none lost, none added — and no phone may receive a second ``WriteItems``: a phone
that had accepted the certificate before the kill is only re-verified (ReadItems + probe), one whose answer never
arrived is checked (TLS probe, then its info) before anything is written again.

A second test kills the service while its key-generation workers are up: none of them may outlive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from certmgr.db.models import DeploymentState, DeviceStatus
from certmgr.simulator.phone import SimPhone
from certmgr.wpi.messages import Action
from tests import processes
from tests.e2e.conftest import E2E, leaked_secrets, served_sha256, transcripts_and_events_text, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

S = DeploymentState


@dataclass(frozen=True)
class Step:
    """Where to kill, and how the phones are held there."""

    state: DeploymentState
    fault: str  # fault spec of the held phones
    phone: dict[str, Any]  # PhoneConfig overrides of the held phones
    settings: dict[str, object]  # service settings
    written_before_kill: bool  # the held phones had accepted the certificate when the service died
    write_sent: bool = False  # held after the WriteItems left, before its answer came back


STEPS = {
    # The phone answers contact-me only after 4 s: the dispatcher is waiting for the 204.
    "contacting": Step(S.CONTACTING, "slow=4", {}, {}, written_before_kill=False),
    # The phone answered 204 but calls back only 4 s later.
    "awaiting_callback": Step(S.AWAITING_CALLBACK, "", {"callback_delay": 4.0}, {}, written_before_kill=False),
    # The WriteItems left and the phone installed the certificate, but takes 4 s to answer: certmgr dies not knowing.
    "write-sent": Step(S.AWAITING_CALLBACK, "slow=4", {}, {}, written_before_kill=False, write_sent=True),
    # WriteItems accepted; the phone takes 4 s before each reply, so the ReadItems answer is still to come.
    "written": Step(S.WRITTEN, "slow=4", {}, {}, written_before_kill=True),
    # Info received; the phone's web server switches to the new certificate 8 s after accepting it, so the
    # probe (15 tries, 0.5 s apart) is still looking when the service dies.
    "verifying": Step(
        S.VERIFYING,
        "",
        {"switch_delay": 8.0},
        {"probe_tries": 15, "probe_interval_seconds": 0.5},
        written_before_kill=True,
    ),
    # The same with no node_id configured: the restarted process must still recognise its own leases at once (a
    # name with the PID in it left them to the 15-minute stuck timeout).
    "verifying-unnamed-node": Step(
        S.VERIFYING,
        "",
        {"switch_delay": 8.0},
        {"probe_tries": 15, "probe_interval_seconds": 0.5, "node_id": None},
        written_before_kill=True,
    ),
}
HELD = 3
CONTROL = 2
RECOVER_TIMEOUT_S = 100.0


def _write_items_received(phone: SimPhone) -> int:
    return sum(record.actions.count(Action.WRITE_ITEMS.value) for record in phone.history)


def _states(world: E2E, phones: list[SimPhone]) -> dict[str, list[tuple[int, DeploymentState]]]:
    deployments = world.deployments()
    return {p.config.mac: [(d.id or 0, d.state) for d in deployments.get(p.config.mac, [])] for p in phones}


@pytest.mark.parametrize("step", list(STEPS))
def test_kill_and_restart_at_each_step(step: str, e2e_factory: Callable[..., E2E]) -> None:
    spec = STEPS[step]
    world = e2e_factory(HELD + CONTROL, profiles=["plain"], settings=spec.settings)
    world.service.start()
    first_pid = world.service.pid
    held = world.add_phones([spec.fault] * HELD, **spec.phone)
    control = world.add_phones([""] * CONTROL)
    world.start_phones([*held, *control])

    def all_held_at_step() -> bool:
        deployments = world.deployments()
        for phone in held:
            deps = deployments.get(phone.config.mac, [])
            if len(deps) != 1 or deps[0].state is not spec.state:
                return False
            if spec.write_sent and (
                deps[0].write_sent_at is None or deps[0].written_at is not None or phone.stats.writes_accepted != 1
            ):
                return False  # the phone installed it, and its answer is still 4 s away
        return True

    wait_until(all_held_at_step, 60, 0.05, f"all held phones in {spec.state.value}")
    world.service.kill()
    killed_at = time.monotonic()

    # Nothing is lost by the kill: the records are there, still at the step where the service died.
    at_kill = _states(world, held)
    assert all(deps[0][1] is spec.state for deps in at_kill.values()), at_kill
    in_flight = {mac: deps[0][0] for mac, deps in at_kill.items()}
    writes_at_kill = {p.config.mac: p.stats.writes_accepted for p in held}
    control_at_kill = {mac: deps[-1][1] for mac, deps in _states(world, control).items() if deps}
    if spec.written_before_kill or spec.write_sent:
        assert all(n == 1 for n in writes_at_kill.values()), writes_at_kill

    world.service.start()
    assert world.service.pid != first_pid

    def everyone_verified() -> bool:
        states = _states(world, [*held, *control])
        return all(deps and deps[-1][1] is S.VERIFIED for deps in states.values())

    wait_until(everyone_verified, RECOVER_TIMEOUT_S, 0.25, "every deployment verified after the restart")
    recovered_in = time.monotonic() - killed_at

    devices = world.devices()
    deployments = world.deployments()
    certs = world.certificates()
    for phone in held:
        mac = phone.config.mac
        deps = deployments[mac]
        # The same record finished: none lost, none added.
        assert [d.id for d in deps] == [in_flight[mac]], mac
        dep = deps[0]
        # Exactly one WriteItems in the phone's whole life, accepted once.
        assert phone.stats.writes_accepted == 1, mac
        assert _write_items_received(phone) == 1, (mac, [r.actions for r in phone.history])
        assert dep.check_reply is not None, mac
        assert devices[mac].status is DeviceStatus.VERIFIED, mac
        assert devices[mac].current_certificate_id == dep.certificate_id, mac
        assert served_sha256(phone.ip, world.wbm_port) == certs[dep.certificate_id].fingerprint_sha256, mac
    for phone in control:
        # Healthy phones ran at full speed, wherever the kill caught them; none is written twice, not even one
        # killed between the WriteItems and its answer (checked before writing again).
        state = control_at_kill.get(phone.config.mac)
        assert phone.stats.writes_accepted == 1, (phone.config.mac, state)
        assert _write_items_received(phone) == 1, (phone.config.mac, state)

    # The restart recovered the held deployments; written ones were resumed as verify-only jobs.
    recovered = [e for e in world.events() if e.action == "deployment.recovered"]
    recovered_ids = {int(e.subject_id or 0) for e in recovered}
    assert set(in_flight.values()) <= recovered_ids
    for event in recovered:
        if int(event.subject_id or 0) in in_flight.values():
            assert event.details["previous"] == spec.state.value
            assert event.details["verify_only"] is spec.written_before_kill
    assert leaked_secrets(transcripts_and_events_text(world)) == []
    assert leaked_secrets(world.service.log()) == []
    print(f"\n{step}: killed with {HELD} phones held there; all verified {recovered_in:.1f}s after the kill")


def test_key_workers_die_with_the_service(e2e_factory: Callable[..., E2E]) -> None:
    """kill -9 the service while its key-generation worker processes are up: none of them outlives it (each
    watches its parent and exits once re-parented)."""
    world = e2e_factory(4, profiles=["plain"], settings={"issuance_workers": 2})
    world.service.start()
    world.start_phones(world.add_phones([""] * 4))
    service = world.service.pid
    workers = wait_until(lambda: processes.descendants(service), 60, 0.1, "key-generation workers started")
    world.service.kill()
    wait_until(lambda: not any(processes.alive(pid) for pid in workers), 5.0, 0.1, "no worker left 5 s after kill -9")
