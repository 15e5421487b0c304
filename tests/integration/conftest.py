"""Database fixtures: every test that takes ``db_url`` (or ``engine`` / ``session``) runs on SQLite and on
PostgreSQL.

* ``pg_server`` (session): the throwaway PostgreSQL server of :mod:`tests.pg`; started only if a PostgreSQL
  test is collected and run.
* ``db_url``: an **empty** database — SQLite file under ``tmp_path``, or a fresh PostgreSQL database dropped
  after the test. PostgreSQL params carry the ``postgres`` marker: ``-m "not postgres"`` runs SQLite only.
* ``engine``: ``db_url`` migrated to head with :func:`certmgr.db.migrate.upgrade`, engine from
  :func:`certmgr.db.engine.create_db_engine`; disposed after the test.
* ``session``: a :class:`sqlmodel.Session` on ``engine`` (not committed automatically; closed afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url
from sqlmodel import Session

from certmgr.db.engine import create_db_engine
from certmgr.db.migrate import upgrade
from tests.pg import PostgresServer, server_from_environment

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (throwaway, or ``CERTMGR_TEST_POSTGRES_URL``)."""
    server = server_from_environment()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database on the parametrised backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'certmgr.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    try:
        yield url
    finally:
        name = make_url(url).database
        assert name is not None
        server.drop_database(name)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` after ``upgrade(db_url)`` to head."""
    upgrade(db_url)
    eng = create_db_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on the migrated ``engine``; the test commits what it needs."""
    with Session(engine, expire_on_commit=False) as s:
        yield s
