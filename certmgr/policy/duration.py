"""Durations as written in policy files: ``"397d"``, ``"12h"``, ``"1d12h"``, ``"2w"``. Pure, no I/O.

Grammar: one or more ``<digits><unit>`` groups, units ``w`` (week), ``d`` (day), ``h`` (hour),
``m`` (minute), ``s`` (second), lower case, each unit at most once and from largest to smallest
(``"1d12h"``, not ``"12h1d"``), no spaces and no sign. ``"0s"`` is zero. Durations are whole seconds and at
most :data:`MAX_DURATION`.

:func:`format_duration` writes the canonical form with days, hours, minutes and seconds (no weeks, so a
validity of ``"397d"`` reads back as ``"397d"``), and ``parse_duration(format_duration(td)) == td``.
"""

from __future__ import annotations

import re
from datetime import timedelta

#: Upper bound of any policy duration: 100 years is far beyond any sensible certificate validity.
MAX_DURATION = timedelta(days=36500)

_UNITS: tuple[tuple[str, int], ...] = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_EXAMPLES = "a number followed by a unit w, d, h, m or s, largest first, such as '397d', '12h' or '1d12h'"


def parse_duration(text: str) -> timedelta:
    """Parse a policy duration such as ``"397d"`` or ``"1d12h"``.

    Raises:
        ValueError: if ``text`` does not follow the grammar above or exceeds :data:`MAX_DURATION`; the message
            names the offending text and is meant to be shown to the policy author.
    """
    match = _DURATION.match(text) if text else None
    if match is None or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r}: expected {_EXAMPLES}")
    seconds = sum(int(group) * factor for group, (_, factor) in zip(match.groups(), _UNITS, strict=True) if group)
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is longer than the maximum {format_duration(MAX_DURATION)}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Write ``value`` in canonical form: ``timedelta(days=1, hours=12)`` → ``"1d12h"``; zero is ``"0s"``.

    Raises:
        ValueError: if ``value`` is negative or not a whole number of seconds.
    """
    if value < timedelta(0):
        raise ValueError(f"a duration cannot be negative: {value}")
    if value.microseconds:
        raise ValueError(f"a duration must be whole seconds: {value}")
    remaining = value.days * 86400 + value.seconds
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, factor in _UNITS[1:]:
        count, remaining = divmod(remaining, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
