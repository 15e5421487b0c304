"""Proving an address claim: a known phone reported from a new address, so that address is TLS-probed — serving the
certificate certmgr last deployed to the phone proves it holds the phone's key — and the claim is decided
(:func:`certmgr.inventory.enrollment.resolve_claim`: moved, or held for an operator). Bounded: one proof per phone at
a time, at most :data:`MAX_PROOFS` at once, one per phone per ``address_proof_interval_seconds``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from certmgr.db.engine import session_scope
from certmgr.db.health import log_failure
from certmgr.db.txretry import run_db
from certmgr.errors import CertmgrError
from certmgr.inventory.enrollment import AddressClaim, resolve_claim
from certmgr.phones.probe import probe_once

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.wpi")

#: Address proofs (TLS probes of a claimed new address) running at once.
MAX_PROOFS = 16
#: Phones whose last proof time is remembered, at most.
MAX_REMEMBERED = 10_000


@dataclass
class AddressProofs:
    """The address proofs of this process; ``on_moved(mac)`` is called for a phone that moved."""

    runtime: Runtime
    on_moved: Callable[[str], None]
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _last: dict[str, datetime] = field(default_factory=dict)

    def start(self, claim: AddressClaim) -> None:
        """TLS-probe a claimed new address in the background, then move the phone or hold the move (bounded: one
        proof per phone at a time, at most :data:`MAX_PROOFS` at once, one per phone per
        ``address_proof_interval_seconds``)."""
        now = self.runtime.clock.now()
        last = self._last.get(claim.mac)
        interval = timedelta(seconds=self.runtime.settings.address_proof_interval_seconds)
        if claim.mac in self._tasks or len(self._tasks) >= MAX_PROOFS or (last is not None and last + interval > now):
            return
        self._last[claim.mac] = now
        if len(self._last) > MAX_REMEMBERED:
            self._last = {m: t for m, t in self._last.items() if t + interval > now}
        task = asyncio.create_task(self._prove(claim), name=f"proof-{claim.mac}")
        self._tasks[claim.mac] = task
        task.add_done_callback(lambda _t: self._tasks.pop(claim.mac, None))

    async def _prove(self, claim: AddressClaim) -> None:
        settings = self.runtime.settings
        seen: str | None = None
        error: str | None = None
        try:
            seen = await asyncio.to_thread(probe_once, claim.ip, settings.wbm_port, settings.probe_timeout_seconds)
        except CertmgrError as exc:
            error = exc.message
        try:
            outcome = await run_db(prove_address, self.runtime, claim, seen, error, self.runtime.clock.now())
        except CertmgrError as exc:
            log_failure(log, f"cannot decide the address claim of {claim.mac}", exc)
            return
        except Exception:  # a bug must not vanish with the background task; it is logged with its traceback
            log.exception("cannot decide the address claim of %s", claim.mac)
            return
        if outcome == "moved":
            self.on_moved(claim.mac)

    async def close(self) -> None:
        """Wait (bounded) for the running proofs; cancel what is left."""
        tasks = list(self._tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()


def prove_address(
    runtime: Runtime, claim: AddressClaim, seen_sha256: str | None, error: str | None, now: datetime
) -> str:
    """:func:`certmgr.inventory.enrollment.resolve_claim` in its own transaction.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    with session_scope(runtime.engine) as session:
        return resolve_claim(
            session, claim, served_sha256=seen_sha256, probe_error=error, now=now, policies=runtime.policies
        )


__all__ = ["MAX_PROOFS", "AddressProofs", "prove_address"]
