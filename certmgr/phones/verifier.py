"""The TLS probe that ends a verification: once a phone reported its certificate info, its WBM is probed (in the
background, bounded tries) and the verdict recorded (:func:`certmgr.deploy.verification.finish_verification`) — again
a few times while the database is away, so that the result is not lost."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from certmgr.db.health import log_failure
from certmgr.db.txretry import run_db
from certmgr.deploy.verdict import Verdict
from certmgr.deploy.verification import finish_verification, probe_target
from certmgr.errors import CertmgrError, DatabaseError
from certmgr.phones.probe import probe_until

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.wpi")

#: Attempts to record a probe's result while the database is away (a few seconds apart).
RECORD_ATTEMPTS = 6


@dataclass
class WbmProbes:
    """The verification probes running in this process, one per deployment."""

    runtime: Runtime
    _tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    def running(self) -> frozenset[int]:
        """Deployments whose probe runs here."""
        return frozenset(self._tasks)

    def start(self, deployment_id: int) -> None:
        """Probe the phone's WBM in the background, then record the verdict."""
        if deployment_id in self._tasks:
            return
        task = asyncio.create_task(self._probe(deployment_id), name=f"probe-{deployment_id}")
        self._tasks[deployment_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(deployment_id, None))

    async def _probe(self, deployment_id: int) -> None:
        settings = self.runtime.settings
        try:
            target = await asyncio.to_thread(probe_target, self.runtime, deployment_id)
            if target is None:
                return
            seen, error = await asyncio.to_thread(
                probe_until,
                target.host,
                settings.wbm_port,
                target.expected_sha256,
                tries=settings.probe_tries,
                interval=settings.probe_interval_seconds,
                timeout=settings.probe_timeout_seconds,
            )
            verdict = await self._record_probe(deployment_id, seen, error)
            log.debug("deployment %s: %s", deployment_id, verdict.value if verdict else "no longer verifying")
        except CertmgrError as exc:
            log_failure(log, f"verification of deployment {deployment_id} failed", exc)
        except Exception:  # a bug must not vanish with the background task; it is logged with its traceback
            log.exception("verification of deployment %s failed", deployment_id)

    async def _record_probe(self, deployment_id: int, seen: str | None, error: str | None) -> Verdict | None:
        """Record a probe's result; while the database is away, try again (bounded: a few times, seconds apart) so
        that the result is not lost — past that, the lease runs out and the deployment is verified again."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                return await run_db(
                    finish_verification,
                    self.runtime,
                    deployment_id,
                    seen_sha256=seen,
                    probe_error=error,
                    now=self.runtime.clock.now(),
                )
            except DatabaseError:
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(2.0 * (attempt + 1), 10.0))
        return None  # pragma: no cover - the loop returns or raises

    async def close(self) -> None:
        """Wait (bounded) for the running probes; cancel what is left."""
        await _finish(list(self._tasks.values()))


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()


__all__ = ["RECORD_ATTEMPTS", "WbmProbes"]
