"""Helpers for the CLI tests: run the real ``certmgr`` console script in a private data dir. No tests here."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CERTMGR = Path(sys.executable).parent / "certmgr"
CLI_TIMEOUT_S = 180


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: no ambient CERTMGR_*, a private data dir, the repo's policies and CA."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
    env.update(
        CERTMGR_DATA_DIR=str(data_dir),
        CERTMGR_POLICY_DIR=str(REPO / "policies"),
        CERTMGR_CA_CONFIG_DIR=str(REPO / "ca"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(data_dir: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``certmgr ARGS`` and return the finished process (never raises on a non-zero exit)."""
    assert CERTMGR.is_file(), f"console script {CERTMGR} missing: pip install -e ."
    return subprocess.run(
        [str(CERTMGR), *args],
        env=cli_env(data_dir, **extra_env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a zero exit (showing stderr otherwise) and no traceback."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Assert exit ``code`` and exactly one ``certmgr: error:`` line on stderr containing every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    assert result.returncode == code, f"exit {result.returncode}, want {code}\nstderr:\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("certmgr: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def init_template(parent: Path) -> Path:
    """A data dir with an initialised CA (``ca init``), for copying into tests."""
    data_dir = parent / "template-var"
    ok(run_cli(data_dir, "ca", "init"))
    return data_dir


def copy_data_dir(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def count_rows(data_dir: Path, table: str, where: str = "") -> int:
    """Rows of ``table`` in the data dir's SQLite database (0 if the database does not exist)."""
    db = data_dir / "certmgr.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table} {where}").fetchone()  # noqa: S608 (test constants)
    return int(n)


def snapshot(data_dir: Path) -> dict[str, bytes]:
    """Every file of the data dir except the database (whose pages SQLite may rewrite on any open)."""
    if not data_dir.exists():
        return {}
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("certmgr.db")
    }
