"""The read side of the console's overview page: aggregate queries only (never the fleet in memory).

**Proof of serving** — an enrolled phone is *proven* when its latest TLS probe saw its current certificate: the
phone is ``verified`` without drift, and the deployment that verified that certificate either had its probe
pass, or the probe sweep confirmed it since (``last_verified_at`` after the deployment's ``verified_at``; a
sweep that sees another certificate flags drift instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, and_, case, cast, exists, func, literal, not_, or_, select
from sqlmodel import Session, col

from certmgr.db.models import (
    AuditCheckpoint,
    AuditEvent,
    Certificate,
    CheckProbe,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
)
from certmgr.db.types import UTCDateTime
from certmgr.inventory.enrollment import awaits_approval_clause

FORECAST_WEEKS = 26
WEEK_SECONDS = 7 * 24 * 3600
LIST_LIMIT = 20
FAILURES_LIMIT = 10
AUDIT_VERIFIED = "audit.verified"


def proven_condition() -> ColumnElement[bool]:
    """SQL: the phone's latest TLS probe saw its current certificate (needs ``Device`` in the query)."""
    confirmed = exists().where(
        col(Deployment.device_id) == col(Device.id),
        col(Deployment.certificate_id) == col(Device.current_certificate_id),
        col(Deployment.state) == DeploymentState.VERIFIED.value,
        or_(
            col(Deployment.check_probe) == CheckProbe.PASSED.value,
            col(Device.last_verified_at) > col(Deployment.verified_at),
        ),
    )
    return and_(
        col(Device.status) == DeviceStatus.VERIFIED.value,
        col(Device.drift).is_(False),
        col(Device.current_certificate_id).is_not(None),
        confirmed,
    )


@dataclass(frozen=True)
class Unproven:
    """An enrolled phone whose serving is not proven, and why in words."""

    mac: str
    status: DeviceStatus
    reason: str


@dataclass(frozen=True)
class Failure:
    """A recently failed deployment."""

    deployment_id: int
    mac: str
    finished_at: datetime | None
    error: str


@dataclass(frozen=True)
class WeekBucket:
    """Current certificates expiring in one week (week 0 starts now)."""

    week: int
    start: datetime
    count: int


@dataclass
class Overview:
    """Everything the overview shows, except the renewal waves and the CA (see :mod:`certmgr.console.waves`)."""

    by_status: dict[str, int] = field(default_factory=dict)
    total: int = 0
    pending: int = 0
    drift: int = 0
    enrolled: int = 0
    proven: int = 0
    unproven: list[Unproven] = field(default_factory=list)
    expired: int = 0
    weeks: list[WeekBucket] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    last_verification: dict[str, Any] | None = None
    last_checkpoint: tuple[int, datetime] | None = None


def _reason(status: DeviceStatus, drift: bool, has_cert: bool) -> str:
    if drift:
        return "drift: the phone serves another certificate"
    if not has_cert:
        if status is DeviceStatus.FAILED:
            return "no certmgr certificate serves yet: the deployment failed"
        return "no certmgr certificate deployed yet"
    if status is DeviceStatus.VERIFIED:
        return "verified without a TLS probe seeing the certificate"
    return f"status {status.value}"


def _weeks_from(now: datetime, dialect: str) -> Any:
    """SQL: whole weeks from ``now`` to ``certificate.not_after`` (for ``not_after >= now``), per dialect, in
    exact arithmetic — one expression per row instead of one comparison per week."""
    if dialect == "postgresql":
        seconds = func.extract("epoch", col(Certificate.not_after) - literal(now, UTCDateTime()))
        return cast(func.floor(seconds / WEEK_SECONDS), Integer)
    # SQLite stores the UTC wall time as text: whole seconds since the epoch, then integer division (the floor:
    # the difference is not negative).
    since = cast(func.strftime("%s", col(Certificate.not_after)), Integer) - int(now.timestamp())
    return since // WEEK_SECONDS


