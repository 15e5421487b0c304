"""Report queries: each kind turns the database into a stream of rows (tuples in the order of its columns).

Rows are read in keyset-paginated batches of plain column tuples (no ORM objects, so the session's identity
map stays empty): a report over 100,000 phones holds one batch in memory at a time. Values are JSON-friendly
(str, int, None); timestamps are ISO 8601 UTC strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    Deployment,
    Device,
    DeviceStatus,
)
from certmgr.errors import InputError

BATCH = 1000
MAX_WEEKS = 104
Cell = str | int | None
Row = tuple[Cell, ...]


class ReportKind(StrEnum):
    INVENTORY = "inventory"
    EXPIRY = "expiry"
    DEPLOYMENTS = "deployments"
    AUDIT = "audit"
    COMPLIANCE = "compliance"


@dataclass(frozen=True)
class ReportParams:
    """Parameters of a report; which ones apply depends on the kind (the others are ignored)."""

    weeks: int = 12
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.weeks <= MAX_WEEKS:
            raise InputError(f"weeks: between 1 and {MAX_WEEKS}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InputError(f"{name}: give a time zone, e.g. 2026-01-01T00:00:00Z")

    def as_dict(self, kind: ReportKind) -> dict[str, Any]:
        """The parameters that apply to ``kind``, JSON-friendly (for manifests and report headers)."""
        if kind is ReportKind.EXPIRY:
            return {"weeks": self.weeks}
        if kind is ReportKind.DEPLOYMENTS:
            return {"since": _iso(self.since), "until": _iso(self.until)}
        if kind is ReportKind.AUDIT:
            return {"since": _iso(self.since), "until": _iso(self.until), "actor": self.actor, "action": self.action}
        return {}


@dataclass(frozen=True)
class ReportSpec:
    """What a report is: kind, title, columns, and how to produce its rows from a session."""

    kind: ReportKind
    title: str
    columns: tuple[str, ...]
    params: ReportParams
    generated_at: datetime
    produce: Callable[[Session], Iterator[Row]] = field(repr=False)
    chart: str | None = None  # for the expiry forecast: PDF renderers draw a bar chart of the rows

    def rows(self, session: Session) -> Iterator[Row]:
        """Stream the rows (the session must stay open while they are consumed)."""
        return self.produce(session)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _days_left(not_after: datetime | None, now: datetime) -> int | None:
    if not_after is None:
        return None
    return (not_after - now) // timedelta(days=1)


def _batches(session: Session, query: Any, key: Any) -> Iterator[Any]:
    """Keyset pagination over ``query`` by the column ``key`` (which must be the first selected column)."""
    last: int | None = None
    while True:
        q = query if last is None else query.where(key > last)
        chunk = session.execute(q.order_by(key).limit(BATCH)).all()
        if not chunk:
            return
        yield from chunk
        last = chunk[-1][0]
        if len(chunk) < BATCH:
            return


# --- inventory and compliance -----------------------------------------------------------------------------
INVENTORY_COLUMNS = (
    "mac",
    "e164",
    "ip",
    "model",
    "firmware",
    "policy",
    "status",
    "certificate_serial",
    "not_after",
    "days_left",
    "certificate_status",
    "last_verified_at",
    "last_seen_at",
)


def _device_query() -> Any:
    cert: Any = aliased(Certificate)
    columns: list[Any] = [
        col(Device.id),
        col(Device.mac),
        col(Device.e164),
        col(Device.ip),
        col(Device.device_type),
        col(Device.software_version),
        col(Device.policy_name),
        col(Device.status),
        col(Device.drift),
        cert.serial,
        cert.not_after,
        cert.status,
        col(Device.last_verified_at),
        col(Device.last_seen_at),
    ]
    return select(*columns).join(cert, cert.id == col(Device.current_certificate_id), isouter=True)


def _inventory(now: datetime) -> Callable[[Session], Iterator[Row]]:
    def produce(session: Session) -> Iterator[Row]:
        for r in _batches(session, _device_query(), col(Device.id)):
            yield (
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                str(r[7]),
                r[9],
                _iso(r[10]),
                _days_left(r[10], now),
                str(r[11]) if r[11] is not None else None,
                _iso(r[12]),
                _iso(r[13]),
            )

    return produce


COMPLIANCE_COLUMNS = (
    "mac",
    "e164",
    "ip",
    "model",
    "firmware",
    "status",
    "issues",
    "certificate_serial",
    "not_after",
    "days_left",
    "last_verified_at",
)


def compliance_issues(
    *,
    has_certificate: bool,
    certificate_status: str | None,
    verified: bool,
    not_after: datetime | None,
    device_status: str,
    drift: bool,
    now: datetime,
) -> list[str]:
    """Why a phone is not compliant (empty: compliant).

    ``factory-or-unknown-certificate``: no current certificate of ours, or one never verified on the phone;
    ``expired``; ``failing`` (last deployment failed); ``drift`` (the phone serves something else).
    """
    issues: list[str] = []
    if not has_certificate or not verified or certificate_status != CertificateStatus.ACTIVE.value:
        issues.append("factory-or-unknown-certificate")
    if not_after is not None and not_after <= now:
        issues.append("expired")
    if device_status == DeviceStatus.FAILED.value:
        issues.append("failing")
    if drift or device_status == DeviceStatus.DRIFT.value:
        issues.append("drift")
    return issues


def _compliance(now: datetime) -> Callable[[Session], Iterator[Row]]:
    def produce(session: Session) -> Iterator[Row]:
        query = _device_query().where(col(Device.status) != DeviceStatus.DECOMMISSIONED)
        for r in _batches(session, query, col(Device.id)):
            issues = compliance_issues(
                has_certificate=r[9] is not None,
                certificate_status=str(r[11]) if r[11] is not None else None,
                verified=r[12] is not None,
                not_after=r[10],
                device_status=str(r[7]),
                drift=bool(r[8]),
                now=now,
            )
            if issues:
                yield (
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    str(r[7]),
                    ";".join(issues),
                    r[9],
                    _iso(r[10]),
                    _days_left(r[10], now),
                    _iso(r[12]),
                )

    return produce


# --- expiry forecast --------------------------------------------------------------------------------------
EXPIRY_COLUMNS = ("week", "start", "end", "certificates")


def _expiry(now: datetime, weeks: int) -> Callable[[Session], Iterator[Row]]:
    def produce(session: Session) -> Iterator[Row]:
        expired = 0
        later = 0
        counts = [0] * weeks
        query = (
            select(col(Device.id), col(Certificate.not_after))
            .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
            .where(col(Device.status) != DeviceStatus.DECOMMISSIONED)
        )
        for r in _batches(session, query, col(Device.id)):
            not_after: datetime = r[1]
            if not_after <= now:
                expired += 1
                continue
            index = (not_after - now) // timedelta(weeks=1)
            if index < weeks:
                counts[index] += 1
            else:
                later += 1
        yield ("expired", None, _iso(now), expired)
        for i, count in enumerate(counts):
            start = now + timedelta(weeks=i)
            yield (f"W{i + 1}", _iso(start), _iso(start + timedelta(weeks=1)), count)
        yield ("later", _iso(now + timedelta(weeks=weeks)), None, later)

    return produce


# --- deployments and audit --------------------------------------------------------------------------------
DEPLOYMENT_COLUMNS = (
    "id",
    "mac",
    "certificate_serial",
    "state",
    "attempts",
    "profile_used",
    "created_at",
    "finished_at",
    "check_reply",
    "check_info",
    "check_probe",
    "last_error",
)


def _deployments(params: ReportParams) -> Callable[[Session], Iterator[Row]]:
    def produce(session: Session) -> Iterator[Row]:
        query = (
            select(
                col(Deployment.id),
                col(Device.mac),
                col(Certificate.serial),
                col(Deployment.state),
                col(Deployment.attempts),
                col(Deployment.profile_used),
                col(Deployment.created_at),
                col(Deployment.finished_at),
                col(Deployment.check_reply),
                col(Deployment.check_info),
                col(Deployment.check_probe),
                col(Deployment.last_error),
            )
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .join(Certificate, col(Certificate.id) == col(Deployment.certificate_id))
        )
        if params.since is not None:
            query = query.where(col(Deployment.created_at) >= params.since)
        if params.until is not None:
            query = query.where(col(Deployment.created_at) < params.until)
        for r in _batches(session, query, col(Deployment.id)):
            yield (
                r[0],
                r[1],
                r[2],
                str(r[3]),
                r[4],
                _str(r[5]),
                _iso(r[6]),
                _iso(r[7]),
                _str(r[8]),
                _str(r[9]),
                _str(r[10]),
                r[11],
            )

    return produce


def _str(value: object) -> str | None:
    return None if value is None else str(value)


AUDIT_COLUMNS = ("seq", "at", "actor", "action", "subject_type", "subject_id", "details", "hash")


def _audit(params: ReportParams) -> Callable[[Session], Iterator[Row]]:
    def produce(session: Session) -> Iterator[Row]:
        query = select(
            col(AuditEvent.seq),
            col(AuditEvent.at),
            col(AuditEvent.actor),
            col(AuditEvent.action),
            col(AuditEvent.subject_type),
            col(AuditEvent.subject_id),
            col(AuditEvent.details),
            col(AuditEvent.hash),
        )
        if params.since is not None:
            query = query.where(col(AuditEvent.at) >= params.since)
        if params.until is not None:
            query = query.where(col(AuditEvent.at) < params.until)
        if params.actor is not None:
            query = query.where(col(AuditEvent.actor) == params.actor)
        if params.action is not None:
            query = query.where(col(AuditEvent.action) == params.action)
        for r in _batches(session, query, col(AuditEvent.seq)):
            details = json.dumps(r[6], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
            yield (r[0], _iso(r[1]), r[2], r[3], r[4], r[5], details, r[7])

    return produce


# --- the registry -----------------------------------------------------------------------------------------
def build_report(kind: ReportKind, params: ReportParams, now: datetime) -> ReportSpec:
    """The :class:`ReportSpec` of ``kind`` with ``params``, as of ``now``."""
    if kind is ReportKind.INVENTORY:
        return ReportSpec(kind, "Phone inventory", INVENTORY_COLUMNS, params, now, _inventory(now))
    if kind is ReportKind.EXPIRY:
        title = f"Certificate expiry forecast, next {params.weeks} weeks"
        return ReportSpec(
            kind, title, EXPIRY_COLUMNS, params, now, _expiry(now, params.weeks), "Certificates expiring per week"
        )
    if kind is ReportKind.DEPLOYMENTS:
        return ReportSpec(kind, "Deployment history", DEPLOYMENT_COLUMNS, params, now, _deployments(params))
    if kind is ReportKind.AUDIT:
        return ReportSpec(kind, "Audit log", AUDIT_COLUMNS, params, now, _audit(params))
    return ReportSpec(kind, "Compliance exceptions", COMPLIANCE_COLUMNS, params, now, _compliance(now))


def parse_kind(value: str) -> ReportKind:
    """The report kind called ``value``.

    Raises:
        InputError: for an unknown kind.
    """
    try:
        return ReportKind(value)
    except ValueError:
        known = ", ".join(k.value for k in ReportKind)
        raise InputError(f"unknown report kind {value!r}: use {known}") from None
