"""What a reader wants first: the summary of a report, tallied while its rows are read. Pure: no I/O, no clock.

Each report kind has a *tally* that the kind's query feeds with every record it reads (including records that
do not become rows: the compliance report lists only the exceptions but its summary covers the whole fleet).
When the rows are exhausted, ``tally.summary(tz)`` gives the :class:`Summary`:

* ``figures`` — the headline numbers, each with a key (for JSON), a label and the text the PDF shows ("none"
  where there is nothing);
* ``breakdowns`` — counts by something (status, action, actor, failure reason), largest first, the tail folded
  into "others";
* ``chart`` — the bars drawn on the PDF's first page.

The same summary goes into the PDF's first page and into every format's signed manifest (``summary``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Protocol

NONE = "none"
TOP = 10  # entries of a breakdown before the rest is folded into "others"
MAX_LABEL = 200  # characters of a label kept in the summary (the rows keep the full value)

__all__ = [
    "NONE",
    "AuditTally",
    "Breakdown",
    "Chart",
    "DeploymentTally",
    "ExpiryTally",
    "Figure",
    "FleetTally",
    "Summary",
    "Tally",
    "format_count",
    "format_time",
]


def format_count(n: int) -> str:
    """``1234`` -> ``1,234``."""
    return f"{n:,}"


def format_time(value: datetime | None, tz: tzinfo) -> str:
    """A time as shown to readers: in ``tz``, to the second, with the zone's abbreviation; "none" for None."""
    if value is None:
        return NONE
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _clip(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


@dataclass(frozen=True)
class Figure:
    """One headline number: ``key`` and ``value`` for machines, ``label`` and ``text`` for people."""

    key: str
    label: str
    value: int | float | str | list[Any] | dict[str, Any] | None
    text: str


@dataclass(frozen=True)
class Breakdown:
    """Counts by something, largest first; ``others`` counts what was folded after :data:`TOP` entries."""

    key: str
    title: str
    items: tuple[tuple[str, int], ...]
    others: int = 0

    @classmethod
    def of(cls, key: str, title: str, counter: Counter[str], top: int = TOP) -> Breakdown:
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = tuple((_clip(label), n) for label, n in ranked[:top])
        return cls(key, title, shown, sum(n for _, n in ranked[top:]))

    def lines(self) -> list[str]:
        if not self.items:
            return [f"{self.title}: {NONE}"]
        lines = [f"{self.title}:"]
        lines += [f"  {label}: {format_count(n)}" for label, n in self.items]
        if self.others:
            lines.append(f"  others: {format_count(self.others)}")
        return lines


@dataclass(frozen=True)
class Chart:
    """Bars to draw: a title, (label, count) pairs in display order, and whether they stand (time series) or
    lie (categories)."""

    title: str
    bars: tuple[tuple[str, int], ...]
    vertical: bool = False


@dataclass(frozen=True)
class Summary:
    """A report's summary (see the module docstring)."""

    figures: tuple[Figure, ...]
    breakdowns: tuple[Breakdown, ...] = ()
    chart: Chart | None = None

    def lines(self) -> list[str]:
        """The summary as text lines (what the PDF's first page says)."""
        lines = [f"{f.label}: {f.text}" for f in self.figures]
        for breakdown in self.breakdowns:
            lines += breakdown.lines()
        return lines

    def figure(self, key: str) -> Figure:
        """The figure called ``key``.

        Raises:
            KeyError: if there is none.
        """
        for f in self.figures:
            if f.key == key:
                return f
        raise KeyError(key)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for manifests: values by key, breakdowns as lists, the text lines."""
        doc: dict[str, Any] = {
            "figures": {f.key: f.value for f in self.figures},
            "breakdowns": {
                b.key: {"items": [[label, n] for label, n in b.items], "others": b.others} for b in self.breakdowns
            },
            "text": self.lines(),
        }
        if self.chart is not None:
            doc["chart"] = {"title": self.chart.title, "bars": [[label, n] for label, n in self.chart.bars]}
        return doc


class Tally(Protocol):
    """Collects what a summary needs while the rows are read."""

    def summary(self, tz: tzinfo) -> Summary: ...


# --- inventory and compliance -----------------------------------------------------------------------------
@dataclass
class FleetTally:
    """The fleet's compliance, for the inventory and the compliance report (decommissioned phones are listed by
    the inventory but count for nothing else)."""

    compliance_only: bool = False
    phones: int = 0
    compliant: int = 0
    decommissioned: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_issue: Counter[str] = field(default_factory=Counter)
    earliest: tuple[datetime, str] | None = None

    def add(self, *, status: str, issues: list[str], not_after: datetime | None, name: str) -> None:
        """One phone: its status, its compliance issues (empty: compliant), its certificate's notAfter and how to
        name it (MAC and host name)."""
        self.by_status[status] += 1
        if status == "decommissioned":
            self.decommissioned += 1
            return
        self.phones += 1
        if not issues:
            self.compliant += 1
        self.by_issue.update(issues)
        if not_after is not None and (self.earliest is None or not_after < self.earliest[0]):
            self.earliest = (not_after, name)

    def summary(self, tz: tzinfo) -> Summary:
        share = _percent(self.compliant, self.phones)
        share_text = NONE if share is None else f"{share:.1f} %"
        count = format_count

        def issue(key: str, label: str) -> Figure:
            n = self.by_issue[key]
            return Figure(key.replace("-", "_"), label, n, count(n) if n else NONE)

        earliest = self.earliest
        figures = [
            Figure("phones", "Phones in service", self.phones, count(self.phones) if self.phones else NONE),
            Figure(
                "compliance_percent",
                "Compliant",
                share,
                share_text if share is None else f"{share_text} ({count(self.compliant)} of {count(self.phones)})",
            ),
            issue("factory-or-unknown-certificate", "On a factory or unknown certificate"),
            issue("expired", "Certificate expired"),
            issue("failing", "Failing (last deployment failed)"),
            issue("drift", "Drifting (serves another certificate)"),
            Figure(
                "earliest_expiry",
                "Earliest expiry",
                None if earliest is None else earliest[0].isoformat(),
                NONE if earliest is None else f"{format_time(earliest[0], tz)} ({earliest[1]})",
            ),
        ]
        if self.decommissioned and not self.compliance_only:
            figures.append(
                Figure(
                    "decommissioned",
                    "Decommissioned (listed, not counted)",
                    self.decommissioned,
                    count(self.decommissioned),
                )
            )
        bars = [("compliant", self.compliant)] + [
            (label, self.by_issue[label]) for label in ("factory-or-unknown-certificate", "expired", "failing", "drift")
        ]
        return Summary(
            tuple(figures),
            (Breakdown.of("by_status", "Phones by status", self.by_status),),
            Chart("Phones by compliance (a phone may have several issues)", tuple(bars)),
        )


# --- expiry forecast --------------------------------------------------------------------------------------
@dataclass
class ExpiryTally:
    """The forecast's buckets (filled by the query) and the earliest and latest expiry."""

    buckets: list[tuple[str, int]] = field(default_factory=list)  # (label, count) in time order, "expired" first
    certificates: int = 0
    earliest: datetime | None = None
    latest: datetime | None = None
    unit: str = "month"

    def add(self, not_after: datetime) -> None:
        self.certificates += 1
        if self.earliest is None or not_after < self.earliest:
            self.earliest = not_after
        if self.latest is None or not_after > self.latest:
            self.latest = not_after

    def summary(self, tz: tzinfo) -> Summary:
        counts = dict(self.buckets)
        periods = [(label, n) for label, n in self.buckets if label not in ("expired", "later")]
        busiest = sorted((p for p in periods if p[1] > 0), key=lambda p: (-p[1], p[0]))[:3]
        expired = counts.get("expired", 0)
        busiest_text = ", ".join(f"{label}: {format_count(n)}" for label, n in busiest) or NONE
        figures = (
            Figure(
                "certificates",
                "Current certificates",
                self.certificates,
                format_count(self.certificates) if self.certificates else NONE,
            ),
            Figure("expired", "Already expired", expired, format_count(expired) if expired else NONE),
            Figure(
                "busiest",
                f"Busiest {self.unit}s",
                [[label, n] for label, n in busiest],
                busiest_text,
            ),
            Figure("earliest_expiry", "Earliest expiry", _iso(self.earliest), format_time(self.earliest, tz)),
            Figure("latest_expiry", "Latest expiry", _iso(self.latest), format_time(self.latest, tz)),
        )
        return Summary(figures, (), Chart(f"Certificates expiring per {self.unit}", tuple(self.buckets), True))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- deployments ------------------------------------------------------------------------------------------
