"""``ensure_utc``: every time certmgr computes with is an aware UTC datetime; a naive one is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from certmgr.clock import ensure_utc


def test_a_utc_time_is_returned_as_it_is() -> None:
    at = datetime(2027, 1, 4, 12, 0, 0, 123456, tzinfo=UTC)
    assert ensure_utc(at) is at


@pytest.mark.parametrize("tz", [timezone(timedelta(hours=2)), ZoneInfo("Europe/Berlin"), ZoneInfo("UTC")])
def test_an_aware_time_elsewhere_becomes_the_same_instant_in_utc(tz: timezone | ZoneInfo) -> None:
    at = datetime(2027, 7, 4, 14, 30, tzinfo=tz)
    got = ensure_utc(at)
    assert got.tzinfo is UTC
    assert got == at


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        ensure_utc(datetime(2027, 1, 4, 12, 0))  # noqa: DTZ001 (the naive time under test)
