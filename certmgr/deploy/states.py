"""The deployment state machine: which state changes are allowed. Pure.

::

    queued ──► contacting ──► awaiting_callback ──► written ──► verifying ──► verified
      ▲  │          │                │   ▲             │            │
      │  │          └────────────────┴───┴─────────────┴────────────┴──► queued (retry, backoff)
      │  └──► awaiting_callback  (a poll answered 202, or a busy phone calling back with solicited)
      └── any unfinished state ──► failed | superseded | cancelled

``verifying`` also goes back to ``queued`` (re-verify later, never write again) and ``written`` /
``verifying`` come back to ``queued`` on restart recovery. Final states never change.
"""

from __future__ import annotations

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
