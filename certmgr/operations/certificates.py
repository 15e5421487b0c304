"""Operator use cases on certificates: revoke one (and replace it while the phone needs one), renew one now.

Keys are generated before the transaction opens, and the CRL is re-signed after it commits. New certificates
take the one recording path, :func:`certmgr.deploy.queue.issue_and_queue`: it locks the device row, re-checks
under that lock, records the certificate ``pending``, supersedes older unfinished deployments of the phone and
queues a deployment (due at once) for the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, CertificateStatus, Device, Enrollment, IssueReason
from certmgr.deploy.queue import issue_and_queue
from certmgr.deploy.reconcile import needs_certificate
from certmgr.errors import CertmgrError, ConflictError
from certmgr.identity import parse_ip
from certmgr.inventory.enrollment import phone_by_mac
from certmgr.issuance.revocation import revoke_in_session
from certmgr.issuance.service import BuiltCertificate
from certmgr.operations.common import (
    LIVE_CERTS,
    build_for,
    get_device,
    lock_certificate,
    refresh_crl_quietly,
    transaction,
)
from certmgr.pki.crl import RevocationReason

if TYPE_CHECKING:
    from certmgr.runtime import Runtime


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
        cert = lock_certificate(session, certificate_id)
        device = get_device(session, cert.device_id)
        if cert.status is CertificateStatus.REVOKED:
            raise ConflictError(f"certificate {cert.serial} is already revoked", serial=cert.serial)
        if cert.status is CertificateStatus.EXPIRED or cert.not_after <= now:
            raise ConflictError(
                f"certificate {cert.serial} has expired; there is nothing to revoke", serial=cert.serial
            )
        wants_replacement = (
            cert.status in LIVE_CERTS and device.enrollment is Enrollment.APPROVED and device.ip is not None
        )
        session.expunge_all()
    built: BuiltCertificate | None = None
    issue_error: str | None = None
    if wants_replacement:
        try:
            built = build_for(runtime, device, now)
        except CertmgrError as exc:
            issue_error = exc.message
    replacement: tuple[int | None, int | None] = (None, None)
    with transaction(runtime) as session:
        cert = lock_certificate(session, certificate_id)
        device = get_device(session, cert.device_id)
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
    return RevokeResult(cert, replacement[0], replacement[1], refresh_crl_quietly(runtime))


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
        cert = lock_certificate(session, certificate_id)
        device = get_device(session, cert.device_id)
        newest = session.exec(
            select(func.max(col(Certificate.id))).where(col(Certificate.device_id) == cert.device_id)
        ).one()
        session.expunge_all()
    if cert.status not in LIVE_CERTS:
        raise ConflictError(
            f"certificate {cert.serial} is {cert.status.value}; renew the phone's current certificate",
            serial=cert.serial,
        )
    if device.enrollment is not Enrollment.APPROVED:
        raise ConflictError(f"phone {device.mac} is {device.enrollment.value}, not approved", mac=device.mac)
    if device.ip is None:
        raise ConflictError(f"phone {device.mac} has no known IP address yet", mac=device.mac)
    built = build_for(runtime, device, now)
    with transaction(runtime) as session:
        cert = lock_certificate(session, certificate_id)  # locked: its status is current
        live = cert.status in LIVE_CERTS

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


def renew_mac(runtime: Runtime, mac: str, actor: str) -> RenewResult:
    """:func:`renew_certificate` for the current certificate of the phone with MAC ``mac`` (the CLI names phones
    by MAC).

    Raises:
        InputError: invalid MAC. NotFoundError: unknown phone. ConflictError: the phone has no current
        certificate yet, or :func:`renew_certificate` refuses. IssuanceError / CAError: as there.
    """
    with transaction(runtime) as session:
        device = phone_by_mac(session, mac)
        current, normalised = device.current_certificate_id, device.mac
    if current is None:
        raise ConflictError(f"phone {normalised} has no current certificate to renew yet", mac=normalised)
    return renew_certificate(runtime, current, actor)


__all__ = ["RenewResult", "RevokeResult", "renew_certificate", "renew_mac", "revoke_certificate"]
