"""The idempotent services behind the scheduler's periodic jobs (besides the renewal reconcile, which lives in
:mod:`certmgr.renewal.service`). Each takes the runtime and ``now``; durable state is in certmgr's own tables
and the audit log, never in the scheduler.

* :func:`expiry_notify` — one digest notification about current certificates expiring within
  ``notify_expiry_days`` (a current certificate is the verified one, so it has no verified successor yet).
  De-duplicated through the audit log: ``certificate.expiry-notified`` / ``certificate.expired-notified`` per
  serial, written only after a channel accepted the message.
* :func:`ca_expiry_watch` — a ``ca-expiring`` notification per active CA certificate entering the watch
  period, the last week, or expiry; de-duplicated the same way (``ca.expiry-notified`` per stage).
* :func:`audit_checkpoint` — sign the audit chain head (idempotent: nothing new, nothing signed).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlmodel import col

from certmgr.audit.checkpoint import create_checkpoint, runtime_signer
from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.inlist import in_parts
from certmgr.db.models import (
    AuditEvent,
    CARecord,
    Certificate,
    Device,
    Enrollment,
)
from certmgr.notify.model import ExpiryFacts, Notification, expiry_notifications
from certmgr.notify.notifier import Notifier

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.scheduling")

ACTOR = "scheduler"
EXPIRY_NOTIFIED = "certificate.expiry-notified"
EXPIRED_NOTIFIED = "certificate.expired-notified"
CA_NOTIFIED = "ca.expiry-notified"
#: Certificates considered per expiry-notification run.
NOTIFY_LIMIT = 5000


# --- expiry notifications ----------------------------------------------------------------------------------
@dataclass
class NotifyReport:
    """What one notification run did."""

    candidates: int = 0
    notified: int = 0
    delivered: bool = False
    skipped_reason: str | None = None


def _already(session: object, action: str, subject_type: str, ids: list[str]) -> set[str]:
    from sqlmodel import Session

    assert isinstance(session, Session)
    found: set[str] = set()
    for chunk in in_parts(ids):
        found |= {
            str(sid)
            for (sid,) in session.execute(
                select(col(AuditEvent.subject_id)).where(
                    col(AuditEvent.action) == action,
                    col(AuditEvent.subject_type) == subject_type,
                    col(AuditEvent.subject_id).in_(chunk),
                )
            ).all()
        }
    return found


def _send(runtime: Runtime, notification: Notification) -> bool:
    notifier = Notifier.from_settings(runtime.settings, clock=runtime.clock)
    if not notifier.channels:
        return False
    results = asyncio.run(notifier.send(notification))
    for r in results:
        if not r.delivered:
            log.warning("notification over %s to %s failed: %s", r.channel, r.target, r.error)
    return any(r.delivered for r in results)


def expiry_notify(runtime: Runtime, now: datetime) -> NotifyReport:
    """Send one digest about current certificates expiring soon (or expired) not notified before.

    Must run in a thread without a running event loop (it drives the async notifier itself).

    Raises:
        DatabaseError: if the database cannot be reached. ConfigError: if the notification settings are invalid.
    """
    report = NotifyReport()
    days = runtime.settings.notify_expiry_days
    if not Notifier.from_settings(runtime.settings, clock=runtime.clock).channels:
        report.skipped_reason = "no notification channel configured"
        return report
    with session_scope(runtime.engine) as session:
        rows = session.execute(
            select(col(Certificate.serial), col(Device.mac), col(Certificate.not_after))
            .join(Device, col(Device.current_certificate_id) == col(Certificate.id))
            .where(
                col(Certificate.not_after) <= now + timedelta(days=days),
                col(Device.enrollment) == Enrollment.APPROVED.value,
            )
            .order_by(col(Certificate.not_after))
            .limit(NOTIFY_LIMIT)
        ).all()
        expired_ids = [str(r[0]) for r in rows if r[2] <= now]
        soon_ids = [str(r[0]) for r in rows if r[2] > now]
        done_expired = _already(session, EXPIRED_NOTIFIED, "certificate", expired_ids)
        done_soon = _already(session, EXPIRY_NOTIFIED, "certificate", soon_ids)
    fresh = [
        (serial, mac, not_after)
        for serial, mac, not_after in rows
        if (not_after <= now and serial not in done_expired) or (not_after > now and serial not in done_soon)
    ]
    report.candidates = len(fresh)
    if not fresh:
        return report
    facts = [ExpiryFacts(serial, mac, not_after) for serial, mac, not_after in fresh]
    notifications = expiry_notifications(facts, now, days)
    if not notifications:
        return report
    report.delivered = _send(runtime, notifications[0])
    if not report.delivered:
        return report  # not recorded: the next run tries again
    with session_scope(runtime.engine) as session:
        append_events(
            session,
            now,
            [
                NewEvent(
                    ACTOR,
                    EXPIRED_NOTIFIED if not_after <= now else EXPIRY_NOTIFIED,
                    "certificate",
                    serial,
                    {"mac": mac, "not_after": not_after.isoformat()},
                )
                for serial, mac, not_after in fresh
            ],
        )
    report.notified = len(fresh)
    return report


def _ca_stage(not_after: datetime, now: datetime, watch_days: int) -> str | None:
    if not_after <= now:
        return "expired"
    if not_after <= now + timedelta(days=7):
        return "7d"
    if not_after <= now + timedelta(days=watch_days):
        return f"{watch_days}d"
    return None


def ca_expiry_watch(runtime: Runtime, now: datetime) -> list[str]:
    """Notify once per active CA certificate and stage (watch period, last week, expired); returns the
    ``<fingerprint>:<stage>`` keys notified in this run.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    days = runtime.settings.ca_watch_days
    with session_scope(runtime.engine) as session:
        cas = session.execute(select(CARecord).where(col(CARecord.active).is_(True))).scalars().all()
        due = {
            f"{ca.fingerprint_sha256}:{stage}": ca
            for ca in cas
            if (stage := _ca_stage(ca.not_after, now, days)) is not None
        }
        done = _already(session, CA_NOTIFIED, "ca", list(due))
    fresh = {k: v for k, v in due.items() if k not in done}
    if not fresh:
        return []
    lines = [f"{ca.role.value} CA {ca.subject} expires {ca.not_after.isoformat()}" for ca in fresh.values()]
    notification = Notification(
        kind="ca-expiring",
        subject=f"{len(fresh)} CA certificate(s) expire within {days} days",
        text="Renew or rotate these CA certificates; phone certificates cannot outlive them:\n\n" + "\n".join(lines),
        data={
            "cas": [
                {"subject": ca.subject, "not_after": ca.not_after.isoformat(), "role": ca.role.value}
                for ca in fresh.values()
            ]
        },
    )
    if not _send(runtime, notification):
        return []
    with session_scope(runtime.engine) as session:
        append_events(
            session,
            now,
            [
                NewEvent(ACTOR, CA_NOTIFIED, "ca", key, {"subject": ca.subject, "not_after": ca.not_after.isoformat()})
                for key, ca in fresh.items()
            ],
        )
    return list(fresh)


