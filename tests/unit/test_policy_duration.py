"""Policy durations: parsing, canonical formatting and their round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmgr.policy.duration import MAX_DURATION, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("397d", timedelta(days=397)),
        ("12h", timedelta(hours=12)),
        ("10m", timedelta(minutes=10)),
        ("30s", timedelta(seconds=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2w", timedelta(weeks=2)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("0s", timedelta(0)),
        ("007d", timedelta(days=7)),
    ],
)
def test_parse_accepts_documented_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "397",
        "d",
        "12H",
        "1.5d",
        "-1d",
        "+1d",
        "12h1d",
        "1d 12h",
        " 1d",
        "1d1d",
        "3y",
        "1 d",
        "1dd",
        "P1D",
    ],
)
def test_parse_rejects_malformed_text_with_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*expected a number followed by a unit"):
        parse_duration(text)


def test_parse_rejects_more_than_the_maximum() -> None:
    with pytest.raises(ValueError, match=r"longer than the maximum 36500d"):
        parse_duration("36501d")
    assert parse_duration("36500d") == MAX_DURATION


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(days=397), "397d"),
        (timedelta(weeks=2), "14d"),
        (timedelta(days=1, hours=12), "1d12h"),
        (timedelta(hours=1, seconds=1), "1h1s"),
        (timedelta(0), "0s"),
    ],
)
def test_format_is_canonical(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


@pytest.mark.parametrize("value", [timedelta(seconds=-1), timedelta(milliseconds=1500)])
def test_format_rejects_negative_and_fractional(value: timedelta) -> None:
    with pytest.raises(ValueError, match=r"negative|whole seconds"):
        format_duration(value)


@given(st.integers(min_value=0, max_value=int(MAX_DURATION.total_seconds())))
def test_format_then_parse_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@given(
    st.tuples(*(st.one_of(st.none(), st.integers(min_value=0, max_value=500)) for _ in range(5))).filter(
        lambda parts: any(p is not None for p in parts)
    )
)
def test_parse_then_format_is_idempotent(parts: tuple[int | None, ...]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in zip(parts, "wdhms", strict=True) if n is not None)
    value = parse_duration(text)
    assert value == timedelta(
        weeks=parts[0] or 0,
        days=parts[1] or 0,
        hours=parts[2] or 0,
        minutes=parts[3] or 0,
        seconds=parts[4] or 0,
    )
    assert parse_duration(format_duration(value)) == value
    assert format_duration(parse_duration(format_duration(value))) == format_duration(value)
