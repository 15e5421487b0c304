"""``GET /api/v1/scheduler``: 401 without a valid token, 200 for every role (viewer is the lowest role, so no
token gets 403); the scheduler's real jobs after their first run; an API process without a scheduler."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from certmgr.api.app import create_app
from certmgr.audit.tokens import Role
from certmgr.reports.scheduled import export_folder
from certmgr.runtime import Runtime
from certmgr.scheduling import scheduler as sched
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    auth,
    ca_template,
    client,
    rt,
    tokens,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
URL = "/api/v1/scheduler"


def test_without_a_scheduler_per_role(client: TestClient, tokens: dict[str, str]) -> None:
    anonymous = client.get(URL)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert client.get(URL, headers=auth("cmt_not-a-real-token")).status_code == 401
    for role in Role:
        r = client.get(URL, headers=auth(tokens[role.value]))
        assert r.status_code == 200, (role, r.text)
        assert r.json() == {"running": False, "jobs": []}


def _run_scheduler_once(rt: Runtime, monitor: sched.SchedulerMonitor, timeout: float = 60.0) -> None:
    """Run the real jobs (first run at once) on a loop in a thread until each has finished one run."""
    specs = [dataclasses.replace(spec, start_delay=0.0) for spec in sched.job_specs(rt)]
    ids = {spec.id for spec in specs}
    stop_holder: list[asyncio.Event] = []
    created = threading.Event()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop = asyncio.Event()
        stop_holder.append(stop)
        created.set()
        await sched.run_scheduler(rt, stop, specs, monitor)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = {j.id for j in monitor.status().jobs if j.runs >= 1}
            if done >= ids:
                return
            time.sleep(0.1)
        pytest.fail(f"jobs without a finished run after {timeout:g}s: {sorted(ids - done)}")
    finally:
        assert created.wait(30), "the scheduler loop did not start"
        loop.call_soon_threadsafe(stop_holder[0].set)
        thread.join(30)


def test_running_scheduler_reports_every_job(rt: Runtime, tokens: dict[str, str]) -> None:
    monitor = sched.SchedulerMonitor()
    with TestClient(create_app(rt, scheduler=monitor)) as client:
        before = client.get(URL, headers=auth(tokens["viewer"])).json()
        assert before == {"running": False, "jobs": []}  # not started yet: nothing known
        _run_scheduler_once(rt, monitor)
        body = client.get(URL, headers=auth(tokens["viewer"])).json()
    assert body["running"] is False  # stopped by now; what the runs recorded stays
    jobs = {j["id"]: j for j in body["jobs"]}
    assert set(jobs) == {job.id for job in sched.configured_jobs(rt.settings)}
    assert {sched.REPORT_EXPORT, sched.CRL_REFRESH} <= set(jobs)
    for job in jobs.values():
        assert job["runs"] >= 1
        assert job["last_outcome"] in ("ok", "skipped"), job
        started = datetime.fromisoformat(job["last_started_at"])
        assert started <= datetime.fromisoformat(job["last_finished_at"])
        assert started.tzinfo is not None
        assert started.utcoffset() == UTC.utcoffset(None)
    assert jobs[sched.CRL_REFRESH]["last_outcome"] == "ok"
    assert jobs[sched.REPORT_EXPORT]["last_outcome"] == "ok"
    folders = [p for p in export_folder(rt.settings).iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1
    assert any(folders[0].iterdir())


def test_next_run_is_shown_while_running(rt: Runtime, tokens: dict[str, str]) -> None:
    ran = threading.Event()

    def call(_rt: Runtime, _now: datetime) -> int:
        ran.set()
        return 7

    monitor = sched.SchedulerMonitor()
    specs = [sched.JobSpec("demo", 3600, True, call)]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(sched.run_scheduler(rt, stop, specs, monitor),), daemon=True
    )
    thread.start()
    try:
        assert ran.wait(30)
        with TestClient(create_app(rt, scheduler=monitor)) as client:
            for _ in range(100):
                body = client.get(URL, headers=auth(tokens["operator"])).json()
                if body["jobs"] and body["jobs"][0]["runs"] == 1:
                    break
                time.sleep(0.05)
        (job,) = body["jobs"]
        assert body["running"] is True
        assert job["last_outcome"] == "ok"
        assert job["last_detail"] == "7"
        next_run = datetime.fromisoformat(job["next_run_at"])
        assert next_run > datetime.fromisoformat(job["last_started_at"])
        assert job["interval_seconds"] == 3600
        assert job["singleton"] is True
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
