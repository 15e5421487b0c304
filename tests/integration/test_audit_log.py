"""The audit log in the database (SQLite and PostgreSQL): chained appends, tamper detection, concurrent writers."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, func, select, update
from sqlmodel import Session, col

from certmgr.audit.chain import GENESIS_HASH, ChainedEvent, event_hash
from certmgr.audit.log import append_event, verify_log, write_pending
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, AuditHead

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _append(engine: Engine, n: int, *, start: int = 0) -> None:
    for i in range(start, start + n):
        with session_scope(engine) as s:
            append_event(
                s,
                at=T0 + timedelta(seconds=i),
                actor="test",
                action="thing.done",
                subject_type="thing",
                subject_id=f"t{i}",
                details={"i": i, "nested": {"b": [1, 2], "a": "ü"}},
            )


def _verify(engine: Engine) -> tuple[bool, int | None, str | None, int]:
    with Session(engine) as s:
        v = verify_log(s)
    return v.ok, v.first_bad_seq, v.reason, v.checked


def _rows(engine: Engine) -> list[AuditEvent]:
    with Session(engine) as s:
        return list(s.execute(select(AuditEvent).order_by(col(AuditEvent.seq))).scalars())


def test_empty_log_verifies(engine: Engine) -> None:
    assert _verify(engine) == (True, None, None, 0)


def test_append_chains_events(engine: Engine) -> None:
    _append(engine, 5)
    rows = _rows(engine)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(rows):
        assert cur.prev_hash == prev.hash
    with Session(engine) as s:
        head = s.get(AuditHead, 1)
    assert head is not None
    assert (head.seq, head.hash) == (5, rows[-1].hash)
    assert _verify(engine) == (True, None, None, 5)


def test_append_rolls_back_with_the_transaction(engine: Engine) -> None:
    _append(engine, 2)

    def doomed() -> None:
        with session_scope(engine) as s:
            append_event(s, at=T0, actor="test", action="doomed")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        doomed()
    _append(engine, 1, start=2)
    assert [r.seq for r in _rows(engine)] == [1, 2, 3]
    assert _verify(engine)[0]


def test_secrets_in_details_are_redacted(engine: Engine) -> None:
    with session_scope(engine) as s:
        append_event(s, at=T0, actor="test", action="x", details={"password": "hunter2", "mac": "00:1A"})
    (row,) = _rows(engine)
    assert row.details == {"password": "[redacted]", "mac": "00:1A"}
    assert _verify(engine)[0]


def test_naive_timestamp_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="naive"), session_scope(engine) as s:
        append_event(s, at=datetime(2026, 1, 1), actor="test", action="x")  # noqa: DTZ001


def test_tamper_update_details(engine: Engine) -> None:
    _append(engine, 6)
    with session_scope(engine) as s:
        s.execute(update(AuditEvent).where(col(AuditEvent.seq) == 3).values(details={"i": 999}))
    ok, bad, reason, _ = _verify(engine)
    assert not ok
    assert bad == 3
    assert reason is not None
    assert "modified" in reason


def test_tamper_update_actor(engine: Engine) -> None:
    _append(engine, 4)
    with session_scope(engine) as s:
        s.execute(update(AuditEvent).where(col(AuditEvent.seq) == 2).values(actor="mallory"))
    assert _verify(engine)[:2] == (False, 2)


def test_tamper_delete_one(engine: Engine) -> None:
    _append(engine, 6)
    with session_scope(engine) as s:
        s.execute(delete(AuditEvent).where(col(AuditEvent.seq) == 4))
    ok, bad, reason, _ = _verify(engine)
    assert not ok
    assert bad == 4
    assert reason is not None
    assert "missing" in reason


def test_tamper_insert_forged_event(engine: Engine) -> None:
    _append(engine, 4)
    last = _rows(engine)[-1]
    forged = ChainedEvent(
        seq=5,
        at=T0 + timedelta(hours=1),
        actor="mallory",
        action="cert.issued",
        subject_type="",
        subject_id="",
        details={},
    )
    with session_scope(engine) as s:
        s.add(
            AuditEvent(
                seq=5,
                at=forged.at,
                actor=forged.actor,
                action=forged.action,
                subject_type="",
                subject_id="",
                details={},
                prev_hash=last.hash,
                hash=event_hash(last.hash, forged),
            )
        )
    ok, bad, _, _ = _verify(engine)
    assert not ok
    assert bad == 5


def test_tamper_truncate_newest(engine: Engine) -> None:
    _append(engine, 7)
    with session_scope(engine) as s:
        s.execute(delete(AuditEvent).where(col(AuditEvent.seq) >= 6))
    ok, bad, reason, checked = _verify(engine)
    assert not ok
    assert bad == 6
    assert checked == 5
    assert reason is not None
    assert "truncated" in reason


def test_verify_streams_in_batches(engine: Engine) -> None:
    _append(engine, 7)
    with Session(engine) as s:
        v = verify_log(s, batch=2)
    assert v.ok
    assert v.checked == 7


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_appends_on_postgresql_form_one_chain(engine: Engine) -> None:
    """Two threads append at once, starting from an empty log: no fork, no lost event, no duplicate seq."""
    per_thread = 25
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(per_thread):
                with session_scope(engine) as s:
                    append_event(s, at=T0 + timedelta(seconds=i), actor=name, action="race", subject_id=str(i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    rows = _rows(engine)
    assert [r.seq for r in rows] == list(range(1, 2 * per_thread + 1))
    assert len({r.prev_hash for r in rows}) == len(rows)  # no two events chained onto the same predecessor
    with Session(engine) as s:
        assert s.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == 2 * per_thread
    assert _verify(engine) == (True, None, None, 2 * per_thread)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_first_two_appends_racing_on_postgresql_do_not_collide(engine: Engine) -> None:
    """The very first event: writer B starts while writer A's (head-creating) transaction is still open."""
    from sqlalchemy import text

    outcome: list[BaseException | str] = []
    a = Session(engine, expire_on_commit=False)
    try:
        append_event(a, at=T0, actor="a", action="first")
        write_pending(a)  # A is in its commit: head created and row written, not yet committed

        def writer_b() -> None:
            try:
                with session_scope(engine) as s:
                    append_event(s, at=T0, actor="b", action="second")
                outcome.append("committed")
            except BaseException as exc:  # surfaced below
                outcome.append(exc)

        b = threading.Thread(target=writer_b)
        b.start()
        # Bounded wait until B is blocked behind A's open transaction (a lock wait in pg_stat_activity).
        blocked = False
        with engine.connect() as probe:
            for _ in range(200):
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar_one()
                probe.rollback()  # pg_stat_activity is a per-transaction snapshot
                if waiting:
                    blocked = True
                    break
                if not b.is_alive():
                    break
                threading.Event().wait(0.05)
        a.commit()
    finally:
        a.close()
    b.join(timeout=60)
    assert not b.is_alive()
    assert blocked, "writer B never waited for writer A"
    rows = _rows(engine)
    assert outcome == ["committed"]
    assert [(r.seq, r.actor) for r in rows] == [(1, "a"), (2, "b")]
    assert _verify(engine)[0]


