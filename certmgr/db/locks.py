"""Coordination between certmgr nodes sharing one database: leadership, serialisation and the node name.

* **Leadership** of a singleton job (renewal reconcile, probe sweep, notifications, checkpoint):
  :func:`leadership` takes a PostgreSQL *session* advisory lock (``pg_try_advisory_lock``) on a dedicated
  connection for the duration of one job run and releases it afterwards; a node that does not get it skips the
  run. A crashed node's lock vanishes with its connection, so there is no lease to expire. On SQLite every
  process is trivially the leader (certmgr on SQLite is one node; the single-writer lock still serialises
  writes, and every reconcile re-checks under that lock).
* **Serialisation** of short critical sections inside a transaction (the global deployment concurrency count
  and the claim that follows): :func:`serialize` takes ``pg_advisory_xact_lock``, released at commit. SQLite
  needs nothing: its writers are serialised by the database lock.
* **Row claims**: :func:`skip_locked` is ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and a no-op on SQLite.
* **Work claims** outside any transaction (building a phone's certificate: seconds of key generation, which must
  not run inside a transaction): :func:`work_claims` takes ``pg_try_advisory_lock`` per item on a dedicated
  connection for the duration of one run, so other nodes skip the items this one is working on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlmodel import Session

    from certmgr.settings import Settings

T = TypeVar("T")


def node_name(settings: Settings) -> str:
    """This process's name in leases and audit events: ``settings.node_id`` — for ``certmgr serve`` set at start to
    a stable name when not configured (see :func:`certmgr.runtime.open_runtime`), so a restarted node recognises its
    own leases at once — else ``<hostname>-<pid>``."""
    return settings.node_id or f"{socket.gethostname()[:80]}-{os.getpid()}"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name`` (the same in every process)."""
    digest = hashlib.sha256(f"certmgr:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def is_postgres(engine_or_session: Engine | Session) -> bool:
    """True if the database is PostgreSQL."""
    bind: Any = engine_or_session.get_bind() if hasattr(engine_or_session, "get_bind") else engine_or_session
    return bool(bind.dialect.name == "postgresql")


@contextlib.contextmanager
def leadership(engine: Engine, name: str) -> Iterator[bool]:
    """Yield True if this process leads ``name`` for the duration of the block (False: skip the work).

    PostgreSQL: ``pg_try_advisory_lock`` on a connection held open for the block, unlocked afterwards.
    SQLite: always True.

    Raises:
        sqlalchemy.exc.OperationalError: if the database cannot be reached.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


@contextlib.contextmanager
def work_claims(engine: Engine, scope: str) -> Iterator[Callable[[str], bool]]:
    """Yield ``claim``: ``claim(item)`` is True if this process now holds the claim on ``scope``/``item`` for the
    rest of the block (or already held it), False if another process holds it — it is working on that item: skip
    it. Every claim is released at the end of the block.

    PostgreSQL: ``pg_try_advisory_lock`` on one connection held for the block (no transaction stays open); a
    crashed process's claims vanish with its connection. SQLite: always True (certmgr on SQLite is one node).

    Raises:
        sqlalchemy.exc.OperationalError: if the database cannot be reached (from ``claim``).
    """
    if engine.dialect.name != "postgresql":
        yield lambda _item: True
        return
    held: set[int] = set()
    conn: Connection | None = None  # taken on the first claim: a run with nothing to claim costs nothing

    def claim(item: str) -> bool:
        nonlocal conn
        key = lock_key(f"{scope}:{item}")
        if key in held:
            return True
        if conn is None:
            conn = engine.connect()
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        if got:
            held.add(key)
        return got

    try:
        yield claim
    finally:
        if conn is not None:
            try:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock_all()"))
                    conn.commit()
            except SQLAlchemyError:
                conn.invalidate()  # never back into the pool holding claims: closing it releases them
            finally:
                conn.close()


def serialize(session: Session, name: str) -> None:
    """Serialise the rest of the caller's transaction with every other transaction that calls this with ``name``
    (PostgreSQL ``pg_advisory_xact_lock``, released at commit or rollback; nothing on SQLite)."""
    if is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})


def skip_locked(statement: T, session: Session, *, of: Any = None) -> T:
    """``statement`` with ``FOR UPDATE SKIP LOCKED`` (optionally ``OF`` a table) on PostgreSQL; unchanged on
    SQLite (its single writer lock serialises claims)."""
    if not is_postgres(session):
        return statement
    kwargs: dict[str, Any] = {"skip_locked": True}
    if of is not None:
        kwargs["of"] = of
    result: T = statement.with_for_update(**kwargs)  # type: ignore[attr-defined]
    return result


def claim_device(session: Session, device_id: int) -> bool:
    """Lock the ``device`` row for the rest of the caller's transaction before a re-check and an issuance.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``; False if another node holds the row (it is issuing for
    this phone right now: skip it). SQLite: a no-op ``UPDATE`` that takes the database's write lock first, so
    the re-check that follows sees every committed issuance (waits up to the busy timeout); True if the row
    exists.
    """
    if is_postgres(session):
        row = session.execute(
            text("SELECT id FROM device WHERE id = :id FOR UPDATE SKIP LOCKED"), {"id": device_id}
        ).first()
        return row is not None
    result: Any = session.execute(text("UPDATE device SET id = id WHERE id = :id"), {"id": device_id})
    return bool(result.rowcount)
