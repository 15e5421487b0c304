"""Settings: CERTMGR_ env prefix, the optional TOML file named by CERTMGR_CONFIG, defaults, generated secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certmgr.errors import ConfigError
from certmgr.settings import (
    MASTER_KEY_FILE_NAME,
    PASSPHRASE_FILE_NAME,
    Settings,
    ca_passphrase,
    load_settings,
    master_key,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CERTMGR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the relative defaults must not touch the repository


def _write_config(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "certmgr.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("CERTMGR_CONFIG", str(path))
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.api_port == 8000
    assert s.data_dir == Path("var")
    assert s.database_url is None
    assert s.ca_passphrase is None


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path / "data")
    assert s.effective_database_url == f"sqlite:///{(tmp_path / 'data' / 'certmgr.db').resolve()}"
    assert s.ca_dir == tmp_path / "data" / "ca"


def test_postgresql_psycopg_url_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://certmgr:pw@db.example:5432/certmgr"
    monkeypatch.setenv("CERTMGR_DATABASE_URL", url)
    assert load_settings().effective_database_url == url


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTMGR_API_PORT", "9123")
    monkeypatch.setenv("API_PORT", "1")  # without the prefix: ignored
    assert load_settings().api_port == 9123


def test_precedence_env_over_file_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config(tmp_path, 'api_port = 9001\nwpi_port = 9002\nlog_level = "debug"\n', monkeypatch)
    monkeypatch.setenv("CERTMGR_API_PORT", "9100")
    s = load_settings()
    assert s.api_port == 9100  # env beats file
    assert s.wpi_port == 9002  # file beats default
    assert s.log_level == "DEBUG"
    assert s.wpi_poll_port == 18080  # default


def test_constructor_arguments_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTMGR_API_PORT", "9100")
    assert load_settings(api_port=9200).api_port == 9200


def test_secret_from_file_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config(tmp_path, 'ca_passphrase = "from-file"\n[pkcs12_passwords]\nphones = "p12-secret"\n', monkeypatch)
    s = load_settings()
    assert s.ca_passphrase is not None
    assert s.ca_passphrase.get_secret_value() == "from-file"
    assert s.pkcs12_passwords["phones"].get_secret_value() == "p12-secret"
    assert "from-file" not in repr(s)
    assert "p12-secret" not in repr(s)


@pytest.mark.parametrize(
    "text",
    ['api_port = "not a number\n', "api_port = \n", "[[[\n", 'no_such_setting = "x"\n', "api_port = 70000\n"],
    ids=["unterminated", "missing-value", "bad-table", "unknown-key", "out-of-range"],
)
def test_malformed_config_file_is_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    _write_config(tmp_path, text, monkeypatch)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "\n" not in info.value.message
    assert info.value.message


def test_missing_config_file_is_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTMGR_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings()


def test_invalid_env_value_is_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTMGR_API_PORT", "eighty")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "\n" not in info.value.message
    assert "api_port" in info.value.message


def test_first_start_generates_passphrase_into_0600_file(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    secret, note = ca_passphrase(s, generate=True)
    path = tmp_path / "var" / PASSPHRASE_FILE_NAME
    assert note is not None
    assert str(path) in note
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret.get_secret_value()
    assert len(secret.get_secret_value()) >= 32
    # Second start: read back, not regenerated, no notice.
    again, note2 = ca_passphrase(s, generate=True)
    assert again.get_secret_value() == secret.get_secret_value()
    assert note2 is None


def test_no_passphrase_and_no_generation_is_config_error(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    with pytest.raises(ConfigError, match="no ca passphrase configured"):
        ca_passphrase(s)
    assert not (tmp_path / "var" / PASSPHRASE_FILE_NAME).exists()


def test_configured_passphrase_wins_over_file(tmp_path: Path) -> None:
    (tmp_path / "pp").write_text("from-file\n")
    s = Settings(data_dir=tmp_path / "var", ca_passphrase="direct", ca_passphrase_file=tmp_path / "pp")
    assert ca_passphrase(s)[0].get_secret_value() == "direct"
    s2 = Settings(data_dir=tmp_path / "var", ca_passphrase_file=tmp_path / "pp")
    assert ca_passphrase(s2)[0].get_secret_value() == "from-file"


def test_empty_passphrase_file_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "pp").write_text("\n")
    s = Settings(data_dir=tmp_path / "var", ca_passphrase_file=tmp_path / "pp")
    with pytest.raises(ConfigError, match="empty"):
        ca_passphrase(s)


def test_master_key_generated_like_the_passphrase(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    key, note = master_key(s, generate=True)
    path = tmp_path / "var" / MASTER_KEY_FILE_NAME
    assert note is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.get_secret_value()
