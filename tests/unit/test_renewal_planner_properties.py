"""Property tests of the renewal planner over random lifetimes, windows (incl. DST zones), jitters and clocks.

Invariants:

* ``due_at >= now``;
* ``due_at >= base``: jitter and windows only delay (the renewal scan's first pass drops a row whose base time lies
  beyond its look-ahead on this ground);
* ``due_at < not_after`` for every certificate not yet expired: a reachable phone's renewal is always
  attempted before expiry;
* if any window opens in ``[max(base, now), latest)``, ``due_at`` lies in a window;
* ``due_at <= latest`` unless the plan is due ``now`` (overdue or expired);
* the jitter stays within ``[0, min(jitter, 90 % of the renewal window))``;
* the same input gives the same plan.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certmgr.policy.windows import MaintenanceWindow, next_window_start, window_open
from certmgr.renewal import RenewalInput, base_time, jitter_offset, latest_time, plan_renewal

ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Sao_Paulo",
    "Pacific/Chatham",  # +12:45/+13:45
)
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
MINUTE = 60
YEAR = 366 * 86400

windows_strategy = st.builds(
    lambda days, start, length, tz: MaintenanceWindow(
        days=frozenset(days), start_hour=start, end_hour=(start + length) % 24 or 24, tz=ZoneInfo(tz)
    ),
    days=st.sets(st.integers(0, 6), min_size=1),
    start=st.integers(0, 23),
    length=st.integers(1, 23),
    tz=st.sampled_from(ZONES),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RenewalInput, datetime]:
    lifetime = draw(st.integers(5 * MINUTE, 3 * YEAR))
    not_before = EPOCH + timedelta(seconds=draw(st.integers(0, 4 * YEAR)))
    rule = draw(st.sampled_from(["default", "fraction", "before"]))
    fraction = draw(st.floats(0.05, 0.95)) if rule == "fraction" else None
    renew_before = timedelta(seconds=draw(st.integers(60, 2 * lifetime))) if rule == "before" else None
    jitter = timedelta(seconds=draw(st.one_of(st.just(0), st.integers(0, lifetime))))
    windows = tuple(draw(st.lists(windows_strategy, max_size=3)))
    mac = ":".join(f"{b:02X}" for b in draw(st.binary(min_size=6, max_size=6)))
    inp = RenewalInput(
        cert_id=draw(st.integers(1, 10**9)),
        device_key=mac,
        not_before=not_before,
        not_after=not_before + timedelta(seconds=lifetime),
        renew_before=renew_before,
        renew_at_fraction=fraction,
        jitter=jitter,
        windows=windows,
    )
    # The clock anywhere from a little before issuance to after expiry.
    now = not_before + timedelta(seconds=draw(st.integers(-3600, lifetime + 3600)))
    return inp, now


PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(scenarios())
def test_due_at_is_never_before_now_nor_at_or_after_expiry(scenario: tuple[RenewalInput, datetime]) -> None:
    inp, now = scenario
    plan = plan_renewal(inp, now)
    assert plan.due_at >= now
    if now < inp.not_after:
        assert plan.reason != "expired"
        assert plan.due_at < inp.not_after
        assert plan.due_at <= plan.latest or plan.due_at == now
    else:
        assert plan.reason == "expired"
        assert plan.due_at == now


@PROPERTY_SETTINGS
@given(scenarios())
def test_due_at_is_in_a_window_whenever_one_opens_in_time(scenario: tuple[RenewalInput, datetime]) -> None:
    inp, now = scenario
    plan = plan_renewal(inp, now)
    if not inp.windows:
        assert plan.in_window
        return
    some_opening = next_window_start(inp.windows, max(base_time(inp), now), latest_time(inp))
    if some_opening is not None:
        assert window_open(inp.windows, plan.due_at), plan
        assert plan.in_window
    assert plan.in_window == window_open(inp.windows, plan.due_at)


@PROPERTY_SETTINGS
@given(scenarios())
def test_a_plan_is_never_due_before_its_base_time(scenario: tuple[RenewalInput, datetime]) -> None:
    inp, now = scenario
    assert plan_renewal(inp, now).due_at >= base_time(inp)


@PROPERTY_SETTINGS
@given(scenarios())
def test_plans_are_deterministic(scenario: tuple[RenewalInput, datetime]) -> None:
    inp, now = scenario
    again = RenewalInput(
        inp.cert_id,
        inp.device_key.lower().replace(":", "-"),  # another spelling of the same MAC
        inp.not_before,
        inp.not_after,
        inp.renew_before,
        inp.renew_at_fraction,
        inp.jitter,
        inp.windows,
    )
    assert plan_renewal(inp, now) == plan_renewal(inp, now) == plan_renewal(again, now)


@PROPERTY_SETTINGS
@given(scenarios())
def test_jitter_stays_within_bounds(scenario: tuple[RenewalInput, datetime]) -> None:
    inp, _ = scenario
    offset = jitter_offset(inp)
    window = inp.not_after - base_time(inp)
    assert offset >= timedelta(0)
    if inp.jitter == timedelta(0):
        assert offset == timedelta(0)
    else:
        assert offset < inp.jitter
        assert offset < window * 0.9 or offset == timedelta(0)
    assert base_time(inp) + offset < inp.not_after


@PROPERTY_SETTINGS
@given(scenarios())
def test_scheduled_plans_without_windows_are_base_plus_jitter(scenario: tuple[RenewalInput, datetime]) -> None:
    inp, now = scenario
    plan = plan_renewal(inp, now)
    planned = base_time(inp) + jitter_offset(inp)
    if not inp.windows and planned > now:
        assert plan.reason == "scheduled"
        assert plan.due_at == planned
