"""What every operator use case shares: one transaction with conflicts reported as such, row getters that
answer 404 (by id, or a phone by MAC), building a phone's next certificate, re-signing the CRL after a
revocation."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import MAX_ID, Certificate, CertificateStatus, Deployment, Device
from certmgr.errors import CertmgrError, ConflictError, NotFoundError
from certmgr.inventory.phones import phone_policy
from certmgr.issuance.revocation import refresh_crl
from certmgr.issuance.service import BuiltCertificate, build_certificate

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger(__name__)
#: Certificate states that count as the phone's current certificate (in use, or being deployed).
LIVE_CERTS = (CertificateStatus.ACTIVE, CertificateStatus.PENDING)


@contextmanager
def transaction(runtime: Runtime) -> Iterator[Session]:
    """:func:`session_scope`, with concurrent changes reported as conflicts (409) instead of crashes."""
    try:
        with session_scope(runtime.engine) as session:
            yield session
    except StaleDataError:
        raise ConflictError("the object was changed concurrently; try again") from None
    except IntegrityError:
        raise ConflictError("the change conflicts with another (a duplicate?); try again") from None


def _check_id(ident: int, what: str) -> None:
    """An id no row can have (0, negative, beyond the INTEGER column) is unknown, asked of no database."""
    if not 1 <= ident <= MAX_ID:
        raise NotFoundError(f"no {what} with id {ident}", id=ident)


def get_device(session: Session, device_id: int) -> Device:
    """The phone with id ``device_id``.

    Raises:
        NotFoundError: no such phone.
    """
    _check_id(device_id, "device")
    row = session.get(Device, device_id)
    if row is None:
        raise NotFoundError(f"no device with id {device_id}", id=device_id)
    return row


def lock_certificate(session: Session, certificate_id: int) -> Certificate:
    """The certificate with id ``certificate_id``, its row locked for the transaction.

    Raises:
        NotFoundError: no such certificate.
    """
    _check_id(certificate_id, "certificate")
    row = session.exec(select(Certificate).where(col(Certificate.id) == certificate_id).with_for_update()).first()
    if row is None:
        raise NotFoundError(f"no certificate with id {certificate_id}", id=certificate_id)
    return row


def get_deployment(session: Session, deployment_id: int) -> Deployment:
    """The deployment with id ``deployment_id``.

    Raises:
        NotFoundError: no such deployment.
    """
    _check_id(deployment_id, "deployment")
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise NotFoundError(f"no deployment with id {deployment_id}", id=deployment_id)
    return row


def build_for(runtime: Runtime, device: Device, now: datetime) -> BuiltCertificate:
    """A new certificate for ``device`` under the policy that applies to it (not yet recorded).

    Raises:
        IssuanceError / CAError: the certificate cannot be issued. PolicyError: no policy applies.
    """
    identity, policy = phone_policy(runtime.policies, device, device.policy_name)
    return build_certificate(identity, policy, runtime.issuer(), now)


def refresh_crl_quietly(runtime: Runtime) -> int | None:
    """Re-sign the CRL after a committed revocation; a failure is logged (``GET /ca/crl`` retries lazily)."""
    try:
        return refresh_crl(runtime).meta.number
    except CertmgrError as exc:
        log.warning("CRL not refreshed after a revocation: %s", exc.message)
        return None


__all__ = [
    "LIVE_CERTS",
    "build_for",
    "get_deployment",
    "get_device",
    "lock_certificate",
    "refresh_crl_quietly",
    "transaction",
]
