"""What binds a report to the audit log: collected before the rows are read, stated on the report and signed in
its manifest, and checked again later by ``certmgr report verify``.

* who generated it, when and how (``cli``, ``api``, ``schedule``, ``bundle``);
* the audit chain's verification result at that moment (:func:`certmgr.audit.checkpoint.verify_audit`: every
  link, the recorded head and every signed checkpoint): intact, or the first bad event and why;
* the sequence number and hash of the last audit event the report reflects (the chain head when the report was
  started);
* the last signed checkpoint (its event, hash, time and signature), which anyone holding the audit public key
  can check.

:func:`check_against_log` is the later half: next to the database, the chain up to the recorded event must still
verify and end in the recorded hash (so an event changed, removed or inserted after the report is detected), and
the report's own ``report.exported`` event must be there, naming the report's SHA-256.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from certmgr.audit.checkpoint import AuditVerifier, checkpoint_message, encode_signature, verify_audit
from certmgr.audit.log import HEAD_ID, verify_log
from certmgr.db.models import AuditCheckpoint, AuditEvent, AuditHead
from certmgr.reports.summary import NONE, format_count, format_time

EXPORT_ACTION = "report.exported"

__all__ = ["EXPORT_ACTION", "CheckpointRef", "Evidence", "check_against_log", "collect_evidence", "verify_checkpoint"]


@dataclass(frozen=True)
class CheckpointRef:
    """A signed checkpoint: the audit key's signature over ``seq`` and ``hash`` of one event."""

    id: int
    seq: int
    hash: str
    at: datetime
    signature: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at.isoformat(),
            "signature": encode_signature(self.signature),
            "signed_message": checkpoint_message(self.seq, self.hash).decode("ascii"),
        }


@dataclass(frozen=True)
class Evidence:
    """The audit facts a report states (see the module docstring)."""

    generated_at: datetime
    generated_by: str
    via: str
    chain_ok: bool
    events_verified: int
    checkpoints_verified: int
    first_bad_seq: int | None
    bad_reason: str | None
    last_event: tuple[int, str] | None
    checkpoint: CheckpointRef | None
    audit_key_sha256: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the manifest's ``evidence``)."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "generated_by": self.generated_by,
            "via": self.via,
            "audit_chain": {
                "intact": self.chain_ok,
                "events_verified": self.events_verified,
                "checkpoints_verified": self.checkpoints_verified,
                "first_bad_seq": self.first_bad_seq,
                "reason": self.bad_reason,
            },
            "last_event": None if self.last_event is None else {"seq": self.last_event[0], "hash": self.last_event[1]},
            "last_checkpoint": None if self.checkpoint is None else self.checkpoint.as_dict(),
            "audit_key_sha256": self.audit_key_sha256,
        }

    def lines(self, tz: tzinfo) -> list[tuple[str, str]]:
        """(label, text) pairs as the PDF states them."""
        if self.chain_ok:
            chain = (
                f"intact ({format_count(self.events_verified)} events and "
                f"{format_count(self.checkpoints_verified)} signed checkpoints verified)"
            )
        else:
            chain = f"BROKEN at event {self.first_bad_seq}: {self.bad_reason}"
        last = NONE if self.last_event is None else f"#{self.last_event[0]}, SHA-256 {self.last_event[1]}"
        if self.checkpoint is None:
            checkpoint = NONE
        else:
            c = self.checkpoint
            checkpoint = f"#{c.id} over event #{c.seq} ({c.hash}), signed {format_time(c.at, tz)}"
        return [
            ("Generated", f"{format_time(self.generated_at, tz)} by {self.generated_by} (via {self.via})"),
            ("Audit log at that moment", chain),
            ("Reflects audit events up to", last),
            ("Last signed checkpoint", checkpoint),
            ("Audit key (SHA-256 of the public key)", self.audit_key_sha256 or NONE),
        ]


