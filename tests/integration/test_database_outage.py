"""The database going away, on SQLite: a write lock held past the busy timeout (by another process, e.g. a backup
or a long migration). Phones get a defined answer — HTTP 503 with Retry-After — never a traceback; the log says
once that the database is unavailable and once that it is back; ``/readyz`` answers 503 meanwhile; everything
resumes by itself once the lock is released.

Before, the phones got HTTP 500 with a traceback in the log for every request, and nothing told the operator.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from certmgr.api.app import create_app
from certmgr.db.models import DeploymentState
from certmgr.settings import Settings
from certmgr.wpi.messages import Reason, WorkpointMessage
from tests.integration.fake_phone import FakePhone, Stack, address_block, wait_for
from tests.integration.test_wpi_server import _runtime, _state

pytestmark = pytest.mark.timeout(120)


def test_a_locked_database_answers_503_logs_once_and_recovers(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    block = address_block()
    runtime = _runtime(settings, tmp_path, block, sqlite_busy_timeout_seconds=0.3)
    stack = Stack(runtime)
    phone = FakePhone(
        ip=f"127.0.{block}.1",
        mac=f"00:1A:E8:{block:02X}:02:01",
        wpi_url=stack.wpi_url,
        wbm_port=runtime.settings.wbm_port,
        tmp=tmp_path / "phone",
    )
    api = TestClient(create_app(runtime))
    locker = sqlite3.connect(runtime.settings.data_dir / "certmgr.db", timeout=5, isolation_level=None)
    caplog.set_level(logging.INFO)
    try:
        assert api.get("/readyz").status_code == 200
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock, well past the 0.3 s busy timeout
        answers = []
        for _ in range(3):
            with phone.client() as client:
                msg = WorkpointMessage(phone.nonce(), Reason.START_UP, phone.basic_items(), max_items=-1)
                answers.append(phone.post(client, msg))
        assert [r.status_code for r in answers] == [503, 503, 503]
        assert all(r.headers.get("retry-after") == "30" for r in answers)
        assert api.get("/readyz").status_code == 503
        locker.execute("COMMIT")  # released
        phone.report()  # served again, as if nothing had happened
        wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 30)
        assert api.get("/readyz").status_code == 200
    finally:
        locker.close()
        phone.close()
        stack.close()
        runtime.close()
    text = caplog.text
    assert "Traceback" not in text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    gone = [r for r in caplog.records if r.name == "certmgr.db" and "unavailable:" in r.getMessage()]
    back = [r for r in caplog.records if r.name == "certmgr.db" and "is back" in r.getMessage()]
    assert (len(gone), len(back)) == (1, 1), [(r.name, r.getMessage()) for r in gone + back]
