"""Renewal waves against delivery capacity: how many renewals fall due in each coming maintenance window, and
whether the phones/hour certmgr actually achieved recently lets them fit.

* **Due renewals** come from the renewal planner itself (:func:`certmgr.renewal.planner.plan_renewal`, with the
  policy from :func:`certmgr.inventory.phones.policy_for`), over the rows the renewal reconcile's own first pass
  (:func:`certmgr.renewal.service.scan_first_pass`) keeps for the horizon — never a second rule.
* **Capacity** is the best hour of the last :data:`CAPACITY_LOOKBACK` (deployments verified per clock hour),
  capped by ``renewal_max_per_hour``. Without recent deliveries it is unknown and nothing is flagged.
* A window **will not fit** when its due renewals exceed capacity times its length in hours.

The computation reads the fleet (about a second at 100,000 phones), so :class:`WaveCache` keeps its result for
:data:`WAVES_TTL` and, for a large fleet, recomputes it in the background when it is stale; the page says when it
was computed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from time import monotonic

from sqlmodel import Session, col, select

from certmgr.db.models import Deployment, DeploymentState
from certmgr.errors import CertmgrError
from certmgr.inventory.phones import policy_for
from certmgr.policy.windows import MaintenanceWindow
from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.console")

HORIZON = timedelta(days=7)
CAPACITY_LOOKBACK = timedelta(days=7)
WAVES_TTL = timedelta(minutes=5)
INLINE_UNDER = timedelta(milliseconds=200)
MAX_ROWS = 30
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Occurrence:
    """One opening of a maintenance window, in UTC."""

    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start) / _HOUR


def occurrences(window: MaintenanceWindow, start: datetime, end: datetime) -> list[Occurrence]:
    """The openings of ``window`` that overlap ``[start, end)``, clipped to it, in order (pure)."""
    tz = window.tz
    first: date = start.astimezone(tz).date() - timedelta(days=1)
    last: date = end.astimezone(tz).date()
    found: list[Occurrence] = []
    day = first
    while day <= last:
        if day.weekday() in window.days:
            opens = datetime.combine(day, time(window.start_hour), tz)
            end_day = day + timedelta(days=1) if window.wraps_midnight or window.end_hour == 24 else day
            closes = datetime.combine(end_day, time(window.end_hour % 24), tz)
            lo, hi = max(opens, start), min(closes, end)
            if lo < hi:
                found.append(Occurrence(lo.astimezone(start.tzinfo), hi.astimezone(start.tzinfo)))
        day += timedelta(days=1)
    return sorted(found, key=lambda o: o.start)


@dataclass(frozen=True)
class Wave:
    """Renewals due in one window opening (or, for a policy without windows, over the whole horizon)."""

    policy: str
    window: str
    start: datetime
    end: datetime
    due: int
    capacity: int | None

    @property
    def fits(self) -> bool | None:
        """Whether the due renewals fit the capacity (``None``: capacity unknown)."""
        return None if self.capacity is None else self.due <= self.capacity


@dataclass
class WaveReport:
    """The waves of the horizon and how they were measured."""

    computed_at: datetime
    horizon_end: datetime
    per_hour_achieved: int | None
    per_hour_limit: int
    waves: list[Wave] = field(default_factory=list)
    due_total: int = 0
    planning_errors: int = 0

    @property
    def per_hour(self) -> int | None:
        """The capacity used: the achieved rate capped by the issuance limit."""
        if self.per_hour_achieved is None:
            return None
        return min(self.per_hour_achieved, self.per_hour_limit)

    @property
    def not_fitting(self) -> int:
        return sum(1 for w in self.waves if w.fits is False)


def group_waves(
    due: Iterable[tuple[str, datetime]],
    windows: Callable[[str], Sequence[MaintenanceWindow]],
    now: datetime,
    end: datetime,
    per_hour: int | None,
) -> list[Wave]:
    """Group ``(policy name, due time)`` pairs into window openings of each policy (pure)."""
    by_policy: dict[str, list[datetime]] = {}
    for name, at in due:
        by_policy.setdefault(name, []).append(max(at, now))
    waves: list[Wave] = []
    for name, times in sorted(by_policy.items()):
        wins = windows(name)
        if not wins:
            hours = (end - now) / _HOUR
            cap = None if per_hour is None else int(per_hour * hours)
            waves.append(Wave(name, "no window: any time", now, end, len(times), cap))
            continue
        left = Counter(times)
        for win in wins:
            for occ in occurrences(win, now, end):
                n = 0
                for at in list(left):
                    if occ.start <= at < occ.end:
                        n += left.pop(at)
                if n:
                    cap = None if per_hour is None else int(per_hour * occ.hours)
                    waves.append(Wave(name, str(win), occ.start, occ.end, n, cap))
        outside = sum(left.values())
        if outside:  # the planner never lets a certificate expire to honour a window
            waves.append(Wave(name, "outside every window (before expiry)", now, end, outside, None))
    return sorted(waves, key=lambda w: (w.start, w.policy))


def achieved_per_hour(session: Session, now: datetime) -> int | None:
    """The most deployments verified in one clock hour over the last :data:`CAPACITY_LOOKBACK` (``None``: none)."""
    rows = session.execute(
        select(col(Deployment.verified_at)).where(
            col(Deployment.state) == DeploymentState.VERIFIED.value,
            col(Deployment.verified_at) >= now - CAPACITY_LOOKBACK,
        )
    ).scalars()
    hours = Counter(at.replace(minute=0, second=0, microsecond=0) for at in rows if at is not None)
    return max(hours.values()) if hours else None


def compute_waves(runtime: Runtime, now: datetime) -> WaveReport:
    """The waves of the next :data:`HORIZON` (see the module docstring).

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    from certmgr.db.engine import session_scope
    from certmgr.renewal.planner import RenewalInput, plan_renewal
    from certmgr.renewal.service import load_current, scan_first_pass

    end = now + HORIZON
    report = WaveReport(now, end, None, runtime.settings.renewal_max_per_hour)
    due: list[tuple[str, datetime]] = []
    with session_scope(runtime.engine) as session:
        report.per_hour_achieved = achieved_per_hour(session, now)
        for _read, ids in scan_first_pass(session, runtime, end, None, {}, runtime.settings.renewal_scan_batch):
            for row in load_current(session, ids):
                try:
                    policy = policy_for(runtime.policies, row.device_policy, row.identity()).policy
                    plan = plan_renewal(
                        RenewalInput.from_policy(row.cert_id, row.mac, row.not_before, row.not_after, policy), now
                    )
                except (ValueError, CertmgrError):
                    report.planning_errors += 1
                    continue
                if plan.due_at < end:
                    due.append((policy.name, plan.due_at))

    def windows(name: str) -> Sequence[MaintenanceWindow]:
        return runtime.policies.get(name).windows if name in runtime.policies.names else ()

    report.due_total = len(due)
    report.waves = group_waves(due, windows, now, end, report.per_hour)
    return report


