"""Revocation: mark certificates revoked (in the caller's transaction) and keep the published CRL current.

The CRL lists every certificate of the current issuing CA whose status is ``revoked`` and that has not expired
at thisUpdate. :func:`refresh_crl` re-signs it (next CRL number) when the revoked set changed, the issuing CA
changed, or nextUpdate is within ``crl_refresh_before_hours``; otherwise it returns the stored one. The API
calls it after a revocation and lazily on ``GET /api/v1/ca/crl``; the scheduler may call it periodically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_event
from certmgr.db.deployments import UNFINISHED_STATES, move
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, CertificateStatus, Deployment, DeploymentState
from certmgr.errors import ConflictError
from certmgr.pki.crl import CRLStore, RevocationReason, RevokedEntry, StoredCRL, entries_digest, parse_serial

if TYPE_CHECKING:
    from certmgr.runtime import Runtime
    from certmgr.settings import Settings

ACTOR = "crl"
CRL_DIR_NAME = "crl"

__all__ = [
    "CRL_DIR_NAME",
    "CRLStatus",
    "crl_status",
    "crl_store",
    "refresh_crl",
    "revoke_in_session",
    "revoked_entries",
]


def crl_store(settings: Settings) -> CRLStore:
    """The CRL store of the data dir (``<data_dir>/crl``)."""
    return CRLStore(settings.data_dir / CRL_DIR_NAME)


def _reason(value: str | None) -> RevocationReason:
    try:
        return RevocationReason(value or RevocationReason.UNSPECIFIED.value)
    except ValueError:
        return RevocationReason.UNSPECIFIED


def revoked_entries(session: Session, issuer_fingerprint: str, now: datetime) -> list[RevokedEntry]:
    """The revoked, unexpired certificates issued by ``issuer_fingerprint``, as CRL entries."""
    rows = session.exec(
        select(Certificate.serial, Certificate.revoked_at, Certificate.revocation_reason, Certificate.created_at)
        .where(
            col(Certificate.status) == CertificateStatus.REVOKED.value,
            col(Certificate.issuer_fingerprint) == issuer_fingerprint,
            col(Certificate.not_after) > now,
        )
        .order_by(col(Certificate.id))
    ).all()
    return [
        RevokedEntry(parse_serial(serial), revoked_at or created_at, _reason(reason))
        for serial, revoked_at, reason, created_at in rows
    ]


def revoke_in_session(
    session: Session, cert: Certificate, reason: RevocationReason, now: datetime, actor: str, *, mac: str
) -> list[NewEvent]:
    """Revoke ``cert`` and cancel the unfinished deployments that carry it; returns the audit events (the caller
    appends them in the same transaction and refreshes the CRL after the commit).

    Raises:
        ConflictError: if ``cert`` is already revoked or has expired.
    """
    if cert.status is CertificateStatus.REVOKED:
        raise ConflictError(f"certificate {cert.serial} is already revoked", serial=cert.serial)
    if cert.status is CertificateStatus.EXPIRED or cert.not_after <= now:
        raise ConflictError(f"certificate {cert.serial} has expired; there is nothing to revoke", serial=cert.serial)
    previous = cert.status
    cert.status = CertificateStatus.REVOKED
    cert.revoked_at = now
    cert.revocation_reason = reason.value
    session.add(cert)
    events = [
        NewEvent(
            actor,
            "certificate.revoked",
            "certificate",
            cert.serial,
            {"mac": mac, "serial": cert.serial, "reason": reason.value, "previous_status": previous.value},
        )
    ]
    deployments = session.exec(
        select(Deployment).where(
            col(Deployment.certificate_id) == cert.id,
            col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]),
        )
    ).all()
    for dep in deployments:
        move(dep, DeploymentState.CANCELLED, now, error="certificate revoked")
        session.add(dep)
        events.append(
            NewEvent(
                actor, "deployment.cancelled", "deployment", str(dep.id), {"mac": mac, "reason": "certificate revoked"}
            )
        )
    return events


def refresh_crl(runtime: Runtime, *, force: bool = False) -> StoredCRL:
    """The current CRL, re-signed first if it is missing, stale, by another issuing CA, or lists other
    revocations than the database (or always, with ``force``). A new CRL is audited as ``crl.published``.

    Raises:
        CANotInitialisedError / CAPassphraseError / CACorruptError: if the issuing CA cannot sign.
        StorageError: if the CRL cannot be written. DatabaseError: if the database cannot be read.
    """
    settings = runtime.settings
    issuer_fp = runtime.ca_info().issuing_fingerprint_sha256
    validity = timedelta(hours=settings.crl_validity_hours)
    refresh_before = min(timedelta(hours=settings.crl_refresh_before_hours), validity / 2)
    store = crl_store(settings)
    with store.locked():
        now = runtime.clock.now()
        with session_scope(runtime.engine) as session:
            entries = revoked_entries(session, issuer_fp, now)
        stored = store.load()
        if (
            not force
            and stored is not None
            and stored.meta.is_current(
                issuer_fingerprint=issuer_fp, digest=entries_digest(entries), now=now, refresh_before=refresh_before
            )
        ):
            return stored
        issuer = runtime.issuer()
        fresh = store.publish(issuer.cert, issuer.key, entries, now=now, validity=validity)
        with session_scope(runtime.engine) as session:
            append_event(
                session,
                at=now,
                actor=ACTOR,
                action="crl.published",
                subject_type="crl",
                subject_id=str(fresh.meta.number),
                details={
                    "number": fresh.meta.number,
                    "entries": fresh.meta.entries,
                    "next_update": fresh.meta.next_update.isoformat(),
                    "issuer_fingerprint": issuer_fp,
                },
            )
        return fresh


@dataclass(frozen=True)
class CRLStatus:
    """The published CRL in brief (for ``GET /api/v1/ca/status``)."""

    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    issuer_fingerprint: str


def crl_status(settings: Settings) -> CRLStatus | None:
    """The stored CRL's metadata, or ``None`` if none was published yet (never signs anything).

    Raises:
        CACorruptError / StorageError: if the stored CRL is unreadable.
    """
    stored = crl_store(settings).load()
    if stored is None:
        return None
    m = stored.meta
    return CRLStatus(m.number, m.this_update, m.next_update, m.entries, m.issuer_fingerprint)
