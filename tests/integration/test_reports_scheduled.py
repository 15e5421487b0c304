"""Scheduled report exports: dated folders of signed reports, written atomically and once per period."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from certmgr.db.models import AuditEvent
from certmgr.errors import ConfigError, StorageError
from certmgr.reports import scheduled
from certmgr.reports.manifest import verify_export
from certmgr.reports.queries import ReportKind
from certmgr.reports.render import ReportFormat
from certmgr.reports.scheduled import export_folder, period_key, run_scheduled_exports
from certmgr.runtime import Runtime
from certmgr.settings import ExportFormat, ExportKind
from tests.integration.test_api_support import Fleet, ca_template, fleet, rt  # noqa: F401 - fixtures


def _configure(rt: Runtime, monkeypatch: pytest.MonkeyPatch, **values: Any) -> None:
    monkeypatch.setattr(rt, "settings", rt.settings.model_copy(update=values))


def test_settings_literals_match_the_report_registry() -> None:
    assert set(typing.get_args(ExportKind)) == {k.value for k in ReportKind}
    assert set(typing.get_args(ExportFormat)) == {f.value for f in ReportFormat}


def test_period_key() -> None:
    assert period_key(datetime(2026, 11, 26, 23, 59, tzinfo=UTC), "daily") == "2026-11-26"
    assert period_key(datetime(2026, 11, 26, tzinfo=UTC), "weekly") == "2026-W48"
    assert period_key(datetime(2027, 1, 1, tzinfo=UTC), "weekly") == "2026-W53"  # ISO year of the week
    with pytest.raises(ConfigError):
        period_key(datetime(2026, 11, 26, tzinfo=UTC), "hourly")


def test_daily_exports_once_per_day(rt: Runtime, fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _configure(
        rt,
        monkeypatch,
        export_dir=tmp_path / "exports",
        export_kinds=["inventory", "compliance", "expiry"],
        export_formats=["csv", "json", "pdf"],
        export_every="daily",
    )
    now = rt.clock.now()
    run = run_scheduled_exports(rt, now)
    assert run.period == "2026-11-26"
    assert run.folder == tmp_path / "exports" / "2026-11-26"
    assert not run.skipped
    names = sorted(p.name for p in run.files)
    assert names == sorted(
        f"{k}-2026-11-26.{f}" for k in ("inventory", "compliance", "expiry") for f in ("csv", "json", "pdf")
    )
    for path in run.files:
        verdict = verify_export(path)
        assert verdict.ok, (path, verdict.problems)
        assert (path.stat().st_mode & 0o777) == 0o600
    inventory = (run.folder / "inventory-2026-11-26.csv").read_bytes().decode()
    assert inventory.count("\r\n") == 1 + len(fleet.devices)
    assert [p.name for p in (tmp_path / "exports").iterdir() if not p.name.startswith(".")] == ["2026-11-26"]
    # the same day again: nothing written, nothing audited
    before = {p: p.stat().st_mtime_ns for p in run.files}
    again = run_scheduled_exports(rt, now + timedelta(hours=14))
    assert again.skipped
    assert again.folder == run.folder
    assert {p: p.stat().st_mtime_ns for p in run.files} == before
    with Session(rt.engine) as s:
        events = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "report.exported")).all()
    assert len(events) == 9
    assert {e.actor for e in events} == {"scheduler"}
    assert {e.details["via"] for e in events} == {"schedule"}
    # the next day: a new folder
    nxt = run_scheduled_exports(rt, now + timedelta(days=1))
    assert nxt.period == "2026-11-27"
    assert len(nxt.files) == 9


def test_weekly_and_default_folder(rt: Runtime, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    _configure(rt, monkeypatch, export_every="weekly", export_kinds=["inventory"], export_formats=["csv"])
    assert export_folder(rt.settings) == rt.settings.data_dir / "exports"
    monday = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    run = run_scheduled_exports(rt, monday + timedelta(days=3))
    assert run.period == "2026-W48"
    assert [p.name for p in run.files] == ["inventory-2026-W48.csv"]
    assert run_scheduled_exports(rt, monday + timedelta(days=6, hours=23)).skipped
    assert run_scheduled_exports(rt, monday + timedelta(days=7)).period == "2026-W49"


def test_failed_run_leaves_no_period_folder(
    rt: Runtime, fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _configure(
        rt, monkeypatch, export_dir=tmp_path / "exports", export_kinds=["inventory", "expiry"], export_formats=["csv"]
    )
    from certmgr.reports.manifest import export_report as real

    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StorageError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduled, "export_report", flaky)
    with pytest.raises(StorageError):
        run_scheduled_exports(rt, rt.clock.now())
    root = tmp_path / "exports"
    assert not (root / "2026-11-26").exists()
    assert [p.name for p in root.iterdir() if p.name != ".lock"] == []  # staging removed
    (root / ".staging-2026-11-26-99999").mkdir()  # a crashed run's leftovers are cleaned up
    monkeypatch.setattr(scheduled, "export_report", real)
    run = run_scheduled_exports(rt, rt.clock.now())
    assert len(run.files) == 2
    assert sorted(p.name for p in root.iterdir()) == [".lock", "2026-11-26"]
    with Session(rt.engine) as s:
        events = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "report.exported")).all()
    assert len(events) == 2  # the failed run audited nothing
