"""When to renew a certificate: a pure planner. No I/O, no clock: ``now`` is always an argument.

How :func:`plan_renewal` chooses the due time of one certificate:

1. **Base time.** With ``renew_before`` set: ``not_after - renew_before``. Otherwise ``renew_at_fraction``
   (default 2/3, as cert-manager and step-ca do) of the certificate's *actual* lifetime after ``not_before``.
   If ``renew_before`` is not shorter than the actual lifetime (a certificate clipped to its CA's expiry), the
   default fraction of the actual lifetime is used instead: otherwise every freshly issued certificate would
   be due at once and the phone would be re-keyed in a loop.
2. **Jitter.** A deterministic delay in ``[0, jitter)`` derived from a SHA-256 of the device key (the MAC), so
   10,000 certificates issued on the same day spread out, and the plan is stable across restarts and
   processes. The jitter is clamped to 90 % of the *renewal window* (``not_after - base``): the jittered time
   is always before ``not_after - 10 % of the renewal window``.
3. **Maintenance windows.** With windows, the time moves to the next window opening before the *latest*
   time, ``not_after - 10 % of the renewal window`` (``RenewalPlan.latest``). If no window opens between the
   jittered time and the latest time, the windows are searched again from the unjittered base time (the
   jitter gives way to the window). If still no window fits, the unmoved time is kept: **a certificate never
   expires to honour a window** (reason ``no-window-before-expiry``).
4. **Overdue and expired.** If the planned time (step 2) is not after ``now``, the certificate is
   ``overdue``: it is due at the next window opening from ``now`` (``now`` itself when a window is open or
   none is configured) if one opens before the latest time, otherwise at ``now``. A certificate whose
   ``not_after`` is not after ``now`` is ``expired`` and due ``now``, window or not.

Guarantees (property-tested in ``tests/unit/test_renewal_planner_properties.py``): ``due_at >= now``;
``due_at < not_after`` for every certificate not yet expired; ``due_at`` lies in a window whenever any window
opens in ``[max(base, now), latest)``; the same input always gives the same plan.

:func:`spread` then caps how many renewals fall into one clock hour for a mass expiry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from certmgr.clock import ensure_utc
from certmgr.policy.model import DEFAULT_RENEW_AT_FRACTION, Policy
from certmgr.policy.windows import MaintenanceWindow, next_window_start, window_open

PlanReason = Literal["scheduled", "overdue", "expired", "window-moved", "no-window-before-expiry"]
CertId = int | str

#: Share of the renewal window kept free before expiry: jitter and windows never push a renewal past
#: ``not_after - SAFETY_FRACTION * (not_after - base)``.
SAFETY_FRACTION = 0.1

_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RenewalInput:
    """The facts the planner needs about one certificate and its policy's ``[renewal]`` and ``[[windows]]``.

    At most one of ``renew_before`` and ``renew_at_fraction`` is set; with neither, the fraction 2/3 applies.

    Raises:
        ValueError: (on construction) for naive datetimes, ``not_after <= not_before``, both rules set, a
            fraction outside ``(0, 1)``, a non-positive ``renew_before`` or a negative ``jitter``.
    """

    cert_id: CertId
    device_key: str
    not_before: datetime
    not_after: datetime
    renew_before: timedelta | None = None
    renew_at_fraction: float | None = None
    jitter: timedelta = timedelta(0)
    windows: tuple[MaintenanceWindow, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "not_before", ensure_utc(self.not_before))
        object.__setattr__(self, "not_after", ensure_utc(self.not_after))
        object.__setattr__(self, "windows", tuple(self.windows))
        if self.not_after <= self.not_before:
            raise ValueError(f"certificate {self.cert_id}: not_after must be later than not_before")
        if self.renew_before is not None and self.renew_at_fraction is not None:
            raise ValueError(f"certificate {self.cert_id}: set renew_before or renew_at_fraction, not both")
        if self.renew_before is not None and self.renew_before <= timedelta(0):
            raise ValueError(f"certificate {self.cert_id}: renew_before must be positive")
        if self.renew_at_fraction is not None and not 0 < self.renew_at_fraction < 1:
            raise ValueError(f"certificate {self.cert_id}: renew_at_fraction must be between 0 and 1 (exclusive)")
        if self.jitter < timedelta(0):
            raise ValueError(f"certificate {self.cert_id}: jitter must not be negative")

    @classmethod
    def from_policy(
        cls, cert_id: CertId, device_key: str, not_before: datetime, not_after: datetime, policy: Policy
    ) -> RenewalInput:
        """Build the input from a certificate's validity and its device's :class:`~certmgr.policy.Policy`.

        Raises:
            ValueError: as the constructor.
        """
        return cls(
            cert_id=cert_id,
            device_key=device_key,
            not_before=not_before,
            not_after=not_after,
            renew_before=policy.renewal.renew_before,
            renew_at_fraction=policy.renewal.renew_at_fraction,
            jitter=policy.renewal.jitter,
            windows=policy.windows,
        )

    @property
    def lifetime(self) -> timedelta:
        """The certificate's actual validity period."""
        return self.not_after - self.not_before


