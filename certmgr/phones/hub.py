"""The live side of the pipeline, shared by the phone-facing listener and the dispatcher (one asyncio loop).

:class:`DeploymentHub` owns the in-memory interaction table, runs one phone message through
:mod:`certmgr.wpi.interaction`, applies the effects in the database (worker thread, one transaction with the audit
events), and hands the two long-running checks to their own homes: the TLS probe of the WBM port after the
certificate info came back (:class:`~certmgr.phones.verifier.WbmProbes`) and the proof of an address claim
(:class:`~certmgr.phones.proofs.AddressProofs`).

**Who may hold what** (everything reaching this port may come from an attacker on the phone network):

* An interaction is *trusted* when its TCP peer is the phone's known address (or a trusted proxy). Only a trusted
  interaction is indexed by the phone's MAC (D3's fallback) and counts as "the phone's interaction": a message from
  another address can neither continue it (by cookie or by MAC) nor occupy the phone's place.
* Untrusted interactions (unknown phones, foreign peers) live in a bounded pool: at most ``wpi_max_open_per_peer``
  per address and ``wpi_max_untrusted`` in all (more get HTTP 429), ``wpi_max_buffered_per_peer`` /
  ``wpi_max_buffered`` bytes of unfinished fragmented messages, and they expire after
  ``wpi_untrusted_timeout_seconds``. Every interaction stops (CleanUp, protocol violation) past
  ``wpi_max_interaction_bytes``. A phone with a pending deployment is served whatever the pool holds.
* Refusals from foreign peers are audited at most once per (address, phone) every ``_AUDIT_EVERY`` (with the
  count of those not written), so a flood cannot grow the audit log faster than the fleet's size per period.

Every database call runs in a worker thread (``asyncio.to_thread``; the ones that change a deployment through
:func:`~certmgr.db.txretry.run_db`, which retries a lost optimistic-lock race); the table itself is only touched
on the event loop, and a per-(address, phone) :class:`asyncio.Lock` serialises the messages of one phone.
"""

from __future__ import annotations

import ctypes
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from certmgr.db.txretry import run_db
from certmgr.deploy.admission import Admitted, admit
from certmgr.deploy.effects import apply_effects
from certmgr.errors import CertmgrError, DatabaseError, ProtocolError
from certmgr.phones.keylocks import KeyLocks
from certmgr.phones.proofs import AddressProofs
from certmgr.phones.verifier import WbmProbes
from certmgr.wpi import interaction as wi
from certmgr.wpi.codec import encode_dls, parse_workpoint
from certmgr.wpi.jobs import NoJob, Serve, deployment_of
from certmgr.wpi.messages import DLSMessage, Reason, WorkpointMessage, cleanup_message

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.wpi")

COOKIE_NAME = "JSESSIONID"
COOKIE_PATH = "/DeploymentService"
MAX_INTERACTIONS = 10_000
#: Refusals from one foreign address are audited at most this often.
_AUDIT_EVERY = timedelta(seconds=10)
#: Expired interactions holding at least this many bytes give freed memory back to the system (a flood's debris).
RELEASE_TO_OS_BYTES = 1024 * 1024


@dataclass
class _Live:
    token: str
    mac: str | None
    interaction: wi.Interaction
    deployment_id: int | None
    authorised: bool
    peer: str | None
    last_at: datetime
    trusted: bool  # the peer is the phone's known address (or a trusted proxy)
    taken: int = 0  # request bytes this interaction has taken so far


@dataclass(frozen=True)
class WpiResponse:
    """What the HTTP adapter sends back."""

    status: int
    body: bytes
    content_type: str = "text/xml; charset=utf-8"
    set_cookie: str | None = None
    retry_after: int | None = None


def _plain(status: int, text: str, retry_after: int | None = None) -> WpiResponse:
    return WpiResponse(status, f"{text}\n".encode(), "text/plain; charset=utf-8", retry_after=retry_after)