class WaveCache:
    """The last :class:`WaveReport`, recomputed once older than :data:`WAVES_TTL`: in the request that needs it
    when the last computation took under :data:`INLINE_UNDER` (a small fleet: always fresh), else in a background
    thread while the page shows the previous result (a large fleet: the page stays fast). The first one is always
    computed in the request."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._report: WaveReport | None = None
        self._took = timedelta(0)
        self._lock = threading.Lock()
        self._refreshing = False

    def _compute(self) -> WaveReport:
        started = monotonic()
        report = compute_waves(self.runtime, self.runtime.clock.now())
        with self._lock:
            self._report = report
            self._took = timedelta(seconds=monotonic() - started)
        return report

    def get(self) -> WaveReport:
        """The current report (for a large fleet possibly up to one TTL old).

        Raises:
            DatabaseError: if a computation in the request cannot reach the database.
        """
        now = self.runtime.clock.now()
        with self._lock:
            report, took = self._report, self._took
            stale = report is None or now - report.computed_at >= WAVES_TTL
            background = stale and report is not None and took >= INLINE_UNDER
            start = background and not self._refreshing
            if start:
                self._refreshing = True
        if report is None or (stale and not background):
            return self._compute()
        if start:
            threading.Thread(target=self._refresh, name="console-waves", daemon=True).start()
        return report

    def _refresh(self) -> None:
        try:
            self._compute()
        except CertmgrError as exc:
            log.warning("renewal waves not recomputed: %s", exc.message)
        finally:
            with self._lock:
                self._refreshing = False


__all__ = ["Occurrence", "Wave", "WaveCache", "WaveReport", "compute_waves", "group_waves", "occurrences"]
