"""open_runtime: the composition root validates everything before it writes anything (SQLite and PostgreSQL)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, col, select

from certmgr.audit.log import verify_log
from certmgr.clock import ManualClock
from certmgr.db.engine import create_db_engine
from certmgr.db.migrate import head_revision
from certmgr.db.models import AuditEvent, CARecord, CARole
from certmgr.errors import CAError, CANotInitialisedError, PolicySetError, SchemaTooNewError, StorageError
from certmgr.pki.keys import ENCRYPTED_KEY_PEM_HEADER, PLAINTEXT_KEY_PEM_HEADERS
from certmgr.pki.store import ALL_FILES
from certmgr.runtime import open_runtime
from certmgr.settings import MASTER_KEY_FILE_NAME, PASSPHRASE_FILE_NAME, Settings
from tests.conftest import REPO


def _with_db(settings: Settings, db_url: str) -> Settings:
    return settings.model_copy(update={"database_url": db_url})


def test_first_start_migrates_creates_ca_and_records_it(settings: Settings, db_url: str, clock: ManualClock) -> None:
    s = _with_db(settings, db_url)
    runtime = open_runtime(s, clock, create_ca=True)
    try:
        ca_dir = s.data_dir / "ca"
        for name in ALL_FILES:
            path = ca_dir / name
            assert path.is_file(), name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        for key_file in ("root.key", "issuing.key"):
            pem = (ca_dir / key_file).read_bytes()
            assert ENCRYPTED_KEY_PEM_HEADER in pem
            assert not any(header in pem for header in PLAINTEXT_KEY_PEM_HEADERS)
        assert any("created a new CA" in n for n in runtime.notices)
        with Session(runtime.engine) as session:
            rows = list(session.exec(select(CARecord)))
            assert {r.role for r in rows} == {CARole.ROOT, CARole.ISSUING}
            assert all(r.active and not r.imported for r in rows)
            events = list(session.exec(select(AuditEvent).order_by(col(AuditEvent.seq))))
            assert [e.action for e in events] == ["ca.registered", "ca.registered"]
            assert verify_log(session).ok
            version = session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            assert version == head_revision()
        by_role = {r.role: r for r in rows}
        issuer = runtime.issuer()
        assert issuer.cert.subject.rfc4514_string() == by_role[CARole.ISSUING].subject
        assert issuer.root is not None
        assert issuer.root.subject.rfc4514_string() == by_role[CARole.ROOT].subject
    finally:
        runtime.close()


def test_second_start_changes_nothing(settings: Settings, db_url: str, clock: ManualClock) -> None:
    s = _with_db(settings, db_url)
    open_runtime(s, clock, create_ca=True).close()
    before = {p.name: p.read_bytes() for p in (s.data_dir / "ca").iterdir()}
    runtime = open_runtime(s, clock, create_ca=True)
    try:
        assert runtime.notices == []
        assert {p.name: p.read_bytes() for p in (s.data_dir / "ca").iterdir()} == before
        with Session(runtime.engine) as session:
            assert len(list(session.exec(select(CARecord)))) == 2
            assert len(list(session.exec(select(AuditEvent)))) == 2
    finally:
        runtime.close()


def test_first_start_without_secrets_generates_them(tmp_path: Path, settings: Settings, clock: ManualClock) -> None:
    s = settings.model_copy(update={"ca_passphrase": None, "master_key": None})
    runtime = open_runtime(s, clock, create_ca=True)
    try:
        for name in (PASSPHRASE_FILE_NAME, MASTER_KEY_FILE_NAME):
            path = s.data_dir / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert len(path.read_text().strip()) >= 32
            assert any(str(path) in n for n in runtime.notices), runtime.notices
        # The generated passphrase is the one that decrypts the new CA.
        assert runtime.issuer().cert is not None
    finally:
        runtime.close()


def test_without_create_ca_no_ca_is_made(settings: Settings, clock: ManualClock) -> None:
    runtime = open_runtime(settings, clock)
    try:
        assert not (settings.data_dir / "ca").exists()
        with pytest.raises(CANotInitialisedError, match="ca init"):
            runtime.issuer()
    finally:
        runtime.close()


def test_invalid_policy_dir_stops_before_anything_is_written(
    tmp_path: Path, settings: Settings, clock: ManualClock
) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "default.toml").write_text('name = "default"\n[validity]\nduration = "forever"\n')
    s = settings.model_copy(update={"policy_dir": bad, "ca_passphrase": None, "master_key": None})
    with pytest.raises(PolicySetError) as info:
        open_runtime(s, clock, create_ca=True)
    assert "default.toml" in info.value.message
    assert "validity.duration" in info.value.message
    assert list(s.data_dir.iterdir()) == []  # no CA files, no passphrase file, no database


def test_invalid_ca_definition_stops_before_anything_is_written(
    tmp_path: Path, settings: Settings, clock: ManualClock
) -> None:
    ca_conf = tmp_path / "ca-conf"
    ca_conf.mkdir()
    (ca_conf / "ca.toml").write_text((REPO / "ca" / "ca.toml").read_text().replace('"rsa-3072"', '"rsa-512"'))
    s = settings.model_copy(update={"ca_config_dir": ca_conf, "ca_passphrase": None, "master_key": None})
    with pytest.raises(CAError, match=r"issuing\.key"):
        open_runtime(s, clock, create_ca=True)
    assert list(s.data_dir.iterdir()) == []


def test_unwritable_data_dir_is_storage_error(tmp_path: Path, settings: Settings, clock: ManualClock) -> None:
    blocker = tmp_path / "plainfile"
    blocker.write_text("not a directory")
    s = settings.model_copy(update={"data_dir": blocker / "var"})
    with pytest.raises(StorageError, match="cannot create data dir"):
        open_runtime(s, clock, create_ca=True)


def test_database_newer_than_the_code_is_refused(settings: Settings, db_url: str, clock: ManualClock) -> None:
    s = _with_db(settings, db_url)
    open_runtime(s, clock).close()
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaTooNewError, match="ffffffffffff"):
        open_runtime(s, clock, create_ca=True)
    assert not (s.data_dir / "ca").exists()
