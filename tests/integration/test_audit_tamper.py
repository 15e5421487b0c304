"""Audit tampering, column by column and row by row, on SQLite and PostgreSQL: ``certmgr audit verify`` (exit 1)
and ``GET /api/v1/audit/verify`` both name the first bad event.

* every hashed column of one event changed: seq, at, actor, action, subject_type, subject_id, details,
  prev_hash, hash;
* an event deleted, a forged event inserted (between two, and beyond the head), two events reordered;
* a rewound head: the head row set back to an earlier (seq, hash), the later events deleted together with the
  checkpoints that signed them (the foreign key leaves a forger no other way) — only a signed checkpoint kept
  outside the database can tell; and a rewound-then-regrown chain of the same length, rehashed.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, insert, select, update
from sqlmodel import Session, col

from certmgr.audit.chain import ChainedEvent, event_hash
from certmgr.audit.checkpoint import create_checkpoint, runtime_signer
from certmgr.audit.log import append_event
from certmgr.cli.main import main
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditCheckpoint, AuditEvent, AuditHead
from certmgr.runtime import Runtime
from tests.conftest import T0
from tests.integration.test_api_support import auth, ca_template, client, rt, tokens  # noqa: F401 - fixtures

#: Events appended by each test after the fixture's own (CA registration, token creations).
N = 6


def _append(rt: Runtime, n: int) -> None:
    for i in range(n):
        with session_scope(rt.engine) as s:
            append_event(
                s,
                at=T0 + timedelta(seconds=i),
                actor="test",
                action="thing.done",
                subject_type="thing",
                subject_id=f"t{i}",
                details={"i": i},
            )


def _head(rt: Runtime) -> tuple[int, str]:
    with Session(rt.engine) as s:
        head = s.get(AuditHead, 1)
        assert head is not None
        return head.seq, head.hash


def _row(s: Session, seq: int) -> AuditEvent:
    row: AuditEvent = s.execute(select(AuditEvent).where(col(AuditEvent.seq) == seq)).scalar_one()
    return row


def _verdicts(client: TestClient, token: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict[str, object]]:
    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify"])
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else 1
    r = client.get("/api/v1/audit/verify", headers=auth(token))
    assert r.status_code == 200
    return code, out.out + out.err, r.json()


def _set(column: str, value: Callable[[AuditEvent], object]) -> Callable[[Runtime, int], int]:
    def tamper(rt: Runtime, k: int) -> int:
        with session_scope(rt.engine) as s:
            row = _row(s, k)
            s.execute(update(AuditEvent).where(col(AuditEvent.id) == row.id).values({column: value(row)}))
        return k

    return tamper


def _delete(rt: Runtime, k: int) -> int:
    with session_scope(rt.engine) as s:
        s.execute(delete(AuditEvent).where(col(AuditEvent.seq) == k))
    return k


def _reorder(rt: Runtime, k: int) -> int:
    """Events k and k+1 swap places (their seq values), each keeping its content and hashes."""
    with session_scope(rt.engine) as s:
        a, b = _row(s, k), _row(s, k + 1)
        s.execute(update(AuditEvent).where(col(AuditEvent.id) == a.id).values(seq=-1))
        s.execute(update(AuditEvent).where(col(AuditEvent.id) == b.id).values(seq=k))
        s.execute(update(AuditEvent).where(col(AuditEvent.id) == a.id).values(seq=k + 1))
    return k


def _forged(prev: AuditEvent, seq: int) -> dict[str, object]:
    event = ChainedEvent(seq, prev.at, "mallory", "token.created", "token", "backdoor", {"role": "admin"})
    return {
        "seq": seq,
        "at": prev.at,
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "details": dict(event.details),
        "prev_hash": prev.hash,
        "hash": event_hash(prev.hash, event),
    }


def _insert_between(rt: Runtime, k: int) -> int:
    """A forged event slipped in at k, correctly linked to k-1; the later events renumbered to make room."""
    with session_scope(rt.engine) as s:
        top = s.execute(select(func.max(AuditEvent.seq))).scalar_one()
        for seq in range(top, k - 1, -1):
            s.execute(update(AuditEvent).where(col(AuditEvent.seq) == seq).values(seq=seq + 1))
        s.execute(insert(AuditEvent).values(**_forged(_row(s, k - 1), k)))
    return k + 1  # the forged event links; the displaced one no longer does


def _insert_beyond_head(rt: Runtime, k: int) -> int:
    """A forged event appended after the last one, correctly linked, the head row left alone."""
    with session_scope(rt.engine) as s:
        top = s.execute(select(func.max(AuditEvent.seq))).scalar_one()
        s.execute(insert(AuditEvent).values(**_forged(_row(s, top), top + 1)))
        return int(top) + 1


TAMPERS: dict[str, Callable[[Runtime, int], int]] = {
    "seq": _set("seq", lambda row: 10**9),
    "at": _set("at", lambda row: row.at + timedelta(seconds=1)),
    "actor": _set("actor", lambda row: "mallory"),
    "action": _set("action", lambda row: "thing.undone"),
    "subject_type": _set("subject_type", lambda row: "other"),
    "subject_id": _set("subject_id", lambda row: f"{row.subject_id}x"),
    "details": _set("details", lambda row: {**row.details, "i": 999}),
    "prev_hash": _set("prev_hash", lambda row: "f" * 64),
    "hash": _set("hash", lambda row: "e" * 64),
    "delete": _delete,
    "insert-between": _insert_between,
    "insert-beyond-head": _insert_beyond_head,
    "reorder": _reorder,
}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_tampering_names_the_first_bad_event(
    how: str, rt: Runtime, client: TestClient, tokens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Pins ``certmgr.audit.chain.verify_chain`` (the hash over every column, the links, the sequence, the
    recorded head) as ``certmgr audit verify`` and the verify API report it."""
    base, _ = _head(rt)
    _append(rt, N)
    with session_scope(rt.engine) as s:  # a signed checkpoint at the head, as the scheduler makes them
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is not None
    code, output, body = _verdicts(client, tokens["viewer"], capsys)
    assert (code, body["ok"]) == (0, True), output

    bad = TAMPERS[how](rt, base + 3)

    code, output, body = _verdicts(client, tokens["viewer"], capsys)
    assert code == 1
    assert f"BROKEN at event {bad}:" in output
    assert body["ok"] is False
    assert body["first_bad_seq"] == bad
    assert body["reason"]