def _a_holds_the_row_while_b_commits(engine: Engine, mac: str, b_writes: Callable[[Session, int], None]) -> list[str]:
    """A locks a device row; B, in another thread, runs ``b_writes`` (which appends an event) and commits; once B
    waits for a lock (bounded), A appends and commits. A deadlock aborts one of the two (the test fails on it);
    otherwise returns the actors in the log, in order."""
    from sqlalchemy import text

    from certmgr.db.locks import claim_device
    from certmgr.db.models import Device

    with session_scope(engine) as s:
        device = Device(mac=mac, created_at=T0, updated_at=T0)
        s.add(device)
        s.flush()
        device_id = device.id
        assert device_id is not None
    a = Session(engine, expire_on_commit=False)
    outcome: list[BaseException | str] = []

    def writer_b() -> None:
        try:
            with session_scope(engine) as s:
                b_writes(s, device_id)
            outcome.append("committed")
        except BaseException as exc:  # surfaced below
            outcome.append(exc)

    try:
        assert claim_device(a, device_id)  # A holds the device row
        b = threading.Thread(target=writer_b)
        b.start()
        with engine.connect() as probe:  # bounded wait until B waits for A's row lock
            for _ in range(200):
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar_one()
                probe.rollback()
                if waiting or not b.is_alive():
                    break
                threading.Event().wait(0.05)
        append_event(a, at=T0, actor="a", action="a.first")
        a.commit()  # a deadlock would abort one of the two here
    finally:
        a.close()
    b.join(timeout=60)
    assert outcome == ["committed"]
    assert _verify(engine)[0]
    return [r.actor for r in _rows(engine)]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_chain_head_is_locked_last_so_no_deadlock(engine: Engine) -> None:
    """A holds a device row and appends; B appends and then waits for that row. When appending took the chain
    head's lock at once, B held the head while waiting for A's row and A waited for the head: a deadlock (seen
    under load after a PostgreSQL restart). The head is now locked at commit, after every other lock."""
    from sqlalchemy import text

    def b_writes(s: Session, device_id: int) -> None:
        append_event(s, at=T0, actor="b", action="b.first")
        s.execute(text("UPDATE device SET updated_at = updated_at WHERE id = :id"), {"id": device_id})

    assert sorted(_a_holds_the_row_while_b_commits(engine, "00:1A:E8:00:00:77", b_writes)) == ["a", "b"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_pending_orm_change_is_written_before_the_chain_head_is_locked(engine: Engine) -> None:
    """As above, with B's row change still pending in its session (an ORM attribute set, not flushed) when it
    commits: the chain writer flushes the transaction's other changes before it takes the head's lock, so B waits
    for A's row while holding nothing A needs. Writing the head first (its statements run on the connection, which
    does not flush the session) would deadlock here."""
    from certmgr.db.models import Device

    with session_scope(engine) as s:  # the head row exists, so B's append takes its lock (no first-event insert)
        append_event(s, at=T0, actor="setup", action="setup")

    def b_writes(s: Session, device_id: int) -> None:
        row = s.get(Device, device_id)
        assert row is not None
        row.updated_at = T0 + timedelta(seconds=1)  # pending until the commit flushes it
        append_event(s, at=T0, actor="b", action="b.first")

    actors = _a_holds_the_row_while_b_commits(engine, "00:1A:E8:00:00:78", b_writes)
    assert sorted(actors) == ["a", "b", "setup"]
