"""Recovery: deployments whose node, phone or probe went away — retried after their timeouts
(:func:`expire_stale`, every dispatcher tick) and taken back at start-up (:func:`recover`).

A deployment whose write was accepted (``written_at`` set) is only ever verified again, never written again.
Deployments leased by another live node are left alone until their lease runs out.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import IN_FLIGHT_STATES, move
from certmgr.db.engine import session_scope
from certmgr.db.locks import node_name, skip_locked
from certmgr.db.models import Deployment, DeploymentState, Device
from certmgr.deploy.queue import retry_or_fail
from certmgr.deploy.records import deployment_event

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState


def expire_stale(runtime: Runtime, now: datetime, *, active_deployments: frozenset[int]) -> int:
    """Retry stuck deployments; returns how many were retried (at most 500 per call):

    * ``awaiting_callback`` / ``contacting`` whose phone never called back (past the callback timeout);
    * ``written`` left by a vanished interaction (past the callback timeout);
    * ``verifying`` whose lease ran out — the interaction's lease covers the whole probe budget, so its probe is
      over (it died with its process, or its result could not be recorded while the database was away) — or,
      without a lease, after ``stuck_timeout_seconds``.

    Deployments with a live interaction here (``active_deployments``) or a lease held elsewhere (another
    process's interaction or probe) are left alone. A retried ``written`` / ``verifying`` deployment stays a
    verify job (``written_at`` is kept): the certificate is never written twice.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    cutoff = now - timedelta(seconds=settings.callback_timeout_seconds)
    stuck_cutoff = now - timedelta(seconds=settings.stuck_timeout_seconds)
    count = 0
    with session_scope(runtime.engine) as session:
        query = (
            select(Deployment, Device)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(
                (
                    col(Deployment.state).in_([S.AWAITING_CALLBACK.value, S.WRITTEN.value, S.CONTACTING.value])
                    & (col(Deployment.updated_at) < cutoff)
                )
                | (
                    (col(Deployment.state) == S.VERIFYING.value)
                    & ((col(Deployment.lease_until).is_not(None)) | (col(Deployment.updated_at) < stuck_cutoff))
                ),
                (col(Deployment.lease_until).is_(None)) | (col(Deployment.lease_until) <= now),
            )
            .order_by(col(Deployment.id))
            .limit(500)
        )
        rows = session.exec(skip_locked(query, session, of=Deployment)).all()
        events: list[NewEvent] = []
        for dep, device in rows:
            if dep.id in active_deployments:
                continue
            if dep.state is S.AWAITING_CALLBACK and dep.contacted_at is not None and dep.contacted_at >= cutoff:
                continue
            if dep.state is S.VERIFYING:
                reason = "verification made no progress (stuck)"
                if dep.written_at is None:
                    dep.written_at = dep.updated_at
            elif dep.state is S.WRITTEN:
                reason = "interaction ended after the write"
            else:
                reason = "phone never called back"
            retry_or_fail(runtime, dep, device, now, reason, events)
            session.add(dep)
            session.add(device)
            count += 1
        append_events(session, now, events)
    return count


def recover(runtime: Runtime, now: datetime) -> int:
    """Restart recovery: ``contacting`` / ``awaiting_callback`` go back to ``queued`` (the contact gap still
    applies through ``last_contact_me_at``); ``written`` / ``verifying`` go to ``queued`` as verify jobs
    (``written_at`` stays set: never write again). Returns the number of deployments recovered.

    Deployments leased by another live process (its lease not yet expired) are not touched: on several nodes
    a restarting node recovers only what nobody holds; the rest is retried by :func:`expire_stale` once its
    lease runs out.
    """
    count = 0
    me = node_name(runtime.settings)
    with session_scope(runtime.engine) as session:
        query = (
            select(Deployment, Device)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(
                col(Deployment.state).in_([s.value for s in IN_FLIGHT_STATES]),
                (col(Deployment.lease_until).is_(None))
                | (col(Deployment.lease_until) <= now)
                | (col(Deployment.lease_owner) == me),
            )
        )
        rows = session.exec(skip_locked(query, session, of=Deployment)).all()
        events: list[NewEvent] = []
        for dep, device in rows:
            before = dep.state
            if before in (S.WRITTEN, S.VERIFYING) and dep.written_at is None:
                dep.written_at = dep.updated_at
            move(dep, S.QUEUED, now)
            dep.next_attempt_at = now
            session.add(dep)
            events.append(
                deployment_event(
                    "deployment.recovered",
                    dep,
                    device.mac,
                    previous=before.value,
                    verify_only=dep.written_at is not None,
                )
            )
            count += 1
        append_events(session, now, events)
    return count


__all__ = ["expire_stale", "recover"]
