"""Engines and sessions: the only place that knows how to talk to SQLite or PostgreSQL.

``create_db_engine`` normalises the URL (``postgresql://`` → ``postgresql+psycopg://``), prepares SQLite (WAL,
foreign keys, busy timeout, parent directory) and never connects; :func:`check_connection` and
:func:`session_scope` turn a failure to connect into a one-line :class:`~certmgr.errors.DatabaseError` that
shows the URL without its password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from certmgr.db.health import health_of
from certmgr.errors import DatabaseError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str | URL) -> URL:
    """Parse ``url`` and pick certmgr's driver: ``postgresql+psycopg`` (psycopg 3) for PostgreSQL.

    Raises:
        DatabaseError: if ``url`` is not a valid SQLAlchemy URL or names an unsupported backend.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise DatabaseError("invalid database URL (expected e.g. sqlite:///path or postgresql://…)") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        return parsed
    raise DatabaseError(
        f"unsupported database {redact_url(parsed)}: certmgr supports SQLite and PostgreSQL",
        url=redact_url(parsed),
    )


def redact_url(url: str | URL) -> str:
    """``url`` as a string with any password replaced by ``***`` (safe for logs and messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<invalid database URL>"


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_pragmas(engine: Engine, *, wal: bool, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()


def create_db_engine(url: str | URL, *, echo: bool = False, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """Create (but do not connect) the engine for ``url``.

    SQLite: the parent directory is created, every connection gets ``foreign_keys=ON``, a busy timeout
    (``busy_timeout_ms``: how long a writer waits for another's lock before the database counts as unavailable) and
    (for files) WAL journaling; connections may cross threads. In-memory SQLite shares one connection.
    PostgreSQL: psycopg 3 with pre-ping, so connections dropped by a restart are replaced transparently.

    Raises:
        DatabaseError: if the URL is invalid or unsupported, the driver is missing, or the SQLite directory
            cannot be created.
    """
    parsed = normalise_url(url)
    shown = redact_url(parsed)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False}
        memory = _is_sqlite_memory(parsed)
        if memory:
            kwargs["poolclass"] = StaticPool
        else:
            assert parsed.database is not None
            try:
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the directory of database {shown}: {exc.strerror or exc}", url=shown
                ) from exc
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"cannot use database {shown}: {error_summary(exc)}", url=shown) from exc
    if parsed.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine, wal=not memory, busy_timeout_ms=busy_timeout_ms)
    return engine


def connection_error(exc: BaseException, url: str | URL) -> DatabaseError:
    """A one-line :class:`DatabaseError` for a failure to connect to ``url`` (password hidden).

    The driver's message is reduced to its first line; psycopg never echoes the password back.
    """
    shown = redact_url(url)
    return DatabaseError(f"cannot connect to database {shown}: {error_summary(exc)}", url=shown)


def error_summary(exc: BaseException) -> str:
    """The first line of the driver's message for ``exc`` (no stack, no SQL, no parameters)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_connection(engine: Engine) -> None:
    """Open a connection and run ``SELECT 1``.

    Raises:
        DatabaseError: if the database cannot be reached (message names the URL without its password).
    """
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise connection_error(exc, engine.url) from exc


#: Errors that mean "the database is not there right now" (locked past the busy timeout, server gone, connection
#: dropped) rather than "this transaction is wrong".
UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
#: PostgreSQL SQLSTATEs of a transaction that lost a race with another (deadlock, serialization failure): the
#: database is fine; running the transaction again is (:func:`is_conflict`, :func:`certmgr.db.txretry.run_db`).
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


def is_conflict(exc: BaseException) -> bool:
    """True if ``exc`` is a transaction conflict (deadlock, serialization failure), not an outage."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in CONFLICT_SQLSTATES


@contextmanager
def session_scope(engine: Engine, *, expire_on_commit: bool = False) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back if it raises.

    The connection is opened up front, so "cannot connect" surfaces as :class:`DatabaseError`; so does a transaction
    that fails because the database is unavailable (locked past the busy timeout, the server gone or restarting),
    and the outage is recorded in :func:`certmgr.db.health.health_of` (logged once, and once when it is back). Every
    other error from the block (``IntegrityError``, ``StaleDataError``, domain errors) propagates unchanged after the
    rollback. Objects stay usable after the block (``expire_on_commit=False`` by default).

    Raises:
        DatabaseError: if the database cannot be reached or is unavailable.
    """
    health = health_of(engine)
    with Session(engine, expire_on_commit=expire_on_commit) as session:
        try:
            session.connection()
        except UNAVAILABLE as exc:
            health.failed(error_summary(exc))
            raise connection_error(exc, engine.url) from exc
        try:
            yield session
            session.commit()
        except UNAVAILABLE as exc:
            _rollback_quietly(session)
            if is_conflict(exc):
                raise  # a lost race, retried by the caller (run_db); the database itself is fine
            health.failed(error_summary(exc))
            shown = redact_url(engine.url)
            raise DatabaseError(f"database {shown} unavailable: {error_summary(exc)}", url=shown) from exc
        except BaseException:
            _rollback_quietly(session)
            raise
        wrote = bool(session.info.pop(_WROTE, False))
    health.succeeded(wrote)


_WROTE = "certmgr.wrote"


def mark_written(session: Session) -> None:
    """Record that ``session``'s transaction changed something (what :func:`session_scope` reports to the database's
    health when it commits). ORM flushes and ORM insert/update/delete statements are recorded by themselves; a
    writer that runs its statements on the session's connection calls this."""
    session.info[_WROTE] = True


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    mark_written(session)


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: Any) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        mark_written(state.session)


def check_writable(engine: Engine) -> None:
    """Prove the database takes writes right now (SQLite: take and release the write lock; PostgreSQL: a round
    trip), and record it in the database's health.

    Raises:
        DatabaseError: if it does not.
    """
    health = health_of(engine)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                # A probe answers at once: wait 0.2 s for another writer's lock, not the full busy timeout.
                previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                conn.exec_driver_sql("PRAGMA busy_timeout = 200")
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    conn.exec_driver_sql("ROLLBACK")
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous or SQLITE_BUSY_TIMEOUT_MS)}")
            else:
                conn.execute(text("SELECT 1"))
    except UNAVAILABLE as exc:
        health.failed(error_summary(exc))
        raise connection_error(exc, engine.url) from exc
    health.succeeded(wrote=True)


def _rollback_quietly(session: Session) -> None:
    """Roll back; a connection that died with the database cannot, and that must not hide the real error."""
    with suppress(*UNAVAILABLE):
        session.rollback()


__all__ = [
    "CONFLICT_SQLSTATES",
    "check_connection",
    "check_writable",
    "connection_error",
    "create_db_engine",
    "error_summary",
    "is_conflict",
    "mark_written",
    "normalise_url",
    "redact_url",
    "session_scope",
]