@dataclass
class DeploymentTally:
    """Deployments by state and the reasons of the failed ones."""

    since: datetime | None = None
    until: datetime | None = None
    total: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, state: str, last_error: str | None) -> None:
        self.total += 1
        self.by_state[state] += 1
        if state == "failed":
            self.reasons[" ".join((last_error or "no error recorded").split())] += 1

    def summary(self, tz: tzinfo) -> Summary:
        verified, failed = self.by_state["verified"], self.by_state["failed"]
        rate = _percent(verified, verified + failed)
        rate_text = (
            NONE if rate is None else f"{rate:.1f} % ({format_count(verified)} verified, {format_count(failed)} failed)"
        )
        figures = (
            Figure("period", "Period", _period(self.since, self.until), _period_text(self.since, self.until, tz)),
            Figure("deployments", "Deployments", self.total, format_count(self.total) if self.total else NONE),
            Figure("success_percent", "Success rate (of those verified or failed)", rate, rate_text),
        )
        breakdowns = (
            Breakdown.of("top_failure_reasons", "Top failure reasons", self.reasons, top=5),
            Breakdown.of("by_state", "Deployments by state", self.by_state),
        )
        bars = tuple(sorted(self.by_state.items(), key=lambda kv: (-kv[1], kv[0])))
        return Summary(figures, breakdowns, Chart("Deployments by state", bars))


