"""Schema migrations (Alembic) and the schema guard run at start-up.

No ``alembic.ini`` exists: :func:`alembic_config` builds the configuration in code, pointing at the
repository's top-level ``alembic/`` folder and carrying the database URL in ``config.attributes["url"]``.

To write a new migration (developers)::

    from alembic import command
    from certmgr.db.migrate import alembic_config
    command.revision(alembic_config("sqlite:////tmp/scratch.db"), message="...", autogenerate=True)

against a scratch database upgraded to head; then review the generated file by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import URL

import certmgr
from certmgr.db.engine import connection_error, create_db_engine, error_summary, normalise_url, redact_url
from certmgr.errors import DatabaseError, SchemaOutdatedError, SchemaTooNewError

SCRIPT_LOCATION = Path(certmgr.__file__).resolve().parent.parent / "alembic"


def alembic_config(url: str | URL, *, scripts: Path = SCRIPT_LOCATION) -> Config:
    """An Alembic :class:`Config` for ``url`` with the migration scripts in ``scripts`` (default: the repo's).

    The URL travels in ``config.attributes["url"]`` (read by ``alembic/env.py``) and, with ``%`` escaped for
    configparser, in the ``sqlalchemy.url`` main option.

    Raises:
        DatabaseError: if ``url`` is invalid or unsupported, or the migration scripts are missing.
    """
    parsed = normalise_url(url)
    if not (scripts / "env.py").is_file():
        raise DatabaseError(f"migration scripts not found at {scripts}", path=str(scripts))
    config = Config()
    config.set_main_option("script_location", str(scripts))
    rendered = parsed.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    config.attributes["url"] = rendered
    return config


def _script_directory(scripts: Path) -> ScriptDirectory:
    return ScriptDirectory(str(scripts))


def head_revision(*, scripts: Path = SCRIPT_LOCATION) -> str:
    """The newest migration this certmgr knows.

    Raises:
        DatabaseError: if the migration scripts do not have exactly one head.
    """
    heads = _script_directory(scripts).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"migration scripts must have exactly one head, found {len(heads)}: {heads}")
    return heads[0]


def current_revision(url: str | URL) -> str | None:
    """The migration the database at ``url`` is at, or ``None`` for an empty (never migrated) database.

    Raises:
        DatabaseError: if the database cannot be reached or has several heads stamped.
    """
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise connection_error(exc, url) from exc
    finally:
        engine.dispose()
    if len(heads) > 1:
        raise DatabaseError(f"database is stamped with several migrations {heads}; cannot tell its schema")
    return heads[0] if heads else None


def upgrade(url: str | URL, revision: str = "head", *, scripts: Path = SCRIPT_LOCATION) -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: head).

    Raises:
        SchemaTooNewError: if the database is at a migration this certmgr does not know.
        DatabaseError: if the database cannot be reached or a migration fails.
    """
    _refuse_unknown(url, scripts)
    config = alembic_config(url, scripts=scripts)
    _run(lambda: command.upgrade(config, revision), url, f"upgrade to {revision}")


def downgrade(url: str | URL, revision: str, *, scripts: Path = SCRIPT_LOCATION) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` drops every certmgr table).

    Raises:
        SchemaTooNewError: if the database is at a migration this certmgr does not know.
        DatabaseError: if the database cannot be reached or a migration fails.
    """
    _refuse_unknown(url, scripts)
    config = alembic_config(url, scripts=scripts)
    _run(lambda: command.downgrade(config, revision), url, f"downgrade to {revision}")


def check_schema(url: str | URL, *, scripts: Path = SCRIPT_LOCATION) -> None:
    """Make sure the database at ``url`` is exactly at this certmgr's head migration.

    Raises:
        SchemaTooNewError: if the database is at a migration unknown to this certmgr (a newer release
            migrated it).
        SchemaOutdatedError: if the database is empty or behind head; run ``certmgr db upgrade``.
        DatabaseError: if the database cannot be reached.
    """
    current = _refuse_unknown(url, scripts)
    head = head_revision(scripts=scripts)
    if current == head:
        return
    shown = redact_url(url)
    if current is None:
        raise SchemaOutdatedError(
            f"database {shown} has no certmgr schema (head {head}); run `certmgr db upgrade`",
            current=None,
            head=head,
        )
    raise SchemaOutdatedError(
        f"database is at migration {current}, behind this certmgr (head {head}); run `certmgr db upgrade`",
        current=current,
        head=head,
    )


def _refuse_unknown(url: str | URL, scripts: Path) -> str | None:
    """Return the current revision, raising SchemaTooNewError if the scripts do not know it."""
    current = current_revision(url)
    if current is None:
        return None
    try:
        known = _script_directory(scripts).get_revision(current) is not None
    except CommandError:
        known = False
    if not known:
        head = head_revision(scripts=scripts)
        raise SchemaTooNewError(
            f"database is at migration {current}, newer than this certmgr (head {head}); upgrade certmgr",
            current=current,
            head=head,
        )
    return current


def _run(action: Callable[[], None], url: str | URL, what: str) -> None:
    try:
        action()
    except (sqlalchemy.exc.SQLAlchemyError, CommandError) as exc:
        # Reachability was checked just before, so this is a failing migration, not a connection problem.
        raise DatabaseError(f"cannot {what} database {redact_url(url)}: {error_summary(exc)}") from exc


__all__ = [
    "SCRIPT_LOCATION",
    "alembic_config",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]
