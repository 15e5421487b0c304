"""What the console's page modules share: the router settings, query parameters as a plain mapping, redirects
after a POST."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import RedirectResponse

#: Every console route: HTML, not part of the API's OpenAPI document.
ROUTE = {"include_in_schema": False}
MAX_PARAM = 256


def params(request: Request) -> dict[str, str]:
    """The query parameters, first value of each, clipped (the middleware already bounds the whole string)."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in out and len(key) <= 32:
            out[key] = value[:MAX_PARAM]
    return out


def see_other(path: str) -> RedirectResponse:
    """303 to ``path`` (after a POST: the browser GETs the result, reloading does not repeat the action)."""
    return RedirectResponse(path, status_code=303)


def int_id(value: str, what: str) -> int:
    """A positive database id from a path segment.

    Raises:
        NotFoundError: if ``value`` is not one (the page answers 404).
    """
    from certmgr.db.models import MAX_ID
    from certmgr.errors import NotFoundError

    if not value.isdigit() or len(value) > 10 or not 1 <= int(value) <= MAX_ID:
        raise NotFoundError(f"no {what} {value[:32]!r}")
    return int(value)


__all__ = ["MAX_PARAM", "ROUTE", "int_id", "params", "see_other"]
