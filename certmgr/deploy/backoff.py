"""Retry timing: capped exponential backoff with deterministic jitter. Pure: the time is an argument."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from certmgr.clock import ensure_utc
from certmgr.errors import InputError

#: The jitter spreads a retry over ``[delay * (1 - JITTER), delay]``, so a fleet failing at once does not
#: retry at once, while the delay never exceeds the cap.
JITTER = 0.25


def backoff_delay(attempts: int, base: float, cap: float, key: str = "") -> timedelta:
    """The delay before retry number ``attempts`` (1 = first retry): ``min(cap, base * 2**(attempts-1))``,
    reduced by a jitter of up to :data:`JITTER` that depends only on ``key`` and ``attempts``.

    Raises:
        InputError: if ``attempts`` < 1, ``base`` <= 0 or ``cap`` < ``base``.
    """
    if attempts < 1:
        raise InputError("attempts must be at least 1")
    if base <= 0 or cap < base:
        raise InputError("backoff needs 0 < base <= cap")
    exponent = min(attempts - 1, 62)
    raw = min(cap, base * (2**exponent))
    digest = hashlib.sha256(f"{key}:{attempts}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64  # in [0, 1)
    return timedelta(seconds=raw * (1 - JITTER * fraction))


def next_attempt_at(attempts: int, now: datetime, base: float, cap: float, key: str = "") -> datetime:
    """When retry number ``attempts`` is due: ``now`` plus :func:`backoff_delay`.

    Raises:
        InputError: as :func:`backoff_delay`. ValueError: if ``now`` is naive.
    """
    return ensure_utc(now) + backoff_delay(attempts, base, cap, key)
