"""Rollback: put the last known-good certificate back on a phone that accepted a new one but does not serve it.

A deployment *failed after acceptance* when the phone accepted the write and verification kept failing — the
WBM serves nothing or another certificate (``Deployment.verify_failures`` counts those verdicts; a probe is only
made after the write was accepted) — either until the deployment failed for good, or for
``rollback_after_verify_failures`` verdicts. Then :func:`rollback_failed`:

* ends that deployment (``failed``, if it was still being retried);
* if the new certificate's predecessor (``Certificate.previous_certificate_id``, its key is still sealed in
  the database) is still valid for ``MIN_REMAINING`` and not revoked, queues a deployment of it marked as a
  rollback (``Deployment.rollback_of``), and audits ``deployment.rollback``;
* otherwise audits ``deployment.rollback-impossible``;
* flags the phone either way (``device.status = failed`` and a ``device.flagged`` audit event).

The failed certificate stays ``pending``: the renewal reconcile does not reissue for a phone whose newer
certificate failed until an operator asks for it (manual request) or the old certificate nears its deadline —
so a phone that rejects new certificates is not re-keyed in a loop. A rollback deployment is never itself
rolled back. Idempotent: a failed deployment is handled once (the audit event and the newer deployment mark it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlmodel import col

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import move
from certmgr.db.engine import session_scope
from certmgr.db.locks import skip_locked
from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
)

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

ACTOR = "rollback"
#: The previous certificate must stay valid at least this long to be worth redeploying.
MIN_REMAINING = timedelta(hours=1)
#: Failed deployments looked at per call.
BATCH = 100
#: How far back finished deployments are considered.
LOOKBACK = timedelta(days=30)
_HANDLED = ("deployment.rollback", "deployment.rollback-impossible")


def is_rollback(dep: Deployment) -> bool:
    """True if ``dep`` is itself a rollback deployment."""
    return dep.rollback_of is not None


def failed_after_acceptance(dep: Deployment, threshold: int) -> bool:
    """True if ``dep`` (not a rollback) was accepted by the phone and then failed verification for good, or
    ``threshold`` times."""
    if is_rollback(dep) or dep.verify_failures == 0:
        return False
    return dep.state is DeploymentState.FAILED or dep.verify_failures >= threshold


@dataclass(frozen=True)
class RollbackResult:
    """One handled deployment."""

    failed_deployment_id: int
    mac: str
    rollback_deployment_id: int | None
    reason: str


def rollback_failed(runtime: Runtime, now: datetime) -> list[RollbackResult]:
    """Handle every deployment that failed after acceptance (see the module docstring); bounded per call.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    threshold = runtime.settings.rollback_after_verify_failures
    results: list[RollbackResult] = []
    with session_scope(runtime.engine) as session:
        query = (
            select(Deployment)
            .where(
                (col(Deployment.state) == DeploymentState.FAILED.value)
                & (col(Deployment.finished_at) >= now - LOOKBACK)
                | (col(Deployment.state) == DeploymentState.QUEUED.value)
                & (col(Deployment.verify_failures) >= threshold),
                col(Deployment.rollback_of).is_(None),
                col(Deployment.verify_failures) > 0,
            )
            .order_by(col(Deployment.id))
            .limit(BATCH * 10)
        )
        rows = session.execute(skip_locked(query, session, of=Deployment)).scalars().all()
        chosen = [d for d in rows if failed_after_acceptance(d, threshold)][:BATCH]
        if not chosen:
            return results
        handled = {
            str(sid)
            for (sid,) in session.execute(
                select(col(AuditEvent.subject_id)).where(
                    col(AuditEvent.action).in_(_HANDLED),
                    col(AuditEvent.subject_type) == "deployment",
                    col(AuditEvent.subject_id).in_([str(d.id) for d in chosen]),
                )
            ).all()
        }
        events: list[NewEvent] = []
        for dep in chosen:
            if str(dep.id) in handled:
                continue
            newer = session.execute(
                select(col(Deployment.id)).where(
                    col(Deployment.device_id) == dep.device_id, col(Deployment.id) > dep.id
                )
            ).first()
            if newer is not None:
                continue  # the phone has moved on (a new certificate, an operator's action)
            device = session.get(Device, dep.device_id)
            failed_cert = session.get(Certificate, dep.certificate_id)
            assert device is not None
            assert failed_cert is not None
            assert dep.id is not None
            if not dep.state.is_final:
                why = "verification failed after the phone accepted the certificate"
                move(dep, DeploymentState.FAILED, now, error=why)
                session.add(dep)
                events.append(
                    NewEvent(
                        ACTOR,
                        "deployment.failed",
                        "deployment",
                        str(dep.id),
                        {
                            "mac": device.mac,
                            "reason": dep.last_error,
                            "verify_failures": dep.verify_failures,
                        },
                    )
                )
            previous = (
                session.get(Certificate, failed_cert.previous_certificate_id)
                if failed_cert.previous_certificate_id is not None
                else None
            )
            device.status = DeviceStatus.FAILED
            device.updated_at = now
            session.add(device)
            usable = (
                previous is not None
                and previous.status not in (CertificateStatus.REVOKED, CertificateStatus.EXPIRED)
                and previous.revoked_at is None
                and previous.not_after > now + MIN_REMAINING
            )
            rollback_id: int | None = None
            if usable:
                assert previous is not None
                assert previous.id is not None
                assert device.id is not None
                back = Deployment(
                    device_id=device.id,
                    certificate_id=previous.id,
                    state=DeploymentState.QUEUED,
                    next_attempt_at=None,
                    rollback_of=dep.id,
                    transcript=[  # for people; decisions read rollback_of
                        {
                            "at": now.isoformat(),
                            "dir": "rollback",
                            "failed_deployment": dep.id,
                            "failed_serial": failed_cert.serial,
                            "serial": previous.serial,
                        }
                    ],
                    created_at=now,
                    updated_at=now,
                )
                session.add(back)
                session.flush()
                rollback_id = back.id
                reason = f"redeploying the previous certificate {previous.serial}"
                events.append(
                    NewEvent(
                        ACTOR,
                        "deployment.rollback",
                        "deployment",
                        str(dep.id),
                        {
                            "mac": device.mac,
                            "failed_serial": failed_cert.serial,
                            "serial": previous.serial,
                            "rollback_deployment": back.id,
                        },
                    )
                )
            else:
                reason = "no valid previous certificate to roll back to"
                events.append(
                    NewEvent(
                        ACTOR,
                        "deployment.rollback-impossible",
                        "deployment",
                        str(dep.id),
                        {"mac": device.mac, "failed_serial": failed_cert.serial, "reason": reason},
                    )
                )
            events.append(
                NewEvent(
                    ACTOR,
                    "device.flagged",
                    "device",
                    device.mac,
                    {"reason": "new certificate failed verification after acceptance", "serial": failed_cert.serial},
                )
            )
            results.append(RollbackResult(dep.id, device.mac, rollback_id, reason))
        append_events(session, now, events)
    return results


__all__ = ["MIN_REMAINING", "RollbackResult", "failed_after_acceptance", "is_rollback", "rollback_failed"]
