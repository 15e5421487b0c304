"""Append-only audit log in the database, hash-chained (see :mod:`certmgr.audit.chain`).

``append_event`` runs inside the caller's transaction, so the event commits or rolls back together with the
change it records. The chain head lives in the one-row ``audit_head`` table; updating it first serialises
concurrent writers (a row lock on PostgreSQL, the write lock on SQLite), so two transactions can never chain
onto the same predecessor, and rolled-back transactions leave no gap in the sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, col

from certmgr.audit.chain import (
    GENESIS_HASH,
    ChainedEvent,
    ChainVerdict,
    StoredEvent,
    event_hash,
    verify_chain,
)
from certmgr.clock import ensure_utc
from certmgr.db.models import AuditEvent, AuditHead

HEAD_ID = 1
SECRET_KEYS = frozenset({"password", "passphrase", "pkcs12", "private_key", "key", "token", "secret"})


def _scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    """Drop values whose key names a secret: the audit log never holds key material or passwords."""
    return {k: ("[redacted]" if k.lower() in SECRET_KEYS else v) for k, v in details.items()}


def append_event(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject_type: str = "",
    subject_id: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction and return it (flushed, not committed)."""
    at = ensure_utc(at)
    head = session.execute(
        update(AuditHead)
        .where(col(AuditHead.id) == HEAD_ID)
        .values(seq=col(AuditHead.seq) + 1)
        .returning(col(AuditHead.seq), col(AuditHead.hash))
    ).one_or_none()
    if head is None:
        session.add(AuditHead(id=HEAD_ID, seq=1, hash=GENESIS_HASH))
        session.flush()
        seq, prev_hash = 1, GENESIS_HASH
    else:
        seq, prev_hash = int(head[0]), str(head[1])
    chained = ChainedEvent(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        details=_scrub(details or {}),
    )
    digest = event_hash(prev_hash, chained)
    event = AuditEvent(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        details=dict(chained.details),
        prev_hash=prev_hash,
        hash=digest,
    )
    session.add(event)
    session.execute(update(AuditHead).where(col(AuditHead.id) == HEAD_ID).values(hash=digest))
    session.flush()
    return event


def _stored(rows: Iterator[AuditEvent]) -> Iterator[StoredEvent]:
    for row in rows:
        yield StoredEvent(
            event=ChainedEvent(
                seq=row.seq,
                at=row.at,
                actor=row.actor,
                action=row.action,
                subject_type=row.subject_type or "",
                subject_id=row.subject_id or "",
                details=row.details,
            ),
            prev_hash=row.prev_hash,
            hash=row.hash,
        )


def verify_log(session: Session, batch: int = 5000) -> ChainVerdict:
    """Verify the whole stored chain against its recorded head, streaming in batches."""
    head = session.get(AuditHead, HEAD_ID)
    expected = (head.seq, head.hash) if head is not None else (0, GENESIS_HASH)

    def rows() -> Iterator[AuditEvent]:
        last = 0
        while True:
            chunk = list(
                session.execute(
                    select(AuditEvent).where(col(AuditEvent.seq) > last).order_by(col(AuditEvent.seq)).limit(batch)
                ).scalars()
            )
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].seq

    return verify_chain(_stored(rows()), expected_head=expected)
