"""``certmgr device list`` and ``certmgr device approve``."""

from __future__ import annotations

import pytest
from rich.console import Console
from sqlmodel import col, select

from certmgr.cli import main as cli
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent
from certmgr.inventory.enrollment import record_report
from certmgr.operations import decommission_mac
from certmgr.runtime import open_runtime
from certmgr.settings import Settings
from tests.conftest import REPO
from tests.integration.test_api_support import cli_env


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0)


def test_device_list_and_approve(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    from pathlib import Path

    policies = Path(str(tmp_path)) / "policies"
    policies.mkdir()
    text = (REPO / "policies" / "default.toml").read_text().replace('mode = "auto"', 'mode = "approve"')
    (policies / "default.toml").write_text(text)
    settings = settings.model_copy(update={"policy_dir": policies})
    cli_env(monkeypatch, settings)  # every command reads CERTMGR_* (main.py's and actions.py's alike)
    monkeypatch.setattr(cli, "out", Console(width=250, highlight=False))
    runtime = open_runtime(settings, create_ca=True)
    try:
        with session_scope(runtime.engine) as s:
            record_report(
                s,
                mac="00:1a:e8:00:00:07",
                items={"contact-me-uri": "http://10.0.0.7:8085/contact_dls.html/ContactDLS", "device-type": "CP710"},
                reason="start-up",
                peer="10.0.0.7",
                now=runtime.clock.now(),
                policies=runtime.policies,
            )
    finally:
        runtime.close()
    assert _run(["device", "list"]) == 0
    out = capsys.readouterr().out
    assert "00:1A:E8:00:00:07" in out
    assert "pending" in out
    assert "10.0.0.7" in out
    assert _run(["device", "approve", "00-1a-e8-00-00-07"]) == 0
    assert "approved 00:1A:E8:00:00:07" in capsys.readouterr().out
    assert _run(["device", "list"]) == 0
    assert "approved" in capsys.readouterr().out
    assert _run(["device", "approve", "00:1A:E8:00:00:99"]) == 8  # not found
    assert _run(["device", "approve", "not-a-mac"]) == 4  # bad input
    runtime = open_runtime(settings)
    try:
        with session_scope(runtime.engine) as s:
            events = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "device.approved")).all()
            assert [(e.actor, e.subject_id) for e in events] == [("cli", "00:1A:E8:00:00:07")]
        decommission_mac(runtime, "00:1A:E8:00:00:07", actor="test")
    finally:
        runtime.close()
    assert _run(["device", "approve", "00:1A:E8:00:00:07"]) == 9  # decommissioned: conflict
