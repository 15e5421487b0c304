"""Renewal planner: base time, jitter, windows, each plan reason, plan_many ordering, input validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certmgr.policy import MaintenanceWindow, parse_policy
from certmgr.policy.windows import window_open
from certmgr.renewal import (
    RenewalInput,
    base_time,
    jitter_fraction,
    jitter_offset,
    latest_time,
    plan_many,
    plan_renewal,
)

NB = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday
MAC = "00:1A:E8:12:34:56"


def cert(
    lifetime: timedelta = timedelta(days=90),
    *,
    cert_id: int = 1,
    device: str = MAC,
    nb: datetime = NB,
    renew_before: timedelta | None = None,
    fraction: float | None = None,
    jitter: timedelta = timedelta(0),
    windows: tuple[MaintenanceWindow, ...] = (),
) -> RenewalInput:
    return RenewalInput(cert_id, device, nb, nb + lifetime, renew_before, fraction, jitter, windows)


def test_default_fraction_is_two_thirds_of_the_actual_lifetime() -> None:
    inp = cert(timedelta(days=90))
    plan = plan_renewal(inp, NB + timedelta(days=1))
    assert plan.due_at == NB + timedelta(days=60)
    assert plan.reason == "scheduled"
    assert plan.in_window
    assert plan.not_after == NB + timedelta(days=90)
    assert plan.latest == NB + timedelta(days=90) - timedelta(days=3)  # 10 % of the 30-day renewal window


def test_explicit_fraction() -> None:
    assert base_time(cert(timedelta(days=100), fraction=0.5)) == NB + timedelta(days=50)


def test_renew_before() -> None:
    inp = cert(timedelta(days=397), renew_before=timedelta(days=30))
    plan = plan_renewal(inp, NB)
    assert plan.due_at == NB + timedelta(days=367)
    assert plan.reason == "scheduled"


def test_renew_before_longer_than_a_clipped_lifetime_falls_back_to_the_fraction() -> None:
    # A certificate cut short by its CA's expiry must not be "due" the moment it is issued (a renewal loop).
    inp = cert(timedelta(days=20), renew_before=timedelta(days=30))
    plan = plan_renewal(inp, NB + timedelta(minutes=1))
    assert plan.reason == "scheduled"
    assert plan.due_at == NB + timedelta(days=20) * (2 / 3)


def test_overdue_is_due_now() -> None:
    now = NB + timedelta(days=70)
    plan = plan_renewal(cert(), now)
    assert plan.reason == "overdue"
    assert plan.due_at == now


def test_overdue_waits_for_a_window_that_opens_before_the_latest_time() -> None:
    nightly = MaintenanceWindow.parse("*", "22-05", "Europe/Berlin")
    now = datetime(2026, 3, 12, 10, 0, tzinfo=UTC)  # day 66, 11:00 in Berlin: business hours
    plan = plan_renewal(cert(windows=(nightly,)), now)
    assert plan.reason == "overdue"
    assert plan.due_at == datetime(2026, 3, 12, 21, 0, tzinfo=UTC)  # 22:00 CET
    assert plan.in_window


def test_overdue_without_a_window_before_the_latest_time_is_due_now() -> None:
    nightly = MaintenanceWindow.parse("*", "22-05", "UTC")
    now = NB + timedelta(days=87, hours=12)  # past latest (day 87), before expiry
    plan = plan_renewal(cert(windows=(nightly,)), now)
    assert plan.reason == "overdue"
    assert plan.due_at == now
    assert not plan.in_window


def test_expired_is_due_now_whatever_the_windows() -> None:
    never_now = MaintenanceWindow.parse("sun", "01-02", "UTC")
    now = NB + timedelta(days=91)
    plan = plan_renewal(cert(windows=(never_now,)), now)
    assert plan.reason == "expired"
    assert plan.expired
    assert plan.due_at == now
    assert not plan.in_window


def test_exactly_at_not_after_is_expired() -> None:
    assert plan_renewal(cert(), NB + timedelta(days=90)).reason == "expired"


def test_window_moves_the_due_time_to_the_next_opening() -> None:
    # Base: day 60 = 2026-03-06 (Friday) 00:00 UTC = 01:00 CET, inside "mon-fri 22-05" (Thursday's night).
    # Shift the lifetime so the base falls at Friday 10:00 UTC instead: outside the window.
    inp = cert(timedelta(days=90, hours=15), windows=(MaintenanceWindow.parse("mon-fri", "22-05", "Europe/Berlin"),))
    assert base_time(inp) == datetime(2026, 3, 6, 10, 0, tzinfo=UTC)
    plan = plan_renewal(inp, NB)
    assert plan.reason == "window-moved"
    assert plan.due_at == datetime(2026, 3, 6, 21, 0, tzinfo=UTC)  # Friday 22:00 CET
    assert plan.in_window


def test_base_inside_a_window_stays_scheduled() -> None:
    inp = cert(windows=(MaintenanceWindow.parse("mon-fri", "22-05", "Europe/Berlin"),))
    plan = plan_renewal(inp, NB)
    assert plan.reason == "scheduled"
    assert plan.due_at == base_time(inp)
    assert plan.in_window


def test_window_after_dst_change_uses_summer_time() -> None:
    # Base 2026-03-30 (Monday, after the switch to CEST on 29 March) 10:00 UTC → 22:00 CEST = 20:00 UTC.
    nb = datetime(2026, 3, 30, 10, 0, tzinfo=UTC) - timedelta(days=60)
    inp = cert(nb=nb, windows=(MaintenanceWindow.parse("mon-fri", "22-05", "Europe/Berlin"),))
    plan = plan_renewal(inp, nb)
    assert plan.due_at == datetime(2026, 3, 30, 20, 0, tzinfo=UTC)
    assert plan.reason == "window-moved"


def test_no_window_before_expiry_keeps_the_unmoved_time() -> None:
    # A 6-hour certificate renewed at hour 4, with a window only on Sundays: never wait past expiry.
    inp = cert(timedelta(hours=6), windows=(MaintenanceWindow.parse("sun", "01-02", "UTC"),))
    plan = plan_renewal(inp, NB)
    assert plan.reason == "no-window-before-expiry"
    assert plan.due_at == NB + timedelta(hours=4)
    assert not plan.in_window
    assert plan.due_at < plan.not_after


def test_window_in_the_safety_margin_is_not_used() -> None:
    # Renewal window 2h (hours 4-6), latest = 5h48m; a window opening at 05:50 is too late.
    inp = cert(timedelta(hours=6), windows=(MaintenanceWindow.parse("*", "05-06", "UTC"),))
    assert latest_time(inp) == NB + timedelta(hours=5, minutes=48)
    moved = plan_renewal(inp, NB)  # base 04:00 is outside; the window opens at 05:00, before the latest time
    assert (moved.reason, moved.due_at) == ("window-moved", NB + timedelta(hours=5))
    inp2 = cert(timedelta(hours=6), renew_before=timedelta(minutes=15), windows=inp.windows)
    plan = plan_renewal(inp2, NB)  # base 05:45 inside the window
    assert plan.due_at == NB + timedelta(hours=5, minutes=45)
    # Issued at 00:10: latest 05:58, expiry 06:10. A window opening at 06:00 lies in the safety margin: too late.
    nb = NB + timedelta(minutes=10)
    inp3 = cert(timedelta(hours=6), nb=nb, windows=(MaintenanceWindow.parse("*", "06-07", "UTC"),))
    plan3 = plan_renewal(inp3, NB)
    assert (plan3.reason, plan3.due_at) == ("no-window-before-expiry", nb + timedelta(hours=4))


def _key_with_fraction_above(limit: float) -> str:
    for n in range(1000):
        key = f"00:1A:E8:00:{n // 256:02X}:{n % 256:02X}"
        if jitter_fraction(key) > limit:
            return key
    raise AssertionError("no such key")  # pragma: no cover


def test_jitter_gives_way_to_a_window_between_base_and_the_jittered_time() -> None:
    # Base Wednesday 00:00, latest Wednesday 21:36; the only window is Wednesday 01-02 UTC. A jitter that lands
    # after 02:00 would find no window before the latest time: the window before it is used instead.
    nb = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
    key = _key_with_fraction_above(0.5)
    inp = cert(
        timedelta(days=3),
        nb=nb,
        device=key,
        jitter=timedelta(hours=20),
        windows=(MaintenanceWindow.parse("wed", "01-02", "UTC"),),
    )
    assert nb + timedelta(days=2) + jitter_offset(inp) > datetime(2026, 1, 7, 10, 0, tzinfo=UTC)
    plan = plan_renewal(inp, nb)
    assert plan.reason == "window-moved"
    assert plan.due_at == datetime(2026, 1, 7, 1, 0, tzinfo=UTC)


def test_jitter_is_deterministic_and_independent_of_mac_spelling() -> None:
    assert jitter_fraction("00:1A:E8:12:34:56") == jitter_fraction("00-1a-e8-12-34-56")
    assert jitter_fraction("001ae8123456") == jitter_fraction("00:1A:E8:12:34:56")
    assert 0 <= jitter_fraction(MAC) < 1
    fractions = {jitter_fraction(f"00:1A:E8:00:00:{n:02X}") for n in range(50)}
    assert len(fractions) == 50  # spreads devices


def test_jitter_within_bounds_and_applied() -> None:
    inp = cert(jitter=timedelta(hours=6))
    offset = jitter_offset(inp)
    assert timedelta(0) <= offset < timedelta(hours=6)
    assert plan_renewal(inp, NB).due_at == NB + timedelta(days=60) + offset


def test_jitter_longer_than_the_renewal_window_is_clamped() -> None:
    inp = cert(timedelta(hours=3), jitter=timedelta(days=10), device=_key_with_fraction_above(0.9))
    window = inp.not_after - base_time(inp)  # 1 hour
    assert jitter_offset(inp) < window * 0.9
    plan = plan_renewal(inp, NB)
    assert plan.due_at <= plan.latest < plan.not_after


def test_zero_jitter_means_no_offset() -> None:
    assert jitter_offset(cert()) == timedelta(0)


def test_plan_many_orders_by_urgency() -> None:
    now = NB + timedelta(days=100)
    inputs = [
        cert(timedelta(days=200), cert_id=1),
        cert(timedelta(days=50), cert_id=2),  # expired
        cert(timedelta(days=150), cert_id=3),
        cert(timedelta(days=30), cert_id=4),  # expired earlier
        cert(timedelta(days=120), cert_id=5),
    ]
    plans = plan_many(inputs, now)
    assert [p.cert_id for p in plans] == [4, 2, 5, 3, 1]
    assert [p.reason for p in plans[:2]] == ["expired", "expired"]


def test_plan_is_deterministic() -> None:
    windows = (MaintenanceWindow.parse("mon-fri", "22-05", "Europe/Berlin"),)
    inp = cert(jitter=timedelta(hours=6), windows=windows)
    assert plan_renewal(inp, NB) == plan_renewal(inp, NB)


def test_from_policy() -> None:
    policy = parse_policy(
        {
            "name": "p",
            "subject": {"common_name": "{ip}"},
            "renewal": {"renew_before": "30d", "jitter": "6h"},
            "windows": [{"days": "mon-fri", "hours": "22-05", "timezone": "Europe/Berlin"}],
        },
        source="p.toml",
    )
    inp = RenewalInput.from_policy(7, MAC, NB, NB + timedelta(days=397), policy)
    assert inp.renew_before == timedelta(days=30)
    assert inp.renew_at_fraction is None
    assert inp.jitter == timedelta(hours=6)
    assert inp.windows == policy.windows
    plan = plan_renewal(inp, NB)
    assert plan.cert_id == 7
    assert window_open(policy.windows, plan.due_at)
    assert NB + timedelta(days=367) <= plan.due_at < NB + timedelta(days=397)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lifetime": timedelta(0)}, "not_after must be later"),
        ({"renew_before": timedelta(days=1), "fraction": 0.5}, "not both"),
        ({"renew_before": timedelta(0)}, "renew_before must be positive"),
        ({"fraction": 1.0}, "between 0 and 1"),
        ({"fraction": 0.0}, "between 0 and 1"),
        ({"jitter": timedelta(seconds=-1)}, "jitter must not be negative"),
    ],
)
def test_invalid_inputs_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cert(**kwargs)  # type: ignore[arg-type]


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        RenewalInput(1, MAC, naive, naive + timedelta(days=1))
    with pytest.raises(ValueError, match="naive"):
        plan_renewal(cert(), naive)
