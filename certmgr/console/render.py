"""Server-side rendering of the console: one Jinja2 environment (autoescaped, strict about undefined names) and
the filters the templates share — times, days left as a number *and* a word (never colour alone), fingerprints.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from certmgr import __version__
from certmgr.audit.tokens import Role
from certmgr.policy import format_duration

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
HTMX_FILE = "htmx-2.0.11.min.js"

#: Days-left thresholds of the status words.
CRITICAL_DAYS = 7
SOON_DAYS = 30


def days_left(not_after: datetime | None, now: datetime) -> int | None:
    """Whole days until ``not_after`` (negative once expired), or ``None`` without a certificate."""
    if not_after is None:
        return None
    return (not_after - now) // timedelta(days=1)


def expiry_word(days: int | None) -> str:
    """The status word of ``days`` left: ``none``, ``expired``, ``critical`` (≤ 7), ``soon`` (≤ 30) or ``ok``."""
    if days is None:
        return "none"
    if days < 0:
        return "expired"
    if days <= CRITICAL_DAYS:
        return "critical"
    if days <= SOON_DAYS:
        return "soon"
    return "ok"


def ts(value: datetime | None) -> str:
    """A time for people: ``2026-11-26 09:00 UTC`` (``—`` for none)."""
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M UTC")


def ts_seconds(value: datetime | None) -> str:
    """A time to the second, without the zone (a column headed UTC): ``2026-11-26 09:00:05``."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "—"


def ts_iso(value: datetime | None) -> str:
    """A time for ``<time datetime=…>``."""
    return value.isoformat(timespec="seconds") if value is not None else ""


def ago(value: datetime | None, now: datetime) -> str:
    """How long ago ``value`` was, roughly (``never`` for none)."""
    if value is None:
        return "never"
    seconds = int((now - value).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def fingerprint(value: str | None) -> str:
    """A SHA-256 fingerprint in groups of eight hex digits (``—`` for none)."""
    if not value:
        return "—"
    return " ".join(value[i : i + 8] for i in range(0, len(value), 8))


def query(base: Mapping[str, object], **changes: object) -> str:
    """``?a=1&b=2`` from ``base`` with ``changes`` applied (``None`` or ``""`` removes a key)."""
    merged = {**base, **changes}
    items = [(k, str(v)) for k, v in merged.items() if v is not None and v != "" and v is not False]
    return "?" + urlencode(items) if items else "?"


@cache
def environment() -> Environment:
    """The console's Jinja2 environment (built once)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=ts, ts_seconds=ts_seconds, ts_iso=ts_iso, fingerprint=fingerprint, duration=format_duration)
    env.globals.update(
        days_left=days_left,
        expiry_word=expiry_word,
        ago=ago,
        query=query,
        version=__version__,
        htmx_file=HTMX_FILE,
        Role=Role,
    )
    return env


def render_page(
    request: Request, template: str, context: Mapping[str, Any] | None = None, *, status: int = 200
) -> HTMLResponse:
    """Render ``template`` with ``context`` plus what every page needs (the user, CSRF token, current path,
    the time from the injected clock)."""
    runtime = request.app.state.runtime
    user = getattr(request.state, "console_user", None)
    values: dict[str, Any] = {
        "request": request,
        "user": user,
        "csrf": user.csrf if user is not None else "",
        "path": request.url.path,
        "now": runtime.clock.now(),
        "can_operate": user is not None and user.role.allows(Role.OPERATOR),
        "is_admin": user is not None and user.role.allows(Role.ADMIN),
        "message": None,
    }
    values.update(context or {})
    html = environment().get_template(template).render(values)
    return HTMLResponse(html, status_code=status)


__all__ = [
    "HTMX_FILE",
    "STATIC",
    "TEMPLATES",
    "ago",
    "days_left",
    "environment",
    "expiry_word",
    "fingerprint",
    "query",
    "render_page",
    "ts",
]
