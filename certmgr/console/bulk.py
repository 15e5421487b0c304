"""Bulk actions of the console: renew, retry or approve every phone a phone filter matches.

The page shows a preview (how many, the first rows) and asks for confirmation; the confirmed job is a row of
``console_job`` and runs server-side in a thread of the API process, walking the filter's phones in id order
(keyset batches). Each phone's action is the operator use case of :mod:`certmgr.operations` — audited there with
the console user as actor — and the job records its progress (done, skipped with the reason, failed with the
error) after every phone, so the page can show it. Jobs of a process that stopped show as ``interrupted``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlmodel import col, select

from certmgr import operations
from certmgr.audit.log import append_event
from certmgr.console.fleet import PhoneFilter, count_matching, matching_ids, parse_filter, phones_page
from certmgr.db.engine import session_scope
from certmgr.db.locks import node_name
from certmgr.db.models import (
    ConsoleJob,
    Deployment,
    DeploymentState,
    Device,
    Enrollment,
)
from certmgr.errors import CertmgrError, ConflictError, NotFoundError
from certmgr.inventory.enrollment import held_move

if TYPE_CHECKING:
    from certmgr.console.fleet import PhoneRow
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.console")

ACTIONS = {
    "renew": "renew the certificate of",
    "retry": "retry the last deployment of",
    "approve": "approve",
}
PREVIEW_ROWS = 10
MAX_ERRORS = 50
MAX_RUNNING = 2
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"


class Skip(Exception):
    """This phone is left alone, for the reason given."""


@dataclass(frozen=True)
class Preview:
    """What a bulk action would touch."""

    action: str
    flt: PhoneFilter
    count: int
    first: list[PhoneRow]


def preview(runtime: Runtime, flt: PhoneFilter, action: str) -> Preview:
    """How many phones ``flt`` matches and the first :data:`PREVIEW_ROWS` of them (in the list's order)."""
    now = runtime.clock.now()
    with session_scope(runtime.engine) as session:
        count = count_matching(session, flt, now)
        first = phones_page(session, replace(flt, cursor=""), now, PREVIEW_ROWS).rows
    return Preview(action, flt, count, first)


def _renew(runtime: Runtime, device: Device, actor: str) -> str:
    if device.enrollment is not Enrollment.APPROVED:
        raise Skip(f"not approved ({device.enrollment.value})")
    if device.current_certificate_id is None:
        raise Skip("no current certificate yet")
    result = operations.renew_certificate(runtime, device.current_certificate_id, actor)
    return f"certificate {result.serial} queued as deployment {result.deployment_id}"


def _retry(runtime: Runtime, device: Device, actor: str) -> str:
    with session_scope(runtime.engine) as session:
        newest = session.exec(
            select(Deployment).where(col(Deployment.device_id) == device.id).order_by(col(Deployment.id).desc())
        ).first()
        state, dep_id = (newest.state, newest.id) if newest is not None else (None, None)
    if dep_id is None or state is None:
        raise Skip("no deployment to retry")
    if state not in (DeploymentState.QUEUED, DeploymentState.FAILED, DeploymentState.CANCELLED):
        raise Skip(f"last deployment is {state.value}")
    result = operations.retry_deployment(runtime, dep_id, actor)
    return f"deployment {result.deployment.id} due now"


def _approve(runtime: Runtime, device: Device, actor: str) -> str:
    if (held := held_move(device)) is not None:  # each held move is approved on its own page (a flood of claims)
        raise Skip(f"a move to {held} is held: approve it on the phone's page")
    if device.enrollment is not Enrollment.PENDING:
        raise Skip(f"not awaiting approval ({device.enrollment.value})")
    assert device.id is not None
    operations.approve(runtime, device.id, actor)
    return "approved"


_DO: dict[str, Callable[[Runtime, Device, str], str]] = {"renew": _renew, "retry": _retry, "approve": _approve}


def create_job(runtime: Runtime, flt: PhoneFilter, action: str, actor: str, expected: int) -> int:
    """Record a bulk job (state ``running``; :class:`JobRunner` runs it) and audit its start; returns its id.

    Raises:
        InputError: for an unknown action.
    """
    from certmgr.errors import InputError

    if action not in ACTIONS:
        raise InputError(f"unknown bulk action {action!r}")
    now = runtime.clock.now()
    with session_scope(runtime.engine) as session:
        job = ConsoleJob(
            action=action,
            actor=actor,
            filters=flt.params(),
            state=RUNNING,
            expected=expected,
            node=node_name(runtime.settings),
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()
        assert job.id is not None
        append_event(
            session,
            at=now,
            actor=actor,
            action="console.bulk-started",
            subject_type="job",
            subject_id=str(job.id),
            details={"action": action, "filter": flt.params(), "expected": expected},
        )
        return job.id


def _progress(runtime: Runtime, job_id: int, **values: Any) -> None:
    with session_scope(runtime.engine) as session:
        session.execute(
            update(ConsoleJob).where(col(ConsoleJob.id) == job_id).values(updated_at=runtime.clock.now(), **values)
        )


def run_job(runtime: Runtime, job_id: int, stop: threading.Event | None = None) -> ConsoleJob:
    """Carry out the bulk job ``job_id`` (see the module docstring); returns the finished row.

    Raises:
        NotFoundError: if there is no such job.
    """
    with session_scope(runtime.engine) as session:
        job = session.get(ConsoleJob, job_id)
        if job is None:
            raise NotFoundError(f"no bulk job {job_id}")
        action, actor, filters = job.action, job.actor, dict(job.filters)
    flt, _ = parse_filter({k: str(v) for k, v in filters.items()})
    do = _DO[action]
    counts = {"total": 0, "succeeded": 0, "skipped": 0, "failed": 0}
    errors: list[dict[str, Any]] = []
    state = DONE
    now = runtime.clock.now()
    try:
        with session_scope(runtime.engine) as reader:
            for ids in matching_ids(reader, flt, now):
                for device_id in ids:
                    if stop is not None and stop.is_set():
                        state = INTERRUPTED
                        break
                    device = _load(runtime, device_id)
                    if device is None:
                        continue
                    counts["total"] += 1
                    try:
                        do(runtime, device, actor)
                        counts["succeeded"] += 1
                    except Skip as why:
                        counts["skipped"] += 1
                        _note(errors, device.mac, "skipped", str(why))
                    except ConflictError as exc:
                        counts["skipped"] += 1
                        _note(errors, device.mac, "skipped", exc.message)
                    except CertmgrError as exc:
                        counts["failed"] += 1
                        _note(errors, device.mac, "failed", exc.message)
                    _progress(runtime, job_id, errors=list(errors), **counts)
                if state is INTERRUPTED:
                    break
    except CertmgrError as exc:
        state = FAILED
        _note(errors, "", "failed", exc.message)
        log.error("bulk job %s stopped: %s", job_id, exc.message)
    finished = runtime.clock.now()
    _progress(runtime, job_id, state=state, finished_at=finished, errors=list(errors), **counts)
    with session_scope(runtime.engine) as session:
        append_event(
            session,
            at=finished,
            actor=actor,
            action="console.bulk-finished",
            subject_type="job",
            subject_id=str(job_id),
            details={"action": action, "state": state, **counts},
        )
        row = session.get(ConsoleJob, job_id)
        assert row is not None
        session.expunge(row)
        return row


def _load(runtime: Runtime, device_id: int) -> Device | None:
    with session_scope(runtime.engine) as session:
        device = session.get(Device, device_id)
        if device is not None:
            session.expunge(device)
        return device


def _note(errors: list[dict[str, Any]], mac: str, kind: str, message: str) -> None:
    if len(errors) < MAX_ERRORS:
        errors.append({"mac": mac, "outcome": kind, "message": message[:200]})


def get_job(runtime: Runtime, job_id: int) -> ConsoleJob:
    """The job row (``running`` jobs of this node that no thread runs any more read ``interrupted``).

    Raises:
        NotFoundError: if there is no such job.
    """
    with session_scope(runtime.engine) as session:
        job = session.get(ConsoleJob, job_id)
        if job is None:
            raise NotFoundError(f"no bulk job {job_id}", id=job_id)
        session.expunge(job)
        return job


def recent_jobs(runtime: Runtime, limit: int = 20) -> list[ConsoleJob]:
    """The newest bulk jobs."""
    with session_scope(runtime.engine) as session:
        rows = list(session.exec(select(ConsoleJob).order_by(col(ConsoleJob.id).desc()).limit(limit)))
        for row in rows:
            session.expunge(row)
        return rows


def mark_interrupted(runtime: Runtime) -> int:
    """Jobs this node left ``running`` when it stopped: ``interrupted`` (called when the console starts)."""
    with session_scope(runtime.engine) as session:
        result = session.execute(
            update(ConsoleJob)
            .where(col(ConsoleJob.state) == RUNNING, col(ConsoleJob.node) == node_name(runtime.settings))
            .values(state=INTERRUPTED, updated_at=runtime.clock.now())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class JobRunner:
    """Runs confirmed bulk jobs in background threads (at most :data:`MAX_RUNNING` at once per process)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._threads: dict[int, threading.Thread] = {}
        self._done: dict[int, threading.Event] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def busy(self) -> bool:
        """Whether no further job may start now."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads.values()) >= MAX_RUNNING

    def start(self, job_id: int) -> None:
        """Run job ``job_id`` in a new thread."""
        done = threading.Event()

        def work() -> None:
            try:
                run_job(self.runtime, job_id, self._stop)
            except Exception:  # a thread must not die silently: log, and mark the job failed
                log.exception("bulk job %s failed", job_id)
                _progress(self.runtime, job_id, state=FAILED, finished_at=self.runtime.clock.now())
            finally:
                done.set()

        thread = threading.Thread(target=work, name=f"console-job-{job_id}", daemon=True)
        with self._lock:
            self._threads[job_id] = thread
            self._done[job_id] = done
        thread.start()

    def wait(self, job_id: int, timeout: float) -> bool:
        """Wait (bounded) until job ``job_id`` finished; whether it did."""
        with self._lock:
            done = self._done.get(job_id)
        return done is not None and done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask running jobs to stop after their current phone, and wait (bounded)."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)


def describe(job: ConsoleJob) -> str:
    """One line about ``job`` for people."""
    what = ACTIONS.get(job.action, job.action)
    return f"{what} every phone matching the filter"


__all__ = [
    "ACTIONS",
    "JobRunner",
    "Preview",
    "create_job",
    "describe",
    "get_job",
    "mark_interrupted",
    "preview",
    "recent_jobs",
    "run_job",
]
