"""The read side of one phone's page: identity, effective policy (:func:`certmgr.inventory.phones.policy_for`),
current certificate, the **issued → written → served** proof, the timeline of its audit events, its deployments
with their (redacted) transcripts, and the certificate history with what replaced what.

Transcripts are redacted when they are recorded and hold no PKCS#12 or password; :func:`redact` checks again on
the way out (a secret-named key, a PEM block, a long base64 run), so a page can never show one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlmodel import Session, col

from certmgr.audit.log import SECRET_KEYS
from certmgr.db.deployments import UNFINISHED_STATES
from certmgr.db.models import (
    AuditEvent,
    CARecord,
    Certificate,
    CertificateStatus,
    CheckProbe,
    Deployment,
    DeploymentState,
    Device,
    Enrollment,
)
from certmgr.errors import CertmgrError, InputError, NotFoundError
from certmgr.identity import normalize_mac
from certmgr.inventory.enrollment import awaits_approval, held_move, phone_by_mac
from certmgr.inventory.phones import PolicyChoice, identity_of, policy_for
from certmgr.policy import PolicySet

HISTORY_LIMIT = 100
DEPLOYMENTS_LIMIT = 50
TIMELINE_LIMIT = 200
REDACTED = "[redacted]"
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=_-]{120,}")
_SECRETISH = ("password", "passphrase", "pkcs12", "p12", "private", "secret", "token")


def _secret_key(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_KEYS or any(word in lowered for word in _SECRETISH)


def redact(value: Any) -> Any:
    """``value`` (a transcript entry, or anything JSON) with every secret-looking part replaced by
    ``[redacted]``: values under a secret-named key (password, pkcs12, key, …), PEM blocks and base64 runs of 120+
    characters (a PKCS#12 or key would be one)."""
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and (_PEM.search(value) or _BASE64_RUN.search(value)):
        return REDACTED
    return value


@dataclass(frozen=True)
class TranscriptLine:
    """One transcript entry as people read it: when (full and short), direction, and what."""

    at: str
    short: str
    direction: str
    text: str


def _item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    status = item.get("status")
    return f"{item.get('name', '?')}" + (f" ({status})" if status else "")


def transcript_lines(entries: Any) -> list[TranscriptLine]:
    """A deployment's transcript (redacted by :func:`redact` first), oldest first, one line per entry: message
    kind, reason/action/status, item names, probe verdicts; ``None`` values left out."""
    lines: list[TranscriptLine] = []
    for entry in redact(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            lines.append(TranscriptLine("", "", "", str(entry)))
            continue
        at = str(entry.get("at", ""))
        parts: list[str] = []
        for key, value in entry.items():
            if key in ("at", "dir") or value is None or value == "":
                continue
            if key == "items" and isinstance(value, list):
                parts.append("items: " + (", ".join(_item(i) for i in value) or "none"))
            elif key == "nonce":
                parts.append(f"nonce {str(value)[:8]}…")
            else:
                parts.append(f"{key}: {value}")
        short = at[11:23] if len(at) >= 19 and at[10] == "T" else at
        lines.append(TranscriptLine(at, short, str(entry.get("dir", "")), "; ".join(parts)))
    return sorted(lines, key=lambda line: line.at)


@dataclass(frozen=True)
class Served:
    """What the phone's WBM was last seen serving: when, the SHA-256, and how it was seen."""

    at: datetime | None
    sha256: str | None
    source: str


@dataclass
class Proof:
    """Issued → written → served for the phone's newest certificate."""

    issued: Certificate | None = None
    written: Deployment | None = None
    served: Served | None = None

    @property
    def served_matches(self) -> bool | None:
        if self.issued is None or self.served is None or self.served.sha256 is None:
            return None
        return self.served.sha256 == self.issued.fingerprint_sha256


@dataclass
class PhoneDetail:
    """Everything the phone page shows."""

    device: Device
    choice: PolicyChoice | None
    policy_problem: str | None
    current: Certificate | None
    current_issuer: str | None
    proof: Proof
    certificates: list[Certificate] = field(default_factory=list)
    replaced_by: dict[int, int] = field(default_factory=dict)
    deployments: list[Deployment] = field(default_factory=list)
    transcripts: dict[int, list[TranscriptLine]] = field(default_factory=dict)
    timeline: list[AuditEvent] = field(default_factory=list)

    @property
    def unfinished(self) -> Deployment | None:
        """The newest unfinished deployment, if any (its page section refreshes itself)."""
        return next((d for d in self.deployments if d.state in UNFINISHED_STATES), None)

    @property
    def retryable(self) -> Deployment | None:
        """The newest deployment if a retry may continue it (queued, failed or cancelled)."""
        newest = self.deployments[0] if self.deployments else None
        ok = (DeploymentState.QUEUED, DeploymentState.FAILED, DeploymentState.CANCELLED)
        return newest if newest is not None and newest.state in ok else None

    @property
    def awaiting_approval(self) -> bool:
        """Whether an operator's approval is what the phone waits for (enrollment or a held address move)."""
        return awaits_approval(self.device)

    @property
    def held_move(self) -> str | None:
        """The address a move of the phone is held to, if any (the inventory's rule)."""
        return held_move(self.device)

    @property
    def renewable(self) -> bool:
        """Whether "renew now" applies: an approved phone with a current, live certificate."""
        return (
            self.device.enrollment is Enrollment.APPROVED
            and self.current is not None
            and self.current.status in (CertificateStatus.ACTIVE, CertificateStatus.PENDING)
        )


def page_mac(mac: str) -> str:
    """The MAC a phone page's path names, normalised (no database asked).

    Raises:
        NotFoundError: if ``mac`` is not a MAC (no such page).
    """
    try:
        return normalize_mac(mac[:64])
    except InputError:
        raise NotFoundError(f"no phone with MAC {mac[:64]!r}") from None


def find_device(session: Session, mac: str) -> Device:
    """The phone with MAC ``mac`` (any spelling).

    Raises:
        NotFoundError: if ``mac`` is not a MAC or no phone has it.
    """
    return phone_by_mac(session, page_mac(mac))


def _served(session: Session, device: Device, cert: Certificate, written: Deployment | None) -> Served | None:
    """The newest sighting of what the phone serves: the probe after the write, a later probe sweep (it refreshes
    ``last_verified_at`` only when it sees the current certificate), or a drift event naming what it saw."""
    seen: list[Served] = []
    verified_at = written.verified_at if written is not None else None
    if written is not None and verified_at is not None and written.check_probe is CheckProbe.PASSED:
        seen.append(Served(verified_at, cert.fingerprint_sha256, "TLS probe after the write"))
    if (
        verified_at is not None
        and device.current_certificate_id == cert.id
        and device.last_verified_at is not None
        and device.last_verified_at > verified_at
    ):
        seen.append(Served(device.last_verified_at, cert.fingerprint_sha256, "TLS probe sweep"))
    drift = session.execute(
        select(col(AuditEvent.at), col(AuditEvent.details))
        .where(col(AuditEvent.subject_type) == "device", col(AuditEvent.subject_id) == device.mac)
        .where(col(AuditEvent.action) == "device.drift")
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).first()
    if drift is not None:
        details = drift[1] if isinstance(drift[1], dict) else {}
        other = details.get("seen_sha256")
        seen.append(Served(drift[0], other if isinstance(other, str) else None, "drift: another certificate seen"))
    if not seen and written is not None and written.check_probe is not None:
        seen.append(Served(written.updated_at, None, f"TLS probe: {written.check_probe.value}"))
    return max(seen, key=lambda s: s.at or written_floor()) if seen else None


def written_floor() -> datetime:
    """The earliest time (sorts sightings without a time first)."""
    return datetime.min.replace(tzinfo=UTC)


def phone_detail(session: Session, policies: PolicySet, device: Device) -> PhoneDetail:
    """Everything about ``device`` the phone page shows (bounded lists)."""
    assert device.id is not None
    choice: PolicyChoice | None = None
    problem: str | None = None
    try:
        choice = policy_for(policies, device.policy_name, identity_of(device))
    except CertmgrError as exc:
        problem = exc.message
    certs = list(
        session.execute(
            select(Certificate)
            .where(col(Certificate.device_id) == device.id)
            .order_by(col(Certificate.id).desc())
            .limit(HISTORY_LIMIT)
        ).scalars()
    )
    current = next((c for c in certs if c.id == device.current_certificate_id), None)
    if current is None and device.current_certificate_id is not None:
        current = session.get(Certificate, device.current_certificate_id)
    issuer = None
    if current is not None:
        issuer = session.execute(
            select(col(CARecord.subject)).where(col(CARecord.fingerprint_sha256) == current.issuer_fingerprint)
        ).scalar_one_or_none()
    deployments = list(
        session.execute(
            select(Deployment)
            .where(col(Deployment.device_id) == device.id)
            .order_by(col(Deployment.id).desc())
            .limit(DEPLOYMENTS_LIMIT)
        ).scalars()
    )
    proof = Proof()
    if certs:
        newest = certs[0]
        proof.issued = newest
        of_newest = [d for d in deployments if d.certificate_id == newest.id]
        proof.written = next((d for d in of_newest if d.written_at is not None), of_newest[0] if of_newest else None)
        proof.served = _served(session, device, newest, proof.written)
    replaced_by = {c.previous_certificate_id: c.id for c in certs if c.previous_certificate_id and c.id}
    subjects = [and_(col(AuditEvent.subject_type) == "device", col(AuditEvent.subject_id) == device.mac)]
    if deployments:
        ids = [str(d.id) for d in deployments]
        subjects.append(and_(col(AuditEvent.subject_type) == "deployment", col(AuditEvent.subject_id).in_(ids)))
    if certs:
        serials = [c.serial for c in certs]
        subjects.append(and_(col(AuditEvent.subject_type) == "certificate", col(AuditEvent.subject_id).in_(serials)))
    timeline = list(
        session.execute(
            select(AuditEvent).where(or_(*subjects)).order_by(col(AuditEvent.seq).desc()).limit(TIMELINE_LIMIT)
        ).scalars()
    )
    return PhoneDetail(
        device=device,
        choice=choice,
        policy_problem=problem,
        current=current,
        current_issuer=issuer,
        proof=proof,
        certificates=certs,
        replaced_by={k: v for k, v in replaced_by.items() if k is not None},
        deployments=deployments,
        transcripts={d.id: transcript_lines(d.transcript) for d in deployments if d.id is not None},
        timeline=timeline,
    )


__all__ = [
    "REDACTED",
    "PhoneDetail",
    "Proof",
    "Served",
    "TranscriptLine",
    "find_device",
    "page_mac",
    "phone_detail",
    "redact",
    "transcript_lines",
]
