"""The phone list of the console: parsing a filter from the URL, and the keyset-paginated query it runs.

A filter is the query string of ``/ui/phones`` (bookmarkable; the back button works): ``q`` (a prefix of the MAC,
number, IP address or host name), ``status``, ``policy``, ``model``, ``firmware``, ``expiring`` (within N days,
expired ones included), ``drift``, ``pending`` (awaiting approval: a pending enrollment or a held address move),
``sort`` and ``cursor``. Nothing a browser sends fails the page: a value that does not parse is dropped with a
message saying why.

Sorting and pagination are keyset-based (never ``OFFSET``), so every page costs the same at 100,000 phones:

* ``expiry`` (default): phones with a current certificate by ``not_after`` then id, then the phones without one
  by id — two phases, so the ``certificate.not_after`` index serves the first;
* ``silent``: longest silent first (``last_seen_at`` ascending), never-seen phones after;
* ``recent``: most recently seen first; ``mac``: by MAC.

Prefix search uses the indexes of migration 0004: a range scan on SQLite (byte order), ``LIKE 'prefix%'`` on
PostgreSQL (``text_pattern_ops``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlmodel import Session, col

from certmgr.db.models import Certificate, Device, DeviceStatus, Enrollment
from certmgr.inventory.enrollment import awaits_approval, awaits_approval_clause, held_move

PAGE_SIZE = 50
MAX_Q = 64
MAX_TEXT = 128
MAX_EXPIRING_DAYS = 36500
SORTS = {
    "expiry": "expiry (soonest first)",
    "silent": "last seen (longest silent first)",
    "recent": "last seen (most recent first)",
    "mac": "MAC",
}
_MAC_CHARS = re.compile(r"^[0-9A-Fa-f:.\-]+$")
_E164 = re.compile(r"^\+?[0-9]+$")
_IP_CHARS = re.compile(r"^[0-9A-Fa-f.:]+$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")
_CURSOR = re.compile(r"^([cnsm])\.([0-9A-F:]{1,17}|-?[0-9]{1,20})(?:\.([0-9]{1,10}))?$")
_FULL_MAC = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){5}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PhoneFilter:
    """A parsed phone filter (see the module docstring)."""

    q: str = ""
    status: DeviceStatus | None = None
    policy: str = ""
    model: str = ""
    firmware: str = ""
    expiring: int | None = None
    drift: bool = False
    pending: bool = False
    sort: str = "expiry"
    cursor: str = ""

    def params(self, *, with_cursor: bool = False) -> dict[str, str]:
        """The filter as query parameters (what the URL carries)."""
        values = {
            "q": self.q,
            "status": self.status.value if self.status else "",
            "policy": self.policy,
            "model": self.model,
            "firmware": self.firmware,
            "expiring": "" if self.expiring is None else str(self.expiring),
            "drift": "1" if self.drift else "",
            "pending": "1" if self.pending else "",
            "sort": "" if self.sort == "expiry" else self.sort,
            "cursor": self.cursor if with_cursor else "",
        }
        return {k: v for k, v in values.items() if v}

    @property
    def active(self) -> bool:
        """Whether anything narrows the list."""
        return bool(self.params().keys() - {"sort"})


def _text(params: Mapping[str, str], name: str, limit: int, problems: list[str]) -> str:
    value = params.get(name, "").replace("\x00", "").strip()
    if len(value) > limit:
        problems.append(f"{name}: at most {limit} characters")
        return ""
    return value


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "on", "yes")


def parse_filter(params: Mapping[str, str]) -> tuple[PhoneFilter, list[str]]:
    """The filter in ``params`` and a message for each value that was dropped."""
    problems: list[str] = []
    q = _text(params, "q", MAX_Q, problems)
    if q and not search_terms(q):
        problems.append(f"search {q!r}: give the start of a MAC, number, IP address or host name")
        q = ""
    status = None
    raw_status = params.get("status", "").strip()
    if raw_status:
        try:
            status = DeviceStatus(raw_status)
        except ValueError:
            problems.append(f"status {raw_status[:32]!r}: one of {', '.join(s.value for s in DeviceStatus)}")
    expiring = None
    raw_exp = params.get("expiring", "").strip()
    if raw_exp:
        if raw_exp.isdigit() and len(raw_exp) <= 6 and int(raw_exp) <= MAX_EXPIRING_DAYS:
            expiring = int(raw_exp)
        else:
            problems.append(f"expiring within: a whole number of days from 0 to {MAX_EXPIRING_DAYS}")
    sort = params.get("sort", "").strip() or "expiry"
    if sort not in SORTS:
        problems.append(f"sort: one of {', '.join(SORTS)}")
        sort = "expiry"
    cursor = params.get("cursor", "").strip()
    if cursor and not _valid_cursor(cursor):
        problems.append("that page link is not valid: showing the first page")
        cursor = ""
    result = PhoneFilter(
        q=q,
        status=status,
        policy=_text(params, "policy", MAX_TEXT, problems),
        model=_text(params, "model", MAX_TEXT, problems),
        firmware=_text(params, "firmware", MAX_TEXT, problems),
        expiring=expiring,
        drift=_flag(params.get("drift", "")),
        pending=_flag(params.get("pending", "")),
        sort=sort,
        cursor=cursor,
    )
    if cursor and cursor[0] not in _phases(sort):
        problems.append("that page link belongs to another sort order: showing the first page")
        result = replace(result, cursor="")
    return result, problems


def _valid_cursor(cursor: str) -> bool:
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        return False
    phase, key, ident = match.groups()
    if phase in "cs":
        if ident is None or not key.lstrip("-").isdigit():
            return False
        try:
            _from_micros(int(key))
        except OverflowError:
            return False
        return True
    if phase == "n":
        return ident is None and key.isdigit()
    return ident is None and _FULL_MAC.fullmatch(key) is not None


@dataclass(frozen=True)
class SearchTerms:
    """What a search string can be the start of (each ``None`` when it cannot)."""

    mac: str | None
    e164: str | None
    ip: str | None
    hostname: str | None


def search_terms(q: str) -> SearchTerms | None:
    """The prefixes ``q`` stands for, or ``None`` if it can be none of them."""
    mac = None
    if _MAC_CHARS.fullmatch(q):
        digits = re.sub(r"[:.\-]", "", q).upper()
        if 0 < len(digits) <= 12:
            mac = ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
    e164 = q if _E164.fullmatch(q) else None
    ip = q.lower() if _IP_CHARS.fullmatch(q) and any(c in q for c in ".:0123456789") else None
    hostname = q.lower() if _HOST.fullmatch(q) else None
    if mac is None and e164 is None and ip is None and hostname is None:
        return None
    return SearchTerms(mac, e164, ip, hostname)


def _successor(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def prefix_match(column: Any, prefix: str, dialect: str) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``, in the form the database's index serves."""
    if dialect == "postgresql":
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return col(column).like(escaped + "%", escape="\\")
    return and_(col(column) >= prefix, col(column) < _successor(prefix))


