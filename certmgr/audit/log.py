"""Append-only audit log in the database, hash-chained (see :mod:`certmgr.audit.chain`).

``append_event`` runs inside the caller's transaction, so the event commits or rolls back together with the
change it records; once it commits, it is told in the service log (:mod:`certmgr.audit.story`). The chain head
lives in the one-row ``audit_head`` table; updating it first serialises concurrent writers (a row lock on
PostgreSQL, the write lock on SQLite), so two transactions can never chain onto the same predecessor, and
rolled-back transactions leave no gap in the sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, bindparam, event, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from certmgr.audit.chain import (
    GENESIS_HASH,
    ChainedEvent,
    ChainVerdict,
    StoredEvent,
    event_hash,
    verify_chain,
)
from certmgr.audit.story import Told, remember
from certmgr.clock import ensure_utc
from certmgr.db.engine import mark_written
from certmgr.db.models import AuditEvent, AuditHead

HEAD_ID = 1
_HEAD = AuditHead.__table__  # type: ignore[attr-defined]
#: The chain writer's statements, built once (building them took as long as running them, five times a delivery).
_ADVANCE = (
    update(_HEAD)
    .where(_HEAD.c.id == HEAD_ID)
    .values(seq=_HEAD.c.seq + bindparam("n"))
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_SET_HASH = update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(hash=bindparam("new_hash"))
_INSERT_EVENTS = insert(AuditEvent.__table__)  # type: ignore[attr-defined]
SECRET_KEYS = frozenset({"password", "passphrase", "pkcs12", "private_key", "key", "token", "secret"})


def _scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    """Drop values whose key names a secret: the audit log never holds key material or passwords."""
    return {k: ("[redacted]" if k.lower() in SECRET_KEYS else v) for k, v in details.items()}


@dataclass(frozen=True)
class NewEvent:
    """One event to append (see :func:`append_events`)."""

    actor: str
    action: str
    subject_type: str = ""
    subject_id: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def append_event(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject_type: str = "",
    subject_id: str = "",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append one event to the chain in the caller's transaction (see :func:`append_events`)."""
    append_events(session, at, [NewEvent(actor, action, subject_type, subject_id, details or {})])


_PENDING = "certmgr.audit.pending"


def append_events(session: Session, at: datetime, events: Sequence[NewEvent]) -> None:
    """Append ``events`` in order to the chain, in the caller's transaction: they are written when it commits,
    with the change they record (and not at all if it rolls back).

    They are written at commit — after every other change of the transaction — so that the chain head's row lock,
    which serialises all chain writers, is always the *last* lock a transaction takes: two transactions can never
    hold it and a device or deployment row in opposite orders (a deadlock on PostgreSQL).
    """
    if events:
        session.connection()  # the transaction begins here, so that its rollback (which drops these) is seen
        session.info.setdefault(_PENDING, []).append((ensure_utc(at), list(events)))


@event.listens_for(Session, "before_commit")
def write_pending(session: Session) -> None:
    """Chain the events appended in ``session`` so far onto the head now (done at commit by itself)."""
    batches: list[tuple[datetime, list[NewEvent]]] = session.info.pop(_PENDING, [])
    if batches:
        session.flush()  # every other change of the transaction first: the head's lock is the last one it takes
        _write(session, batches)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous: Any) -> None:
    if not session.in_transaction():  # the whole transaction was rolled back (not a savepoint)
        session.info.pop(_PENDING, None)


def _write(session: Session, batches: Sequence[tuple[datetime, Sequence[NewEvent]]]) -> None:
    """Chain ``batches`` onto the head with one head update (which takes the lock that serialises chain writers).

    The three statements run on the transaction's connection as plain SQL, not through the ORM (whose bulk
    statement handling cost about as much as the statements themselves, five times per delivery); a head row the
    session holds is expired so that it is read again."""
    n = sum(len(events) for _at, events in batches)
    head = _advance_head(session, n)
    if head is None:
        # First event ever: create the head row. ON CONFLICT DO NOTHING waits for (and then yields to) a
        # concurrent first writer instead of failing on the primary key; then advance the head as usual.
        session.execute(_insert_head_if_missing(session))
        head = _advance_head(session, n)
        assert head is not None
    seq, prev_hash = head[0] - n + 1, head[1]
    rows: list[dict[str, Any]] = []
    for at, events in batches:
        for new in events:
            chained = ChainedEvent(
                seq=seq,
                at=at,
                actor=new.actor,
                action=new.action,
                subject_type=new.subject_type,
                subject_id=new.subject_id,
                details=_scrub(new.details),
            )
            digest = event_hash(prev_hash, chained)
            rows.append(
                {
                    "seq": chained.seq,
                    "at": at,
                    "actor": new.actor,
                    "action": new.action,
                    "subject_type": new.subject_type,
                    "subject_id": new.subject_id,
                    "details": dict(chained.details),
                    "prev_hash": prev_hash,
                    "hash": digest,
                }
            )
            prev_hash = digest
            seq += 1
    conn = session.connection()
    mark_written(session)  # plain statements: the session does not see these writes by itself
    conn.execute(_INSERT_EVENTS, rows)
    conn.execute(_SET_HASH, {"new_hash": prev_hash})
    held = session.identity_map.get(Session.identity_key(AuditHead, HEAD_ID))
    if held is not None:
        session.expire(held)
    remember(session, [Told(r["actor"], r["action"], r["subject_id"], r["details"]) for r in rows])


def _advance_head(session: Session, n: int) -> tuple[int, str] | None:
    """``seq += n`` on the head row (taking its lock); (new seq, previous hash), or None if there is no head."""
    row = session.connection().execute(_ADVANCE, {"n": n}).one_or_none()
    return None if row is None else (int(row[0]), str(row[1]))


def _insert_head_if_missing(session: Session) -> Executable:
    """``INSERT`` of the empty head (seq 0) with ``ON CONFLICT DO NOTHING`` in the session's dialect."""
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(AuditHead).values(id=HEAD_ID, seq=0, hash=GENESIS_HASH).on_conflict_do_nothing()


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


def verify_log(session: Session, batch: int = 5000, *, upto: tuple[int, str] | None = None) -> ChainVerdict:
    """Verify the whole stored chain against its recorded head, streaming in batches.

    With ``upto`` = (seq, hash), verify only the events up to ``seq`` and that the chain ends there in ``hash``
    (a head recorded elsewhere, e.g. in a report manifest): an event changed, removed or inserted before it
    breaks the verdict.
    """
    write_pending(session)  # what this transaction appended so far is part of the chain it verifies
    if upto is None:
        head = session.get(AuditHead, HEAD_ID)
        expected = (head.seq, head.hash) if head is not None else (0, GENESIS_HASH)
    else:
        expected = upto

    def rows() -> Iterator[AuditEvent]:
        last = 0
        while True:
            query = select(AuditEvent).where(col(AuditEvent.seq) > last)
            if upto is not None:
                query = query.where(col(AuditEvent.seq) <= upto[0])
            chunk = list(session.execute(query.order_by(col(AuditEvent.seq)).limit(batch)).scalars())
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].seq

    return verify_chain(_stored(rows()), expected_head=expected)
