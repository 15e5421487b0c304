"""The one clock of certmgr.

Everything that needs "now" takes a :class:`Clock`. Only this module reads the system clock; ruff's DTZ
rules keep naive ``datetime.now()`` calls out of the rest of the code base.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: datetime) -> None:
        self._now = ensure_utc(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = self._now + delta
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = ensure_utc(when)


def ensure_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime.

    Raises:
        ValueError: if ``value`` is naive (no tzinfo): certmgr never guesses a time zone.
    """
    if value.tzinfo is UTC:
        return value  # already what is asked for: the common case, on every planner step
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} where an aware UTC datetime is required")
    return value.astimezone(UTC)