@dataclass(frozen=True)
class PhoneRow:
    """One line of the phone list."""

    id: int
    mac: str
    e164: str | None
    ip: str | None
    hostname: str | None
    model: str | None
    firmware: str | None
    policy: str | None
    enrollment: Enrollment
    status: DeviceStatus
    drift: bool
    last_seen_at: datetime | None
    not_after: datetime | None
    pending_ip: str | None = None

    @property
    def awaiting_approval(self) -> bool:
        """Pending enrollment or a held address move (the inventory's rule)."""
        return awaits_approval(self)

    @property
    def held_move(self) -> str | None:
        """The address a move of the phone is held to, if any (the inventory's rule)."""
        return held_move(self)


@dataclass
class PhonePage:
    """One page of the list and the cursor of the next (``None`` on the last page)."""

    rows: list[PhoneRow] = field(default_factory=list)
    next_cursor: str | None = None


_COLUMNS = (
    col(Device.id),
    col(Device.mac),
    col(Device.e164),
    col(Device.ip),
    col(Device.hostname),
    col(Device.device_type),
    col(Device.software_version),
    col(Device.policy_name),
    col(Device.enrollment),
    col(Device.status),
    col(Device.drift),
    col(Device.last_seen_at),
    col(Certificate.not_after),
    col(Device.pending_ip),
)


