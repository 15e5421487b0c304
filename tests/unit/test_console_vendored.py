"""The vendored third-party files are exactly the ones recorded (htmx for the console, axe-core for the browser
tests): each file's SHA-256 matches its VENDORED.txt line, and the console's pages load the recorded htmx."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from certmgr.console.render import HTMX_FILE
from tests.conftest import REPO

RECORDS = [REPO / "certmgr/console/VENDORED.txt", REPO / "tests/browser/vendor/VENDORED.txt"]
_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$")


def _entries(record: Path) -> list[tuple[str, Path]]:
    return [
        (m.group(1), record.parent / m.group(2)) for line in record.read_text().splitlines() if (m := _LINE.match(line))
    ]


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: p.parent.name)
def test_vendored_files_match_their_recorded_sha256(record: Path) -> None:
    entries = _entries(record)
    assert len(entries) == 2
    for digest, path in entries:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path


def test_the_console_serves_the_recorded_htmx_2() -> None:
    names = [path.name for _, path in _entries(RECORDS[0])]
    assert HTMX_FILE in names
    assert HTMX_FILE.startswith("htmx-2.")
    assert b"htmx" in (REPO / "certmgr/console/static" / HTMX_FILE).read_bytes()[:2000]
