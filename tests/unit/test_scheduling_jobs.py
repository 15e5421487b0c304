"""The scheduler adapter's job table and the coordination helpers (no database)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import create_engine

from certmgr.db.locks import leadership, lock_key, node_name
from certmgr.scheduling import scheduler as sched
from certmgr.settings import Settings


def _runtime(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path, misfire_grace_seconds=1234, node_id=None)
    return SimpleNamespace(settings=settings, engine=create_engine("sqlite://"))


def test_jobs_have_explicit_ids_and_safe_defaults(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)

    async def jobs_of_started_scheduler() -> dict[str, Any]:
        scheduler = sched.build_scheduler(runtime)
        scheduler.start(paused=True)  # defaults are applied when the jobs are really added
        try:
            assert type(scheduler._lookup_jobstore("default")).__name__ == "MemoryJobStore"
            return {job.id: job for job in scheduler.get_jobs()}
        finally:
            scheduler.shutdown(wait=False)

    jobs = asyncio.run(jobs_of_started_scheduler())
    assert set(jobs) == {
        "renewal-reconcile",
        "deployment-rollback",
        "expiry-notify",
        "ca-expiry-watch",
        "incident-notify",
        "probe-sweep",
        "audit-checkpoint",
        "crl-refresh",
        "report-export",
    }
    for job in jobs.values():
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time == 1234
        assert job.next_run_time is not None  # every job runs once at start (catch-up)


def test_singletons_and_order(tmp_path: Path) -> None:
    specs = sched.job_specs(_runtime(tmp_path))
    assert specs[0].id == sched.RENEWAL  # the most important job starts first
    assert {s.id for s in specs if not s.singleton} == {sched.ROLLBACK}


def test_run_job_logs_errors_instead_of_raising(tmp_path: Path) -> None:
    from certmgr.errors import DatabaseError

    def boom(_rt: Any, _now: Any) -> None:
        raise DatabaseError("down")

    runtime = _runtime(tmp_path)
    runtime.clock = SimpleNamespace(now=lambda: None)
    assert sched.run_job(runtime, sched.JobSpec("x", 1, True, boom)) is None
    assert sched.run_job(runtime, sched.JobSpec("y", 1, False, lambda _r, _n: 7)) == 7


def test_lock_keys_are_stable_signed_64_bit() -> None:
    assert lock_key("renewal-reconcile") == lock_key("renewal-reconcile")
    assert lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("a") < 2**63


def test_sqlite_leadership_is_local(tmp_path: Path) -> None:
    engine = create_engine("sqlite://")
    with leadership(engine, "x") as first, leadership(engine, "x") as second:
        assert first
        assert second


def test_node_name_defaults_to_host_and_pid(tmp_path: Path) -> None:
    import os

    assert node_name(Settings(data_dir=tmp_path)).endswith(f"-{os.getpid()}")
    assert node_name(Settings(data_dir=tmp_path, node_id="n1")) == "n1"
