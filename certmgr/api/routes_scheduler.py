"""``/api/v1/scheduler``: the periodic jobs of the scheduler running in this process — next run, last run and its
outcome (viewer role).

The last-run record is kept in the memory of the process that runs the scheduler (see "Status" in
:mod:`certmgr.scheduling.scheduler`): it starts empty after a restart, and an API process that runs no
scheduler (``certmgr serve --role api``) answers ``{"running": false, "jobs": []}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from certmgr.api.auth import Viewer
from certmgr.scheduling.scheduler import JobStatus, SchedulerMonitor

router = APIRouter(tags=["scheduler"])


class JobOut(BaseModel):
    """One periodic job as this process knows it."""

    id: str
    interval_seconds: float
    singleton: bool
    next_run_at: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_outcome: Literal["running", "ok", "failed", "skipped"] | None
    last_detail: str | None
    runs: int

    @classmethod
    def of(cls, job: JobStatus) -> JobOut:
        return cls(
            id=job.id,
            interval_seconds=job.interval_seconds,
            singleton=job.singleton,
            next_run_at=job.next_run_at,
            last_started_at=job.last_started_at,
            last_finished_at=job.last_finished_at,
            last_outcome=job.last_outcome,
            last_detail=job.last_detail,
            runs=job.runs,
        )


class SchedulerOut(BaseModel):
    """Whether this process runs the scheduler, and its jobs (in start order)."""

    running: bool
    jobs: list[JobOut]


@router.get("/api/v1/scheduler", response_model=SchedulerOut)
def scheduler_status(request: Request, _who: Viewer) -> SchedulerOut:
    """The scheduler's jobs: id, interval, next run, and the last run's start, end and outcome (``ok``,
    ``failed``, ``skipped`` — another node leads or nothing is configured — or ``running``).

    Raises:
        AuthenticationError: 401 without a valid token.
    """
    monitor: SchedulerMonitor | None = getattr(request.app.state, "scheduler", None)
    if monitor is None:
        return SchedulerOut(running=False, jobs=[])
    status = monitor.status()
    return SchedulerOut(running=status.running, jobs=[JobOut.of(job) for job in status.jobs])
