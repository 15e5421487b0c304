"""Shared pieces of the API routes: validated parameter types, keyset pagination, row getters.

Every list answers ``{"items": [...], "next_cursor": "..." | null}``. A cursor is the opaque string a previous
page returned; pass it back as ``cursor`` to get the next page. Lists are ordered by id (audit events by seq),
so pages stay stable while rows are added.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Mapped
from sqlmodel import Session, SQLModel

from certmgr.api.schemas import NO_NUL, Page
from certmgr.clock import ensure_utc
from certmgr.db.models import MAX_ID
from certmgr.errors import InputError, NotFoundError

T = TypeVar("T")
P = TypeVar("P", bound=BaseModel)
M = TypeVar("M", bound=SQLModel)

MAX_INT64 = 9_223_372_036_854_775_807
DEFAULT_LIMIT = 100
MAX_LIMIT = 500


IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Integer id.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size (at most {MAX_LIMIT}).")]
Cursor = Annotated[
    str | None, Query(max_length=20, pattern=r"^[0-9]{1,19}$", description="next_cursor of the previous page.")
]
Text = Annotated[str | None, Query(max_length=128, pattern=NO_NUL)]
ExpiringWithin = Annotated[
    int | None, Query(ge=0, le=36500, description="Only those whose (current) certificate expires within N days.")
]

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown id."},
    409: {"description": "The object's state does not allow this action."},
}
"""The documented error answers of an action route."""


def after(cursor: str | None) -> int:
    """The id (or seq) after which the page starts (0 for the first page).

    Raises:
        InputError: if the cursor is not one this API handed out.
    """
    if cursor is None:
        return 0
    value = int(cursor)
    if value > MAX_INT64:
        raise InputError("cursor: not a cursor returned by this API")
    return value


def page(items: list[T], key: int | None, limit: int) -> Page[T]:
    """A page of ``items`` (fetched with ``limit + 1`` rows); ``key`` is the id of the last item kept."""
    if len(items) > limit:
        return Page(items=items[:limit], next_cursor=str(key))
    return Page(items=items, next_cursor=None)


def fetch_page(session: Session, query: Select[Any], key: Mapped[Any], limit: int, public: type[P]) -> Page[P]:
    """Run ``query`` (already filtered to rows after the cursor) ordered by ``key`` and return one page of
    ``public`` models; the cursor is the ``key`` value of the last row kept."""
    rows = list(session.execute(query.order_by(key).limit(limit + 1)).scalars())
    items = [public.model_validate(row, from_attributes=True) for row in rows]
    last = getattr(rows[min(len(rows), limit) - 1], key.key) if rows else None  # type: ignore[attr-defined]
    return page(items, last, limit)


def get_or_404(session: Session, model: type[M], ident: int, what: str) -> M:
    """The ``model`` row with primary key ``ident``.

    Raises:
        NotFoundError: if there is none (404).
    """
    row = session.get(model, ident)
    if row is None:
        raise NotFoundError(f"no {what} with id {ident}", id=ident)
    return row


def aware(value: datetime | None, name: str) -> datetime | None:
    """``value`` as aware UTC.

    Raises:
        InputError: if ``value`` has no time zone (certmgr never guesses one) or is out of range in UTC.
    """
    if value is None:
        return None
    try:
        return ensure_utc(value)
    except ValueError:
        raise InputError(f"{name}: give a time zone, e.g. 2026-01-01T00:00:00Z") from None
    except OverflowError:
        raise InputError(f"{name}: out of range") from None


def like_pattern(text: str) -> str:
    """A ``LIKE`` pattern for "contains ``text``" with ``%``, ``_`` and ``\\`` escaped (escape char ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


__all__ = [
    "ERRORS",
    "MAX_LIMIT",
    "NO_NUL",
    "Cursor",
    "ExpiringWithin",
    "IdPath",
    "Limit",
    "Page",
    "Text",
    "after",
    "aware",
    "fetch_page",
    "get_or_404",
    "like_pattern",
    "page",
]
