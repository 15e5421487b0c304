"""What the security team can do to the fleet through the API: register, approve and decommission phones;
revoke and renew certificates; retry and cancel deployments.

Each action is one transaction holding the change and its audit events (actor ``token:<name>``). Keys are
generated before that transaction opens (as in :mod:`certmgr.deploy.reconcile`), and the CRL is re-signed after
it commits. New certificates take the reconcile path: :func:`certmgr.deploy.reconcile.issue_and_queue` locks
the device row, re-checks under that lock, records the certificate ``pending``, supersedes older unfinished
deployments of the phone and queues a deployment (due at once) for the dispatcher.

Unknown ids raise :class:`~certmgr.errors.NotFoundError`; an action the object's state does not allow raises
:class:`~certmgr.errors.ConflictError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    IssueReason,
)
from certmgr.deploy.reconcile import issue_and_queue, needs_certificate
from certmgr.deploy.states import IN_FLIGHT_STATES, UNFINISHED_STATES, check_transition
from certmgr.errors import CertmgrError, ConflictError, NotFoundError, PolicyError
from certmgr.identity import DeviceIdentity, parse_ip
from certmgr.inventory.service import approve_device
from certmgr.issuance.revocation import refresh_crl, revoke_in_session
from certmgr.issuance.service import BuiltCertificate, build_certificate
from certmgr.pki.crl import RevocationReason

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger(__name__)
S = DeploymentState
_LIVE_CERTS = (CertificateStatus.ACTIVE, CertificateStatus.PENDING)

__all__ = [
    "DecommissionResult",
    "RenewResult",
    "RetryResult",
    "RevokeResult",
    "approve",
    "cancel_deployment",
    "decommission_device",
    "register_device",
    "renew_certificate",
    "retry_deployment",
    "revoke_certificate",
]


# --- shared helpers -----------------------------------------------------------------------------------------
@contextmanager
def _transaction(runtime: Runtime) -> Iterator[Session]:
    """:func:`session_scope`, with concurrent changes reported as conflicts (409) instead of crashes."""
    try:
        with session_scope(runtime.engine) as session:
            yield session
    except StaleDataError:
        raise ConflictError("the object was changed concurrently; try again") from None
    except IntegrityError:
        raise ConflictError("the change conflicts with another (a duplicate?); try again") from None


def _device(session: Session, device_id: int) -> Device:
    row = session.get(Device, device_id)
    if row is None:
        raise NotFoundError(f"no device with id {device_id}", id=device_id)
    return row


def _certificate(session: Session, certificate_id: int) -> Certificate:
    row = session.exec(select(Certificate).where(col(Certificate.id) == certificate_id).with_for_update()).first()
    if row is None:
        raise NotFoundError(f"no certificate with id {certificate_id}", id=certificate_id)
    return row


def _deployment(session: Session, deployment_id: int) -> Deployment:
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise NotFoundError(f"no deployment with id {deployment_id}", id=deployment_id)
    return row


def _identity(device: Device) -> DeviceIdentity:
    return DeviceIdentity(
        mac=device.mac,
        ips=(parse_ip(device.ip),) if device.ip else (),
        dns_names=tuple(device.dns_names),
        e164=device.e164,
        model=device.device_type,
        firmware=device.software_version,
        hostname=device.hostname,
    )


def _build(runtime: Runtime, device: Device, now: datetime) -> BuiltCertificate:
    identity = _identity(device)
    policy = runtime.policies.get(device.policy_name) if device.policy_name else runtime.policies.select(identity)
    return build_certificate(identity, policy, runtime.issuer(), now)


def _cancel(dep: Deployment, now: datetime, why: str) -> None:
    dep.state = check_transition(dep.state, S.CANCELLED)
    dep.finished_at = dep.updated_at = now
    dep.last_error = why[:500]


def _refresh_crl_quietly(runtime: Runtime) -> int | None:
    """Re-sign the CRL after a committed revocation; a failure is logged (``GET /ca/crl`` retries lazily)."""
    try:
        return refresh_crl(runtime).meta.number
    except CertmgrError as exc:
        log.warning("CRL not refreshed after a revocation: %s", exc.message)
        return None


# --- devices ------------------------------------------------------------------------------------------------
def register_device(
    runtime: Runtime,
    *,
    mac: str,
    ip: str,
    e164: str | None,
    model: str | None,
    dns_names: Sequence[str],
    actor: str,
) -> Device:
    """Pre-register a phone before it first reports: approved at once if its policy says ``enrollment = auto``,
    else pending approval. The reconciler issues its certificate once it is approved.

    Raises:
        InputError: invalid MAC, IP, E.164 number or DNS name. ConflictError: the MAC is already known.
    """
    identity = DeviceIdentity.create(mac=mac, ips=[ip], dns_names=list(dns_names), e164=e164, model=model)
    now = runtime.clock.now()
    try:
        policy = runtime.policies.select(identity)
    except PolicyError:
        policy = None
    approved = policy is not None and policy.enrollment == "auto"
    with _transaction(runtime) as session:
        if session.exec(select(Device).where(col(Device.mac) == identity.mac)).first() is not None:
            raise ConflictError(f"a phone with MAC {identity.mac} is already registered", mac=identity.mac)
        device = Device(
            mac=identity.mac,
            ip=str(identity.ips[0]),
            e164=identity.e164,
            device_type=identity.model,
            dns_names=list(identity.dns_names),
            policy_name=policy.name if policy is not None else None,
            enrollment=Enrollment.APPROVED if approved else Enrollment.PENDING,
            status=DeviceStatus.ENROLLED if approved else DeviceStatus.NEW,
            created_at=now,
            updated_at=now,
        )
        session.add(device)
        session.flush()
        events = [
            NewEvent(
                actor,
                "device.registered",
                "device",
                device.mac,
                {"ip": device.ip, "policy": device.policy_name, "enrollment": device.enrollment.value},
            )
        ]
        if not approved:
            events.append(
                NewEvent(actor, "device.approval-pending", "device", device.mac, {"policy": policy and policy.name})
            )
        append_events(session, now, events)
    return device


def approve(runtime: Runtime, device_id: int, actor: str) -> Device:
    """Approve a pending phone (idempotent for an approved one).

    Raises:
        NotFoundError: unknown id. ConflictError: the phone is decommissioned.
    """
    with _transaction(runtime) as session:
        device = _device(session, device_id)
        return approve_device(session, device.mac, runtime.clock.now(), actor)


@dataclass(frozen=True)
class DecommissionResult:
    """The decommissioned phone, what was cancelled and revoked, and the CRL number that lists it."""

    device: Device
    cancelled_deployments: tuple[int, ...]
    revoked_certificates: tuple[int, ...]
    crl_number: int | None


def decommission_device(runtime: Runtime, device_id: int, actor: str) -> DecommissionResult:
    """Take a phone out of service: unfinished deployments cancelled, every unexpired certificate of it revoked
    (``cessationOfOperation``), enrollment and status ``decommissioned``; then the CRL is re-signed.

    Raises:
        NotFoundError: unknown id. ConflictError: already decommissioned.
    """
    now = runtime.clock.now()
    cancelled: list[int] = []
    revoked: list[int] = []
    with _transaction(runtime) as session:
        device = _device(session, device_id)
        if device.enrollment is Enrollment.DECOMMISSIONED:
            raise ConflictError(f"phone {device.mac} is already decommissioned", mac=device.mac)
        events = [NewEvent(actor, "device.decommissioned", "device", device.mac, {"previous": device.enrollment.value})]
        for dep in session.exec(
            select(Deployment).where(
                col(Deployment.device_id) == device_id,
                col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]),
            )
        ):
            _cancel(dep, now, "device decommissioned")
            session.add(dep)
            assert dep.id is not None
            cancelled.append(dep.id)
            events.append(
                NewEvent(
                    actor,
                    "deployment.cancelled",
                    "deployment",
                    str(dep.id),
                    {"mac": device.mac, "reason": "decommissioned"},
                )
            )
        certs = session.exec(
            select(Certificate).where(
                col(Certificate.device_id) == device_id,
                col(Certificate.status).in_([s.value for s in (*_LIVE_CERTS, CertificateStatus.SUPERSEDED)]),
                col(Certificate.not_after) > now,
            )
        ).all()
        for cert in certs:
            events += revoke_in_session(
                session, cert, RevocationReason.CESSATION_OF_OPERATION, now, actor, mac=device.mac
            )
            assert cert.id is not None
            revoked.append(cert.id)
        device.enrollment = Enrollment.DECOMMISSIONED
        device.status = DeviceStatus.DECOMMISSIONED
        device.updated_at = now
        session.add(device)
        append_events(session, now, events)
    crl_number = _refresh_crl_quietly(runtime) if revoked else None
    return DecommissionResult(device, tuple(cancelled), tuple(revoked), crl_number)


# --- certificates -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RevokeResult:
    """The revoked certificate, its replacement (if the phone still needs one) and the new CRL number."""

    certificate: Certificate
    replacement_certificate_id: int | None
    replacement_deployment_id: int | None
    crl_number: int | None


def revoke_certificate(runtime: Runtime, certificate_id: int, reason: RevocationReason, actor: str) -> RevokeResult:
    """Revoke a certificate, re-sign the CRL and, for a phone still in service whose certificate this was,
    issue and queue a replacement (reason ``revocation``). The revocation never waits on the replacement: if
    issuing fails it is audited and the reconciler tries again.

    Raises:
        NotFoundError: unknown id. ConflictError: already revoked or expired.
    """
    now = runtime.clock.now()
    with session_scope(runtime.engine) as session:
        cert = _certificate(session, certificate_id)
        device = _device(session, cert.device_id)
        if cert.status is CertificateStatus.REVOKED:
            raise ConflictError(f"certificate {cert.serial} is already revoked", serial=cert.serial)
        if cert.status is CertificateStatus.EXPIRED or cert.not_after <= now:
            raise ConflictError(
                f"certificate {cert.serial} has expired; there is nothing to revoke", serial=cert.serial
            )
        wants_replacement = (
            cert.status in _LIVE_CERTS and device.enrollment is Enrollment.APPROVED and device.ip is not None
        )
        session.expunge_all()
    built: BuiltCertificate | None = None
    issue_error: str | None = None
    if wants_replacement:
        try:
            built = _build(runtime, device, now)
        except CertmgrError as exc:
            issue_error = exc.message
    replacement: tuple[int | None, int | None] = (None, None)
    with _transaction(runtime) as session:
        cert = _certificate(session, certificate_id)
        device = _device(session, cert.device_id)
        events = revoke_in_session(session, cert, reason, now, actor, mac=device.mac)
        if issue_error is not None:
            events.append(NewEvent(actor, "certificate.issue-failed", "device", device.mac, {"reason": issue_error}))
        append_events(session, now, events)  # the revocation first, then the replacement's events
        if built is not None:
            replacement_for = built

            def still_needed(session: Session, current: Device) -> bool:
                return (
                    current.ip is not None
                    and str(replacement_for.identity.ips[0]) == str(parse_ip(current.ip))
                    and needs_certificate(session, current, now) is not None
                )

            queued = issue_and_queue(
                session,
                runtime,
                device_id=cert.device_id,
                built=built,
                reason=IssueReason.REVOCATION,
                actor=actor,
                now=now,
                still_needed=still_needed,
            )
            if queued is not None:
                replacement = (queued.certificate.id, queued.deployment.id)
    return RevokeResult(cert, replacement[0], replacement[1], _refresh_crl_quietly(runtime))


@dataclass(frozen=True)
class RenewResult:
    """The new certificate and the deployment that will put it on the phone."""

    certificate_id: int
    deployment_id: int
    serial: str


def renew_certificate(runtime: Runtime, certificate_id: int, actor: str) -> RenewResult:
    """Issue a new certificate for the phone of a current (active or pending) certificate now (reason
    ``manual``) and queue its deployment.

    Raises:
        NotFoundError: unknown id. ConflictError: the certificate is not current, or the phone is not approved
        or has no IP address. IssuanceError / CAError: the certificate cannot be issued.
    """
    now = runtime.clock.now()
    with session_scope(runtime.engine) as session:
        cert = _certificate(session, certificate_id)
        device = _device(session, cert.device_id)
        newest = session.exec(
            select(func.max(col(Certificate.id))).where(col(Certificate.device_id) == cert.device_id)
        ).one()
        session.expunge_all()
    if cert.status not in _LIVE_CERTS:
        raise ConflictError(
            f"certificate {cert.serial} is {cert.status.value}; renew the phone's current certificate",
            serial=cert.serial,
        )
    if device.enrollment is not Enrollment.APPROVED:
        raise ConflictError(f"phone {device.mac} is {device.enrollment.value}, not approved", mac=device.mac)
    if device.ip is None:
        raise ConflictError(f"phone {device.mac} has no known IP address yet", mac=device.mac)
    built = _build(runtime, device, now)
    with _transaction(runtime) as session:
        cert = _certificate(session, certificate_id)  # locked: its status is current
        live = cert.status in _LIVE_CERTS

        def still_needed(session: Session, current: Device) -> bool:
            # Under the device lock: the certificate and the phone are as they were, and nothing was issued for
            # the phone since we looked (a concurrent renew request, the reconciler or the renewal job).
            since = select(col(Certificate.id)).where(
                col(Certificate.device_id) == current.id, col(Certificate.id) > newest
            )
            newer = session.exec(since).first()
            return live and newer is None and current.enrollment is Enrollment.APPROVED and current.ip == device.ip

        queued = issue_and_queue(
            session,
            runtime,
            device_id=cert.device_id,
            built=built,
            reason=IssueReason.MANUAL,
            actor=actor,
            now=now,
            still_needed=still_needed,
            events_before=[
                NewEvent(actor, "certificate.renew-requested", "certificate", cert.serial, {"mac": device.mac})
            ],
        )
        if queued is None:
            raise ConflictError("the phone or certificate changed meanwhile; try again", mac=device.mac)
        assert queued.certificate.id is not None
        assert queued.deployment.id is not None
        return RenewResult(queued.certificate.id, queued.deployment.id, queued.certificate.serial)


# --- deployments --------------------------------------------------------------------------------------------
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
    with _transaction(runtime) as session:
        dep = _deployment(session, deployment_id)
        device = _device(session, dep.device_id)
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
        if cert.status not in _LIVE_CERTS or cert.not_after <= now:
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
    with _transaction(runtime) as session:
        dep = _deployment(session, deployment_id)
        device = _device(session, dep.device_id)
        if dep.state.is_final:
            raise ConflictError(f"deployment {deployment_id} has finished ({dep.state.value})", state=dep.state.value)
        previous = dep.state
        _cancel(dep, now, f"cancelled by {actor}")
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
