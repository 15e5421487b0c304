"""Fixtures shared by every test layer, and the session-wide check that no test leaves a process behind."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certmgr.clock import ManualClock
from certmgr.settings import Settings
from tests import processes

REPO = Path(__file__).resolve().parent.parent
#: How long the session waits, at its end, for its descendants to exit before it counts them as left behind.
LEFT_BEHIND_WAIT_S = 10.0
#: Descendants left behind, as reported by the xdist workers (their own), for the controller's summary.
_reported_by_workers: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Adopt orphaned descendants (see :mod:`tests.processes`): a process whose parent was killed is still
    found at the session's end. Each xdist worker does so for its own descendants, the controller for its own."""
    processes.become_subreaper()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """(xdist controller) Collect what a worker found left behind."""
    output = getattr(node, "workeroutput", None) or {}
    _reported_by_workers.extend(output.get("left_behind", []))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session if a process it started is still alive at its end (after the session fixtures' teardown:
    this hook runs last), printing their command lines; then kill them. Each process checks its own descendants
    and waits up to :data:`LEFT_BEHIND_WAIT_S` for them to exit; an xdist worker hands its findings to the
    controller, which reports them with its own."""
    pids = processes.left_behind(LEFT_BEHIND_WAIT_S)
    found = [f"pid {pid}: {processes.cmdline(pid)}" for pid in pids]
    processes.kill(pids)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports and fails the session
        worker = getattr(session.config, "workerinput", {}).get("workerid", "worker")
        workeroutput["left_behind"] = [f"{worker} {line}" for line in found]
        return
    found = _reported_by_workers + found
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["processes left behind by the tests (now killed):", *found]
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("=", "processes left behind", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
