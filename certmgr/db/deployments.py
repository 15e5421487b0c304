"""The deployment state table and :func:`move`, the only way a deployment changes state; leases and the
transcript of a deployment row.

::

    queued ──► contacting ──► awaiting_callback ──► written ──► verifying ──► verified
      ▲  │          │                │   ▲             │            │
      │  │          └────────────────┴───┴─────────────┴────────────┴──► queued (retry, backoff)
      │  └──► awaiting_callback  (a poll answered 202, or a busy phone calling back with solicited)
      └── any unfinished state ──► failed | superseded | cancelled

``verifying`` also goes back to ``queued`` (re-verify later, never write again) and ``written`` /
``verifying`` come back to ``queued`` on restart recovery. Final states never change, except ``verified`` →
``superseded``.

What :func:`move` does besides the state, so that no caller can forget it:

* ``updated_at`` is stamped;
* ``error`` (if given) becomes ``last_error`` (clipped);
* going back to ``queued`` or into a final state releases the lease (nobody is working on the deployment);
* a final state stamps ``finished_at``.

A *lease* (``lease_owner`` / ``lease_until``) says that a node is working on a deployment (waiting for the
phone's callback, running its interaction or its probe); other nodes leave a leased deployment alone until the
lease runs out. Pure functions over the row: no session, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from certmgr.db.models import Deployment
from certmgr.db.models import DeploymentState as S
from certmgr.errors import ConflictError

_UNFINISHED = frozenset({S.QUEUED, S.CONTACTING, S.AWAITING_CALLBACK, S.WRITTEN, S.VERIFYING})
_ENDINGS = frozenset({S.FAILED, S.SUPERSEDED, S.CANCELLED})

#: Allowed transitions (from → to). Staying in the same state is always allowed (an update of other fields).
TRANSITIONS: dict[S, frozenset[S]] = {
    S.QUEUED: frozenset({S.CONTACTING, S.AWAITING_CALLBACK}) | _ENDINGS,
    S.CONTACTING: frozenset({S.AWAITING_CALLBACK, S.QUEUED}) | _ENDINGS,
    S.AWAITING_CALLBACK: frozenset({S.WRITTEN, S.VERIFYING, S.QUEUED}) | _ENDINGS,
    S.WRITTEN: frozenset({S.VERIFYING, S.QUEUED}) | _ENDINGS,
    S.VERIFYING: frozenset({S.VERIFIED, S.QUEUED}) | _ENDINGS,
    S.VERIFIED: frozenset({S.SUPERSEDED}),
    S.FAILED: frozenset(),
    S.SUPERSEDED: frozenset(),
    S.CANCELLED: frozenset(),
}

UNFINISHED_STATES = _UNFINISHED
#: States in which a phone interaction is (or may be) under way: they count against the concurrency limit.
IN_FLIGHT_STATES = frozenset({S.CONTACTING, S.AWAITING_CALLBACK, S.WRITTEN, S.VERIFYING})
#: How much of an error text a deployment keeps.
MAX_ERROR = 500
#: How many transcript entries a deployment keeps (the newest).
MAX_TRANSCRIPT = 200


def can_transition(current: S, target: S) -> bool:
    """True if ``current`` → ``target`` is allowed (or the state stays the same and is not final)."""
    if current == target:
        return current in _UNFINISHED
    return target in TRANSITIONS[current]


def check_transition(current: S, target: S) -> S:
    """Return ``target`` if the transition is allowed.

    Raises:
        ConflictError: for an illegal transition (e.g. out of a final state).
    """
    if not can_transition(S(current), S(target)):
        raise ConflictError(
            f"deployment cannot go from {S(current).value} to {S(target).value}",
            current=S(current).value,
            target=S(target).value,
        )
    return S(target)


def move(dep: Deployment, target: S, now: datetime, error: str | None = None) -> None:
    """Move ``dep`` to ``target`` (see the module docstring for what comes with it).

    Raises:
        ConflictError: for a transition the table does not allow; ``dep`` is then unchanged.
    """
    dep.state = check_transition(dep.state, target)
    dep.updated_at = now
    if error is not None:
        dep.last_error = error[:MAX_ERROR]
    if target.is_final or target is S.QUEUED:
        dep.lease_owner = None
        dep.lease_until = None
    if target.is_final:
        dep.finished_at = now


def lease(dep: Deployment, owner: str, until: datetime) -> None:
    """``owner`` (a node name) works on ``dep`` until ``until``."""
    dep.lease_owner = owner
    dep.lease_until = until


def lease_free(dep: Deployment, now: datetime) -> bool:
    """True if nobody holds a lease on ``dep`` at ``now``."""
    return dep.lease_until is None or dep.lease_until <= now


def add_transcript(dep: Deployment, entries: Sequence[dict[str, Any]]) -> None:
    """Append redacted transcript entries (names, reasons, statuses; never values) to ``dep``, keeping the newest
    :data:`MAX_TRANSCRIPT`. The transcript is for people: no decision reads it."""
    if entries:
        dep.transcript = [*dep.transcript, *entries][-MAX_TRANSCRIPT:]


__all__ = [
    "IN_FLIGHT_STATES",
    "MAX_TRANSCRIPT",
    "TRANSITIONS",
    "UNFINISHED_STATES",
    "add_transcript",
    "can_transition",
    "check_transition",
    "lease",
    "lease_free",
    "move",
]