@dataclass
class DeploymentHub:
    """Interaction table, busy markers, probe and proof tasks of one certmgr process."""

    runtime: Runtime
    _live: dict[str, _Live] = field(default_factory=dict)
    _by_mac: dict[str, str] = field(default_factory=dict)
    _untrusted_per_peer: dict[str, int] = field(default_factory=dict)
    _buffered_per_peer: dict[str, int] = field(default_factory=dict)
    _busy_until: dict[str, datetime] = field(default_factory=dict)
    _locks: KeyLocks = field(default_factory=KeyLocks)
    _audited: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    on_device_seen: list[Any] = field(default_factory=list)
    probes: WbmProbes = field(init=False)
    proofs: AddressProofs = field(init=False)

    def __post_init__(self) -> None:
        self.probes = WbmProbes(self.runtime)
        self.proofs = AddressProofs(self.runtime, self._seen)

    def _seen(self, mac: str) -> None:
        for callback in self.on_device_seen:
            callback(mac)

    # -- views used by the dispatcher and the tests --
    def active_deployments(self) -> frozenset[int]:
        """Deployments with a live interaction or a running probe."""
        ids = {live.deployment_id for live in self._live.values() if live.deployment_id is not None}
        return frozenset(ids | self.probes.running())

    def active_macs(self) -> frozenset[str]:
        """Phones in a live (trusted) interaction."""
        return frozenset(self._by_mac)

    def held(self) -> dict[str, int]:
        """What the table holds: interactions, untrusted ones, buffered bytes of untrusted peers, locks."""
        return {
            "interactions": len(self._live),
            "untrusted": sum(self._untrusted_per_peer.values()),
            "buffered": sum(self._buffered_per_peer.values()),
            "locks": len(self._locks),
        }

    def _now(self) -> datetime:
        return self.runtime.clock.now()

    def _register(self, live: _Live) -> None:
        self._live[live.token] = live
        if live.trusted and live.mac is not None:
            self._by_mac[live.mac] = live.token
        elif not live.trusted:
            peer = live.peer or ""
            self._untrusted_per_peer[peer] = self._untrusted_per_peer.get(peer, 0) + 1

    def _drop(self, live: _Live) -> None:
        if self._live.pop(live.token, None) is None:
            return
        if live.mac is not None and self._by_mac.get(live.mac) == live.token:
            del self._by_mac[live.mac]
        if not live.trusted:
            peer = live.peer or ""
            self._decrement(self._untrusted_per_peer, peer, 1)
            self._decrement(self._buffered_per_peer, peer, live.taken)

    @staticmethod
    def _decrement(table: dict[str, int], key: str, amount: int) -> None:
        left = table.get(key, 0) - amount
        if left > 0:
            table[key] = left
        else:
            table.pop(key, None)

    def sweep(self) -> None:
        """Forget idle interactions (``interaction_timeout_seconds``; ``wpi_untrusted_timeout_seconds`` for
        untrusted ones), old busy markers and old refusal counters."""
        now = self._now()
        settings = self.runtime.settings
        idle = timedelta(seconds=settings.interaction_timeout_seconds)
        idle_untrusted = timedelta(seconds=settings.wpi_untrusted_timeout_seconds)
        released = 0
        for live in list(self._live.values()):
            if live.last_at + (idle if live.trusted else idle_untrusted) < now:
                if live.trusted:
                    log.info("interaction with %s timed out", live.mac)
                released += live.taken
                self._drop(live)
        if released >= RELEASE_TO_OS_BYTES:
            release_memory()  # what a flood left behind goes back to the system, not only to Python's allocator
        for mac in [m for m, until in self._busy_until.items() if until < now]:
            del self._busy_until[mac]
        for peer in [p for p, (at, _n) in self._audited.items() if at + _AUDIT_EVERY < now]:
            del self._audited[peer]

    # -- the phone-facing entry point --
    async def handle(self, body: bytes, *, peer: str | None, cookie: str | None, path: str) -> WpiResponse:
        """Process one POSTed ``WorkpointMessage`` and return the ``DLSMessage`` response.

        Raises:
            ProtocolError: never; malformed input becomes a 400 response (no state is touched).
        """
        try:
            msg = parse_workpoint(body, max_body=self.runtime.settings.wpi_max_body)
        except ProtocolError as exc:
            log.debug("rejected a WPI message from %s on %s: %s", peer, path[:200], exc.message)
            return _plain(400, f"bad request: {exc.message}")
        if path.rstrip("/") != "/DeploymentService/LoginService":
            log.debug("WPI message from %s on path %s", peer, path[:200])
        self.sweep()
        live = self._live.get(cookie) if cookie else None
        if live is not None and live.peer != peer:
            live = None  # a cookie from another address does not continue an interaction
        opening = msg.reason in wi.OPENING_REASONS
        if live is None and not opening and msg.mac is not None:
            token = self._by_mac.get(msg.mac)  # trusted interactions only
            candidate = self._live.get(token) if token else None
            if candidate is not None and candidate.peer == peer:
                live = candidate
        key = f"{peer}|{live.mac if live is not None and live.mac else msg.mac}"
        async with self._locks.hold(key):  # the messages of one (peer, phone) one at a time
            if live is None or (opening and cookie is None):
                return await self._open(msg, peer=peer, size=len(body))
            return await self._continue(live, msg, size=len(body))

    async def _open(self, msg: WorkpointMessage, *, peer: str | None, size: int) -> WpiResponse:
        settings = self.runtime.settings
        mac = msg.mac
        now = self._now()
        if mac is not None and mac in self._by_mac:
            other = self._live.get(self._by_mac[mac])
            if other is not None and not other.interaction.finished:
                # Never two interactions with one phone (only the phone's own address holds a place): the running
                # one keeps the job.
                reply = cleanup_message(msg.nonce, reason="interaction in progress")
                await self._audit_refusal(peer, mac, "second interaction while one is in progress", now)
                return WpiResponse(200, encode_dls(reply))
        admitted = Admitted(NoJob(), False)
        if mac is not None and msg.reason in wi.OPENING_REASONS:
            try:
                admitted = await run_db(
                    admit,
                    self.runtime,
                    mac=mac,
                    peer=peer,
                    reason=msg.reason if isinstance(msg.reason, Reason) else Reason.STATUS,
                    now=now,
                    busy_until=self._busy_until.get(mac),
                )
            except DatabaseError:
                raise  # the phone gets 503 + Retry-After (listener); the outage is logged once
            except CertmgrError as exc:
                log.error("cannot prepare the job for %s: %s", mac, exc.message)
                admitted = Admitted(NoJob(), False)
        admission = admitted.admission
        trusted = admitted.from_phone
        if not trusted:
            key = peer or ""
            if self._untrusted_per_peer.get(key, 0) >= settings.wpi_max_open_per_peer or (
                sum(self._untrusted_per_peer.values()) >= settings.wpi_max_untrusted
            ):
                return _plain(429, "too many open interactions from this address", retry_after=10)
        interaction, output = wi.start(msg, admission)
        authorised = isinstance(admission, Serve)
        token = secrets.token_hex(16)
        # A refused call is audited (rate-limited per address) and changes nothing else: no deployment is touched.
        deployment_id = deployment_of(admission) if authorised or trusted else None
        live = _Live(token, mac, interaction, deployment_id, authorised, peer, now, trusted)
        cookie = None
        if not output.finished:
            if len(self._live) >= MAX_INTERACTIONS:
                return _plain(429, "too many open interactions", retry_after=10)
            self._register(live)
            cookie = f"{COOKIE_NAME}={token}; Path={COOKIE_PATH}; Secure; HttpOnly"
            over = self._take(live, size)
            if over is not None:
                return await self._over_limit(live, msg, over)
        if mac is not None and authorised:
            self._busy_until.pop(mac, None)
        return await self._finish_step(live, msg, output, cookie)

    def _take(self, live: _Live, size: int) -> str | None:
        """Count ``size`` request bytes against the interaction's limits; the limit exceeded, if any."""
        settings = self.runtime.settings
        live.taken += size
        if live.taken > settings.wpi_max_interaction_bytes:
            return "interaction too large"
        if live.trusted:
            return None
        peer = live.peer or ""
        self._buffered_per_peer[peer] = self._buffered_per_peer.get(peer, 0) + size
        if self._buffered_per_peer[peer] > settings.wpi_max_buffered_per_peer:
            return "too much unfinished data from this address"
        if sum(self._buffered_per_peer.values()) > settings.wpi_max_buffered:
            return "too much unfinished data"
        return None

    async def _over_limit(self, live: _Live, msg: WorkpointMessage, why: str) -> WpiResponse:
        self._drop(live)
        reply = cleanup_message(msg.nonce, reason="protocol error")
        await self._audit_refusal(live.peer, live.mac, why, self._now())
        cookie = f"{COOKIE_NAME}=; Path={COOKIE_PATH}; Max-Age=0; Secure; HttpOnly"
        return WpiResponse(200, encode_dls(reply), set_cookie=cookie)

    async def _continue(self, live: _Live, msg: WorkpointMessage, *, size: int) -> WpiResponse:
        live.last_at = self._now()
        over = self._take(live, size)
        if over is not None:
            return await self._over_limit(live, msg, over)
        output = live.interaction.receive(msg)
        cookie = None
        if output.finished:
            self._drop(live)
            cookie = f"{COOKIE_NAME}=; Path={COOKIE_PATH}; Max-Age=0; Secure; HttpOnly"
        return await self._finish_step(live, msg, output, cookie)

    async def _audit_refusal(self, peer: str | None, mac: str | None, reason: str, now: datetime) -> None:
        """Audit a refusal, at most once per address and phone every :data:`_AUDIT_EVERY` (the count of the others
        with it): a flood from one address grows the audit log by at most one record per phone it names."""
        key = f"{peer}|{mac}"
        last = self._audited.get(key)
        if last is not None and last[0] + _AUDIT_EVERY > now:
            self._audited[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        self._audited[key] = (now, 0)
        effects: list[wi.Effect] = [wi.SecurityRefused(reason + (f" (+{suppressed} more)" if suppressed else ""))]
        await run_db(
            apply_effects,
            self.runtime,
            effects=effects,
            deployment_id=None,
            authorised=False,
            peer=peer,
            now=now,
            transcript=[],
            subject_mac=mac,
        )

    async def _finish_step(
        self, live: _Live, msg: WorkpointMessage, output: wi.Output, cookie: str | None
    ) -> WpiResponse:
        now = self._now()
        effects = output.effects
        if not live.trusted and any(isinstance(e, wi.SecurityRefused) for e in effects):
            refused = [e for e in effects if isinstance(e, wi.SecurityRefused)]
            effects = tuple(e for e in effects if not isinstance(e, wi.SecurityRefused))
            await self._audit_refusal(live.peer, live.mac, refused[0].reason, now)
        transcript = [_entry(now, "in", msg), _entry(now, "out", output.reply)]
        try:
            applied = await run_db(
                apply_effects,
                self.runtime,
                effects=effects,
                deployment_id=live.deployment_id,
                authorised=live.authorised,
                peer=live.peer,
                now=now,
                transcript=transcript if live.deployment_id is not None else [],
            )
        except DatabaseError:
            self._drop(live)  # nothing was recorded and the reply is not sent: the phone starts over later
            raise
        if applied.busy_mac is not None:
            self._busy_until[applied.busy_mac] = now + timedelta(seconds=self.runtime.settings.busy_callback_seconds)
        if applied.probe_deployment_id is not None:
            self.probes.start(applied.probe_deployment_id)
        for claim in applied.claims:
            self.proofs.start(claim)
        if live.trusted:
            for effect in effects:
                if isinstance(effect, wi.PhoneReported) and effect.mac is not None:
                    self._seen(effect.mac)
        return WpiResponse(200, encode_dls(output.reply), set_cookie=cookie)

    async def close(self) -> None:
        """Wait (bounded) for running probes and proofs to finish."""
        await self.probes.close()
        await self.proofs.close()


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


def release_memory() -> None:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``); nothing elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return
