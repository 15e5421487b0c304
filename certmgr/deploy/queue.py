"""The queue: deployments waiting for their phone, and the steps that take them out and put them back.

* :func:`issue_and_queue` — the one place where a new certificate is recorded and its deployment queued (the
  reconciler, the renewal reconcile and the operator actions all call it);
* :func:`claim_due` / :func:`contact_result` — the dispatcher claims due deployments (concurrency limit,
  contact gap, maintenance windows) and records its contact-me;
* :func:`poll` — a polling phone (D5) claims its own due deployment;
* :func:`retry_or_fail` — back into the queue with backoff after a failed attempt, or failed for good.

Several nodes: :func:`claim_due` serialises claimers (PostgreSQL advisory transaction lock) so the global
concurrency limit holds across processes, and claims rows with ``FOR UPDATE SKIP LOCKED``; a claimed deployment
is leased to the claiming node until the callback timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import IN_FLIGHT_STATES, UNFINISHED_STATES, add_transcript, move
from certmgr.db.engine import session_scope
from certmgr.db.locks import claim_device, node_name, serialize, skip_locked
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    CheckReply,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    IssueReason,
)
from certmgr.deploy.backoff import next_attempt_at
from certmgr.deploy.records import ACTOR, current_deployment, deployment_event, hold, load_deployment
from certmgr.errors import ProtocolError
from certmgr.inventory.addresses import contact_me_target, peer_is_phone
from certmgr.inventory.phones import phone_policy
from certmgr.issuance.service import BuiltCertificate, record_certificate
from certmgr.policy.windows import window_open
from certmgr.wpi.contactme import ContactMeTarget

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState


def retry_or_fail(
    runtime: Runtime, dep: Deployment, device: Device, now: datetime, error: str, events: list[NewEvent]
) -> None:
    """Put ``dep`` back in the queue after a failed attempt (capped exponential backoff), or fail it for good
    once ``max_attempts`` attempts were made."""
    settings = runtime.settings
    if dep.attempts >= settings.max_attempts:
        move(dep, S.FAILED, now, error=error)
        device.status = DeviceStatus.FAILED
        device.updated_at = now
        events.append(deployment_event("deployment.failed", dep, device.mac, reason=error, attempts=dep.attempts))
        return
    move(dep, S.QUEUED, now, error=error)
    dep.next_attempt_at = next_attempt_at(
        max(dep.attempts, 1), now, settings.retry_base_seconds, settings.retry_max_seconds, key=device.mac
    )
    events.append(
        deployment_event(
            "deployment.retry",
            dep,
            device.mac,
            reason=error,
            attempts=dep.attempts,
            next_attempt_at=dep.next_attempt_at.isoformat(),
        )
    )


# --- dispatcher side ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContactTask:
    """A claimed deployment: send contact-me to ``target`` (validated: the phone's own address or a trusted proxy,
    the contact-me path). ``unknown_write`` is the expected SHA-256 when an earlier WriteItems' outcome is unknown:
    probe the phone's WBM first (:func:`confirm_written` if it already serves the certificate)."""

    deployment_id: int
    mac: str
    target: ContactMeTarget
    phone_ip: str
    unknown_write: str | None = None