def _rewind(rt: Runtime, to: int) -> None:
    """What a forger with write access to the database does to make the newest events disappear: delete them
    and the checkpoints that signed them (the foreign key allows nothing else), set the head back."""
    with session_scope(rt.engine) as s:
        keep = _row(s, to)
        doomed = select(col(AuditEvent.id)).where(col(AuditEvent.seq) > to)
        s.execute(delete(AuditCheckpoint).where(col(AuditCheckpoint.event_id).in_(doomed)))
        s.execute(delete(AuditEvent).where(col(AuditEvent.seq) > to))
        s.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(seq=to, hash=keep.hash))


def _regrow(rt: Runtime, start: int, upto: int) -> None:
    """Forged events start+1..upto, correctly chained, and the head moved to the last one."""
    with session_scope(rt.engine) as s:
        prev = _row(s, start)
        for seq in range(start + 1, upto + 1):
            row = _forged(prev, seq)
            s.execute(insert(AuditEvent).values(**row))
            prev = _row(s, seq)
        s.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(seq=upto, hash=prev.hash))


@pytest.mark.parametrize("regrow", [False, True], ids=["rewound", "rewound-and-regrown"])
def test_rewound_head_is_detected_by_a_signed_checkpoint(
    regrow: bool, rt: Runtime, client: TestClient, tokens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Pins the signed checkpoint kept outside the database (``certmgr.audit.checkpoint``, the anchor file
    beside the audit key): after a rewind the database is self-consistent — links, head and the remaining
    checkpoints all agree — so only the anchor, signed by the audit key, tells that events are gone."""
    base, _ = _head(rt)
    _append(rt, 3)
    with session_scope(rt.engine) as s:
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is not None  # signs base + 3
    _append(rt, 3)
    with session_scope(rt.engine) as s:
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is not None  # signs base + 6
    code, output, body = _verdicts(client, tokens["viewer"], capsys)
    assert (code, body["ok"], body["checkpoints"]) == (0, True, 2), output

    _rewind(rt, base + 4)
    if regrow:
        _regrow(rt, base + 4, base + 6)  # the same length again: only the hashes differ

    code, output, body = _verdicts(client, tokens["viewer"], capsys)
    assert code == 1
    assert body["ok"] is False
    first_bad = base + 6 if regrow else base + 5
    assert body["first_bad_seq"] == first_bad
    assert f"BROKEN at event {first_bad}:" in output
    assert ("rewritten" if regrow else "rewound") in str(body["reason"])
    # ... and the service will not sign the forged state: no new checkpoint moves the anchor past the evidence.
    with session_scope(rt.engine) as s:
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is None
    assert _verdicts(client, tokens["viewer"], capsys)[2]["first_bad_seq"] == first_bad
