"""Alembic environment of certmgr.

The database URL comes from the caller, never from import-time settings: ``config.attributes["url"]`` (set
by :func:`certmgr.db.migrate.alembic_config`) or the ``sqlalchemy.url`` main option. A caller may also hand
over an open connection in ``config.attributes["connection"]``.

SQLite migrations run in batch mode (``render_as_batch``), with foreign keys switched off while tables are
rebuilt and ``PRAGMA foreign_key_check`` afterwards.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, text
from sqlmodel import SQLModel

import certmgr.db.models  # noqa: F401  (registers every table on SQLModel.metadata)
from certmgr.db.engine import create_db_engine, normalise_url
from certmgr.db.types import StrEnumType, UTCDateTime
from certmgr.errors import DatabaseError

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise DatabaseError("no database URL for migrations; use certmgr.db.migrate.alembic_config(url)")
    return str(url)


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render certmgr's column types as plain SQLAlchemy types, so migrations never import certmgr."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, StrEnumType):
        return f"sa.String(length={obj.length})"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
    )


def _migrate(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds tables (create, copy, drop old): referenced tables must not trip foreign keys.
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        connection.commit()
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            connection.commit()
            problems = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
            if problems:
                raise DatabaseError(f"migration left {len(problems)} foreign-key violations: {problems[:5]}")
    finally:
        if sqlite:
            connection.rollback()  # no-op after success; ends a failed migration's transaction
            connection.exec_driver_sql("PRAGMA foreign_keys = ON")


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of touching a database (``alembic upgrade --sql``)."""
    url = normalise_url(_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        render_as_batch=url.get_backend_name() == "sqlite",
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the given connection (its transaction is committed), or on one to the URL."""
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _migrate(given)
        return
    engine = create_db_engine(_url())
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
