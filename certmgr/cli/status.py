"""``certmgr status``: the fleet at a glance (device states, deployments, next renewals, failures, expiry) and the
scheduler's jobs.

The jobs' last runs are known only to the process that runs the scheduler (kept in its memory, see
:mod:`certmgr.scheduling.scheduler`); this command runs in a process of its own, so it lists the configured
jobs and their intervals and points at ``GET /api/v1/scheduler`` of the serving process for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlmodel import Session, col

from certmgr.db.models import Certificate, Deployment, DeploymentState, Device, Enrollment
from certmgr.errors import CertmgrError
from certmgr.inventory.enrollment import awaits_approval_clause, held_move_clause
from certmgr.inventory.phones import phone_policy

if TYPE_CHECKING:
    from certmgr.runtime import Runtime
    from certmgr.settings import Settings

_out = Console(highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class NextRenewal:
    """One upcoming renewal."""

    mac: str
    serial: str
    not_after: datetime
    due_at: datetime
    reason: str


@dataclass(frozen=True)
class Failure:
    """One recently failed deployment."""

    mac: str
    deployment_id: int
    at: datetime | None
    error: str


@dataclass(frozen=True)
class HeldMove:
    """A phone's address move held for an operator (the new address gave no proof of possession)."""

    mac: str
    ip: str | None
    pending_ip: str
    since: datetime | None


@dataclass
class FleetStatus:
    """What ``certmgr status`` shows."""

    now: datetime
    devices: dict[str, int] = field(default_factory=dict)
    pending_approval: int = 0
    drift: int = 0
    deployments: dict[str, int] = field(default_factory=dict)
    next_renewals: list[NextRenewal] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    held_moves: list[HeldMove] = field(default_factory=list)
    earliest_expiry: tuple[str, datetime] | None = None
    expired: int = 0


def fleet_status(runtime: Runtime, session: Session, now: datetime, limit: int = 10) -> FleetStatus:
    """Gather the status with a handful of aggregate queries (never the whole fleet in memory).

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    from certmgr.renewal.planner import RenewalInput, plan_renewal

    status = FleetStatus(now=now)
    for value, count in session.execute(select(col(Device.status), func.count()).group_by(col(Device.status))):
        status.devices[str(getattr(value, "value", value))] = int(count)
    status.pending_approval = int(
        session.execute(select(func.count()).select_from(Device).where(awaits_approval_clause())).scalar_one()
    )
    for mac, ip, pending_ip, since in session.execute(
        select(col(Device.mac), col(Device.ip), col(Device.pending_ip), col(Device.pending_since))
        .where(held_move_clause())
        .order_by(col(Device.pending_since), col(Device.mac))
        .limit(limit)
    ):
        status.held_moves.append(HeldMove(mac, ip, pending_ip, since))
    status.drift = int(
        session.execute(select(func.count()).select_from(Device).where(col(Device.drift).is_(True))).scalar_one()
    )
    for value, count in session.execute(select(col(Deployment.state), func.count()).group_by(col(Deployment.state))):
        status.deployments[str(getattr(value, "value", value))] = int(count)
    current = (
        select(Device, col(Certificate.serial), col(Certificate.not_before), col(Certificate.not_after),
               col(Certificate.id))
        .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
        .where(col(Device.enrollment) == Enrollment.APPROVED.value)
    )  # fmt: skip
    status.expired = int(
        session.execute(
            select(func.count()).select_from(current.where(col(Certificate.not_after) <= now).subquery())
        ).scalar_one()
    )
    soonest = session.execute(current.order_by(col(Certificate.not_after)).limit(limit)).all()
    if soonest:
        status.earliest_expiry = (soonest[0][0].mac, soonest[0][3])
    for device, serial, not_before, not_after, cert_id in soonest:
        try:
            _identity, policy = phone_policy(runtime.policies, device, device.policy_name)
        except CertmgrError:  # an address the inventory cannot parse: nothing to plan
            continue
        plan = plan_renewal(RenewalInput.from_policy(cert_id, device.mac, not_before, not_after, policy), now)
        status.next_renewals.append(NextRenewal(device.mac, serial, not_after, plan.due_at, plan.reason))
    status.next_renewals.sort(key=lambda r: r.due_at)
    for dep_id, mac, finished, error in session.execute(
        select(col(Deployment.id), col(Device.mac), col(Deployment.finished_at), col(Deployment.last_error))
        .join(Device, col(Device.id) == col(Deployment.device_id))
        .where(col(Deployment.state) == DeploymentState.FAILED.value)
        .order_by(col(Deployment.finished_at).desc(), col(Deployment.id).desc())
        .limit(limit)
    ):
        status.failures.append(Failure(mac, int(dep_id), finished, (error or "")[:120]))
    return status


def _ts(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _every(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def render_jobs(settings: Settings, console: Console) -> None:
    """Print the scheduler's configured jobs (id, interval, whether one node at a time runs it)."""
    from certmgr.scheduling.scheduler import configured_jobs

    jobs = Table(title="Scheduler jobs" + ("" if settings.scheduler_enabled else " (scheduler_enabled = false)"))
    for name in ("job", "every", "runs on"):
        jobs.add_column(name)
    for job in configured_jobs(settings):
        jobs.add_row(job.id, _every(job.interval), "the leader node" if job.singleton else "every node")
    console.print(jobs)
    console.print(
        "last runs and next run times: GET /api/v1/scheduler on the process that runs the scheduler "
        "(kept in its memory)"
    )


