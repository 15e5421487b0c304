"""Renewal waves (pure part): window openings in UTC, grouping due renewals into them, capacity flags; and the
SVG bar chart's accessibility and escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certmgr.console.charts import Bar, bar_chart
from certmgr.console.waves import group_waves, occurrences
from certmgr.policy.windows import MaintenanceWindow

MON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday, 13:00 in Berlin


def test_occurrences_wrap_midnight_and_clip_to_the_range() -> None:
    window = MaintenanceWindow.parse("mon-fri", "22-05", "Europe/Berlin")
    found = occurrences(window, MON, MON + timedelta(days=2))
    assert [(o.start.isoformat(), o.end.isoformat()) for o in found] == [
        ("2026-11-23T21:00:00+00:00", "2026-11-24T04:00:00+00:00"),
        ("2026-11-24T21:00:00+00:00", "2026-11-25T04:00:00+00:00"),
    ]
    assert found[0].hours == 7
    inside = occurrences(window, MON + timedelta(hours=12), MON + timedelta(hours=14))
    assert [(o.start, o.end) for o in inside] == [(MON + timedelta(hours=12), MON + timedelta(hours=14))]


def test_group_waves_flags_windows_that_will_not_fit() -> None:
    window = MaintenanceWindow.parse("mon-sun", "22-24", "UTC")
    windows = {"night": (window,), "anytime": ()}
    first_night = MON.replace(hour=22, minute=30)
    due = [("night", first_night)] * 30 + [("night", first_night + timedelta(days=1))] * 5 + [("anytime", MON)] * 3
    waves = group_waves(due, lambda name: windows[name], MON, MON + timedelta(days=7), per_hour=10)
    by_start = {(w.policy, w.start): w for w in waves}
    tonight = by_start[("night", MON.replace(hour=22))]
    assert (tonight.due, tonight.capacity, tonight.fits) == (30, 20, False)  # 2 h at 10 phones/hour
    tomorrow = by_start[("night", MON.replace(hour=22) + timedelta(days=1))]
    assert (tomorrow.due, tomorrow.fits) == (5, True)
    anytime = by_start[("anytime", MON)]
    assert (anytime.due, anytime.capacity, anytime.window) == (3, 1680, "no window: any time")
    unknown = group_waves(due, lambda name: windows[name], MON, MON + timedelta(days=7), per_hour=None)
    assert all(w.fits is None for w in unknown)


def test_bar_chart_is_labelled_escaped_and_scaled() -> None:
    svg = str(bar_chart("c1", "Title <x>", "Desc & more", [Bar("W1", 3, "critical"), Bar("<b>", 9)]))
    assert 'role="img"' in svg
    assert 'aria-labelledby="c1-title c1-desc"' in svg
    assert '<title id="c1-title">Title &lt;x&gt;</title>' in svg
    assert '<desc id="c1-desc">Desc &amp; more</desc>' in svg
    assert "<b>" not in svg
    assert 'class="bar critical"' in svg
    assert ">20</text>" in svg  # 9 rounds up to 4 steps of 5 (steps of 1, 2 or 5 times a power of ten)
    assert "style=" not in svg
    empty = str(bar_chart("c2", "t", "d", [Bar("W1", 0)], empty="Nothing expires"))
    assert "Nothing expires" in empty