def _last_checkpoint(session: Session, upto: int) -> CheckpointRef | None:
    row = session.execute(
        select(
            col(AuditCheckpoint.id),
            col(AuditEvent.seq),
            col(AuditCheckpoint.event_hash),
            col(AuditCheckpoint.at),
            col(AuditCheckpoint.signature),
        )
        .join(AuditEvent, col(AuditEvent.id) == col(AuditCheckpoint.event_id))
        .where(col(AuditEvent.seq) <= upto)
        .order_by(col(AuditEvent.seq).desc(), col(AuditCheckpoint.id).desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    return CheckpointRef(int(row[0]), int(row[1]), str(row[2]), row[3], bytes(row[4]))


def collect_evidence(
    session: Session, verifier: AuditVerifier | None, *, generated_at: datetime, generated_by: str, via: str
) -> Evidence:
    """The evidence of a report started now: the chain head, the chain's verdict, the last checkpoint at or
    before the head. ``verifier`` is the audit public key (checkpoint signatures need it).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: if the database cannot be read.
    """
    head = session.get(AuditHead, HEAD_ID)
    last = None if head is None or head.seq == 0 else (int(head.seq), str(head.hash))
    verdict = verify_audit(session, verifier)
    return Evidence(
        generated_at=generated_at,
        generated_by=generated_by,
        via=via,
        chain_ok=verdict.ok,
        events_verified=verdict.checked,
        checkpoints_verified=verdict.checkpoints,
        first_bad_seq=verdict.first_bad_seq,
        bad_reason=verdict.reason,
        last_event=last,
        checkpoint=None if last is None else _last_checkpoint(session, last[0]),
        audit_key_sha256=None if verifier is None else verifier.fingerprint,
    )


def verify_checkpoint(evidence: dict[str, Any], key: AuditVerifier) -> str | None:
    """Check the signature of the checkpoint recorded in a manifest's ``evidence`` with ``key``; the problem,
    or None if it verifies (or there is no checkpoint)."""
    checkpoint = evidence.get("last_checkpoint")
    if checkpoint is None:
        return None
    try:
        seq, digest = int(checkpoint["seq"]), str(checkpoint["hash"])
        signature = base64.b64decode(str(checkpoint["signature"]), validate=True)
    except (KeyError, TypeError, ValueError, OverflowError, binascii.Error):  # OverflowError: int(1e999)
        return "evidence: the recorded checkpoint is malformed"
    if not key.verify(signature, checkpoint_message(seq, digest)):
        return f"evidence: the signature of checkpoint #{checkpoint.get('id')} does not verify"
    return None


def _recorded_head(evidence: dict[str, Any]) -> tuple[int, str] | None:
    last = evidence.get("last_event")
    if last is None:
        return None
    return int(last["seq"]), str(last["hash"])


def check_against_log(session: Session, evidence: dict[str, Any], sha256: str) -> list[str]:
    """The problems found when a report's ``evidence`` (from its verified manifest) meets today's audit log:
    the chain up to the recorded event must verify and end in the recorded hash, a recorded checkpoint's event
    must still carry the signed hash, and an audit event ``report.exported`` after it must name ``sha256``.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: if the database cannot be read.
        KeyError / TypeError / ValueError: if ``evidence`` is malformed (the manifest signature covers it).
    """
    problems: list[str] = []
    chain = evidence.get("audit_chain") or {}
    if not chain.get("intact", False):
        problems.append(
            f"the audit log was already broken when the report was made (event {chain.get('first_bad_seq')}: "
            f"{chain.get('reason')})"
        )
    head = _recorded_head(evidence)
    upto = head[0] if head is not None else 0
    if head is not None:
        verdict = verify_log(session, upto=head)
        if not verdict.ok:
            problems.append(
                f"the audit log changed after the report: up to event {head[0]} it no longer verifies "
                f"(event {verdict.first_bad_seq}: {verdict.reason})"
            )
    checkpoint = evidence.get("last_checkpoint")
    if checkpoint is not None:
        stored = session.execute(
            select(col(AuditEvent.hash)).where(col(AuditEvent.seq) == int(checkpoint["seq"]))
        ).scalar_one_or_none()
        if stored != checkpoint["hash"]:
            problems.append(
                f"the event of checkpoint #{checkpoint['id']} (#{checkpoint['seq']}) was changed or removed"
            )
    if not _generation_recorded(session, upto, sha256):
        problems.append(f"no {EXPORT_ACTION} event after event {upto} names this file's SHA-256")
    return problems


def _generation_recorded(session: Session, after: int, sha256: str, batch: int = 1000) -> bool:
    last = after
    while True:
        rows = session.execute(
            select(col(AuditEvent.seq), col(AuditEvent.details))
            .where(col(AuditEvent.seq) > last, col(AuditEvent.action) == EXPORT_ACTION)
            .order_by(col(AuditEvent.seq))
            .limit(batch)
        ).all()
        if not rows:
            return False
        if any(isinstance(details, dict) and details.get("sha256") == sha256 for _, details in rows):
            return True
        last = int(rows[-1][0])
