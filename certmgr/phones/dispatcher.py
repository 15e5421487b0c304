"""The dispatcher: the background task of ``certmgr serve`` that moves deployments forward.

Each tick (``dispatch_tick_seconds``): forget idle interactions; reconcile (issue certificates, queue
deployments); retry deployments whose phone never called back; claim due deployments up to the concurrency
limit and send their contact-me (httpx, bounded timeouts) concurrently. On start it runs restart recovery
(:func:`certmgr.deploy.recover`). Every timestamp comes from ``runtime.clock``; ``asyncio`` only paces
the ticks.

The dispatcher runs next to the WPI hub (``--role wpi`` / ``all``) or without it in the scheduler process
(``dispatch_role = "scheduler"``): everything it needs is in the database. Without a hub it cannot see live
interactions, so it relies on the deployments' leases (set by the hub in the WPI process) to leave them alone,
and a newly seen phone waits for the reconcile cursor instead of being looked at on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import httpx

from certmgr.db.health import log_failure
from certmgr.db.txretry import run_db
from certmgr.deploy.queue import ContactTask, claim_due, confirm_written, contact_result
from certmgr.deploy.reconcile import Reconciler
from certmgr.deploy.recovery import expire_stale, recover
from certmgr.errors import CertmgrError
from certmgr.phones.contactme import send_contact_me
from certmgr.phones.hub import DeploymentHub
from certmgr.phones.probe import probe_once

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.deploy")


class Dispatcher:
    """Runs the pipeline for one process; see the module docstring."""

    def __init__(self, runtime: Runtime, hub: DeploymentHub | None, *, callback_port: int | None = None) -> None:
        self.runtime = runtime
        self.hub = hub
        self.reconciler = Reconciler(runtime)
        self.callback_port = callback_port or runtime.settings.wpi_port
        self._contacts: set[asyncio.Task[None]] = set()
        if hub is not None:
            hub.on_device_seen.append(self.reconciler.mark)

    async def run(self, stop: asyncio.Event) -> None:
        """Recover, then tick until ``stop`` is set.

        Raises:
            CertmgrError: never; errors of one tick are logged and the next tick runs.
        """
        timeout = httpx.Timeout(self.runtime.settings.contact_me_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            try:
                recovered = await run_db(recover, self.runtime, self.runtime.clock.now())
                if recovered:
                    log.info("recovered %d unfinished deployments", recovered)
            except CertmgrError as exc:
                log_failure(log, "restart recovery failed", exc)
            while not stop.is_set():
                try:
                    await self.tick(client)
                except CertmgrError as exc:
                    log_failure(log, "dispatcher tick failed", exc)
                except Exception:  # a bug must not stop the service; it is logged with its traceback
                    log.exception("dispatcher tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.runtime.settings.dispatch_tick_seconds)
            if self._contacts:
                await asyncio.wait(self._contacts, timeout=10)
            if self.hub is not None:
                await self.hub.close()

    async def tick(self, client: httpx.AsyncClient) -> None:
        """One round of work (bounded).

        Raises:
            DatabaseError: if the database cannot be reached.
        """
        runtime = self.runtime
        hub = self.hub
        if hub is not None:
            hub.sweep()
        await run_db(self.reconciler.run, runtime.clock.now())
        active = hub.active_deployments() if hub is not None else frozenset()
        await run_db(expire_stale, runtime, runtime.clock.now(), active_deployments=active)
        busy = hub.active_macs() if hub is not None else frozenset()
        # run_db: a phone calling back may change one of the claimed deployments in the same instant (optimistic lock).
        tasks = await run_db(claim_due, runtime, runtime.clock.now(), exclude_macs=busy)
        for task in tasks:
            job = asyncio.create_task(self._contact(client, task), name=f"contact-{task.mac}")
            self._contacts.add(job)
            job.add_done_callback(self._contacts.discard)

    async def _contact(self, client: httpx.AsyncClient, task: ContactTask) -> None:
        settings = self.runtime.settings
        error: str | None = None
        addr: str | None = None
        if task.unknown_write is not None:
            await self._check_unknown_write(task, task.unknown_write)
        try:
            _status, addr = await send_contact_me(client, task.target, settings.wpi_public_addr, self.callback_port)
        except CertmgrError as exc:
            error = exc.message
        try:
            # run_db: the phone, answering this contact-me, may already be changing the deployment (callback).
            await run_db(
                contact_result,
                self.runtime,
                task.deployment_id,
                self.runtime.clock.now(),
                error=error,
                dls_ip_addr=addr,
            )
        except CertmgrError as exc:
            log_failure(log, f"cannot record the contact-me to {task.mac}", exc)

    async def _check_unknown_write(self, task: ContactTask, expected_sha256: str) -> None:
        """An earlier WriteItems' answer never came: if the phone's WBM already serves the certificate, record the
        write (the contact that follows only verifies); otherwise the job reads the phone's info before writing."""
        settings = self.runtime.settings
        try:
            seen = await asyncio.to_thread(probe_once, task.phone_ip, settings.wbm_port, settings.probe_timeout_seconds)
        except CertmgrError:
            return
        if seen == expected_sha256:
            try:
                await run_db(confirm_written, self.runtime, task.deployment_id, self.runtime.clock.now())
            except CertmgrError as exc:
                log_failure(log, f"cannot record the write of {task.mac}", exc)