def audit_checkpoint(runtime: Runtime, now: datetime) -> bool:
    """Sign the audit chain head if it moved since the last checkpoint; True if one was written.

    Raises:
        DatabaseError: database unreachable. ConfigError / CAError / StorageError: audit key unusable.
    """
    signer = runtime_signer(runtime)
    with session_scope(runtime.engine) as session:
        return create_checkpoint(session, signer, now) is not None


__all__ = [
    "CA_NOTIFIED",
    "EXPIRED_NOTIFIED",
    "EXPIRY_NOTIFIED",
    "NotifyReport",
    "audit_checkpoint",
    "ca_expiry_watch",
    "expiry_notify",
]


# --- incidents: deployments failed for good, drift, audit-chain failure ----------------------------------------------
INCIDENTS_NOTIFIED = "incidents.notified"
AUDIT_FAILURE_NOTIFIED = "audit.failure-notified"
INCIDENT_ACTIONS: dict[str, tuple[str, str]] = {
    # audit action -> (notification kind, what it means)
    "deployment.failed": ("deployment-failed", "deployment failed for good"),
    "device.drift": ("drift", "phone serves a different certificate than certmgr deployed"),
}
_LIST_MAX = 50


@dataclass
class IncidentReport:
    """What :func:`incident_notify` found and sent."""

    audit_ok: bool = True
    incidents: dict[str, int] = field(default_factory=dict)
    notified: list[str] = field(default_factory=list)


