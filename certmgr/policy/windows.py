"""Maintenance windows: when certmgr may touch a phone. Pure: the time is always an argument.

A window is a set of week days, an hour range and an IANA time zone, e.g. ``mon-fri``, ``22-05``,
``Europe/Berlin``. It contains every instant whose **local wall-clock** weekday and hour (in its time zone)
fall in the window:

* ``start_hour`` is inclusive, ``end_hour`` exclusive; ``0-24`` (written ``"*"``) is the whole day.
* A range that wraps midnight (``22-05``) belongs to the day it **starts** on: ``mon-fri 22-05`` is open from
  Monday 22:00 to Tuesday 05:00, …, Friday 22:00 to Saturday 05:00, but not from Monday 00:00 to 05:00.
* Daylight saving time follows from the wall-clock rule. A local hour skipped in spring does not exist, so
  it is never inside a window: ``02-04`` on the spring-forward night in Europe/Berlin opens at 03:00 CEST
  (01:00 UTC) and a window lying entirely in the skipped hour (``02-03``) does not open that night. A local
  hour repeated in autumn is inside the window both times: ``02-03`` is open for two real hours that night,
  ``22-05`` for nine.

All datetimes going in and out are aware; results are in UTC (see :func:`certmgr.clock.ensure_utc`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from certmgr.clock import ensure_utc

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS: frozenset[int] = frozenset(range(7))


def parse_days(text: str) -> frozenset[int]:
    """Parse a cron-like day list into weekday numbers (0 = Monday).

    Accepted: ``"*"`` (every day), names ``mon`` … ``sun`` (any case), ranges ``"mon-fri"`` (a range may
    wrap the week end: ``"fri-mon"`` is Friday to Monday) and comma lists of both, e.g. ``"mon,wed-fri"``.

    Raises:
        ValueError: for an empty list, an unknown day name or a malformed range.
    """
    spec = text.strip().lower()
    if spec == "*":
        return ALL_DAYS
    days: set[int] = set()
    for item in spec.split(","):
        first, dash, last = item.strip().partition("-")
        start = _day_number(first, text)
        end = _day_number(last, text) if dash else start
        span = (end - start) % 7
        days.update((start + offset) % 7 for offset in range(span + 1))
    return frozenset(days)


def _day_number(name: str, text: str) -> int:
    try:
        return DAY_NAMES.index(name.strip())
    except ValueError:
        raise ValueError(
            f"invalid days {text!r}: {name.strip()!r} is not a day; use '*', mon…sun, ranges such as "
            "'mon-fri' and comma lists such as 'mon,wed-fri'"
        ) from None


def format_days(days: Iterable[int]) -> str:
    """Write weekday numbers back as a comma list of names in week order, or ``"*"`` for every day."""
    ordered = sorted(set(days))
    if ordered == list(range(7)):
        return "*"
    return ",".join(DAY_NAMES[day] for day in ordered)


def parse_hours(text: str) -> tuple[int, int]:
    """Parse an hour range ``"HH-HH"`` (start inclusive, end exclusive, may wrap midnight) or ``"*"``.

    Returns ``(start_hour, end_hour)`` with ``0 <= start_hour <= 23`` and ``0 <= end_hour <= 24``; ``"*"`` is
    ``(0, 24)``.

    Raises:
        ValueError: for a malformed range, an hour out of range or an empty range (start equal to end).
    """
    spec = text.strip()
    if spec == "*":
        return (0, 24)
    first, dash, last = spec.partition("-")
    if not (dash and first.isdigit() and last.isdigit() and len(first) <= 2 and len(last) <= 2):
        raise ValueError(f"invalid hours {text!r}: expected 'HH-HH' such as '22-05' or '*' for the whole day")
    start, end = int(first), int(last)
    if start > 23 or end > 24:
        raise ValueError(f"invalid hours {text!r}: the start must be 0-23 and the end 0-24")
    if start % 24 == end % 24 and not (start == 0 and end == 24):
        raise ValueError(f"invalid hours {text!r}: start and end are the same hour; use '*' for the whole day")
    return (start, end)


def load_timezone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name`` (e.g. ``"Europe/Berlin"``, ``"UTC"``).

    Raises:
        ValueError: if no such zone exists in the system's time zone database (or the ``tzdata`` package).
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: e.g. "Europe" names a directory
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'") from None


@dataclass(frozen=True)
class MaintenanceWindow:
    """Weekly recurring window in local wall-clock time (see the module docstring for the exact rules)."""

    days: frozenset[int]
    start_hour: int
    end_hour: int
    tz: ZoneInfo

    def __post_init__(self) -> None:
        if not self.days or not self.days <= ALL_DAYS:
            raise ValueError(f"window days must be a non-empty subset of 0..6, not {sorted(self.days)}")
        if not (0 <= self.start_hour <= 23 and 0 <= self.end_hour <= 24) or self.start_hour == self.end_hour:
            raise ValueError(f"invalid window hours {self.start_hour}-{self.end_hour}")

    @classmethod
    def parse(cls, days: str, hours: str, timezone: str) -> MaintenanceWindow:
        """Build a window from its policy-file spelling, e.g. ``("mon-fri", "22-05", "Europe/Berlin")``.

        Raises:
            ValueError: for invalid days, hours or time zone (see :func:`parse_days`, :func:`parse_hours`,
                :func:`load_timezone`).
        """
        start, end = parse_hours(hours)
        return cls(days=parse_days(days), start_hour=start, end_hour=end, tz=load_timezone(timezone))

    @property
    def wraps_midnight(self) -> bool:
        """True if the window runs past midnight into the next day (``22-05``)."""
        return self.end_hour < self.start_hour

    def contains(self, at: datetime) -> bool:
        """True if the instant ``at`` lies inside the window.

        Raises:
            ValueError: if ``at`` is naive.
        """
        local = ensure_utc(at).astimezone(self.tz)
        hour, weekday = local.hour, local.weekday()
        if not self.wraps_midnight:
            return weekday in self.days and self.start_hour <= hour < self.end_hour
        return (weekday in self.days and hour >= self.start_hour) or (
            (weekday - 1) % 7 in self.days and hour < self.end_hour
        )

    def __str__(self) -> str:
        hours = "*" if (self.start_hour, self.end_hour) == (0, 24) else f"{self.start_hour:02d}-{self.end_hour:02d}"
        return f"{format_days(self.days)} {hours} {self.tz.key}"


def window_open(windows: Sequence[MaintenanceWindow], at: datetime) -> bool:
    """True if ``at`` lies in any of ``windows``; with no windows at all, always True.

    Raises:
        ValueError: if ``at`` is naive.
    """
    at = ensure_utc(at)
    return not windows or any(window.contains(at) for window in windows)


def next_window_start(windows: Sequence[MaintenanceWindow], at: datetime, limit: datetime) -> datetime | None:
    """Earliest instant in ``[at, limit)`` at which a window is open, in UTC.

    Returns ``at`` itself if a window is open at ``at`` (or there are no windows), otherwise the exact instant
    at which the first window opens after ``at``, or ``None`` if none opens before ``limit`` (also when
    ``limit <= at``).

    The search walks from one change of the local wall-clock hour to the next (in every window's zone), so it
    is exact also for zones with half-hour offsets and on DST transitions. Every instant of the same local hour
    takes the same first step, and the walk from there depends on nothing else, so the walk is memoised by
    (windows, first step) over :data:`SEARCH_AHEAD` and compared with ``limit`` here: planning 100,000 overdue
    certificates in one renewal run repeats the same few searches (it did cost a quarter of such a run). Only a
    search that finds no opening in that stretch walks on, uncached, to ``limit``.

    Raises:
        ValueError: if ``at`` or ``limit`` is naive.
    """
    at, limit = ensure_utc(at), ensure_utc(limit)
    if at >= limit:
        return None
    if window_open(windows, at):
        return at
    key = tuple(windows)
    first = min(_next_hour_change(at, tz) for tz in _zones(key))
    found = _walk_ahead(key, first)
    if found is not None:
        return found if found < limit else None
    if first + SEARCH_AHEAD >= limit:
        return None
    return _walk(key, first, limit)


#: How far one memoised search looks: a weekly window opens at least once in any 8 days (bar DST oddities).
SEARCH_AHEAD = timedelta(days=8)


def _zones(windows: tuple[MaintenanceWindow, ...]) -> list[ZoneInfo]:
    return list({window.tz.key: window.tz for window in windows}.values())


def _walk(windows: tuple[MaintenanceWindow, ...], current: datetime, limit: datetime) -> datetime | None:
    """The first local hour change at or after ``current`` (itself one, or the first instant searched) and before
    ``limit`` at which a window is open; one step per hour."""
    zones = _zones(windows)
    while current < limit:
        if window_open(windows, current):
            return current
        current = min(_next_hour_change(current, tz) for tz in zones)
    return None


@functools.lru_cache(maxsize=16_384)
def _walk_ahead(windows: tuple[MaintenanceWindow, ...], first: datetime) -> datetime | None:
    return _walk(windows, first, first + SEARCH_AHEAD)


def _next_hour_change(at: datetime, tz: ZoneInfo) -> datetime:
    """First instant after ``at`` (UTC) at which the local hour in ``tz`` differs from that at ``at``."""
    local = at.astimezone(tz)
    into_hour = timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    candidate = at + (timedelta(hours=1) - into_hour)
    if candidate.astimezone(tz).utcoffset() == local.utcoffset():
        return candidate
    # The UTC offset changes within (at, candidate]: the local clock jumps at that transition. Transitions
    # happen on whole seconds, so bisect over epoch seconds for the first second with the new offset.
    offset = local.utcoffset()
    low, high = math.floor(at.timestamp()), math.ceil(candidate.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)