def claim_due(runtime: Runtime, now: datetime, *, exclude_macs: frozenset[str] = frozenset()) -> list[ContactTask]:
    """Claim due deployments (``queued``, ``next_attempt_at`` reached) up to the free concurrency, skipping
    phones inside their contact gap or outside their policy's windows; each goes to ``contacting``.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    gap = timedelta(seconds=settings.contact_gap_seconds)
    tasks: list[ContactTask] = []
    with session_scope(runtime.engine) as session:
        serialize(session, "deployment-claim")  # the count below holds across nodes
        in_flight = session.exec(
            select(func.count())
            .select_from(Deployment)
            .where(col(Deployment.state).in_([s.value for s in IN_FLIGHT_STATES]))
        ).one()
        free = settings.deploy_concurrency - int(in_flight)
        if free <= 0:
            return []
        query = (
            select(Deployment, Device)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(
                col(Deployment.state) == S.QUEUED.value,
                (col(Deployment.next_attempt_at).is_(None)) | (col(Deployment.next_attempt_at) <= now),
                col(Device.enrollment) == Enrollment.APPROVED.value,
                col(Device.contact_me_uri).is_not(None),
            )
            .order_by(col(Deployment.next_attempt_at), col(Deployment.id))
            .limit(free * 4 + 10)
        )
        rows = session.exec(skip_locked(query, session, of=Deployment)).all()
        busy = set(exclude_macs)
        events: list[NewEvent] = []
        for dep, device in rows:
            if len(tasks) >= free:
                break
            if device.mac in busy:
                continue
            if device.last_contact_me_at is not None and device.last_contact_me_at + gap > now:
                continue
            if not window_open(phone_policy(runtime.policies, device, device.policy_name)[1].windows, now):
                continue
            try:
                target = contact_me_target(device.contact_me_uri or "", device.ip, settings.trusted_proxies)
            except ProtocolError as exc:  # recorded before this rule, or the address moved: never sent there
                device.contact_me_uri = None
                session.add(device)
                events.append(
                    NewEvent(ACTOR, "device.bad-contact-me-uri", "device", device.mac, {"reason": exc.message})
                )
                continue
            busy.add(device.mac)
            move(dep, S.CONTACTING, now)
            dep.attempts += 1
            dep.contacted_at = now
            dep.next_attempt_at = None
            hold(runtime.settings, dep, now + timedelta(seconds=settings.callback_timeout_seconds))
            session.add(dep)
            assert dep.id is not None
            assert device.ip is not None
            unknown = None
            if dep.write_sent_at is not None and dep.written_at is None:
                cert = session.get(Certificate, dep.certificate_id)
                unknown = cert.fingerprint_sha256 if cert is not None else None
            tasks.append(ContactTask(dep.id, device.mac, target, device.ip, unknown))
            events.append(
                deployment_event(
                    "deployment.contacting", dep, device.mac, attempt=dep.attempts, node=node_name(settings)
                )
            )
        append_events(session, now, events)
    return tasks


def contact_result(
    runtime: Runtime, deployment_id: int, now: datetime, *, error: str | None, dls_ip_addr: str | None = None
) -> None:
    """Record the outcome of a contact-me: ``awaiting_callback`` on success, a retry on failure. The device's
    ``last_contact_me_at`` is set either way (the phone may have received it: the gap applies)."""
    with session_scope(runtime.engine) as session:
        dep, device = load_deployment(session, deployment_id)
        device.last_contact_me_at = now
        device.updated_at = now
        events: list[NewEvent] = []
        if dep.state is S.CONTACTING:
            if error is None:
                move(dep, S.AWAITING_CALLBACK, now)
                dep.contacted_at = now
                events.append(deployment_event("deployment.contacted", dep, device.mac, dls_ip_addr=dls_ip_addr))
            else:
                events.append(deployment_event("deployment.contact-failed", dep, device.mac, reason=error))
                retry_or_fail(runtime, dep, device, now, f"contact-me failed: {error}", events)
        add_transcript(dep, [{"at": now.isoformat(), "dir": "contact-me", "error": error}])
        session.add(dep)
        session.add(device)
        append_events(session, now, events)


def confirm_written(runtime: Runtime, deployment_id: int, now: datetime) -> bool:
    """The phone's WBM already serves the certificate of a deployment whose write outcome was unknown: record the
    write as accepted (the contact that follows only verifies). Returns whether anything was recorded.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    with session_scope(runtime.engine) as session:
        dep, device = load_deployment(session, deployment_id)
        if dep.state.is_final or dep.written_at is not None or dep.write_sent_at is None:
            return False
        dep.written_at = now
        dep.check_reply = CheckReply.PASSED
        dep.updated_at = now
        session.add(dep)
        append_events(session, now, [deployment_event("deployment.write-confirmed", dep, device.mac, source="probe")])
        return True


