"""Reconcile: every approved phone with a known IP should have a valid certificate for that IP, either active
or pending deployment. Idempotent; called on every dispatcher tick.

Issuing is split in three steps so that slow key generation never runs inside a transaction: (1) a short
read transaction picks candidates, (2) keys and certificates are built with no transaction open, (3) one
short transaction per phone runs :func:`issue_and_queue`. Work per call is bounded (``scan`` devices looked
at, ``issue`` certificates built).

:func:`certmgr.deploy.queue.issue_and_queue` is the one place where a new certificate is recorded and its
deployment queued — the reconciler, the renewal reconcile (:mod:`certmgr.renewal.service`) and the operator
actions (:mod:`certmgr.operations`) all call it. It first locks the device row
(:func:`~certmgr.db.locks.claim_device`), so two nodes (or two API requests) never both issue for one
phone: the second one's re-check, run under that lock, sees the first one's certificate. So that two nodes do not
both *build* a certificate (and generate its key) only for one of them to be thrown away, a run claims each
candidate (:func:`~certmgr.db.locks.work_claims`) until it has recorded it; other nodes skip claimed phones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.locks import work_claims
from certmgr.db.models import Certificate, CertificateStatus, Device, Enrollment, IssueReason
from certmgr.deploy.queue import issue_and_queue
from certmgr.errors import CertmgrError
from certmgr.identity import DeviceIdentity, parse_ip
from certmgr.inventory.phones import identity_of, policy_for
from certmgr.issuance.service import BuiltCertificate, build_certificate
from certmgr.pki.keys import PrivateKey
from certmgr.policy import Policy

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


_HELD = (CertificateStatus.ACTIVE.value, CertificateStatus.PENDING.value)


@dataclass(frozen=True)
class HeldCertificate:
    """What the rule needs of one of a phone's active or pending certificates."""

    not_after: datetime
    sans: Sequence[str]


def issue_reason(ip: str, held: Sequence[HeldCertificate], now: datetime) -> IssueReason | None:
    """Why an approved phone at ``ip`` that holds the active/pending certificates ``held`` needs a new one, or
    ``None`` if one of them is unexpired and names ``ip``. Pure: the one home of the rule, for one phone
    (:func:`needs_certificate`) and for a slice of the fleet (:meth:`Reconciler.run`, one query per slice)."""
    san = f"IP:{parse_ip(ip)}"
    if any(c.not_after > now and san in c.sans for c in held):
        return None
    if not held:
        return IssueReason.ENROLLMENT
    if any(c.not_after > now for c in held):
        return IssueReason.IP_CHANGE
    return IssueReason.RENEWAL


def needs_certificate(session: Session, device: Device, now: datetime) -> IssueReason | None:
    """Why ``device`` needs a new certificate, or ``None`` if an active or pending one covers its IP."""
    if device.ip is None or device.enrollment is not Enrollment.APPROVED:
        return None
    rows = session.exec(
        select(Certificate.not_after, Certificate.sans).where(
            col(Certificate.device_id) == device.id, col(Certificate.status).in_(_HELD)
        )
    ).all()
    return issue_reason(device.ip, [HeldCertificate(not_after, sans) for not_after, sans in rows], now)


def _needing(session: Session, devices: Sequence[tuple[int, str]], now: datetime) -> list[int]:
    """The ids of ``devices`` (id, ip; approved) that need a certificate: one query for the whole slice."""
    held: dict[int, list[HeldCertificate]] = {device_id: [] for device_id, _ip in devices}
    if not held:
        return []
    rows = session.exec(
        select(Certificate.device_id, Certificate.not_after, Certificate.sans).where(
            col(Certificate.device_id).in_(list(held)), col(Certificate.status).in_(_HELD)
        )
    ).all()
    for device_id, not_after, sans in rows:
        held[device_id].append(HeldCertificate(not_after, sans))
    return [device_id for device_id, ip in devices if issue_reason(ip, held[device_id], now) is not None]


class Reconciler:
    """Keeps a cursor so that successive calls walk the whole device table in bounded slices."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._cursor = 0
        self._urgent: dict[str, None] = {}  # the phones marked, in the order they were marked (first looked at first)

    def mark(self, mac: str) -> None:
        """Look at ``mac`` first on the next call (a new phone, an IP change, an approval)."""
        self._urgent[mac] = None

    @property
    def marked(self) -> int:
        """How many marked phones the next calls have yet to look at (at most ``reconcile_scan_batch`` a call)."""
        return len(self._urgent)

    def run(self, now: datetime) -> int:
        """One bounded pass; returns the number of deployments created.

        Raises:
            DatabaseError: if the database cannot be reached. (Issuance problems of one phone are audited and
            skipped, not raised.)
        """
        settings = self._runtime.settings
        with work_claims(self._runtime.engine, "issue") as claim:
            candidates = self._candidates(now, settings.reconcile_scan_batch, settings.reconcile_issue_batch, claim)
            return self._issue(candidates, now)

    def _issue(self, candidates: list[_Candidate], now: datetime) -> int:
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

    def _candidates(self, now: datetime, scan: int, issue: int, claim: Callable[[str], bool]) -> list[_Candidate]:
        """The next slice of the device table (and the phones marked urgent), checked with one certificates query
        (light rows, no ORM objects); only the phones that need a certificate are loaded whole."""
        found: list[_Candidate] = []
        approved = (col(Device.enrollment) == Enrollment.APPROVED.value, col(Device.ip).is_not(None))
        with session_scope(self._runtime.engine) as session:
            rows: list[tuple[int | None, str | None]] = []
            if self._urgent:
                urgent = list(self._urgent)[:scan]
                for mac in urgent:
                    del self._urgent[mac]
                rows.extend(
                    session.exec(select(col(Device.id), col(Device.ip)).where(col(Device.mac).in_(urgent), *approved))
                )
            batch = list(
                session.exec(
                    select(col(Device.id), col(Device.ip))
                    .where(col(Device.id) > self._cursor, *approved)
                    .order_by(col(Device.id))
                    .limit(scan)
                )
            )
            self._cursor = (batch[-1][0] or 0) if len(batch) == scan else 0
            rows.extend(batch)
            slice_: dict[int, str] = {}
            for device_id, ip in rows:
                if device_id is not None and ip is not None:
                    slice_.setdefault(device_id, ip)
            for device_id in _needing(session, list(slice_.items()), now):
                if not claim(str(device_id)):
                    continue  # another node is building this phone's certificate right now
                device = session.get(Device, device_id)
                # Looked at again now that it is ours: another node may have recorded one just before.
                reason = needs_certificate(session, device, now) if device is not None else None
                if device is None or device.ip is None or reason is None:
                    continue
                identity = identity_of(device)
                found.append(_Candidate(device_id, device.mac, device.ip, reason, identity, device.policy_name))
                if len(found) >= issue:
                    break
        return found

    def _policy(self, cand: _Candidate) -> Policy:
        return policy_for(self._runtime.policies, cand.policy_name, cand.identity).policy

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
