"""The scheduler adapter: APScheduler 3 (``AsyncIOScheduler``, ``MemoryJobStore`` only) running certmgr's
periodic jobs. The scheduler holds no durable state: every job calls an idempotent service that reads what to
do from certmgr's tables, with ``runtime.clock`` as "now".

Jobs (explicit ids; ``coalesce=True``, ``max_instances=1``, ``misfire_grace_time = misfire_grace_seconds``):

==================== ================================================ ===========
id                   service                                          singleton
==================== ================================================ ===========
renewal-reconcile    :func:`certmgr.renewal.service.reconcile_renewals` leader
probe-sweep          :class:`certmgr.scheduling.tasks.ProbeSweep`       leader
expiry-notify        :func:`certmgr.scheduling.tasks.expiry_notify`     leader
ca-expiry-watch      :func:`certmgr.scheduling.tasks.ca_expiry_watch`   leader
audit-checkpoint     :func:`certmgr.scheduling.tasks.audit_checkpoint`  leader
deployment-rollback  :func:`certmgr.deploy.rollback.rollback_failed`     every node
==================== ================================================ ===========

*Leader* jobs run on one node at a time: each run takes a PostgreSQL advisory lock
(:func:`~certmgr.scheduling.locks.leadership`) and a node that does not get it skips the run.

**deployment-dispatch** is not an APScheduler job: the :class:`~certmgr.deploy.dispatcher.Dispatcher` keeps
its own loop (1 s ticks, restart recovery first, contact-me tasks awaited on shutdown), started by
``certmgr serve`` in the role named by ``dispatch_role`` (and always with ``--role all``). A 1-second job
would add nothing but another thread hop; the dispatcher is safe on several nodes (claims with ``SKIP LOCKED``,
a serialised concurrency count, leases).

**Catching up.** The job store is in memory, so after a restart (or ten days down) APScheduler remembers no
missed runs; every job is scheduled to run once *at start*, and the services find everything that became due
meanwhile in the database — the renewal reconcile orders it by urgency itself (expired first, then by
expiry). ``coalesce`` + ``misfire_grace_time`` cover a stall *while running* (a suspended VM, a blocked loop):
the missed runs collapse into one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from certmgr.clock import SystemClock
from certmgr.errors import CertmgrError
from certmgr.scheduling.locks import leadership

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.scheduling")

RENEWAL = "renewal-reconcile"
PROBE_SWEEP = "probe-sweep"
EXPIRY_NOTIFY = "expiry-notify"
CA_WATCH = "ca-expiry-watch"
CHECKPOINT = "audit-checkpoint"
ROLLBACK = "deployment-rollback"
DISPATCH = "deployment-dispatch"  # the Dispatcher's own loop (see the module docstring)


@dataclass(frozen=True)
class JobSpec:
    """One periodic job: id, interval, whether it needs leadership, and the synchronous service call."""

    id: str
    interval: float
    singleton: bool
    call: Callable[[Runtime, datetime], object]
    start_delay: float = 0.0


def job_specs(runtime: Runtime) -> list[JobSpec]:
    """The jobs of the scheduler role, in order of importance (which is also their start order)."""
    from certmgr.deploy.rollback import rollback_failed
    from certmgr.renewal.service import reconcile_renewals
    from certmgr.scheduling.tasks import ProbeSweep, audit_checkpoint, ca_expiry_watch, expiry_notify

    s = runtime.settings
    sweep = ProbeSweep(runtime)
    return [
        JobSpec(RENEWAL, s.renewal_interval_seconds, True, reconcile_renewals),
        JobSpec(ROLLBACK, max(s.dispatch_tick_seconds * 10, 5.0), False, rollback_failed),
        JobSpec(EXPIRY_NOTIFY, s.notify_interval_seconds, True, expiry_notify, 1.0),
        JobSpec(CA_WATCH, s.notify_interval_seconds, True, ca_expiry_watch, 1.5),
        JobSpec(PROBE_SWEEP, s.probe_sweep_interval_seconds, True, lambda _rt, now: sweep.run(now), 2.0),
        JobSpec(CHECKPOINT, s.checkpoint_interval_seconds, True, audit_checkpoint, 3.0),
    ]


def run_job(runtime: Runtime, spec: JobSpec) -> object:
    """Run one job now, synchronously, under leadership if it is a singleton; returns the service's result
    (``None`` when another node leads). Errors are logged, never raised: the next run tries again.

    Raises:
        CertmgrError: never (logged).
    """
    try:
        if spec.singleton:
            with leadership(runtime.engine, spec.id) as leader:
                if not leader:
                    log.debug("job %s: another node leads", spec.id)
                    return None
                return spec.call(runtime, runtime.clock.now())
        return spec.call(runtime, runtime.clock.now())
    except CertmgrError as exc:
        log.error("job %s failed: %s", spec.id, exc.message)
    except Exception:  # a bug must not stop the scheduler; logged with its traceback
        log.exception("job %s failed", spec.id)
    return None


def build_scheduler(runtime: Runtime, specs: list[JobSpec] | None = None) -> AsyncIOScheduler:
    """An ``AsyncIOScheduler`` (not started) with the jobs of :func:`job_specs`, each first run at start.

    Every job runs its (blocking) service in a worker thread, so the event loop that serves phones and the API
    never waits for a database scan or a key generation.
    """
    s = runtime.settings
    scheduler = AsyncIOScheduler(
        jobstores={"default": MemoryJobStore()},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": s.misfire_grace_seconds},
        timezone="UTC",
    )
    start = SystemClock().now()  # APScheduler's triggers run on real time; the services use runtime.clock
    for spec in specs if specs is not None else job_specs(runtime):

        async def job(spec: JobSpec = spec) -> Any:
            return await asyncio.to_thread(run_job, runtime, spec)

        scheduler.add_job(
            job,
            trigger=IntervalTrigger(seconds=spec.interval, timezone="UTC"),
            id=spec.id,
            name=spec.id,
            next_run_time=start + timedelta(seconds=spec.start_delay),
            replace_existing=True,
        )
    return scheduler


async def run_scheduler(runtime: Runtime, stop: asyncio.Event, specs: list[JobSpec] | None = None) -> None:
    """Run the scheduler on the current loop until ``stop`` is set (a background task of ``certmgr serve``).

    Raises:
        CertmgrError: never; job errors are logged.
    """
    scheduler = build_scheduler(runtime, specs)
    scheduler.start()
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=False)


__all__ = [
    "CA_WATCH",
    "CHECKPOINT",
    "DISPATCH",
    "EXPIRY_NOTIFY",
    "PROBE_SWEEP",
    "RENEWAL",
    "ROLLBACK",
    "JobSpec",
    "build_scheduler",
    "job_specs",
    "run_job",
    "run_scheduler",
]