def incident_notify(runtime: Runtime, now: datetime) -> IncidentReport:
    """Notify, once each, deployments that failed for good and drift (from the audit log since the last run)
    and an audit chain that no longer verifies.

    Progress is an audit event (``incidents.notified`` with the highest sequence number reported), written only
    after a channel accepted the message, so nothing is lost when no channel is reachable. Verifying the chain
    walks it in batches; its cost grows with the log (see docs/benchmarks.md for scan rates).

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    from certmgr.audit.log import verify_log

    report = IncidentReport()
    with session_scope(runtime.engine) as session:
        verdict = verify_log(session)
        last = session.execute(
            select(col(AuditEvent.details))
            .where(col(AuditEvent.action) == INCIDENTS_NOTIFIED)
            .order_by(col(AuditEvent.seq).desc())
            .limit(1)
        ).scalar_one_or_none()
        since = int(last.get("up_to_seq", 0)) if isinstance(last, dict) else 0
        rows = session.execute(
            select(
                col(AuditEvent.seq),
                col(AuditEvent.action),
                col(AuditEvent.subject_id),
                col(AuditEvent.details),
                col(AuditEvent.at),
            )
            .where(col(AuditEvent.seq) > since, col(AuditEvent.action).in_(list(INCIDENT_ACTIONS)))
            .order_by(col(AuditEvent.seq))
        ).all()
        bad_seq = str(verdict.first_bad_seq) if not verdict.ok else None
        audit_done = bool(bad_seq) and bool(_already(session, AUDIT_FAILURE_NOTIFIED, "audit", [str(bad_seq)]))
    report.audit_ok = verdict.ok
    if bad_seq is not None and not audit_done:
        text = f"The audit chain does not verify: event {bad_seq}: {verdict.reason}. Run `certmgr audit verify`."
        if _send(runtime, Notification("audit-chain-failure", "certmgr audit chain failure", text, {"seq": bad_seq})):
            report.notified.append("audit-chain-failure")
            with session_scope(runtime.engine) as session:
                append_events(
                    session,
                    now,
                    [NewEvent(ACTOR, AUDIT_FAILURE_NOTIFIED, "audit", bad_seq, {"reason": verdict.reason})],
                )
    if not rows:
        return report
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for _seq, action, subject, details, at in rows:
        kind, _ = INCIDENT_ACTIONS[action]
        reason = str((details or {}).get("reason") or (details or {}).get("deployment") or "")
        by_kind.setdefault(kind, []).append((f"{at.isoformat()} {subject} {reason}".strip(), str(subject)))
    delivered = True
    for action, (kind, meaning) in INCIDENT_ACTIONS.items():
        items = by_kind.get(kind)
        if not items:
            continue
        report.incidents[kind] = len(items)
        lines = [line for line, _ in items[:_LIST_MAX]]
        more = f"\n… and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else ""
        notification = Notification(
            kind,  # type: ignore[arg-type]
            f"{len(items)} phone(s): {meaning}",
            f"{meaning} ({action}):\n\n" + "\n".join(lines) + more,
            {"count": len(items), "phones": sorted({mac for _, mac in items})[:1000]},
        )
        if _send(runtime, notification):
            report.notified.append(kind)
        else:
            delivered = False
    if delivered:
        with session_scope(runtime.engine) as session:
            append_events(
                session,
                now,
                [NewEvent(ACTOR, INCIDENTS_NOTIFIED, "audit", str(rows[-1][0]), {"up_to_seq": rows[-1][0]})],
            )
    return report
