"""Bad input to the CLI: one clear line on stderr, no traceback, a non-zero exit code, nothing half-written."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_cli_support import (
    assert_one_line_error,
    copy_data_dir,
    count_rows,
    init_template,
    run_cli,
    snapshot,
)

MAC = "00:1A:E8:12:34:56"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_template(tmp_path_factory.mktemp("cli-errors"))


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    return copy_data_dir(template, tmp_path / "var")


def _issue(
    data_dir: Path, out: Path, *extra: str, mac: str = MAC, ip: str = "10.1.1.1", **env: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(data_dir, "issue", "--mac", mac, "--ip", ip, "--out", str(out), *extra, **env)


def _assert_nothing_written(data_dir: Path, before: dict[str, bytes], out: Path) -> None:
    assert snapshot(data_dir) == before
    assert count_rows(data_dir, "certificate") == 0
    assert count_rows(data_dir, "device") == 0
    assert count_rows(data_dir, "audit_event", "WHERE action = 'certificate.issued'") == 0
    assert not out.exists() or list(out.iterdir()) == []


def _policy_dir(tmp_path: Path, edit: Callable[[str], str], extra: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "default.toml").write_text(edit((REPO / "policies" / "default.toml").read_text()))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def test_malformed_policy(data_dir: Path, tmp_path: Path) -> None:
    policies = _policy_dir(tmp_path, lambda t: t, {"10-bad.toml": 'name = "bad"\nvalidity = [\n'})
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out", CERTMGR_POLICY_DIR=str(policies))
    assert_one_line_error(result, 3, "10-bad.toml")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_invalid_policy_value(data_dir: Path, tmp_path: Path) -> None:
    policies = _policy_dir(tmp_path, lambda t: t.replace('duration = "397d"', 'duration = "a while"'))
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out", CERTMGR_POLICY_DIR=str(policies))
    assert_one_line_error(result, 3, "default.toml", "validity.duration")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_contradictory_policy(data_dir: Path, tmp_path: Path) -> None:
    policies = _policy_dir(
        tmp_path, lambda t: t.replace('renew_before = "30d"', 'renew_before = "30d"\nrenew_at_fraction = 0.667')
    )
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out", CERTMGR_POLICY_DIR=str(policies))
    assert_one_line_error(result, 3, "default.toml", "renew_before", "renew_at_fraction")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_wrong_ca_passphrase(data_dir: Path, tmp_path: Path) -> None:
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out", CERTMGR_CA_PASSPHRASE="definitely-wrong")
    line = assert_one_line_error(result, 5, "cannot decrypt the CA key: wrong passphrase")
    assert "definitely-wrong" not in line
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_missing_ca_file(data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "ca" / "issuing.pem").unlink()
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out")
    assert_one_line_error(result, 5, "issuing.pem")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_corrupt_ca_key(data_dir: Path, tmp_path: Path) -> None:
    """The issuing key every node signs with is the database's copy (the CA files are one node's copy of it)."""
    (data_dir / "ca" / "issuing.key").write_bytes(b"\x00garbage, not a key\n" * 10)
    with sqlite3.connect(data_dir / "certmgr.db") as db:
        db.execute("UPDATE ca SET key_pem = ? WHERE role = 'issuing'", ("\x00garbage, not a key\n" * 10,))
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out")
    assert_one_line_error(result, 5, "CA key")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_corrupt_ca_certificate(data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "ca" / "issuing.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out")
    assert_one_line_error(result, 5, "issuing.pem")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


@pytest.mark.parametrize("mac", ["00:1A:E8:12:34", "zz:zz:zz:zz:zz:zz", "001AE812345G"])
def test_invalid_mac(data_dir: Path, tmp_path: Path, mac: str) -> None:
    before = snapshot(data_dir)
    assert_one_line_error(_issue(data_dir, tmp_path / "out", mac=mac), 4, "invalid MAC")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


@pytest.mark.parametrize("ip", ["10.1.1.300", "phone.example", "10.1.1.0/24"])
def test_invalid_ip(data_dir: Path, tmp_path: Path, ip: str) -> None:
    before = snapshot(data_dir)
    assert_one_line_error(_issue(data_dir, tmp_path / "out", ip=ip), 4, "invalid IP")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


def test_unknown_policy(data_dir: Path, tmp_path: Path) -> None:
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out", "--policy", "no-such-policy")
    assert_one_line_error(result, 4, "unknown policy")
    _assert_nothing_written(data_dir, before, tmp_path / "out")


@pytest.mark.parametrize("command", [["ca", "init"], ["db", "upgrade"], ["issue", "--mac", MAC, "--ip", "10.1.1.1"]])
def test_unwritable_data_dir(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "plainfile"
    blocker.write_text("a regular file where a folder should be")
    args = [*command, "--out", str(tmp_path / "out")] if command[0] == "issue" else command
    result = run_cli(blocker / "var", *args)
    assert_one_line_error(result, 6, "cannot create data dir")
    assert blocker.read_text() == "a regular file where a folder should be"
    assert not (tmp_path / "out").exists()


def test_database_newer_than_the_code(data_dir: Path, tmp_path: Path) -> None:
    with sqlite3.connect(data_dir / "certmgr.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    before = snapshot(data_dir)
    result = _issue(data_dir, tmp_path / "out")
    assert_one_line_error(result, 7, "ffffffffffff", "newer than this certmgr")
    _assert_nothing_written(data_dir, before, tmp_path / "out")
    with sqlite3.connect(data_dir / "certmgr.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("ffffffffffff",)]


def test_unwritable_out_dir_leaves_no_certificate_row(data_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    before = snapshot(data_dir)
    result = _issue(data_dir, blocker / "out")
    assert_one_line_error(result, 6, "cannot write")
    _assert_nothing_written(data_dir, before, blocker / "out")
    assert blocker.read_text() == "x"


def test_missing_required_option_is_usage_error(data_dir: Path, tmp_path: Path) -> None:
    result = run_cli(data_dir, "issue", "--mac", MAC, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--ip" in result.stderr


def test_invalid_setting_is_config_error(data_dir: Path, tmp_path: Path) -> None:
    result = _issue(data_dir, tmp_path / "out", CERTMGR_API_PORT="not-a-port")
    assert_one_line_error(result, 3, "api_port")


def test_malformed_config_file(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "certmgr.toml"
    config.write_text("api_port = = 1\n")
    result = _issue(data_dir, tmp_path / "out", CERTMGR_CONFIG=str(config))
    assert_one_line_error(result, 3, "invalid settings")


@pytest.mark.parametrize("args", [[], ["ca"], ["no-such-command"], ["issue", "--mac", MAC, "--bogus"]])
def test_usage_errors_exit_2_without_traceback(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(tmp_path / "var", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (result.stdout + result.stderr).strip()  # help or the usage error