def poll(runtime: Runtime, mac: str, now: datetime, *, peer: str | None = None) -> bool:
    """A DCMP poll (D5) from TCP peer ``peer``: True (answer "pending") if a deployment is due for ``mac``; it then
    awaits the phone's callback ("certmgr started this"). Only the phone's own address (or a trusted proxy) can
    claim its pending deployment; a poll from elsewhere is answered "nothing pending" and changes nothing.
    Respects approval, windows and the concurrency limit.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    with session_scope(runtime.engine) as session:
        device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
        if device is None or device.id is None or device.enrollment is not Enrollment.APPROVED:
            return False
        if not peer_is_phone(peer, device.ip, settings.trusted_proxies):
            return False  # a poll from anywhere else than the phone's address claims nothing and changes nothing
        dep = current_deployment(session, device.id)
        if dep is None:
            return False
        if (
            dep.state is S.AWAITING_CALLBACK
            and dep.contacted_at is not None
            and (dep.contacted_at + timedelta(seconds=settings.callback_timeout_seconds) >= now)
        ):
            return True  # already waiting for this phone
        if dep.state is not S.QUEUED or (dep.next_attempt_at is not None and dep.next_attempt_at > now):
            return False
        if not window_open(phone_policy(runtime.policies, device, device.policy_name)[1].windows, now):
            return False
        serialize(session, "deployment-claim")
        in_flight = session.exec(
            select(func.count())
            .select_from(Deployment)
            .where(col(Deployment.state).in_([s.value for s in IN_FLIGHT_STATES]))
        ).one()
        if int(in_flight) >= settings.deploy_concurrency:
            return False
        move(dep, S.AWAITING_CALLBACK, now)
        dep.attempts += 1
        dep.contacted_at = now
        dep.next_attempt_at = None
        hold(runtime.settings, dep, now + timedelta(seconds=settings.callback_timeout_seconds))
        add_transcript(dep, [{"at": now.isoformat(), "dir": "poll", "answer": "pending"}])
        session.add(dep)
        append_events(
            session, now, [deployment_event("deployment.poll-pending", dep, device.mac, attempt=dep.attempts)]
        )
        return True


# --- recording a new certificate and queueing its deployment ---------------------------------------------------
@dataclass(frozen=True)
class QueuedCertificate:
    """What :func:`issue_and_queue` recorded: the pending certificate and the deployment that carries it."""

    certificate: Certificate
    deployment: Deployment


def _always(_session: Session, _device: Device) -> bool:
    return True


def issue_and_queue(
    session: Session,
    runtime: Runtime,
    device_id: int,
    built: BuiltCertificate,
    *,
    reason: IssueReason,
    actor: str,
    now: datetime,
    still_needed: Callable[[Session, Device], bool] = _always,
    events_before: Sequence[NewEvent] = (),
    reissue: Mapping[str, Any] | None = None,
) -> QueuedCertificate | None:
    """Record ``built`` for phone ``device_id`` and queue its deployment, in the caller's transaction.

    In order: lock the device row (:func:`~certmgr.db.locks.claim_device`), reload the phone and ask
    ``still_needed`` (the caller's re-check, now under the lock: did another node or request issue meanwhile?
    did the phone change?); then mark the phone's unfinished deployments and pending certificates superseded,
    record the certificate ``pending`` with ``reason`` (audit ``certificate.issued``), and queue a deployment
    due at once (audit ``deployment.created``). ``events_before`` are audited first (e.g. the operator's
    request), ``reissue`` — if given — becomes the details of a ``certificate.reissue`` event (the renewal
    reconcile's reasons). Every event is attributed to ``actor``.

    Returns ``None``, with nothing written, if the row is locked by another node (PostgreSQL ``SKIP LOCKED``),
    the phone is gone, or ``still_needed`` says no.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: if the database fails (the caller's transaction rolls back).
    """
    session.flush()  # the caller's pending changes first: the reload below must not discard them
    if not claim_device(session, device_id):
        return None  # another node is issuing for this phone right now
    device = session.get(Device, device_id, populate_existing=True)
    if device is None or not still_needed(session, device):
        return None  # changed meanwhile; the caller's next pass looks again
    why = f"new certificate ({reason.value})"
    events: list[NewEvent] = list(events_before)
    for dep in session.exec(
        select(Deployment).where(
            col(Deployment.device_id) == device_id,
            col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]),
        )
    ).all():
        move(dep, DeploymentState.SUPERSEDED, now, error=why)
        session.add(dep)
        events.append(
            NewEvent(actor, "deployment.superseded", "deployment", str(dep.id), {"mac": device.mac, "reason": why})
        )
    for old in session.exec(
        select(Certificate).where(
            col(Certificate.device_id) == device_id, col(Certificate.status) == CertificateStatus.PENDING.value
        )
    ).all():
        old.status = CertificateStatus.SUPERSEDED
        session.add(old)
        events.append(NewEvent(actor, "certificate.superseded", "certificate", old.serial, {"mac": device.mac}))
    append_events(session, now, events)
    cert = record_certificate(session, built, runtime.vault, now=now, reason=reason, actor=actor, device=device)
    assert cert.id is not None
    dep = Deployment(
        device_id=device_id,
        certificate_id=cert.id,
        state=DeploymentState.QUEUED,
        next_attempt_at=None,
        created_at=now,
        updated_at=now,
    )
    session.add(dep)
    session.flush()
    after: list[NewEvent] = []
    if reissue is not None:
        after.append(NewEvent(actor, "certificate.reissue", "device", device.mac, {"serial": cert.serial, **reissue}))
    after.append(
        NewEvent(
            actor,
            "deployment.created",
            "deployment",
            str(dep.id),
            {"mac": device.mac, "serial": cert.serial, "reason": reason.value},
        )
    )
    append_events(session, now, after)
    return QueuedCertificate(cert, dep)


__all__ = [
    "ContactTask",
    "QueuedCertificate",
    "claim_due",
    "confirm_written",
    "contact_result",
    "issue_and_queue",
    "poll",
    "retry_or_fail",
]
