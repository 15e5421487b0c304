"""Migrations: head matches the models, downgrade/upgrade round trip, and the schema guard."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import certmgr.db.models  # noqa: F401  (registers the tables)
from certmgr.db.engine import create_db_engine, session_scope
from certmgr.db.migrate import (
    SCRIPT_LOCATION,
    alembic_config,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from certmgr.db.models import Certificate, Device, IssueReason
from certmgr.errors import DatabaseError, SchemaOutdatedError, SchemaTooNewError
from certmgr.pki.types import KeyType

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TABLES = {
    "alembic_version",
    "api_token",
    "audit_checkpoint",
    "audit_event",
    "audit_head",
    "ca",
    "certificate",
    "console_job",
    "console_session",
    "deployment",
    "device",
    "pkcs12_profile_memory",
}


def _diffs(url: str) -> list[object]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _stamp(url: str, revision: str) -> None:
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision})
    finally:
        engine.dispose()


def test_upgrade_head_matches_models(db_url: str) -> None:
    upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert _diffs(db_url) == []


def test_revisions(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    check_schema(db_url)  # at head: no error
    upgrade(db_url)  # idempotent


def test_downgrade_base_then_upgrade_head(db_url: str) -> None:
    upgrade(db_url)
    engine = create_db_engine(db_url)
    try:
        # Data in the device <-> certificate cycle, so dropping the cycle's foreign key is exercised for real.
        with session_scope(engine) as s:
            device = Device(mac="00:1A:E8:00:00:01", created_at=T0, updated_at=T0)
            s.add(device)
            s.flush()
            assert device.id is not None
            cert = Certificate(
                device_id=device.id,
                serial="01",
                subject="CN=x",
                key_type=KeyType.EC_P256,
                not_before=T0,
                not_after=T0,
                fingerprint_sha256="a" * 64,
                cert_pem="pem",
                key_blob=b"k",
                issuer_fingerprint="b" * 64,
                reason=IssueReason.ENROLLMENT,
                created_at=T0,
            )
            s.add(cert)
            s.flush()
            device.current_certificate_id = cert.id
    finally:
        engine.dispose()

    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    assert _tables(db_url) <= {"alembic_version"}

    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _diffs(db_url) == []


def test_empty_database_is_outdated(db_url: str) -> None:
    with pytest.raises(SchemaOutdatedError, match="no certmgr schema"):
        check_schema(db_url)


def test_unknown_newer_revision_is_too_new(db_url: str) -> None:
    upgrade(db_url)
    _stamp(db_url, "9999_from_the_future")
    with pytest.raises(SchemaTooNewError) as info:
        check_schema(db_url)
    head = head_revision()
    assert str(info.value) == (
        f"database is at migration 9999_from_the_future, newer than this certmgr (head {head}); upgrade certmgr"
    )
    assert info.value.fields == {"current": "9999_from_the_future", "head": head}
    # Neither upgrade nor downgrade may touch a database from a newer release.
    with pytest.raises(SchemaTooNewError):
        upgrade(db_url)
    with pytest.raises(SchemaTooNewError):
        downgrade(db_url, "base")


@pytest.fixture
def scripts_with_next_revision(tmp_path: Path) -> Path:
    """A copy of the migration scripts with an extra (empty) revision ``next`` on top of head."""
    scripts = tmp_path / "alembic"
    shutil.copytree(SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9000_next.py").write_text(
        'revision = "next"\n'
        f"down_revision = {head_revision()!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )
    return scripts


def test_behind_head_is_outdated(db_url: str, scripts_with_next_revision: Path) -> None:
    scripts = scripts_with_next_revision
    upgrade(db_url)  # the real head
    head = head_revision()
    assert head_revision(scripts=scripts) == "next"
    with pytest.raises(SchemaOutdatedError) as info:
        check_schema(db_url, scripts=scripts)
    assert f"at migration {head}, behind this certmgr (head next)" in str(info.value)
    upgrade(db_url, scripts=scripts)
    check_schema(db_url, scripts=scripts)
    assert current_revision(db_url) == "next"


def test_alembic_config_carries_url_and_scripts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    config = alembic_config(url)
    assert config.get_main_option("script_location") == str(SCRIPT_LOCATION)
    assert config.attributes["url"] == url
    assert config.get_main_option("sqlalchemy.url") == url


def test_alembic_config_escapes_percent_and_normalises_driver() -> None:
    config = alembic_config("postgresql://u:p%25w@localhost/db")
    assert config.attributes["url"] == "postgresql+psycopg://u:p%25w@localhost/db"
    assert config.get_main_option("sqlalchemy.url") == "postgresql+psycopg://u:p%25w@localhost/db"


def test_missing_scripts_is_a_database_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="migration scripts not found"):
        alembic_config("sqlite://", scripts=tmp_path)


def test_0002_fills_the_typed_deployment_columns_from_transcripts(db_url: str) -> None:
    """Rows from before 0002: whether a deployment is a rollback and how often its verification failed were only
    in the transcript; the migration fills the new columns from it."""
    upgrade(db_url, "0001")
    engine = create_db_engine(db_url)
    probe = {"dir": "probe", "verdict": "drift"}
    rows = [  # (id, transcript)
        (1, [{"dir": "contact-me"}, {**probe, "verdict": "verified"}]),
        (2, [{"dir": "contact-me"}, probe, {**probe, "verdict": "undecided"}]),
        (3, [{"dir": "rollback", "failed_deployment": 2, "serial": "01"}, probe]),
    ]
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO device (id, mac, dns_names, enrollment, status, drift, created_at, updated_at) "
                    "VALUES (1, '00:1A:E8:00:00:01', '[]', 'approved', 'verified', false, :t, :t)"
                ),
                {"t": T0},
            )
            conn.execute(
                text(
                    "INSERT INTO certificate (id, device_id, serial, subject, sans, key_type, not_before, not_after,"
                    " fingerprint_sha256, cert_pem, key_blob, issuer_fingerprint, status, reason, created_at) VALUES"
                    " (1, 1, '01', 'CN=x', '[]', 'ec-p256', :t, :t, 'ab', 'pem', :b, 'cd', 'active', 'manual', :t)"
                ),
                {"t": T0, "b": b"\x00"},
            )
            for dep_id, transcript in rows:
                conn.execute(
                    text(
                        "INSERT INTO deployment (id, device_id, certificate_id, state, attempts, profile_index,"
                        " password_item_used, transcript, version, created_at, updated_at) VALUES"
                        " (:id, 1, 1, 'failed', 1, 0, false, :tr, 1, :t, :t)"
                    ),
                    {"id": dep_id, "tr": json.dumps(transcript), "t": T0},
                )
        upgrade(db_url)
        with engine.connect() as conn:
            got = conn.execute(
                text("SELECT id, verify_failures, verify_failure, rollback_of FROM deployment ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in got] == [(1, 0, None, None), (2, 2, "undecided", None), (3, 1, "drift", 2)]
