"""``certmgr policy check`` and ``certmgr db upgrade`` through the real console script."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from certmgr.db.migrate import head_revision
from tests.conftest import REPO
from tests.integration.test_cli_support import assert_one_line_error, ok, run_cli


def test_policy_check_shipped_policies(tmp_path: Path) -> None:
    result = ok(run_cli(tmp_path / "var", "policy", "check"))
    assert "valid policies" in result.stdout
    assert "default" in result.stdout


def test_policy_check_shipped_policies_by_argument(tmp_path: Path) -> None:
    ok(run_cli(tmp_path / "var", "policy", "check", str(REPO / "policies"), CERTMGR_POLICY_DIR=str(tmp_path)))


def test_policy_check_bad_dir_names_file_key_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "default.toml").write_text(
        (REPO / "policies" / "default.toml").read_text().replace('"rsa-2048"', '"rsa-1024"')
    )
    result = run_cli(tmp_path / "var", "policy", "check", str(bad))
    line = assert_one_line_error(result, 3, "default.toml", "key.type")
    assert "rsa-1024" in line or "rsa-2048" in line  # the reason says what is wrong / allowed


def test_policy_check_malformed_toml(tmp_path: Path) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "default.toml").write_text((REPO / "policies" / "default.toml").read_text())
    (bad / "10-broken.toml").write_text('name = "broken"\n[key\ntype = "rsa-2048"\n')
    assert_one_line_error(run_cli(tmp_path / "var", "policy", "check", str(bad)), 3, "10-broken.toml")


def test_policy_check_contradictory_renewal(tmp_path: Path) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "default.toml").write_text(
        (REPO / "policies" / "default.toml")
        .read_text()
        .replace('renew_before = "30d"', 'renew_before = "30d"\nrenew_at_fraction = 0.5')
    )
    line = assert_one_line_error(run_cli(tmp_path / "var", "policy", "check", str(bad)), 3, "default.toml")
    assert "renew_before" in line
    assert "renew_at_fraction" in line


def test_policy_check_missing_dir(tmp_path: Path) -> None:
    assert_one_line_error(run_cli(tmp_path / "var", "policy", "check", str(tmp_path / "nope")), 3, "nope")


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    first = ok(run_cli(data_dir, "db", "upgrade"))
    head = head_revision()
    assert f"at revision {head}" in first.stdout
    second = ok(run_cli(data_dir, "db", "upgrade"))
    assert f"at revision {head}" in second.stdout
    with sqlite3.connect(data_dir / "certmgr.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]


def test_db_upgrade_refuses_a_newer_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    ok(run_cli(data_dir, "db", "upgrade"))
    with sqlite3.connect(data_dir / "certmgr.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'zz_from_the_future'")
    assert_one_line_error(run_cli(data_dir, "db", "upgrade"), 7, "zz_from_the_future", "newer")
    with sqlite3.connect(data_dir / "certmgr.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("zz_from_the_future",)]


def test_db_upgrade_with_postgresql_url_error_hides_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://certmgr:s3cret-pw@127.0.0.1:1/certmgr"
    result = run_cli(tmp_path / "var", "db", "upgrade", CERTMGR_DATABASE_URL=url)
    assert_one_line_error(result, 7, "cannot connect")
    assert "s3cret-pw" not in result.stderr
