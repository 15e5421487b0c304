"""spread(): a mass expiry (10,000 certificates issued the same day) under an hourly limit."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certmgr.policy import MaintenanceWindow
from certmgr.policy.windows import window_open
from certmgr.renewal import RenewalInput, RenewalPlan, plan_many, spread
from tests.unit.test_renewal_planner_properties import scenarios

DAY = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
N = 10_000


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _mass(validity: timedelta = timedelta(days=90), windows: tuple[MaintenanceWindow, ...] = ()) -> list[RenewalInput]:
    """10,000 certificates issued over one day, no jitter: their renewals bunch up on one day."""
    return [
        RenewalInput(
            cert_id=i,
            device_key=f"00:1A:E8:{i >> 16 & 0xFF:02X}:{i >> 8 & 0xFF:02X}:{i & 0xFF:02X}",
            not_before=DAY + timedelta(seconds=8.64 * i),
            not_after=DAY + timedelta(seconds=8.64 * i) + validity,
            windows=windows,
        )
        for i in range(N)
    ]


def _per_hour(plans: list[RenewalPlan]) -> Counter[datetime]:
    return Counter(_hour(p.due_at) for p in plans)


def test_mass_expiry_is_spread_under_the_hourly_limit() -> None:
    now = DAY + timedelta(days=1)
    plans = plan_many(_mass(), now)
    assert max(_per_hour(plans).values()) > 400  # bunched without spreading
    spread_plans = spread(plans, per_hour_limit=100, now=now)

    assert len(spread_plans) == N
    assert sorted(p.cert_id for p in spread_plans) == list(range(N))
    assert max(_per_hour(spread_plans).values()) <= 100
    original = {p.cert_id: p for p in plans}
    for plan in spread_plans:
        assert not plan.over_limit
        assert plan.due_at >= original[plan.cert_id].due_at  # never earlier than planned
        assert now <= plan.due_at < plan.latest < plan.not_after
    # Packed tightly: 10,000 at 100 an hour need 100 hours.
    assert len(_per_hour(spread_plans)) == 100


def test_mass_expiry_spread_honours_windows() -> None:
    nightly = MaintenanceWindow.parse("mon-fri", "22-05", "Europe/Berlin")
    now = DAY + timedelta(days=1)
    plans = plan_many(_mass(windows=(nightly,)), now)
    spread_plans = spread(plans, per_hour_limit=250, now=now)
    assert max(_per_hour(spread_plans).values()) <= 250
    for plan in spread_plans:
        assert not plan.over_limit
        assert window_open((nightly,), plan.due_at)
        assert plan.in_window
        assert plan.due_at < plan.latest


def test_impossible_spread_lets_urgency_win_over_the_limit() -> None:
    # 10,000 certificates expiring within the next ~3 hours, 100 renewals an hour allowed: impossible.
    now = DAY
    inputs = [
        RenewalInput(
            i, f"00:1A:E8:00:{i >> 8 & 0xFF:02X}:{i & 0xFF:02X}", now - timedelta(hours=6), now + timedelta(hours=3)
        )
        for i in range(N)
    ]
    plans = plan_many(inputs, now)
    assert {p.reason for p in plans} == {"overdue"}
    spread_plans = spread(plans, per_hour_limit=100, now=now)
    assert len(spread_plans) == N
    within = [p for p in spread_plans if not p.over_limit]
    over = [p for p in spread_plans if p.over_limit]
    assert within
    assert over
    assert max(_per_hour(within).values()) <= 100
    for plan in spread_plans:
        assert now <= plan.due_at < plan.not_after  # never let a certificate expire to honour the limit
    for plan in over:
        assert plan.due_at == now  # as soon as possible


def test_expired_certificates_are_due_now_and_placed_first() -> None:
    now = DAY + timedelta(days=100)
    inputs = [RenewalInput(i, f"00:00:00:00:00:{i:02X}", DAY, DAY + timedelta(days=90)) for i in range(5)]
    inputs.append(RenewalInput(99, "00:00:00:00:01:00", now - timedelta(days=60), now + timedelta(days=30)))
    plans = spread(plan_many(inputs, now), per_hour_limit=2, now=now)
    assert [p.cert_id for p in plans][:5] == [0, 1, 2, 3, 4]
    assert all(p.due_at == now and p.over_limit and p.expired for p in plans[:5])
    assert plans[5].cert_id == 99
    assert not plans[5].over_limit
    assert plans[5].due_at >= now + timedelta(hours=1)  # the expired ones filled the current hour


def test_staggered_within_the_hour() -> None:
    now = DAY
    inputs = [RenewalInput(i, f"00:00:00:00:00:{i:02X}", DAY, DAY + timedelta(days=3)) for i in range(4)]
    plans = spread(plan_many(inputs, now), per_hour_limit=4, now=now)
    assert [p.due_at for p in plans] == [DAY + timedelta(days=2, minutes=15 * k) for k in range(4)]


def test_spread_is_deterministic_and_rejects_a_zero_limit() -> None:
    now = DAY + timedelta(days=1)
    plans = plan_many(_mass()[:500], now)
    assert spread(plans, 10, now) == spread(list(reversed(plans)), 10, now)
    with pytest.raises(ValueError, match="at least 1"):
        spread(plans, 0, now)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_list=st.lists(scenarios(), min_size=1, max_size=40), limit=st.integers(1, 5))
def test_spread_properties(scenario_list: list[tuple[RenewalInput, datetime]], limit: int) -> None:
    now = scenario_list[0][1]
    plans = plan_many([replace(inp, cert_id=i) for i, (inp, _) in enumerate(scenario_list)], now)
    spread_plans = spread(plans, limit, now)
    assert sorted(int(p.cert_id) for p in spread_plans) == list(range(len(scenario_list)))
    assert max(_per_hour([p for p in spread_plans if not p.over_limit]).values(), default=0) <= limit
    original = {p.cert_id: p for p in plans}
    for plan in spread_plans:
        assert plan.due_at >= now
        if now < plan.not_after:
            assert plan.due_at < plan.not_after
        if not plan.over_limit:
            assert plan.due_at < plan.latest
            if original[plan.cert_id].in_window:
                assert window_open(plan.windows, plan.due_at)
        else:
            assert plan.due_at == max(original[plan.cert_id].due_at, now)


def test_a_moved_plan_carries_every_other_field() -> None:
    """spread() builds its re-timed plans directly, not through dataclasses.replace: every field must be carried
    over (a field added to RenewalPlan and forgotten there makes this fail)."""
    from dataclasses import fields

    from certmgr.renewal.planner import _moved

    night = (MaintenanceWindow.parse("*", "22-05", "UTC"),)
    plan = RenewalPlan(
        cert_id=42,
        due_at=DAY + timedelta(hours=3),
        reason="window-moved",
        in_window=True,
        not_after=DAY + timedelta(days=30),
        latest=DAY + timedelta(days=27),
        windows=night,
        over_limit=False,
    )
    assert {f.name for f in fields(RenewalPlan)} == {
        "cert_id", "due_at", "reason", "in_window", "not_after", "latest", "windows", "over_limit",
    }  # fmt: skip
    for due, over in [(DAY + timedelta(hours=12), True), (DAY + timedelta(days=1, hours=23), False)]:
        moved = _moved(plan, due, over)
        assert moved == replace(plan, due_at=due, in_window=window_open(night, due), over_limit=over)
        assert moved.windows is night
