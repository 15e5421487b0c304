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
report-export        :func:`report_export` (scheduled report exports)   leader
crl-refresh          :func:`crl_refresh` (re-sign a CRL near expiry)    leader
deployment-rollback  :func:`certmgr.deploy.rollback.rollback_failed`     every node
==================== ================================================ ===========

*Leader* jobs run on one node at a time: each run takes a PostgreSQL advisory lock
(:func:`~certmgr.db.locks.leadership`) and a node that does not get it skips the run.

**deployment-dispatch** is not an APScheduler job: the :class:`~certmgr.phones.dispatcher.Dispatcher` keeps
its own loop (1 s ticks, restart recovery first, contact-me tasks awaited on shutdown), started by
``certmgr serve`` in the role named by ``dispatch_role`` (and always with ``--role all``). A 1-second job
would add nothing but another thread hop; the dispatcher is safe on several nodes (claims with ``SKIP LOCKED``,
a serialised concurrency count, leases).

**Catching up.** The job store is in memory, so after a restart (or ten days down) APScheduler remembers no
missed runs; every job is scheduled to run once *at start*, and the services find everything that became due
meanwhile in the database — the renewal reconcile orders it by urgency itself (expired first, then by
expiry). ``coalesce`` + ``misfire_grace_time`` cover a stall *while running* (a suspended VM, a blocked loop):
the missed runs collapse into one.

