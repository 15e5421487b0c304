"""Report queries: each kind turns the database into a stream of rows (tuples in the order of its columns).

Rows are read in keyset-paginated batches of plain column tuples (no ORM objects, so the session's identity
map stays empty): a report over 100,000 phones holds one batch in memory at a time. Values are JSON-friendly
(str, int, None); timestamps are ISO 8601 UTC strings (the PDF shows them in the report time zone).

While it reads, each kind feeds its *tally* (:mod:`certmgr.reports.summary`) with every record it sees, so the
summary comes from exactly the data of the report, in the same single pass: :meth:`ReportSpec.open` gives a
:class:`ReportRun` whose rows are iterated once and whose :meth:`ReportRun.summary` is ready afterwards.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
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
from certmgr.reports.summary import AuditTally, DeploymentTally, ExpiryTally, FleetTally, Summary, Tally

BATCH = 1000
MAX_WEEKS = 104
MAX_MONTHS = 60
DEFAULT_MONTHS = 13  # the forecast covers at least this many months (more if the fleet's certificates reach further)
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
    """Parameters of a report; which ones apply depends on the kind (the others are ignored).

    The expiry forecast is monthly by default, over the whole horizon of the fleet's certificates (at least
    :data:`DEFAULT_MONTHS` months, at most :data:`MAX_MONTHS`); ``months`` fixes the number of months and
    ``weeks`` asks for a weekly forecast instead.
    """

    weeks: int | None = None
    months: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None

    def __post_init__(self) -> None:
        if self.weeks is not None and not 1 <= self.weeks <= MAX_WEEKS:
            raise InputError(f"weeks: between 1 and {MAX_WEEKS}")
        if self.months is not None and not 1 <= self.months <= MAX_MONTHS:
            raise InputError(f"months: between 1 and {MAX_MONTHS}")
        if self.weeks is not None and self.months is not None:
            raise InputError("give weeks or months, not both")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InputError(f"{name}: give a time zone, e.g. 2026-01-01T00:00:00Z")
        if self.since is not None and self.until is not None and self.until < self.since:
            raise InputError("until is before since")

    def as_dict(self, kind: ReportKind) -> dict[str, Any]:
        """The parameters that apply to ``kind``, JSON-friendly (for manifests and report headers)."""
        if kind is ReportKind.EXPIRY:
            if self.weeks is not None:
                return {"weeks": self.weeks}
            return {"months": self.months if self.months is not None else "auto"}
        if kind is ReportKind.DEPLOYMENTS:
            return {"since": _iso(self.since), "until": _iso(self.until)}
        if kind is ReportKind.AUDIT:
            return {"since": _iso(self.since), "until": _iso(self.until), "actor": self.actor, "action": self.action}
        return {}


Producer = Callable[[Session, Any], Iterator["Row"]]


@dataclass(frozen=True)
class ReportSpec:
    """What a report is: kind, title, columns, which columns hold times, how to produce its rows from a session
    and the tally that summarises them."""

    kind: ReportKind
    title: str
    columns: tuple[str, ...]
    params: ReportParams
    generated_at: datetime
    produce: Producer = field(repr=False)
    new_tally: Callable[[], Tally] = field(repr=False)
    time_columns: frozenset[str] = frozenset()

    def open(self, session: Session) -> ReportRun:
        """The rows of this report (iterate once, with ``session`` open), then its summary."""
        return ReportRun(self, session)


class ReportRun:
    """One reading of a report: iterate the rows once; then :attr:`count` and :meth:`summary` are final."""

    def __init__(self, spec: ReportSpec, session: Session) -> None:
        self.spec = spec
        self.tally = spec.new_tally()
        self._rows = spec.produce(session, self.tally)
        self.count = 0
        self.done = False

    def __iter__(self) -> Iterator[Row]:
        for row in self._rows:
            self.count += 1
            yield row
        self.done = True

    def summary(self, tz: tzinfo) -> Summary:
        """The summary of the rows read, with times shown in ``tz``.

        Raises:
            RuntimeError: if the rows have not all been read yet.
        """
        if not self.done:
            raise RuntimeError("the summary is known only after every row was read")
        return self.tally.summary(tz)


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
    "hostname",
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
        col(Device.id),  # 0
        col(Device.mac),  # 1
        col(Device.e164),  # 2
        col(Device.ip),  # 3
        col(Device.device_type),  # 4
        col(Device.software_version),  # 5
        col(Device.policy_name),  # 6
        col(Device.status),  # 7
        col(Device.drift),  # 8
        cert.serial,  # 9
        cert.not_after,  # 10
        cert.status,  # 11
        col(Device.last_verified_at),  # 12
        col(Device.last_seen_at),  # 13
        col(Device.hostname),  # 14
    ]
    return select(*columns).join(cert, cert.id == col(Device.current_certificate_id), isouter=True)


def _issues(r: Any, now: datetime) -> list[str]:
    return compliance_issues(
        has_certificate=r[9] is not None,
        certificate_status=str(r[11]) if r[11] is not None else None,
        verified=r[12] is not None,
        not_after=r[10],
        device_status=str(r[7]),
        drift=bool(r[8]),
        now=now,
    )


def _phone_name(r: Any) -> str:
    return f"{r[1]}, {r[14]}" if r[14] else str(r[1])


def _inventory(now: datetime) -> Producer:
    def produce(session: Session, tally: FleetTally) -> Iterator[Row]:
        for r in _batches(session, _device_query(), col(Device.id)):
            status = str(r[7])
            issues = [] if status == DeviceStatus.DECOMMISSIONED.value else _issues(r, now)
            tally.add(status=status, issues=issues, not_after=r[10], name=_phone_name(r))
            yield (
                r[1],
                r[14],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                status,
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
    "hostname",
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


def _compliance(now: datetime) -> Producer:
    def produce(session: Session, tally: FleetTally) -> Iterator[Row]:
        query = _device_query().where(col(Device.status) != DeviceStatus.DECOMMISSIONED)
        for r in _batches(session, query, col(Device.id)):
            issues = _issues(r, now)
            tally.add(status=str(r[7]), issues=issues, not_after=r[10], name=_phone_name(r))
            if issues:
                yield (
                    r[1],
                    r[14],
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
EXPIRY_COLUMNS = ("period", "start", "end", "certificates")


def _month_start(year: int, month: int, tz: tzinfo) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)


def _expiry(now: datetime, params: ReportParams, tz: tzinfo) -> Producer:
    """Current certificates (of phones in service) per period: "expired", then per calendar month in ``tz`` (the
    first from now to the month's end) or per week from now, then "later"."""

    def produce(session: Session, tally: ExpiryTally) -> Iterator[Row]:
        expired = 0
        counts: Counter[int] = Counter()
        local_now = now.astimezone(tz)
        base = local_now.year * 12 + local_now.month - 1
        query = (
            select(col(Device.id), col(Certificate.not_after))
            .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
            .where(col(Device.status) != DeviceStatus.DECOMMISSIONED)
        )
        for r in _batches(session, query, col(Device.id)):
            not_after: datetime = r[1]
            tally.add(not_after)
            if not_after <= now:
                expired += 1
            elif params.weeks is not None:
                counts[(not_after - now) // timedelta(weeks=1)] += 1
            else:
                local = not_after.astimezone(tz)
                counts[local.year * 12 + local.month - 1 - base] += 1
        if params.weeks is not None:
            periods = params.weeks
            bounds = [now + timedelta(weeks=i) for i in range(periods + 1)]
            labels = [f"W{i + 1}" for i in range(periods)]
            tally.unit = "week"
        else:
            if params.months is not None:
                periods = params.months
            else:
                reach = max((i for i in counts if counts[i]), default=0) + 1
                periods = min(max(DEFAULT_MONTHS, reach), MAX_MONTHS)
            bounds = [now] + [_month_start(local_now.year, local_now.month + i, tz) for i in range(1, periods + 1)]
            labels = [bounds[i].astimezone(tz).strftime("%Y-%m") for i in range(periods)]
            tally.unit = "month"
        later = sum(n for i, n in counts.items() if i >= periods)
        buckets = [("expired", expired), *((labels[i], counts[i]) for i in range(periods)), ("later", later)]
        tally.buckets = buckets
        yield ("expired", None, _iso(now), expired)
        for i in range(periods):
            yield (labels[i], _iso(bounds[i]), _iso(bounds[i + 1]), counts[i])
        yield ("later", _iso(bounds[periods]), None, later)

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


def _deployments(params: ReportParams) -> Producer:
    def produce(session: Session, tally: DeploymentTally) -> Iterator[Row]:
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
            tally.add(str(r[3]), r[11])
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


def _audit(params: ReportParams) -> Producer:
    def produce(session: Session, tally: AuditTally) -> Iterator[Row]:
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
            tally.add(r[1], r[2], r[3])
            details = json.dumps(r[6], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
            yield (r[0], _iso(r[1]), r[2], r[3], r[4], r[5], details, r[7])

    return produce


# --- the registry -----------------------------------------------------------------------------------------
TIME_COLUMNS = frozenset(
    {"not_after", "last_verified_at", "last_seen_at", "start", "end", "created_at", "finished_at", "at"}
)


def build_report(kind: ReportKind, params: ReportParams, now: datetime, tz: tzinfo = UTC) -> ReportSpec:
    """The :class:`ReportSpec` of ``kind`` with ``params``, as of ``now`` (``tz``: where the expiry forecast's
    calendar months begin)."""

    def spec(title: str, columns: tuple[str, ...], produce: Producer, tally: Callable[[], Tally]) -> ReportSpec:
        return ReportSpec(kind, title, columns, params, now, produce, tally, TIME_COLUMNS & frozenset(columns))

    if kind is ReportKind.INVENTORY:
        return spec("Phone inventory", INVENTORY_COLUMNS, _inventory(now), FleetTally)
    if kind is ReportKind.EXPIRY:
        if params.weeks is not None:
            title = f"Certificate expiry forecast, next {params.weeks} weeks"
        else:
            title = "Certificate expiry forecast by month"
        return spec(title, EXPIRY_COLUMNS, _expiry(now, params, tz), ExpiryTally)
    if kind is ReportKind.DEPLOYMENTS:
        return spec(
            "Deployment history",
            DEPLOYMENT_COLUMNS,
            _deployments(params),
            lambda: DeploymentTally(params.since, params.until),
        )
    if kind is ReportKind.AUDIT:
        return spec("Audit trail", AUDIT_COLUMNS, _audit(params), lambda: AuditTally(params.since, params.until))
    return spec("Compliance exceptions", COMPLIANCE_COLUMNS, _compliance(now), lambda: FleetTally(compliance_only=True))


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
