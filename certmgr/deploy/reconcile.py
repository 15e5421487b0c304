"""Reconcile: every approved phone with a known IP should have a valid certificate for that IP, either active
or pending deployment. Idempotent; called on every dispatcher tick.

Issuing is split in three steps so that slow key generation never runs inside a transaction: (1) a short
read transaction picks candidates, (2) keys and certificates are built with no transaction open, (3) one
short transaction per phone re-checks the phone still needs it, records the certificate (pending), supersedes
older unfinished deployments and queues a new deployment. Work per call is bounded (``scan`` devices looked
at, ``issue`` certificates built). Several nodes: the recording transaction first locks the device row
(:func:`~certmgr.scheduling.locks.claim_device`), so two nodes never both issue for one phone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

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
from certmgr.errors import CertmgrError
from certmgr.identity import DeviceIdentity, parse_ip
from certmgr.inventory.service import supersede_unfinished
from certmgr.issuance.service import BuiltCertificate, build_certificate, record_certificate
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
        for cand in candidates:
            try:
                built = self._build(cand, now)
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

    def _build(self, cand: _Candidate, now: datetime) -> BuiltCertificate:
        runtime = self._runtime
        policy = runtime.policies.get(cand.policy_name) if cand.policy_name else runtime.policies.select(cand.identity)
        return build_certificate(cand.identity, policy, runtime.issuer(), now)

    def _record(self, cand: _Candidate, built: BuiltCertificate, now: datetime) -> bool:
        runtime = self._runtime
        with session_scope(runtime.engine) as session:
            if not claim_device(session, cand.device_id):
                return False  # another node is issuing for this phone right now
            device = session.get(Device, cand.device_id)
            if device is None or device.ip != cand.ip or needs_certificate(session, device, now) is None:
                return False  # changed meanwhile; the next pass looks again
            events = supersede_unfinished(session, device, now, "new certificate")
            for old in session.exec(
                select(Certificate).where(
                    col(Certificate.device_id) == device.id,
                    col(Certificate.status) == CertificateStatus.PENDING.value,
                )
            ):
                old.status = CertificateStatus.SUPERSEDED
                session.add(old)
            cert = record_certificate(
                session, built, runtime.vault, now=now, reason=cand.reason, actor=ACTOR, device=device
            )
            assert cert.id is not None
            assert device.id is not None
            dep = Deployment(
                device_id=device.id,
                certificate_id=cert.id,
                state=DeploymentState.QUEUED,
                next_attempt_at=None,
                created_at=now,
                updated_at=now,
            )
            session.add(dep)
            session.flush()
            events.append(
                NewEvent(
                    ACTOR,
                    "deployment.created",
                    "deployment",
                    str(dep.id),
                    {"mac": device.mac, "serial": cert.serial, "reason": cand.reason.value},
                )
            )
            append_events(session, now, events)
            return True
