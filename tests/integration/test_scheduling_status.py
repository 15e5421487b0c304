"""The scheduler's in-memory status (:class:`certmgr.scheduling.scheduler.SchedulerMonitor`): outcomes of runs
(ok, failed, skipped), the result summaries, the report-export and crl-refresh jobs, and ``certmgr status``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certmgr.cli.main import main
from certmgr.clock import ManualClock
from certmgr.errors import ConfigError
from certmgr.issuance.revocation import crl_status
from certmgr.reports.scheduled import ExportRun
from certmgr.runtime import Runtime
from certmgr.scheduling import scheduler as sched
from certmgr.settings import Settings
from tests.integration.renewal_support import open_test_runtime


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path) -> Iterator[Runtime]:
    rt = open_test_runtime(settings, clock, tmp_path)
    try:
        yield rt
    finally:
        rt.close()


@dataclass
class _Report:
    issued: list[str] = field(default_factory=list)
    scanned: int = 0
    note: str | None = None
    at: datetime | None = None


def test_describe_summarises_without_lists() -> None:
    assert sched.describe(None) is None
    assert sched.describe(True) == "True"
    assert sched.describe(sched.Skipped("nothing to do")) == "nothing to do"
    report = _Report(issued=["00:1A:E8:00:00:01", "00:1A:E8:00:00:02"], scanned=5)
    assert sched.describe(report) == "issued=2, scanned=5, note=None, at=None"
    assert sched.describe(["a", "b"]) == "2 item(s)"
    assert sched.describe(object()) == "object"


def test_run_job_records_each_outcome(runtime: Runtime) -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    monitor = sched.SchedulerMonitor(clock)

    def fails(_rt: Runtime, _now: datetime) -> object:
        raise ConfigError("export_dir is not writable")

    def bug(_rt: Runtime, _now: datetime) -> object:
        raise ZeroDivisionError

    def works(_rt: Runtime, _now: datetime) -> object:
        clock.advance(timedelta(seconds=2))
        return _Report(scanned=3)

    specs = {
        "fails": sched.JobSpec("fails", 60, True, fails),
        "bug": sched.JobSpec("bug", 60, False, bug),
        "works": sched.JobSpec("works", 60, True, works),
        "idle": sched.JobSpec("idle", 60, True, lambda _rt, _now: sched.Skipped("not configured")),
    }
    for spec in specs.values():
        sched.run_job(runtime, spec, monitor)  # never raises
    sched.run_job(runtime, specs["works"], monitor)
    jobs = {j.id: j for j in monitor.status().jobs}
    assert monitor.status().running is False
    assert (jobs["fails"].last_outcome, jobs["fails"].last_detail) == ("failed", "export_dir is not writable")
    assert (jobs["bug"].last_outcome, jobs["bug"].last_detail) == ("failed", "ZeroDivisionError")
    assert (jobs["idle"].last_outcome, jobs["idle"].last_detail) == ("skipped", "not configured")
    done = jobs["works"]
    assert (done.last_outcome, done.runs) == ("ok", 2)
    assert done.last_detail == "issued=0, scanned=3, note=None, at=None"
    assert done.last_started_at is not None
    assert done.last_finished_at is not None
    assert done.last_finished_at - done.last_started_at == timedelta(seconds=2)
    assert done.next_run_at is None  # no scheduler attached


def test_running_outcome_while_a_job_runs(runtime: Runtime) -> None:
    monitor = sched.SchedulerMonitor()
    seen: list[sched.JobStatus] = []

    def look(_rt: Runtime, _now: datetime) -> object:
        seen.extend(monitor.status().jobs)
        return None

    sched.run_job(runtime, sched.JobSpec("look", 60, False, look), monitor)
    (during,) = seen
    assert during.last_outcome == "running"
    assert during.last_finished_at is None


def test_report_export_skips_when_not_configured_and_exports_once(runtime: Runtime) -> None:
    now = runtime.clock.now()
    unconfigured = runtime.settings.model_copy(update={"export_kinds": []})
    original = runtime.settings
    runtime.settings = unconfigured
    try:
        assert sched.report_export(runtime, now) == sched.Skipped("no export_kinds or export_formats configured")
    finally:
        runtime.settings = original
    first = sched.report_export(runtime, now)
    again = sched.report_export(runtime, now)
    assert isinstance(first, ExportRun)
    assert isinstance(again, ExportRun)
    assert first.files
    assert not again.files  # the period is done: nothing is written twice


def test_crl_refresh_signs_once_until_it_is_due(runtime: Runtime, clock: ManualClock) -> None:
    first = sched.crl_refresh(runtime, clock.now())
    assert sched.crl_refresh(runtime, clock.now()) == first  # current: not re-signed
    clock.advance(timedelta(hours=runtime.settings.crl_validity_hours))
    assert sched.crl_refresh(runtime, clock.now()) == int(str(first)) + 1
    status = crl_status(runtime.settings)
    assert status is not None
    assert status.number == int(str(first)) + 1


def test_status_lists_the_jobs(
    runtime: Runtime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = runtime.settings
    monkeypatch.setenv("CERTMGR_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("CERTMGR_POLICY_DIR", str(s.policy_dir))
    monkeypatch.setenv("CERTMGR_CA_CONFIG_DIR", str(s.ca_config_dir))
    monkeypatch.setenv("CERTMGR_CA_PASSPHRASE", "test-passphrase-not-secret")
    monkeypatch.setenv("CERTMGR_MASTER_KEY", "test-master-key-not-secret-0123456789abcdef")
    monkeypatch.setenv("CERTMGR_EXPORT_INTERVAL_SECONDS", "7200")
    with pytest.raises(SystemExit) as exc:
        main(["status"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "Scheduler jobs" in out
    for job in sched.configured_jobs(s):
        assert job.id in out
    assert "2 h" in out  # the report-export interval from the environment
    assert "GET /api/v1/scheduler" in out
