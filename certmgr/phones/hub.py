"""The live side of the pipeline, shared by the phone-facing listener and the dispatcher (one asyncio loop).

:class:`DeploymentHub` owns the in-memory interaction table (D3: keyed by the ``JSESSIONID`` cookie, with the
MAC as fallback; never two interactions with one phone), runs one phone message through
:mod:`certmgr.wpi.interaction`, applies the effects in the database (worker thread, one transaction with the
audit events) and starts the TLS probe after the certificate info came back.

Every database call runs in a worker thread (``asyncio.to_thread``; the ones that change a deployment through
:func:`~certmgr.db.txretry.run_db`, which retries a lost optimistic-lock race); the table itself is only
touched on the event loop, and a per-phone :class:`asyncio.Lock` serialises the messages of one phone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from certmgr.db.txretry import run_db
from certmgr.deploy.admission import admit
from certmgr.deploy.effects import apply_effects
from certmgr.deploy.verification import finish_verification, probe_target
from certmgr.errors import CertmgrError, ProtocolError
from certmgr.phones.probe import probe_until
from certmgr.wpi import interaction as wi
from certmgr.wpi.codec import encode_dls, parse_workpoint
from certmgr.wpi.jobs import Admission, NoJob, Serve, deployment_of
from certmgr.wpi.messages import DLSMessage, Reason, WorkpointMessage, cleanup_message

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.wpi")

COOKIE_NAME = "JSESSIONID"
COOKIE_PATH = "/DeploymentService"
MAX_INTERACTIONS = 10_000


@dataclass
class _Live:
    token: str
    mac: str | None
    interaction: wi.Interaction
    deployment_id: int | None
    authorised: bool
    peer: str | None
    last_at: datetime


@dataclass(frozen=True)
class WpiResponse:
    """What the HTTP adapter sends back."""

    status: int
    body: bytes
    content_type: str = "text/xml; charset=utf-8"
    set_cookie: str | None = None


@dataclass
class DeploymentHub:
    """Interaction table, busy markers and probe tasks of one certmgr process."""

    runtime: Runtime
    _live: dict[str, _Live] = field(default_factory=dict)
    _by_mac: dict[str, str] = field(default_factory=dict)
    _busy_until: dict[str, datetime] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _probes: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    on_device_seen: list[Any] = field(default_factory=list)

    # -- views used by the dispatcher --
    def active_deployments(self) -> frozenset[int]:
        """Deployments with a live interaction or a running probe."""
        ids = {live.deployment_id for live in self._live.values() if live.deployment_id is not None}
        return frozenset(ids | set(self._probes))

    def active_macs(self) -> frozenset[str]:
        """Phones in a live interaction."""
        return frozenset(self._by_mac)

    def _now(self) -> datetime:
        return self.runtime.clock.now()

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) > MAX_INTERACTIONS:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _drop(self, live: _Live) -> None:
        self._live.pop(live.token, None)
        if live.mac is not None and self._by_mac.get(live.mac) == live.token:
            del self._by_mac[live.mac]

    def sweep(self) -> None:
        """Forget interactions idle longer than ``interaction_timeout_seconds`` (and old busy markers)."""
        now = self._now()
        idle = timedelta(seconds=self.runtime.settings.interaction_timeout_seconds)
        for live in [x for x in self._live.values() if x.last_at + idle < now]:
            log.info("interaction with %s timed out", live.mac)
            self._drop(live)
        for mac in [m for m, until in self._busy_until.items() if until < now]:
            del self._busy_until[mac]

    # -- the phone-facing entry point --
    async def handle(self, body: bytes, *, peer: str | None, cookie: str | None, path: str) -> WpiResponse:
        """Process one POSTed ``WorkpointMessage`` and return the ``DLSMessage`` response.

        Raises:
            ProtocolError: never; malformed input becomes a 400 response (no state is touched).
        """
        try:
            msg = parse_workpoint(body, max_body=self.runtime.settings.wpi_max_body)
        except ProtocolError as exc:
            log.info("rejected a WPI message from %s on %s: %s", peer, path, exc.message)
            return WpiResponse(400, f"bad request: {exc.message}\n".encode(), "text/plain; charset=utf-8")
        if path.rstrip("/") != "/DeploymentService/LoginService":
            log.debug("WPI message from %s on path %s", peer, path[:200])
        self.sweep()
        live = self._live.get(cookie) if cookie else None
        if live is not None and live.peer != peer:
            live = None  # a cookie from another address does not continue an interaction
        opening = msg.reason in wi.OPENING_REASONS
        if live is None and not opening and msg.mac is not None:
            token = self._by_mac.get(msg.mac)
            candidate = self._live.get(token) if token else None
            if candidate is not None and candidate.peer == peer:
                live = candidate
        key = live.mac if live is not None and live.mac else (msg.mac or f"peer:{peer}")
        async with self._lock(key):
            if live is None or (opening and cookie is None):
                return await self._open(msg, peer=peer)
            return await self._continue(live, msg)

    async def _open(self, msg: WorkpointMessage, *, peer: str | None) -> WpiResponse:
        mac = msg.mac
        now = self._now()
        if mac is not None and mac in self._by_mac:
            other = self._live.get(self._by_mac[mac])
            if other is not None and not other.interaction.finished:
                # Never two interactions with one phone: the running one keeps the job.
                reply = cleanup_message(msg.nonce, reason="interaction in progress")
                await asyncio.to_thread(
                    apply_effects,
                    self.runtime,
                    effects=[wi.SecurityRefused("second interaction while one is in progress")],
                    deployment_id=None,
                    authorised=False,
                    peer=peer,
                    now=now,
                    transcript=[],
                )
                return WpiResponse(200, encode_dls(reply))
        admission: Admission = NoJob()
        if mac is not None and msg.reason in wi.OPENING_REASONS:
            busy_until = self._busy_until.get(mac)
            try:
                admission = await run_db(
                    admit,
                    self.runtime,
                    mac=mac,
                    peer=peer,
                    reason=msg.reason if isinstance(msg.reason, Reason) else Reason.STATUS,
                    now=now,
                    busy_until=busy_until,
                )
            except CertmgrError as exc:
                log.error("cannot prepare the job for %s: %s", mac, exc.message)
                admission = NoJob()
        interaction, output = wi.start(msg, admission)
        authorised = isinstance(admission, Serve)
        token = secrets.token_hex(16)
        live = _Live(token, mac, interaction, deployment_of(admission), authorised, peer, now)
        cookie = None
        if not output.finished:
            if len(self._live) >= MAX_INTERACTIONS:
                return WpiResponse(503, b"too many interactions\n", "text/plain; charset=utf-8")
            self._live[token] = live
            if mac is not None:
                self._by_mac[mac] = token
            cookie = f"{COOKIE_NAME}={token}; Path={COOKIE_PATH}; Secure; HttpOnly"
        if mac is not None and authorised:
            self._busy_until.pop(mac, None)
        return await self._finish_step(live, msg, output, cookie)

    async def _continue(self, live: _Live, msg: WorkpointMessage) -> WpiResponse:
        live.last_at = self._now()
        output = live.interaction.receive(msg)
        cookie = None
        if output.finished:
            self._drop(live)
            cookie = f"{COOKIE_NAME}=; Path={COOKIE_PATH}; Max-Age=0; Secure; HttpOnly"
        return await self._finish_step(live, msg, output, cookie)

    async def _finish_step(
        self, live: _Live, msg: WorkpointMessage, output: wi.Output, cookie: str | None
    ) -> WpiResponse:
        now = self._now()
        transcript = [_entry(now, "in", msg), _entry(now, "out", output.reply)]
        applied = await run_db(
            apply_effects,
            self.runtime,
            effects=output.effects,
            deployment_id=live.deployment_id,
            authorised=live.authorised,
            peer=live.peer,
            now=now,
            transcript=transcript if live.deployment_id is not None else [],
        )
        if applied.busy_mac is not None:
            self._busy_until[applied.busy_mac] = now + timedelta(seconds=self.runtime.settings.busy_callback_seconds)
        if applied.probe_deployment_id is not None:
            self.start_probe(applied.probe_deployment_id)
        for effect in output.effects:
            if isinstance(effect, wi.PhoneReported) and effect.mac is not None:
                for callback in self.on_device_seen:
                    callback(effect.mac)
        return WpiResponse(200, encode_dls(output.reply), set_cookie=cookie)

    # -- probing --
    def start_probe(self, deployment_id: int) -> None:
        """Probe the phone's WBM in the background, then record the verdict."""
        if deployment_id in self._probes:
            return
        task = asyncio.create_task(self._probe(deployment_id), name=f"probe-{deployment_id}")
        self._probes[deployment_id] = task
        task.add_done_callback(lambda _t: self._probes.pop(deployment_id, None))

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
            verdict = await run_db(
                finish_verification,
                self.runtime,
                deployment_id,
                seen_sha256=seen,
                probe_error=error,
                now=self._now(),
            )
            log.debug("deployment %s: %s", deployment_id, verdict.value if verdict else "no longer verifying")
        except CertmgrError as exc:
            log.error("verification of deployment %s failed: %s", deployment_id, exc.message)

    async def close(self) -> None:
        """Wait (bounded) for running probes to finish."""
        tasks = list(self._probes.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()


def _entry(now: datetime, direction: str, msg: WorkpointMessage | DLSMessage) -> dict[str, Any]:
    """A redacted transcript entry: message kind, reason/action, statuses and item *names* only."""
    entry: dict[str, Any] = {"at": now.isoformat(), "dir": direction, "nonce": msg.nonce[:64]}
    if isinstance(msg, WorkpointMessage):
        entry["reason"] = msg.reason.value
        if msg.reply_action is not None:
            entry["action"] = msg.reply_action.value
        if msg.reply_status is not None:
            entry["status"] = msg.reply_status.value
        if msg.fragment is not None:
            entry["fragment"] = msg.fragment.value
    else:
        entry["action"] = msg.action.value
    entry["items"] = [
        {"name": it.name[:64], **({"status": it.status[:64]} if it.status else {})} for it in msg.items[:50]
    ]
    return entry