def _phases(sort: str) -> tuple[str, str]:
    """The cursor phase letters of ``sort``: the ordered phase, then the phase of phones without the key."""
    return {"expiry": ("c", "n"), "silent": ("s", "n"), "recent": ("s", "n"), "mac": ("m", "m")}[sort]


def conditions(flt: PhoneFilter, now: datetime, dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE conditions of ``flt`` (without sort and cursor)."""
    where: list[ColumnElement[bool]] = []
    if flt.q:
        terms = search_terms(flt.q)
        assert terms is not None
        options = [
            prefix_match(column, value, dialect)
            for column, value in (
                (Device.mac, terms.mac),
                (Device.e164, terms.e164),
                (Device.ip, terms.ip),
                (Device.hostname, terms.hostname),
            )
            if value
        ]
        where.append(or_(*options))
    if flt.status is not None:
        where.append(col(Device.status) == flt.status.value)
    if flt.policy:
        where.append(col(Device.policy_name) == flt.policy)
    if flt.model:
        where.append(col(Device.device_type) == flt.model)
    if flt.firmware:
        where.append(col(Device.software_version) == flt.firmware)
    if flt.drift:
        where.append(col(Device.drift).is_(True))
    if flt.pending:
        where.append(awaits_approval_clause())
    if flt.expiring is not None:
        where.append(col(Certificate.not_after) <= now + timedelta(days=flt.expiring))
    return where


def _base(flt: PhoneFilter, now: datetime, dialect: str, *, inner: bool) -> Any:
    query = select(*_COLUMNS).select_from(Device)
    join = col(Certificate.id) == col(Device.current_certificate_id)
    query = query.join(Certificate, join) if inner or flt.expiring is not None else query.outerjoin(Certificate, join)
    return query.where(*conditions(flt, now, dialect))


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _row(r: Any) -> PhoneRow:
    return PhoneRow(
        id=r[0],
        mac=r[1],
        e164=r[2],
        ip=r[3],
        hostname=r[4],
        model=r[5],
        firmware=r[6],
        policy=r[7],
        enrollment=Enrollment(r[8]),
        status=DeviceStatus(r[9]),
        drift=bool(r[10]),
        last_seen_at=r[11],
        not_after=r[12],
        pending_ip=r[13],
    )


def _ordered_phase(flt: PhoneFilter, now: datetime, dialect: str, after: tuple[str, str] | None) -> Any:
    """The query of the first (ordered) phase of ``flt.sort``, after the cursor ``after`` (key, id)."""
    if flt.sort == "mac":
        query = _base(flt, now, dialect, inner=False)
        if after is not None:
            query = query.where(col(Device.mac) > after[0])
        return query.order_by(col(Device.mac))
    if flt.sort == "expiry":
        key: Any = col(Certificate.not_after)
        query = _base(flt, now, dialect, inner=True)
    else:
        key = col(Device.last_seen_at)
        query = _base(flt, now, dialect, inner=False).where(key.is_not(None))
    descending = flt.sort == "recent"
    if after is not None:
        value, ident = _from_micros(int(after[0])), int(after[1])
        if descending:
            query = query.where(or_(key < value, and_(key == value, col(Device.id) < ident)))
        else:
            query = query.where(or_(key > value, and_(key == value, col(Device.id) > ident)))
    if descending:
        return query.order_by(key.desc(), col(Device.id).desc())
    return query.order_by(key, col(Device.id))


def _rest_phase(flt: PhoneFilter, now: datetime, dialect: str, after_id: int) -> Any:
    """Phones the ordered phase leaves out (no certificate / never seen), by id."""
    if flt.sort == "expiry":
        if flt.expiring is not None:  # every phone of this filter has a certificate
            query = select(*_COLUMNS).select_from(Device).join(Certificate, false())
        else:
            query = _base(flt, now, dialect, inner=False).where(col(Device.current_certificate_id).is_(None))
    else:
        query = _base(flt, now, dialect, inner=False).where(col(Device.last_seen_at).is_(None))
    return query.where(col(Device.id) > after_id).order_by(col(Device.id))


def _cursor_for(flt: PhoneFilter, row: PhoneRow, phase: str) -> str:
    if phase == "m":
        return f"m.{row.mac}"
    if phase == "n":
        return f"n.{row.id}"
    value = row.not_after if flt.sort == "expiry" else row.last_seen_at
    assert value is not None
    return f"{phase}.{_micros(value)}.{row.id}"


def phones_page(session: Session, flt: PhoneFilter, now: datetime, limit: int = PAGE_SIZE) -> PhonePage:
    """One page of the phones ``flt`` matches, in its order, starting after ``flt.cursor``."""
    dialect = session.get_bind().dialect.name
    first, rest = _phases(flt.sort)
    page = PhonePage()
    phase, key = (flt.cursor[0], flt.cursor[2:]) if flt.cursor else (first, "")
    if phase == first:
        after = None
        if key:
            parts = key.split(".")
            after = (parts[0], parts[1] if len(parts) > 1 else "0")
        rows = session.execute(_ordered_phase(flt, now, dialect, after).limit(limit + 1)).all()
        page.rows = [_row(r) for r in rows[:limit]]
        if len(rows) > limit:
            page.next_cursor = _cursor_for(flt, page.rows[-1], first)
            return page
        if first == rest:
            return page
        phase, key = rest, "0"
    if phase == rest and first != rest:
        room = limit - len(page.rows)
        after_id = int(key) if key.lstrip("-").isdigit() else 0
        rows = session.execute(_rest_phase(flt, now, dialect, after_id).limit(room + 1)).all()
        more = [_row(r) for r in rows[:room]]
        page.rows += more
        if len(rows) > room:
            page.next_cursor = _cursor_for(flt, page.rows[-1], rest)
    return page


def count_matching(session: Session, flt: PhoneFilter, now: datetime) -> int:
    """How many phones ``flt`` matches (sort and cursor ignored)."""
    dialect = session.get_bind().dialect.name
    query = select(func.count()).select_from(Device)
    join = col(Certificate.id) == col(Device.current_certificate_id)
    query = query.join(Certificate, join) if flt.expiring is not None else query.outerjoin(Certificate, join)
    return int(session.execute(query.where(*conditions(flt, now, dialect))).scalar_one())


def matching_ids(session: Session, flt: PhoneFilter, now: datetime, batch: int = 500) -> Iterator[list[int]]:
    """The ids of the phones ``flt`` matches, in id order, in batches (keyset; for bulk jobs)."""
    dialect = session.get_bind().dialect.name
    after = 0
    while True:
        query = select(col(Device.id)).select_from(Device)
        join = col(Certificate.id) == col(Device.current_certificate_id)
        query = query.join(Certificate, join) if flt.expiring is not None else query.outerjoin(Certificate, join)
        ids = list(
            session.execute(
                query.where(*conditions(flt, now, dialect), col(Device.id) > after)
                .order_by(col(Device.id))
                .limit(batch)
            ).scalars()
        )
        if not ids:
            return
        yield ids
        after = ids[-1]


__all__ = [
    "PAGE_SIZE",
    "SORTS",
    "PhoneFilter",
    "PhonePage",
    "PhoneRow",
    "count_matching",
    "matching_ids",
    "parse_filter",
    "phones_page",
    "prefix_match",
    "search_terms",
]
