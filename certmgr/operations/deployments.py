"""Operator use cases on deployments: retry one now, cancel one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlmodel import col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import IN_FLIGHT_STATES, UNFINISHED_STATES, move
from certmgr.db.models import Certificate, Deployment, DeploymentState, Enrollment
from certmgr.errors import ConflictError
from certmgr.operations.common import LIVE_CERTS, get_deployment, get_device, transaction

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState


@dataclass(frozen=True)
class RetryResult:
    """The deployment that is now due, and the failed/cancelled one it continues (if a new one was made)."""

    deployment: Deployment
    retried_from: int | None


def retry_deployment(runtime: Runtime, deployment_id: int, actor: str) -> RetryResult:
    """Make a deployment due now. A ``queued`` one (waiting for its backoff) keeps its row; a ``failed`` or
    ``cancelled`` one (final states never change) is continued by a new ``queued`` deployment of the same
    certificate with a fresh attempt count.

    Raises:
        NotFoundError: unknown id. ConflictError: the deployment is in progress, verified or superseded; its
        certificate is no longer current; the phone is not approved or has another unfinished deployment.
    """
    now = runtime.clock.now()
    with transaction(runtime) as session:
        dep = get_deployment(session, deployment_id)
        device = get_device(session, dep.device_id)
        if dep.state is S.QUEUED:
            dep.next_attempt_at = now
            dep.updated_at = now
            session.add(dep)
            append_events(
                session,
                now,
                [NewEvent(actor, "deployment.retry-requested", "deployment", str(dep.id), {"mac": device.mac})],
            )
            return RetryResult(dep, None)
        if dep.state in IN_FLIGHT_STATES:
            raise ConflictError(f"deployment {deployment_id} is in progress ({dep.state.value})", state=dep.state.value)
        if dep.state not in (S.FAILED, S.CANCELLED):
            raise ConflictError(
                f"deployment {deployment_id} is {dep.state.value}; only failed, cancelled or queued ones are retried",
                state=dep.state.value,
            )
        cert = session.get(Certificate, dep.certificate_id)
        assert cert is not None
        if cert.status not in LIVE_CERTS or cert.not_after <= now:
            raise ConflictError(
                f"its certificate {cert.serial} is {cert.status.value}; renew instead", serial=cert.serial
            )
        if device.enrollment is not Enrollment.APPROVED:
            raise ConflictError(f"phone {device.mac} is {device.enrollment.value}, not approved", mac=device.mac)
        other = session.exec(
            select(Deployment).where(
                col(Deployment.device_id) == device.id,
                col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]),
            )
        ).first()
        if other is not None:
            raise ConflictError(f"phone {device.mac} already has unfinished deployment {other.id}", deployment=other.id)
        fresh = Deployment(
            device_id=dep.device_id,
            certificate_id=dep.certificate_id,
            state=S.QUEUED,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(fresh)
        session.flush()
        append_events(
            session,
            now,
            [
                NewEvent(
                    actor,
                    "deployment.retry-requested",
                    "deployment",
                    str(fresh.id),
                    {"mac": device.mac, "retried_from": dep.id, "previous_state": dep.state.value},
                )
            ],
        )
        return RetryResult(fresh, dep.id)


def cancel_deployment(runtime: Runtime, deployment_id: int, actor: str) -> Deployment:
    """Cancel an unfinished deployment (an interaction under way is ignored from then on).

    Raises:
        NotFoundError: unknown id. ConflictError: the deployment has already finished.
    """
    now = runtime.clock.now()
    with transaction(runtime) as session:
        dep = get_deployment(session, deployment_id)
        device = get_device(session, dep.device_id)
        if dep.state.is_final:
            raise ConflictError(f"deployment {deployment_id} has finished ({dep.state.value})", state=dep.state.value)
        previous = dep.state
        move(dep, S.CANCELLED, now, error=f"cancelled by {actor}")
        session.add(dep)
        append_events(
            session,
            now,
            [
                NewEvent(
                    actor,
                    "deployment.cancelled",
                    "deployment",
                    str(dep.id),
                    {"mac": device.mac, "previous_state": previous.value},
                )
            ],
        )
        return dep


__all__ = ["RetryResult", "cancel_deployment", "retry_deployment"]