def expiry_forecast(session: Session, now: datetime, weeks: int = FORECAST_WEEKS) -> tuple[int, list[WeekBucket]]:
    """Current certificates of phones in service that have expired, and those expiring in each of the next
    ``weeks`` weeks (two aggregate queries)."""
    not_after = col(Certificate.not_after)
    in_service = (
        select(func.count())
        .select_from(Device)
        .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
        .where(col(Device.enrollment) != Enrollment.DECOMMISSIONED.value)
    )
    expired = int(session.execute(in_service.where(not_after < now)).scalar_one())
    week = _weeks_from(now, session.get_bind().dialect.name).label("week")
    counts = dict(
        session.execute(
            select(week, func.count())
            .select_from(Device)
            .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
            .where(
                col(Device.enrollment) != Enrollment.DECOMMISSIONED.value,
                not_after >= now,
                not_after < now + timedelta(weeks=weeks),
            )
            .group_by(week)
        ).all()
    )
    buckets = [WeekBucket(i, now + timedelta(weeks=i), int(counts.get(i, 0))) for i in range(weeks)]
    return expired, buckets


def overview(session: Session, now: datetime) -> Overview:
    """The overview's figures (a handful of aggregate queries)."""
    out = Overview()
    approved = col(Device.enrollment) == Enrollment.APPROVED.value
    waiting = func.count(case((awaits_approval_clause(), 1)))  # pending enrollments and held address moves
    for status, enrollment, drift, count, awaiting in session.execute(  # one scan for every count of the table
        select(col(Device.status), col(Device.enrollment), col(Device.drift), func.count(), waiting).group_by(
            col(Device.status), col(Device.enrollment), col(Device.drift)
        )
    ):
        name = str(getattr(status, "value", status))
        out.by_status[name] = out.by_status.get(name, 0) + int(count)
        kind = str(getattr(enrollment, "value", enrollment))
        out.pending += int(awaiting)
        out.enrolled += int(count) if kind == Enrollment.APPROVED.value else 0
        out.drift += int(count) if drift else 0
    out.total = sum(out.by_status.values())
    out.proven = int(
        session.execute(select(func.count()).select_from(Device).where(approved, proven_condition())).scalar_one()
    )
    for mac, status, drift, cert in session.execute(
        select(col(Device.mac), col(Device.status), col(Device.drift), col(Device.current_certificate_id))
        .where(approved, not_(proven_condition()))
        .order_by(col(Device.id))
        .limit(LIST_LIMIT)
    ):
        status = DeviceStatus(status)
        out.unproven.append(Unproven(mac, status, _reason(status, bool(drift), cert is not None)))
    out.expired, out.weeks = expiry_forecast(session, now)
    for dep_id, mac, finished, error in session.execute(
        select(col(Deployment.id), col(Device.mac), col(Deployment.finished_at), col(Deployment.last_error))
        .join(Device, col(Device.id) == col(Deployment.device_id))
        .where(col(Deployment.state) == DeploymentState.FAILED.value)
        .order_by(col(Deployment.id).desc())
        .limit(FAILURES_LIMIT)
    ):
        out.failures.append(Failure(int(dep_id), mac, finished, (error or "")[:160]))
    verified = session.execute(
        select(col(AuditEvent.at), col(AuditEvent.actor), col(AuditEvent.details))
        .where(col(AuditEvent.action) == AUDIT_VERIFIED)
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).first()
    if verified is not None:
        out.last_verification = {"at": verified[0], "actor": verified[1], **(verified[2] or {})}
    checkpoint = session.execute(
        select(col(AuditEvent.seq), col(AuditCheckpoint.at))
        .join(AuditEvent, col(AuditEvent.id) == col(AuditCheckpoint.event_id))
        .order_by(col(AuditCheckpoint.id).desc())
        .limit(1)
    ).first()
    if checkpoint is not None:
        out.last_checkpoint = (int(checkpoint[0]), checkpoint[1])
    return out


__all__ = ["AUDIT_VERIFIED", "Overview", "expiry_forecast", "overview", "proven_condition"]
