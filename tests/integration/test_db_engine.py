"""Engines, sessions and the one-line connection errors."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import select

from certmgr.db.engine import (
    check_connection,
    create_db_engine,
    normalise_url,
    redact_url,
    session_scope,
)
from certmgr.db.migrate import check_schema, current_revision, upgrade
from certmgr.db.models import Device
from certmgr.errors import DatabaseError

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sqlite_engine_prepares_file_and_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "certmgr.db"
    engine = create_db_engine(f"sqlite:///{db}")
    try:
        assert db.parent.is_dir()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


def test_sqlite_memory_engine_shares_one_database() -> None:
    engine = create_db_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_normalise_url_picks_psycopg() -> None:
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"


@pytest.mark.parametrize("url", ["mysql://u:secret@h/db", "not a url"])
def test_unsupported_or_invalid_url(url: str) -> None:
    with pytest.raises(DatabaseError) as info:
        create_db_engine(url)
    assert "secret" not in str(info.value)


def test_redact_url_hides_password() -> None:
    assert redact_url("postgresql://certmgr:s3cr3t@db:5432/certmgr") == "postgresql://certmgr:***@db:5432/certmgr"


def test_unreachable_postgres_is_one_line_database_error() -> None:
    url = f"postgresql://certmgr:s3cr3t@127.0.0.1:{_closed_port()}/certmgr"
    engine = create_db_engine(url)
    try:
        for action in (
            lambda: check_connection(engine),
            lambda: session_scope(engine).__enter__(),
            lambda: current_revision(url),
            lambda: check_schema(url),
            lambda: upgrade(url),
        ):
            with pytest.raises(DatabaseError) as info:
                action()
            message = str(info.value)
            assert message.startswith("cannot connect to database postgresql"), message
            assert "certmgr:***@127.0.0.1:" in message
            assert "s3cr3t" not in message
            assert "\n" not in message
    finally:
        engine.dispose()


def test_unopenable_sqlite_is_database_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory where the database file should be
    with pytest.raises(DatabaseError, match="cannot connect to database sqlite:///"):
        check_connection(create_db_engine(f"sqlite:///{tmp_path / 'dir.db'}"))


def test_session_scope_commits_and_rolls_back(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Device(mac="00:1A:E8:00:00:01", created_at=T0, updated_at=T0))

    def fail_half_way() -> None:
        with session_scope(engine) as s:
            s.add(Device(mac="00:1A:E8:00:00:02", created_at=T0, updated_at=T0))
            s.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_half_way()

    with session_scope(engine) as s:
        macs = s.exec(select(Device.mac)).all()
        device = s.exec(select(Device)).one()
    assert macs == ["00:1A:E8:00:00:01"]
    assert device.mac == "00:1A:E8:00:00:01"  # usable after the scope (no expiry on commit)


def test_a_transaction_that_only_appends_audit_events_counts_as_a_write(engine: Engine) -> None:
    """After a "database is locked" outage only a transaction that wrote proves the lock is gone (a read works
    under another writer's lock). The audit chain writer runs its statements on the session's connection, which
    the session does not see as writes by itself; a transaction that only appends events (an operator's renewal
    request, a console login) must still end the outage."""
    from certmgr.audit.log import append_event
    from certmgr.db.health import health_of

    with session_scope(engine) as s:  # the chain's head exists: the next append takes the plain-statement path
        append_event(s, at=T0, actor="test", action="test.first")
    health = health_of(engine)
    health.failed("database is locked")
    with session_scope(engine) as s:
        s.exec(select(Device)).all()
    assert not health.available, "a read ended a lock outage"
    with session_scope(engine) as s:
        append_event(s, at=T0, actor="test", action="test.second")
    assert health.available
