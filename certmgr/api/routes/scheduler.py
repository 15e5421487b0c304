"""``/api/v1/scheduler``: the periodic jobs of the scheduler running in this process — next run, last run and its
outcome (viewer role).

The last-run record is kept in the memory of the process that runs the scheduler (see "Status" in
:mod:`certmgr.scheduling.scheduler`): it starts empty after a restart, and an API process that runs no
scheduler (``certmgr serve --role api``) answers ``{"running": false, "jobs": []}``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from certmgr.api.deps import Viewer
from certmgr.api.schemas import JobOut, SchedulerOut
from certmgr.scheduling.scheduler import SchedulerMonitor

router = APIRouter(tags=["scheduler"])


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
