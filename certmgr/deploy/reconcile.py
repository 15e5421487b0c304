"""Reconcile: every approved phone with a known IP should have a valid certificate for that IP, either active
or pending deployment. Idempotent; called on every dispatcher tick.

Issuing is split in three steps so that slow key generation never runs inside a transaction: (1) a short
read transaction picks candidates, (2) keys and certificates are built with no transaction open, (3) one
short transaction per phone runs :func:`issue_and_queue`. Work per call is bounded (``scan`` devices looked
at, ``issue`` certificates built).

:func:`issue_and_queue` is the one place where a new certificate is recorded and its deployment queued — the
reconciler, the renewal reconcile (:mod:`certmgr.renewal.service`) and the API actions
(:mod:`certmgr.deploy.actions`) all call it. It first locks the device row
(:func:`~certmgr.scheduling.locks.claim_device`), so two nodes (or two API requests) never both issue for one
phone: the second one's re-check, run under that lock, sees the first one's certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    Enrollment,
    IssueReason,
)
from certmgr.deploy.states import UNFINISHED_STATES, check_transition
from certmgr.errors import CertmgrError
from certmgr.identity import DeviceIdentity, parse_ip
from certmgr.issuance.service import BuiltCertificate, build_certificate, record_certificate
from certmgr.pki.keys import PrivateKey
from certmgr.policy import Policy
from certmgr.scheduling.locks import claim_device

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

ACTOR = "reconcile"


@dataclass(frozen=True)
class _Candidate:
    device_id: int
    mac: str
    ip: str
    reason: IssueReason
    identity: DeviceIdentity
    policy_name: str | None


def _covers(cert: Certificate, ip: str, now: datetime) -> bool:
    return cert.not_after > now and f"IP:{parse_ip(ip)}" in cert.sans


def needs_certificate(session: Session, device: Device, now: datetime) -> IssueReason | None:
    """Why ``device`` needs a new certificate, or ``None`` if an active or pending one covers its IP."""
    if device.ip is None or device.enrollment is not Enrollment.APPROVED:
        return None
    certs = session.exec(
        select(Certificate).where(
            col(Certificate.device_id) == device.id,
            col(Certificate.status).in_([CertificateStatus.ACTIVE.value, CertificateStatus.PENDING.value]),
        )
    ).all()
    if any(_covers(c, device.ip, now) for c in certs):
        return None
    if not certs:
        return IssueReason.ENROLLMENT
    if any(c.not_after > now for c in certs):
        return IssueReason.IP_CHANGE
    return IssueReason.RENEWAL


class Reconciler:
    """Keeps a cursor so that successive calls walk the whole device table in bounded slices."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._cursor = 0
        self._urgent: set[str] = set()

    def mark(self, mac: str) -> None:
        """Look at ``mac`` first on the next call (a new phone, an IP change, an approval)."""
        self._urgent.add(mac)

    def run(self, now: datetime) -> int:
        """One bounded pass; returns the number of deployments created.

        Raises:
            DatabaseError: if the database cannot be reached. (Issuance problems of one phone are audited and
            skipped, not raised.)
        """
        settings = self._runtime.settings
        candidates = self._candidates(now, settings.reconcile_scan_batch, settings.reconcile_issue_batch)
        created = 0
        policies: dict[str, Policy] = {}
        for cand in candidates:
            try:
                policies[cand.mac] = self._policy(cand)
            except CertmgrError:
                continue  # reported by _build below
        # Key generation dominates issuance: do the whole batch at once, on every core.
        keys = dict(zip(policies, self._runtime.generate_keys([p.key_type for p in policies.values()]), strict=True))
        for cand in candidates:
            try:
                built = self._build(cand, now, keys.get(cand.mac))
            except CertmgrError as exc:
                with session_scope(self._runtime.engine) as session:
                    append_events(
                        session,
                        now,
                        [NewEvent(ACTOR, "certificate.issue-failed", "device", cand.mac, {"reason": exc.message})],
                    )
                continue
            if self._record(cand, built, now):
                created += 1
        return created

    def _candidates(self, now: datetime, scan: int, issue: int) -> list[_Candidate]:
        found: list[_Candidate] = []
        with session_scope(self._runtime.engine) as session:
            devices: list[Device] = []
            if self._urgent:
                urgent = list(self._urgent)[:scan]
                self._urgent.difference_update(urgent)
                devices.extend(session.exec(select(Device).where(col(Device.mac).in_(urgent))).all())
            batch = list(
                session.exec(
                    select(Device)
                    .where(
                        col(Device.id) > self._cursor,
                        col(Device.enrollment) == Enrollment.APPROVED.value,
                        col(Device.ip).is_not(None),
                    )
                    .order_by(col(Device.id))
                    .limit(scan)
                ).all()
            )
            self._cursor = (batch[-1].id or 0) if len(batch) == scan else 0
            devices.extend(batch)
            seen: set[int] = set()
            for device in devices:
                if device.id is None or device.id in seen or device.ip is None:
                    continue
                seen.add(device.id)
                reason = needs_certificate(session, device, now)
                if reason is None:
                    continue
                identity = DeviceIdentity(
                    mac=device.mac,
                    ips=(parse_ip(device.ip),),
                    dns_names=tuple(device.dns_names),
                    e164=device.e164,
                    model=device.device_type,
                    firmware=device.software_version,
                    hostname=device.hostname,
                )
                found.append(_Candidate(device.id, device.mac, device.ip, reason, identity, device.policy_name))
                if len(found) >= issue:
                    break
        return found

    def _policy(self, cand: _Candidate) -> Policy:
        runtime = self._runtime
        return runtime.policies.get(cand.policy_name) if cand.policy_name else runtime.policies.select(cand.identity)

    def _build(self, cand: _Candidate, now: datetime, key: PrivateKey | None = None) -> BuiltCertificate:
        return build_certificate(cand.identity, self._policy(cand), self._runtime.issuer(), now, key=key)

    def _record(self, cand: _Candidate, built: BuiltCertificate, now: datetime) -> bool:
        def still_needed(session: Session, device: Device) -> bool:
            return device.ip == cand.ip and needs_certificate(session, device, now) is not None

        with session_scope(self._runtime.engine) as session:
            queued = issue_and_queue(
                session,
                self._runtime,
                cand.device_id,
                built,
                reason=cand.reason,
                actor=ACTOR,
                now=now,
                still_needed=still_needed,
            )
            return queued is not None


# --- the one recording step -----------------------------------------------------------------------------------
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

    In order: lock the device row (:func:`~certmgr.scheduling.locks.claim_device`), reload the phone and ask
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
        dep.state = check_transition(dep.state, DeploymentState.SUPERSEDED)
        dep.finished_at = dep.updated_at = now
        dep.last_error = why
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