def render(status: FleetStatus, console: Console) -> None:
    """Print ``status`` as rich tables."""
    devices = Table(title="Phones by status")
    devices.add_column("status")
    devices.add_column("count", justify="right")
    for name, count in sorted(status.devices.items()):
        devices.add_row(name, str(count))
    devices.add_row("awaiting approval (enrollment or a held move)", str(status.pending_approval))
    devices.add_row("drift flagged", str(status.drift))
    console.print(devices)
    deps = Table(title="Deployments by state")
    deps.add_column("state")
    deps.add_column("count", justify="right")
    for name, count in sorted(status.deployments.items()):
        deps.add_row(name, str(count))
    console.print(deps)
    if status.earliest_expiry is not None:
        mac, when = status.earliest_expiry
        console.print(f"earliest expiry: {_ts(when)} ({mac}); expired current certificates: {status.expired}")
    else:
        console.print("earliest expiry: - (no verified certificate yet)")
    nxt = Table(title="Next renewals")
    for name in ("phone", "serial", "due", "expires", "plan"):
        nxt.add_column(name)
    for r in status.next_renewals:
        nxt.add_row(r.mac, r.serial[:16], _ts(r.due_at), _ts(r.not_after), r.reason)
    console.print(nxt)
    fails = Table(title="Recent failures")
    for name in ("phone", "deployment", "failed at", "error"):
        fails.add_column(name)
    for f in status.failures:
        fails.add_row(f.mac, str(f.deployment_id), _ts(f.at), f.error)
    console.print(fails)
    if status.held_moves:
        held = Table(title="Address moves held for approval (certmgr device approve MAC)")
        for name in ("phone", "known address", "claimed address", "since"):
            held.add_column(name)
        for m in status.held_moves:
            held.add_row(m.mac, m.ip or "-", m.pending_ip, _ts(m.since))
        console.print(held)


def status_command(
    limit: Annotated[int, typer.Option(help="Rows in the renewal and failure lists.", min=1, max=1000)] = 10,
) -> None:
    """The fleet at a glance: phones by status, deployments by state, next renewals, recent failures, earliest
    expiry."""
    from certmgr.db.engine import session_scope
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    runtime = open_runtime(load_settings(), migrate=False)
    try:
        with session_scope(runtime.engine) as session:
            status = fleet_status(runtime, session, runtime.clock.now(), limit)
    finally:
        runtime.close()
    render(status, _out)
    render_jobs(runtime.settings, _out)
