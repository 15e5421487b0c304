"""Persistence at the edge: SQLModel tables, engines/sessions and schema migrations.

``certmgr.db.models`` holds every table; ``certmgr.db.engine`` creates engines and sessions;
``certmgr.db.migrate`` runs Alembic and guards the schema version at start-up.
"""

from __future__ import annotations

from certmgr.db.engine import check_connection, create_db_engine, redact_url, session_scope
from certmgr.db.migrate import check_schema, current_revision, downgrade, head_revision, upgrade
from certmgr.db.types import StrEnumType, UTCDateTime

__all__ = [
    "StrEnumType",
    "UTCDateTime",
    "check_connection",
    "check_schema",
    "create_db_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "redact_url",
    "session_scope",
    "upgrade",
]
