"""Maintenance windows: parsing, membership, DST and the search for the next opening."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from certmgr.policy.windows import (
    SEARCH_AHEAD,
    MaintenanceWindow,
    format_days,
    next_window_start,
    parse_days,
    parse_hours,
    window_open,
)

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> datetime:
    """Berlin wall-clock time as UTC; ``fold=1`` picks the second occurrence of a repeated hour."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN, fold=fold).astimezone(UTC)


def window(days: str, hours: str, tz: str = "Europe/Berlin") -> MaintenanceWindow:
    return MaintenanceWindow.parse(days, hours, tz)


# --- parsing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", {0, 1, 2, 3, 4, 5, 6}),
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        ("mon,wed-fri", {0, 2, 3, 4}),
        ("MON", {0}),
        ("fri-mon", {4, 5, 6, 0}),
        (" tue , thu ", {1, 3}),
    ],
)
def test_parse_days(text: str, expected: set[int]) -> None:
    assert parse_days(text) == frozenset(expected)


@pytest.mark.parametrize("text", ["", "mo", "mon-", "mon,,tue", "1-5", "monday", "mon-fri-sat", "-"])
def test_parse_days_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid days .* is not a day"):
        parse_days(text)


def test_format_days() -> None:
    assert format_days({4, 0, 1}) == "mon,tue,fri"
    assert format_days(range(7)) == "*"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", (0, 24)),
        ("22-05", (22, 5)),
        ("0-24", (0, 24)),
        ("8-17", (8, 17)),
        ("22-24", (22, 24)),
        ("23-0", (23, 0)),
    ],
)
def test_parse_hours(text: str, expected: tuple[int, int]) -> None:
    assert parse_hours(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("22", "expected 'HH-HH'"),
        ("22:00-05:00", "expected 'HH-HH'"),
        ("-5", "expected 'HH-HH'"),
        ("24-05", "start must be 0-23"),
        ("05-25", "end 0-24"),
        ("05-05", "same hour"),
        ("0-0", "same hour"),
        ("100-5", "expected 'HH-HH'"),
    ],
)
def test_parse_hours_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_hours(text)


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe", "", "utc", "../etc/passwd", "/etc/localtime"])
def test_unknown_timezone(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown time zone '{re.escape(name)}'"):
        window("*", "*", name)


def test_window_rejects_invalid_fields() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        MaintenanceWindow(days=frozenset(), start_hour=1, end_hour=2, tz=BERLIN)
    with pytest.raises(ValueError, match="invalid window hours"):
        MaintenanceWindow(days=frozenset({0}), start_hour=3, end_hour=3, tz=BERLIN)


def test_window_str() -> None:
    assert str(window("sat,sun", "*")) == "sat,sun * Europe/Berlin"
    assert str(window("mon-fri", "22-5")) == "mon,tue,wed,thu,fri 22-05 Europe/Berlin"


# --- membership ---------------------------------------------------------------------------------------------
def test_contains_simple_range() -> None:
    w = window("mon-fri", "08-17")
    assert w.contains(berlin(2026, 1, 5, 8, 0))  # Monday 08:00, start inclusive
    assert w.contains(berlin(2026, 1, 5, 16, 59))
    assert not w.contains(berlin(2026, 1, 5, 17, 0))  # end exclusive
    assert not w.contains(berlin(2026, 1, 5, 7, 59))
    assert not w.contains(berlin(2026, 1, 10, 12, 0))  # Saturday


def test_contains_wrap_around_midnight_belongs_to_the_start_day() -> None:
    w = window("mon-fri", "22-05")
    assert w.contains(berlin(2026, 1, 5, 22, 0))  # Monday 22:00
    assert w.contains(berlin(2026, 1, 6, 4, 59))  # Tuesday early morning, from Monday
    assert not w.contains(berlin(2026, 1, 6, 5, 0))
    assert not w.contains(berlin(2026, 1, 5, 3, 0))  # Monday early morning: Sunday is not in the window
    assert w.contains(berlin(2026, 1, 10, 3, 0))  # Saturday early morning, from Friday
    assert not w.contains(berlin(2026, 1, 10, 22, 0))  # Saturday evening
    assert not w.contains(berlin(2026, 1, 5, 21, 59))


def test_contains_to_midnight() -> None:
    w = window("mon", "22-0")
    assert w.contains(berlin(2026, 1, 5, 23, 59))
    assert not w.contains(berlin(2026, 1, 6, 0, 0))


def test_contains_uses_the_windows_zone_not_utc() -> None:
    w = window("*", "08-09", "America/New_York")
    assert w.contains(utc(2026, 1, 5, 13, 30))  # 08:30 EST
    assert not w.contains(utc(2026, 1, 5, 8, 30))


def test_naive_datetime_is_refused() -> None:
    w = window("*", "*")
    with pytest.raises(ValueError, match="naive datetime"):
        w.contains(datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive datetime"):
        next_window_start([w], datetime(2026, 1, 1), utc(2026, 2, 1))  # noqa: DTZ001


def test_no_windows_means_always_open() -> None:
    at = utc(2026, 1, 1, 3, 0)
    assert window_open([], at)
    assert next_window_start([], at, at + timedelta(hours=1)) == at


def test_window_open_any_of_several() -> None:
    windows = [window("mon", "01-02"), window("tue", "03-04")]
    assert window_open(windows, berlin(2026, 1, 6, 3, 30))
    assert not window_open(windows, berlin(2026, 1, 6, 1, 30))


# --- DST in Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST, 2026-10-25 03:00 CEST -> 02:00 CET -----------
def test_spring_forward_skipped_hour_is_never_inside() -> None:
    w = window("sun", "02-04")
    assert not w.contains(utc(2026, 3, 29, 0, 59))  # 01:59 CET
    assert w.contains(utc(2026, 3, 29, 1, 0))  # 03:00 CEST, right after the jump
    assert next_window_start([w], utc(2026, 3, 28, 12, 0), utc(2026, 4, 30)) == utc(2026, 3, 29, 1, 0)


def test_spring_forward_window_inside_the_gap_waits_a_week() -> None:
    w = window("sun", "02-03")
    start = next_window_start([w], utc(2026, 3, 28, 12, 0), utc(2026, 4, 30))
    assert start == berlin(2026, 4, 5, 2, 0) == utc(2026, 4, 5, 0, 0)
    assert next_window_start([w], utc(2026, 3, 28, 12, 0), utc(2026, 4, 5)) is None


def test_an_opening_further_than_one_memoised_search_is_still_found() -> None:
    # From Monday noon the skipped Sunday 02-03 does not open; the next one is 12.5 days on, past SEARCH_AHEAD.
    w = window("sun", "02-03")
    at = utc(2026, 3, 23, 12, 0)
    assert utc(2026, 4, 5) - at > SEARCH_AHEAD
    assert next_window_start([w], at, utc(2026, 4, 30)) == utc(2026, 4, 5, 0, 0)
    assert next_window_start([w], at, utc(2026, 4, 5)) is None
    assert next_window_start([w], at + timedelta(minutes=7), utc(2026, 4, 30)) == utc(2026, 4, 5, 0, 0)


def test_spring_forward_overnight_window_is_shorter() -> None:
    w = window("sat", "22-05")
    opens = next_window_start([w], utc(2026, 3, 28, 12, 0), utc(2026, 4, 30))
    assert opens == utc(2026, 3, 28, 21, 0)  # 22:00 CET
    assert w.contains(utc(2026, 3, 29, 2, 59))  # 04:59 CEST
    assert not w.contains(utc(2026, 3, 29, 3, 0))  # 05:00 CEST: six real hours


def test_fall_back_repeated_hour_is_inside_both_times() -> None:
    w = window("sun", "02-03")
    opens = next_window_start([w], utc(2026, 10, 24, 12, 0), utc(2026, 11, 30))
    assert opens == berlin(2026, 10, 25, 2, 0, fold=0) == utc(2026, 10, 25, 0, 0)  # 02:00 CEST
    assert w.contains(utc(2026, 10, 25, 0, 59))  # 02:59 CEST
    assert w.contains(utc(2026, 10, 25, 1, 0))  # 02:00 CET, the hour again
    assert w.contains(utc(2026, 10, 25, 1, 59))
    assert not w.contains(utc(2026, 10, 25, 2, 0))  # 03:00 CET
    # Inside the second 02:xx the search answers "now".
    assert next_window_start([w], utc(2026, 10, 25, 1, 30), utc(2026, 11, 30)) == utc(2026, 10, 25, 1, 30)


def test_fall_back_search_does_not_reopen_inside_a_running_window() -> None:
    w = window("sun", "02-03")
    # After the window closed at 03:00 CET the next opening is a week later.
    assert next_window_start([w], utc(2026, 10, 25, 2, 0), utc(2026, 12, 1)) == berlin(2026, 11, 1, 2, 0)


def test_half_hour_offset_and_mid_hour_transition() -> None:
    kolkata = window("mon", "09-10", "Asia/Kolkata")  # +05:30
    assert next_window_start([kolkata], utc(2026, 1, 4), utc(2026, 1, 12)) == utc(2026, 1, 5, 3, 30)
    # Lord Howe moves its clock by 30 minutes: 2026-10-04 02:00 (+10:30) becomes 02:30 (+11:00) at 15:30 UTC.
    lord_howe = window("sun", "02-03", "Australia/Lord_Howe")
    assert next_window_start([lord_howe], utc(2026, 10, 3), utc(2026, 10, 10)) == utc(2026, 10, 3, 15, 30)


def test_transition_off_the_full_hour_is_found_exactly() -> None:
    # Until 2011 Newfoundland switched at 00:01 local: 2010-03-14 00:01 NST (-03:30) became 01:01 NDT at
    # 03:31 UTC, so a 01-02 window opened at that instant, not at the next full hour.
    w = window("sun", "01-02", "America/St_Johns")
    assert next_window_start([w], utc(2010, 3, 14, 3, 0), utc(2010, 3, 15)) == utc(2010, 3, 14, 3, 31)


# --- next_window_start --------------------------------------------------------------------------------------
def test_next_start_inside_returns_at_in_utc() -> None:
    w = window("*", "*")
    at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    result = next_window_start([w], at, at + timedelta(days=1))
    assert result == at
    assert result is not None
    assert result.tzinfo is UTC


def test_next_start_picks_the_earliest_of_several_windows() -> None:
    windows = [
        window("sat,sun", "*"),
        window("mon-fri", "22-05"),
        window("*", "12-13", "America/New_York"),  # 18:00 CET
    ]
    at = berlin(2026, 1, 5, 9, 0)  # Monday morning
    assert next_window_start(windows, at, at + timedelta(days=7)) == berlin(2026, 1, 5, 18, 0)
    assert next_window_start(windows[:2], at, at + timedelta(days=7)) == berlin(2026, 1, 5, 22, 0)
    friday_evening = berlin(2026, 1, 9, 23, 0)
    assert next_window_start(windows[:1], berlin(2026, 1, 9, 9, 0), friday_evening) is None
    assert next_window_start(windows[:1], berlin(2026, 1, 9, 9, 0), berlin(2026, 1, 11)) == berlin(2026, 1, 10)


def test_next_start_none_when_nothing_opens_before_limit() -> None:
    w = window("sun", "03-04")
    at = berlin(2026, 1, 5, 9, 0)
    opening = berlin(2026, 1, 11, 3, 0)
    assert next_window_start([w], at, opening) is None  # limit is exclusive
    assert next_window_start([w], at, opening + timedelta(seconds=1)) == opening
    assert next_window_start([w], at, at) is None
    assert next_window_start([w], at, at - timedelta(days=1)) is None


# --- properties ---------------------------------------------------------------------------------------------
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/St_Johns",
]
STEP = timedelta(minutes=15)  # every zone offset and DST shift here is a multiple of 15 minutes


@st.composite
def valid_windows(draw: st.DrawFn) -> list[MaintenanceWindow]:
    result = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 23))
        ends = [end for end in range(25) if end % 24 != start or (start, end) == (0, 24)]
        end = draw(st.sampled_from(ends))
        result.append(
            MaintenanceWindow(
                days=draw(st.frozensets(st.integers(0, 6), min_size=1)),
                start_hour=start,
                end_hour=end,
                tz=ZoneInfo(draw(st.sampled_from(ZONES))),
            )
        )
    return result


instants = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive, timezones= makes them aware
    max_value=datetime(2030, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@settings(max_examples=150, deadline=None)
@given(windows=valid_windows(), at=instants, horizon=st.integers(1, 24 * 21))
def test_next_window_start_is_the_first_opening(windows: list[MaintenanceWindow], at: datetime, horizon: int) -> None:
    limit = at + timedelta(hours=horizon)
    result = next_window_start(windows, at, limit)
    event("nothing before limit" if result is None else ("open at once" if result == at else "opens later"))
    end = limit if result is None else result
    # Brute force: nothing is open between at and the result (or the limit), stepping hour by hour and also
    # on every quarter hour, which covers the half-hour zones.
    probe = at
    while probe < end:
        assert not window_open(windows, probe), f"open at {probe} before {result}"
        probe += STEP
    hour = at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    while hour < end:
        assert not window_open(windows, hour)
        hour += timedelta(hours=1)
    if result is not None:
        assert at <= result < limit
        assert result.tzinfo is UTC
        assert window_open(windows, result)
        if result > at:
            assert not window_open(windows, result - timedelta(seconds=1))  # a real opening, not mid-window
