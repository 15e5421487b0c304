"""Fixtures shared by every test layer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from certmgr.clock import ManualClock
from certmgr.settings import Settings

REPO = Path(__file__).resolve().parent.parent

# A fixed, realistic instant for tests that use a controlled clock.
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a private data dir, the shipped policies and CA definitions, and no ambient CERTMGR_* env."""
    import os

    for name in list(os.environ):
        if name.startswith("CERTMGR_"):
            monkeypatch.delenv(name)
    return Settings(
        data_dir=tmp_path / "var",
        policy_dir=REPO / "policies",
        ca_config_dir=REPO / "ca",
        ca_passphrase="test-passphrase-not-secret",
        master_key="test-master-key-not-secret-0123456789abcdef",
    )