@dataclass(frozen=True)
class RenewalPlan:
    """When one certificate's renewal is due, and why.

    ``latest`` is the last moment the planner aims for (``not_after`` minus the safety margin); ``windows``
    are the maintenance windows the plan honours (kept so :func:`spread` can honour them too).
    ``over_limit`` is set by :func:`spread` when the hourly limit had to give way to the deadline.
    """

    cert_id: CertId
    due_at: datetime
    reason: PlanReason
    in_window: bool
    not_after: datetime
    latest: datetime
    windows: tuple[MaintenanceWindow, ...] = field(default=(), repr=False)
    over_limit: bool = False

    @property
    def expired(self) -> bool:
        """True if the certificate had expired when the plan was made."""
        return self.reason == "expired"


_KEY_SEPARATORS = str.maketrans("", "", ":-. ")


def jitter_fraction(device_key: str) -> float:
    """A stable number in ``[0, 1)`` for ``device_key``: the first 64 bits of SHA-256 of the normalised key.

    The key is lower-cased and stripped of ``:``, ``-``, ``.`` and spaces, so every spelling of a MAC gives
    the same value.
    """
    normalised = device_key.lower().translate(_KEY_SEPARATORS)
    digest = hashlib.sha256(normalised.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def base_time(inp: RenewalInput) -> datetime:
    """The planned renewal time before jitter and windows (step 1 of the module docstring)."""
    lifetime = inp.lifetime
    if inp.renew_before is not None and inp.renew_before < lifetime:
        return inp.not_after - inp.renew_before
    fraction = inp.renew_at_fraction if inp.renew_at_fraction is not None else DEFAULT_RENEW_AT_FRACTION
    return inp.not_before + lifetime * fraction


def latest_time(inp: RenewalInput) -> datetime:
    """``not_after`` minus :data:`SAFETY_FRACTION` of the renewal window: no jitter or window goes later."""
    return _latest(inp, base_time(inp))


def _latest(inp: RenewalInput, base: datetime) -> datetime:
    return inp.not_after - (inp.not_after - base) * SAFETY_FRACTION


_MICROSECOND = timedelta(microseconds=1)


def jitter_offset(inp: RenewalInput) -> timedelta:
    """The device's delay after the base time: in ``[0, min(jitter, 90 % of the renewal window))``.

    Zero when the span is zero; otherwise strictly less than the span.
    """
    return _jitter(inp, base_time(inp))


def _jitter(inp: RenewalInput, base: datetime) -> timedelta:
    window = inp.not_after - base
    span = min(inp.jitter, window * (1 - SAFETY_FRACTION))
    span_us = span // _MICROSECOND
    if span_us <= 0:
        return timedelta(0)
    return timedelta(microseconds=int(span_us * jitter_fraction(inp.device_key)))


def plan_renewal(inp: RenewalInput, now: datetime) -> RenewalPlan:
    """Plan the renewal of one certificate (see the module docstring for the rules).

    Raises:
        ValueError: if ``now`` is naive.
    """
    now = ensure_utc(now)
    windows = inp.windows
    base = base_time(inp)  # once: the latest time and the jitter are both measured from it
    latest = _latest(inp, base)

    def plan(due: datetime, reason: PlanReason) -> RenewalPlan:
        return RenewalPlan(
            cert_id=inp.cert_id,
            due_at=due,
            reason=reason,
            in_window=window_open(windows, due),
            not_after=inp.not_after,
            latest=latest,
            windows=windows,
        )

    if inp.not_after <= now:
        return plan(now, "expired")
    planned = base + _jitter(inp, base)
    if planned <= now:
        opening = next_window_start(windows, now, latest) if windows else None
        return plan(opening or now, "overdue")
    if not windows:
        return plan(planned, "scheduled")
    opening = next_window_start(windows, planned, latest)
    if opening is None and base < planned:
        opening = next_window_start(windows, max(base, now), latest)
    if opening is None:
        return plan(planned, "no-window-before-expiry")
    return plan(opening, "scheduled" if opening == planned else "window-moved")


def _urgency(plan: RenewalPlan) -> tuple[bool, datetime, datetime, str]:
    return (not plan.expired, plan.not_after, plan.due_at, str(plan.cert_id))


def plan_many(inputs: Iterable[RenewalInput], now: datetime) -> list[RenewalPlan]:
    """Plan every input; most urgent first: expired certificates, then by earliest ``not_after``.

    Ties are broken by due time, then certificate id, so the order is deterministic.

    Raises:
        ValueError: if ``now`` is naive.
    """
    return sorted((plan_renewal(inp, now) for inp in inputs), key=_urgency)


def _hour_index(at: datetime) -> int:
    return (at - _EPOCH) // _HOUR


def _hour_start(index: int) -> datetime:
    return _EPOCH + index * _HOUR


class _HourSlots:
    """Per-clock-hour (UTC) counters with a union-find "next hour with room" to skip full hours quickly."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count: dict[int, int] = {}
        self._next: dict[int, int] = {}

    def first_free(self, index: int) -> int:
        """The first hour at or after ``index`` that is not full."""
        root = index
        while root in self._next:
            root = self._next[root]
        while index != root:  # path compression
            self._next[index], index = root, self._next[index]
        return root

    def take(self, index: int) -> int:
        """Count one renewal in hour ``index``; returns how many were there before."""
        before = self.count.get(index, 0)
        self.count[index] = before + 1
        if before + 1 >= self.limit:
            self._next[index] = index + 1
        return before


def spread(plans: Sequence[RenewalPlan], per_hour_limit: int, now: datetime) -> list[RenewalPlan]:
    """Re-time ``plans`` so that no clock hour (UTC) holds more than ``per_hour_limit`` due renewals.

    Plans are placed most urgent first (the order of :func:`plan_many`). Each one goes to the earliest hour at
    or after its own due time (never before ``now``) that has room and, if its due time was in a window, in
    which a window is open (a plan already outside its windows — no window before its latest time — is only
    held to the limit); inside an hour the renewals are evenly staggered (the k-th of an hour at ``k / limit``
    of it) when that keeps them inside the window and before ``latest``. A plan is never moved to or past its
    ``latest`` time, and never earlier than its own due time.

    When that is impossible — no hour with room (and an open window) before the plan's ``latest`` time, which
    includes every expired certificate — **urgency wins over the limit**: the plan keeps its own due time
    (``max(due_at, now)``), is counted in that hour anyway and is marked ``over_limit=True``. So a mass expiry
    that cannot be spread in time exceeds the hourly limit rather than letting a certificate expire.

    Returns the new plans in urgency order.

    Raises:
        ValueError: if ``per_hour_limit`` is less than 1 or ``now`` is naive.
    """
    if per_hour_limit < 1:
        raise ValueError("per_hour_limit must be at least 1")
    now = ensure_utc(now)
    slots = _HourSlots(per_hour_limit)
    result: list[RenewalPlan] = []
    for plan in sorted(plans, key=_urgency):
        desired = max(plan.due_at, now)
        placed = _place(plan, desired, slots) if desired < plan.latest else None
        if placed is None:
            slots.take(_hour_index(desired))
            result.append(_moved(plan, desired, True))
        else:
            result.append(_moved(plan, placed, plan.over_limit))
    return result


def _moved(plan: RenewalPlan, due_at: datetime, over_limit: bool) -> RenewalPlan:
    """``plan`` due at ``due_at`` (``in_window`` recomputed): what ``dataclasses.replace`` gives, built directly —
    :func:`spread` makes one per plan, and ``replace`` inspects the fields each time (``tests/unit/
    test_renewal_spread.py`` checks that every field is carried over)."""
    return RenewalPlan(
        cert_id=plan.cert_id,
        due_at=due_at,
        reason=plan.reason,
        in_window=window_open(plan.windows, due_at),
        not_after=plan.not_after,
        latest=plan.latest,
        windows=plan.windows,
        over_limit=over_limit,
    )


def _place(plan: RenewalPlan, desired: datetime, slots: _HourSlots) -> datetime | None:
    """Earliest time ``>= desired`` and ``< plan.latest`` in an hour with room and an open window; or None.

    Every loop step moves ``candidate`` forward by at least the rest of a full hour or to the next window
    opening, and stops at ``plan.latest``, so the loop is bounded by the hours until ``plan.latest``.
    """
    windows = plan.windows if plan.in_window else ()
    candidate = desired
    while candidate < plan.latest:
        index = slots.first_free(_hour_index(candidate))
        if index != _hour_index(candidate):
            candidate = _hour_start(index)
            if candidate >= plan.latest:
                return None
        if windows and not window_open(windows, candidate):
            opening = next_window_start(windows, candidate, plan.latest)
            if opening is None:
                return None
            candidate = opening
            continue  # the opening may fall into a full hour: check again
        before = slots.take(index)
        staggered = _hour_start(index) + _HOUR * before / slots.limit
        if candidate < staggered < plan.latest and window_open(windows, staggered):
            return staggered
        return candidate
    return None