def _period(since: datetime | None, until: datetime | None) -> dict[str, str | None]:
    return {"since": _iso(since), "until": _iso(until)}


def _period_text(since: datetime | None, until: datetime | None, tz: tzinfo) -> str:
    if since is None and until is None:
        return "all time"
    start = "the beginning" if since is None else format_time(since, tz)
    end = "now" if until is None else format_time(until, tz)
    return f"from {start} to {end}"


# --- audit trail ------------------------------------------------------------------------------------------
@dataclass
class AuditTally:
    """Events by action and actor, and the first and last event listed."""

    since: datetime | None = None
    until: datetime | None = None
    events: int = 0
    first: datetime | None = None
    last: datetime | None = None
    by_action: Counter[str] = field(default_factory=Counter)
    by_actor: Counter[str] = field(default_factory=Counter)

    def add(self, at: datetime, actor: str, action: str) -> None:
        self.events += 1
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)
        self.by_action[action] += 1
        self.by_actor[actor] += 1

    def summary(self, tz: tzinfo) -> Summary:
        figures = (
            Figure("period", "Period", _period(self.since, self.until), _period_text(self.since, self.until, tz)),
            Figure("events", "Events listed", self.events, format_count(self.events) if self.events else NONE),
            Figure("first_event", "First event", _iso(self.first), format_time(self.first, tz)),
            Figure("last_event", "Last event", _iso(self.last), format_time(self.last, tz)),
        )
        actions = Breakdown.of("by_action", "Events by action", self.by_action)
        breakdowns = (actions, Breakdown.of("by_actor", "Events by actor", self.by_actor))
        return Summary(figures, breakdowns, Chart("Events by action", actions.items))
