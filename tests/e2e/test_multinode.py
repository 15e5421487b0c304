"""Acceptance: several nodes on one PostgreSQL — two ``certmgr serve --role wpi`` processes and one
``--role scheduler`` process, each with its own data dir and node name — deliver to 40 simulated phones, and one
WPI node is killed with SIGKILL mid-run and not restarted.

Half the phones report to each WPI node (their DLS URL); each node's dispatcher claims deployments
(``FOR UPDATE SKIP LOCKED`` under an advisory lock) and names itself in its contact-me, so the phone calls back
the node that claimed it (D4). The node is killed while it holds deployments (leased to it); the other node must
take each of them back once its lease has run out, and finish the fleet alone.

Checked: every phone verified, exactly one accepted write per certificate (the phone's own count, and the
certificate it serves is the one the database verified), one certificate per phone, each deployment attempt
claimed once, nothing the dead node held stuck past its lease (from the database's timestamps), both WPI nodes
did work, the audit chain intact, the survivor and the scheduler still running.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlmodel import col, select

from certmgr.audit.log import verify_log
from certmgr.clock import SystemClock
from certmgr.db.deployments import IN_FLIGHT_STATES
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, Certificate, Deployment, DeploymentState
from tests.e2e.conftest import E2E, ServiceProcess, wait_until
from tests.pg import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]

PHONES = 40
SURVIVOR, VICTIM, SCHEDULER = "wpi-a", "wpi-b", "sched"
SLOW = "slow=0.3"
#: Shorter interaction timeout than the e2e default: the dead node's interaction leases run out sooner.
SETTINGS: dict[str, object] = {"interaction_timeout_seconds": 8, "max_attempts": 10, "deploy_concurrency": 12}


def wpi_url(node: ServiceProcess) -> str:
    return f"https://127.0.0.1:{node.values['wpi_port']}/DeploymentService/LoginService"


def lease_seconds(values: dict[str, object]) -> float:
    """The longest lease a node takes on a deployment: an interaction and the probe after it
    (:func:`certmgr.deploy.records.interaction_lease`); a claim's lease (the callback timeout) is shorter."""
    probe = float(values["probe_tries"]) * (  # type: ignore[arg-type]
        float(values["probe_interval_seconds"]) + float(values["probe_timeout_seconds"])  # type: ignore[arg-type]
    )
    return max(float(values["interaction_timeout_seconds"]) + probe, float(values["callback_timeout_seconds"]))  # type: ignore[arg-type]


def test_two_wpi_nodes_one_killed_mid_run(own_pg: PostgresServer, e2e_factory: Callable[..., E2E]) -> None:
    world = e2e_factory(PHONES, settings={"database_url": own_pg.create_database(), "node_id": SURVIVOR, **SETTINGS})
    survivor = world.service
    survivor.start()  # first: migrates the database and creates the CA in it; the others use that CA
    victim = world.add_node(VICTIM)
    victim.start()
    scheduler = world.add_node(SCHEDULER, role="scheduler")
    scheduler.start()
    half = PHONES // 2
    # Each phone takes 0.3 s before every answer: deliveries overlap, so the victim dies holding several.
    phones = world.add_phones([SLOW] * half) + world.add_phones([SLOW] * (PHONES - half), dls_url=wpi_url(victim))
    world.start_phones(phones)
    macs = {p.config.mac for p in phones}

    def victim_busy() -> list[Deployment] | None:
        deps = [d for ds in world.deployments().values() for d in ds]
        verified = sum(d.state is DeploymentState.VERIFIED for d in deps)
        held = [d for d in deps if d.lease_owner == VICTIM and d.state in IN_FLIGHT_STATES]
        return held if len(world.devices()) == PHONES and verified >= PHONES // 5 and len(held) >= 2 else None

    wait_until(victim_busy, 90, 0.05, "the victim node holding deployments mid-run")
    victim.kill()
    killed_at = SystemClock().now()
    held = {d.id: d for ds in world.deployments().values() for d in ds if d.lease_owner == VICTIM}
    held = {i: d for i, d in held.items() if d.state in IN_FLIGHT_STATES}
    assert held, "the victim held nothing when it died"

    def all_verified() -> bool:
        deps = world.deployments()
        return set(deps) == macs and all(ds[-1].state is DeploymentState.VERIFIED for ds in deps.values())

    wait_until(all_verified, 120, 0.5, "every phone verified by the surviving node")
    world.stop_phones()

    # Exactly one accepted write per certificate: one certificate per phone, written once, and served.
    with session_scope(world.engine) as s:
        certs = s.exec(select(Certificate)).all()
        events = s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all()
        assert verify_log(s).ok
    assert len(certs) == PHONES
    assert len({c.device_id for c in certs}) == PHONES
    verified_cert = {ds[-1].certificate_id: mac for mac, ds in world.deployments().items()}
    by_mac = {mac: next(c for c in certs if c.id == cid) for cid, mac in verified_cert.items()}
    for phone in phones:
        stats = phone.stats
        assert stats.writes_accepted == 1, (phone.config.mac, stats)
        assert stats.current_cert_sha256 == by_mac[phone.config.mac].fingerprint_sha256
    assert all(len(ds) == 1 for ds in world.deployments().values()), "a phone got a second deployment"

    # Each deployment attempt claimed once, by one node; both WPI nodes claimed deployments.
    claims = [e for e in events if e.action == "deployment.contacting"]
    per_attempt = Counter((e.subject_id, e.details["attempt"]) for e in claims)
    assert set(per_attempt.values()) == {1}, "a deployment attempt was claimed twice"
    per_node = Counter(e.details["node"] for e in claims)
    assert set(per_node) == {SURVIVOR, VICTIM}, per_node

    # Nothing the dead node held is stuck: each of its deployments is taken back by the survivor after its lease
    # ran out (never before), and well within one more lease period (the database's own timestamps).
    lease = timedelta(seconds=lease_seconds(survivor.values))
    recovered: list[float] = []
    for dep_id, dep in held.items():
        after = [e for e in events if e.subject_id == str(dep_id) and e.at > killed_at]
        assert after, f"deployment {dep_id} held by the dead node was never taken back"
        taken_back: datetime = after[0].at
        assert dep.lease_until is not None
        assert taken_back >= dep.lease_until, (dep_id, after[0].action, taken_back, dep.lease_until)
        assert taken_back - killed_at <= 2 * lease, (dep_id, after[0].action, taken_back - killed_at)
        recovered.append((taken_back - killed_at).total_seconds())
    print(
        f"claims per node {dict(per_node)}; the dead node held {len(held)}, taken back {min(recovered):.1f}"
        f"..{max(recovered):.1f} s after the kill (lease period {lease.total_seconds():.1f} s)",
        file=sys.stderr,
    )

    for node in (survivor, scheduler):
        assert node.proc is not None
        assert node.proc.poll() is None, f"{node.values['node_id']} died"