**Status.** A :class:`SchedulerMonitor` records, per job, when it runs next (APScheduler's own
``next_run_time``) and when its last run started and ended with which outcome (``ok``, ``failed``, ``skipped``
— another node leads, or the job has nothing configured — or ``running``). That record lives **in the memory
of the process that runs the scheduler** and starts empty at every start: it is operational insight, not state
(the jobs' durable effects are in the database and the audit log). ``GET /api/v1/scheduler`` shows it when the
API listener runs in the same process (``certmgr serve --role all``); an API-only process answers
``{"running": false, "jobs": []}``. ``certmgr status`` (a separate process) lists the configured jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from certmgr.clock import Clock, SystemClock
from certmgr.db.health import log_failure
from certmgr.db.locks import leadership
from certmgr.errors import CANotInitialisedError, CertmgrError

if TYPE_CHECKING:
    from certmgr.runtime import Runtime
    from certmgr.settings import Settings

log = logging.getLogger("certmgr.scheduling")

RENEWAL = "renewal-reconcile"
PROBE_SWEEP = "probe-sweep"
EXPIRY_NOTIFY = "expiry-notify"
CA_WATCH = "ca-expiry-watch"
CHECKPOINT = "audit-checkpoint"
ROLLBACK = "deployment-rollback"
REPORT_EXPORT = "report-export"
CRL_REFRESH = "crl-refresh"
INCIDENT_NOTIFY = "incident-notify"
DISPATCH = "deployment-dispatch"  # the Dispatcher's own loop (see the module docstring)


@dataclass(frozen=True)
class JobSpec:
    """One periodic job: id, interval, whether it needs leadership, and the synchronous service call."""

    id: str
    interval: float
    singleton: bool
    call: Callable[[Runtime, datetime], object]
    start_delay: float = 0.0


@dataclass(frozen=True)
class Skipped:
    """A job's answer when it had nothing to do by configuration (recorded as outcome ``skipped``)."""

    reason: str


def report_export(runtime: Runtime, now: datetime) -> object:
    """The ``report-export`` job: :func:`certmgr.reports.scheduled.run_scheduled_exports` for the period of
    ``now`` (idempotent: a period already exported is left alone), unless no report kind or format is configured.

    Raises:
        ConfigError / StorageError / DatabaseError: as :func:`~certmgr.reports.scheduled.run_scheduled_exports`.
    """
    settings = runtime.settings
    if not settings.export_kinds or not settings.export_formats:
        return Skipped("no export_kinds or export_formats configured")
    from certmgr.reports.scheduled import run_scheduled_exports

    return run_scheduled_exports(runtime, now)


def crl_refresh(runtime: Runtime, now: datetime) -> object:
    """The ``crl-refresh`` job: :func:`certmgr.issuance.revocation.refresh_crl` re-signs the CRL when it is
    missing, near its nextUpdate or out of date with the database, so relying parties never see a stale CRL
    even when nobody fetches ``/api/v1/ca/crl``. ``now`` is unused: ``refresh_crl`` reads ``runtime.clock``.

    Raises:
        CAError / StorageError / DatabaseError: as :func:`~certmgr.issuance.revocation.refresh_crl`.
    """
    del now
    from certmgr.issuance.revocation import refresh_crl

    try:
        runtime.ca_info()
    except CANotInitialisedError:
        return Skipped("no CA yet")
    return refresh_crl(runtime).meta.number


@dataclass(frozen=True)
class ConfiguredJob:
    """A job as configured (no service bound): what ``certmgr status`` can show without running anything."""

    id: str
    interval: float
    singleton: bool
    start_delay: float


def configured_jobs(settings: Settings) -> list[ConfiguredJob]:
    """The jobs of the scheduler role with their intervals, in order of importance (= start order)."""
    s = settings
    return [
        ConfiguredJob(RENEWAL, s.renewal_interval_seconds, True, 0.0),
        ConfiguredJob(ROLLBACK, max(s.dispatch_tick_seconds * 10, 5.0), False, 0.0),
        ConfiguredJob(EXPIRY_NOTIFY, s.notify_interval_seconds, True, 1.0),
        ConfiguredJob(CA_WATCH, s.notify_interval_seconds, True, 1.5),
        ConfiguredJob(INCIDENT_NOTIFY, s.notify_interval_seconds, True, 1.8),
        ConfiguredJob(PROBE_SWEEP, s.probe_sweep_interval_seconds, True, 2.0),
        ConfiguredJob(CHECKPOINT, s.checkpoint_interval_seconds, True, 3.0),
        ConfiguredJob(CRL_REFRESH, s.crl_refresh_interval_seconds, True, 4.0),
        ConfiguredJob(REPORT_EXPORT, s.export_interval_seconds, True, 5.0),
    ]


def job_specs(runtime: Runtime) -> list[JobSpec]:
    """The jobs of the scheduler role (:func:`configured_jobs`) bound to their services."""
    from certmgr.deploy.rollback import rollback_failed
    from certmgr.phones.sweep import ProbeSweep
    from certmgr.renewal.service import reconcile_renewals
    from certmgr.scheduling.tasks import audit_checkpoint, ca_expiry_watch, expiry_notify, incident_notify

    sweep = ProbeSweep(runtime)
    calls: dict[str, Callable[[Runtime, datetime], object]] = {
        RENEWAL: reconcile_renewals,
        ROLLBACK: rollback_failed,
        EXPIRY_NOTIFY: expiry_notify,
        CA_WATCH: ca_expiry_watch,
        INCIDENT_NOTIFY: incident_notify,
        PROBE_SWEEP: lambda _rt, now: sweep.run(now),
        CHECKPOINT: audit_checkpoint,
        CRL_REFRESH: crl_refresh,
        REPORT_EXPORT: report_export,
    }
    return [
        JobSpec(job.id, job.interval, job.singleton, calls[job.id], job.start_delay)
        for job in configured_jobs(runtime.settings)
    ]


# --- status ----------------------------------------------------------------------------------------------------
Outcome = Literal["running", "ok", "failed", "skipped"]
_DETAIL_MAX = 300


@dataclass(frozen=True)
class JobStatus:
    """One job as this process knows it (see "Status" in the module docstring)."""

    id: str
    interval_seconds: float
    singleton: bool
    next_run_at: datetime | None = None
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_outcome: Outcome | None = None
    last_detail: str | None = None
    runs: int = 0


@dataclass(frozen=True)
class SchedulerStatus:
    """Whether this process runs the scheduler, and its jobs."""

    running: bool
    jobs: tuple[JobStatus, ...] = ()


def describe(result: object) -> str | None:
    """A short, secret-free summary of a job's result for the status: counts instead of lists.

    Raises:
        ValueError: never.
    """
    if result is None:
        return None
    if isinstance(result, Skipped):
        return result.reason
    if isinstance(result, bool | int | float | str):
        return str(result)[:_DETAIL_MAX]
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        parts: list[str] = []
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if isinstance(value, list | tuple | dict | set | frozenset):
                parts.append(f"{f.name}={len(value)}")
            elif isinstance(value, bool | int | float | str) or value is None:
                parts.append(f"{f.name}={value}")
        return ", ".join(parts)[:_DETAIL_MAX]
    if isinstance(result, list | tuple):
        return f"{len(result)} item(s)"
    return type(result).__name__


class SchedulerMonitor:
    """The in-memory status of this process's scheduler; thread-safe (jobs run in worker threads, the API reads
    from its own). Times of runs come from ``clock`` (real time by default, like APScheduler's triggers)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._jobs: dict[str, JobStatus] = {}
        self._scheduler: AsyncIOScheduler | None = None

    def attach(self, scheduler: AsyncIOScheduler, specs: Sequence[JobSpec]) -> None:
        """Register ``specs`` (keeping what earlier runs recorded) and the scheduler that runs them."""
        with self._lock:
            for spec in specs:
                known = self._jobs.get(spec.id)
                self._jobs[spec.id] = (
                    dataclasses.replace(known, interval_seconds=spec.interval, singleton=spec.singleton)
                    if known is not None
                    else JobStatus(spec.id, spec.interval, spec.singleton)
                )
            self._scheduler = scheduler

    def detach(self) -> None:
        """The scheduler stopped (the recorded runs stay for the rest of the process)."""
        with self._lock:
            self._scheduler = None

    def started(self, job_id: str) -> None:
        """A run of ``job_id`` starts now."""
        with self._lock:
            known = self._jobs.get(job_id) or JobStatus(job_id, 0.0, False)
            self._jobs[job_id] = dataclasses.replace(
                known, last_started_at=self._clock.now(), last_finished_at=None, last_outcome="running"
            )

    def finished(self, job_id: str, outcome: Outcome, detail: str | None = None) -> None:
        """The run of ``job_id`` ended now with ``outcome``."""
        with self._lock:
            known = self._jobs.get(job_id) or JobStatus(job_id, 0.0, False)
            self._jobs[job_id] = dataclasses.replace(
                known,
                last_finished_at=self._clock.now(),
                last_outcome=outcome,
                last_detail=detail[:_DETAIL_MAX] if detail else None,
                runs=known.runs + 1,
            )

    def status(self) -> SchedulerStatus:
        """A snapshot: every registered job with its next run time (while the scheduler runs)."""
        with self._lock:
            scheduler = self._scheduler
            jobs = list(self._jobs.values())
        out: list[JobStatus] = []
        for job in jobs:
            next_run: datetime | None = None
            if scheduler is not None:
                found = scheduler.get_job(job.id)
                next_run = getattr(found, "next_run_time", None) if found is not None else None
            out.append(dataclasses.replace(job, next_run_at=next_run))
        return SchedulerStatus(running=scheduler is not None, jobs=tuple(out))


def run_job(runtime: Runtime, spec: JobSpec, monitor: SchedulerMonitor | None = None) -> object:
    """Run one job now, synchronously, under leadership if it is a singleton; returns the service's result
    (``None`` when another node leads). Errors are logged, never raised: the next run tries again. With
    ``monitor``, the run's start, end and outcome are recorded there.

    Raises:
        CertmgrError: never (logged).
    """
    if monitor is not None:
        monitor.started(spec.id)
    outcome: Outcome = "failed"
    detail: str | None = None
    result: object = None
    try:
        if spec.singleton:
            with leadership(runtime.engine, spec.id) as leader:
                if not leader:
                    log.debug("job %s: another node leads", spec.id)
                    outcome, detail = "skipped", "another node leads"
                    return None
                result = spec.call(runtime, runtime.clock.now())
        else:
            result = spec.call(runtime, runtime.clock.now())
        outcome = "skipped" if isinstance(result, Skipped) else "ok"
        detail = describe(result)
        return result
    except CertmgrError as exc:
        log_failure(log, f"job {spec.id} failed", exc)
        detail = exc.message
    except Exception as exc:  # a bug must not stop the scheduler; logged with its traceback
        log.exception("job %s failed", spec.id)
        detail = type(exc).__name__
    finally:
        if monitor is not None:
            monitor.finished(spec.id, outcome, detail)
    return None


def build_scheduler(
    runtime: Runtime, specs: list[JobSpec] | None = None, monitor: SchedulerMonitor | None = None
) -> AsyncIOScheduler:
    """An ``AsyncIOScheduler`` (not started) with the jobs of :func:`job_specs`, each first run at start; with
    ``monitor``, the jobs are registered there and every run is recorded.

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
    specs = specs if specs is not None else job_specs(runtime)
    for spec in specs:

        async def job(spec: JobSpec = spec) -> Any:
            return await asyncio.to_thread(run_job, runtime, spec, monitor)

        scheduler.add_job(
            job,
            trigger=IntervalTrigger(seconds=spec.interval, timezone="UTC"),
            id=spec.id,
            name=spec.id,
            next_run_time=start + timedelta(seconds=spec.start_delay),
            replace_existing=True,
        )
    if monitor is not None:
        monitor.attach(scheduler, specs)
    return scheduler


async def run_scheduler(
    runtime: Runtime,
    stop: asyncio.Event,
    specs: list[JobSpec] | None = None,
    monitor: SchedulerMonitor | None = None,
) -> None:
    """Run the scheduler on the current loop until ``stop`` is set (a background task of ``certmgr serve``);
    ``monitor`` records the status of its jobs.

    Raises:
        CertmgrError: never; job errors are logged.
    """
    scheduler = build_scheduler(runtime, specs, monitor)
    scheduler.start()
    try:
        await stop.wait()
    finally:
        if monitor is not None:
            monitor.detach()
        scheduler.shutdown(wait=False)


__all__ = [
    "CA_WATCH",
    "CHECKPOINT",
    "CRL_REFRESH",
    "DISPATCH",
    "EXPIRY_NOTIFY",
    "PROBE_SWEEP",
    "RENEWAL",
    "REPORT_EXPORT",
    "ROLLBACK",
    "ConfiguredJob",
    "JobSpec",
    "JobStatus",
    "SchedulerMonitor",
    "SchedulerStatus",
    "Skipped",
    "build_scheduler",
    "configured_jobs",
    "crl_refresh",
    "describe",
    "job_specs",
    "report_export",
    "run_job",
    "run_scheduler",
]
