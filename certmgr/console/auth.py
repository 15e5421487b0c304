"""Who is using the console, and may they: the session cookie, role checks, and the checks of every POST.

* The cookie is ``__Host-certmgr_session`` under HTTPS (``certmgr_session`` on a plain-HTTP loopback listener),
  always ``HttpOnly; SameSite=Strict; Secure; Path=/``. It holds the random session id, never the API token.
* A page without a valid session redirects to ``/ui/login?next=<the page>`` (htmx requests get ``HX-Redirect``).
* Every POST passes :func:`checked_form`: same origin (``Origin`` / ``Sec-Fetch-Site``), the session's CSRF token
  in the form field ``csrf``, a bounded form — else 403.
* :func:`require` answers 403 (audited as ``auth.denied``) when the role is too low, also for a POST a viewer
  sends by hand.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from certmgr.api.deps import RuntimeDep
from certmgr.audit.log import append_event
from certmgr.audit.tokens import Role
from certmgr.console.security import same_origin
from certmgr.console.sessions import ConsolePrincipal, Lifetimes, csrf_ok, resolve
from certmgr.db.engine import session_scope
from certmgr.errors import PermissionDeniedError
from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.console")

COOKIE = "certmgr_session"
SECURE_COOKIE = "__Host-certmgr_session"
LOGIN_COOKIE = "certmgr_login"
SECURE_LOGIN_COOKIE = "__Host-certmgr_login"
MAX_FIELDS = 64
MAX_FIELD_BYTES = 4096
MAX_NEXT = 1024


class LoginRequired(Exception):
    """No valid session: the handler redirects to the login page, remembering ``next``."""

    def __init__(self, next_path: str) -> None:
        super().__init__("login required")
        self.next_path = next_path


def cookie_name(request: Request, *, login: bool = False) -> str:
    """The session (or login-form) cookie's name: with the ``__Host-`` prefix under HTTPS."""
    secure = request.url.scheme == "https"
    if login:
        return SECURE_LOGIN_COOKIE if secure else LOGIN_COOKIE
    return SECURE_COOKIE if secure else COOKIE


def client_address(request: Request) -> str:
    """The client's address as uvicorn reports it: the TCP peer, or the ``X-Forwarded-For`` of a proxy on an
    address uvicorn trusts (``forwarded_allow_ips``, loopback by default) — what the login throttle counts by."""
    return request.client.host if request.client is not None else ""


def safe_next(value: str | None) -> str:
    """``value`` if it is a console path to return to after login, else ``/ui/`` (no open redirect)."""
    if not value or len(value) > MAX_NEXT:
        return "/ui/"
    if not (value == "/ui" or value.startswith("/ui/")) or "\\" in value or "//" in value:
        return "/ui/"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "/ui/"
    return value


def here(request: Request) -> str:
    """The page being asked for, as a ``next`` value."""
    query = request.url.query
    path = request.url.path + (f"?{query}" if query else "")
    return safe_next(path)


def current_user(request: Request, rt: RuntimeDep) -> ConsolePrincipal:
    """The console user of this request.

    Raises:
        LoginRequired: without a valid session (missing, unknown, idle, expired, token revoked).
    """
    raw = request.cookies.get(cookie_name(request))
    user = resolve(rt.engine, raw, now=rt.clock.now(), lifetimes=Lifetimes.of(rt.settings))
    if user is None:
        raise LoginRequired(here(request) if request.method == "GET" else "/ui/")
    request.state.console_user = user
    return user


User = Annotated[ConsolePrincipal, Depends(current_user)]
"""The logged-in console user (any role)."""


def deny(rt: Runtime, user: ConsolePrincipal, needed: Role, request: Request) -> PermissionDeniedError:
    """Audit a refused action (``auth.denied``) and return the error to raise."""
    with session_scope(rt.engine) as session:
        append_event(
            session,
            at=rt.clock.now(),
            actor=user.actor,
            action="auth.denied",
            subject_type="token",
            subject_id=user.name,
            details={
                "role": user.role.value,
                "needed": needed.value,
                "method": request.method,
                "path": request.url.path[:200],
                "via": "console",
            },
        )
    return PermissionDeniedError(f"role {user.role.value} may not do this (needs {needed.value})")


def require(rt: Runtime, user: ConsolePrincipal, needed: Role, request: Request) -> None:
    """Refuse (403, audited) unless ``user`` has at least ``needed``.

    Raises:
        PermissionDeniedError: if the role is too low.
    """
    if not user.role.allows(needed):
        raise deny(rt, user, needed, request)


async def read_form(request: Request) -> FormData:
    """The request's form, bounded in field count and size.

    Raises:
        HTTPException: 400 if the body is not a form within the bounds.
    """
    try:
        return await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException:
        raise
    except Exception as exc:  # a malformed body (encoding, multipart framing): the client's fault
        raise HTTPException(400, "the form could not be read") from exc


def origin_ok(request: Request) -> bool:
    """:func:`certmgr.console.security.same_origin` for this request."""
    return same_origin(request.headers, request.url.scheme, request.headers.get("host"))


async def checked_form(request: Request, rt: RuntimeDep, user: User) -> FormData:
    """The form of a console POST after the same-origin and CSRF checks.

    Raises:
        PermissionDeniedError: 403 if the request is cross-site or the CSRF token is missing or wrong.
    """
    if not origin_ok(request):
        log.warning("console POST %s refused: cross-site request", request.url.path)
        raise PermissionDeniedError("cross-site request refused")
    form = await read_form(request)
    raw = request.cookies.get(cookie_name(request))
    value = form.get("csrf")
    if raw is None or not isinstance(value, str) or not csrf_ok(raw, value):
        log.warning("console POST %s refused: missing or wrong CSRF token", request.url.path)
        raise PermissionDeniedError("missing or wrong CSRF token: reload the page and try again")
    return form


Form = Annotated[FormData, Depends(checked_form)]
"""The checked form of a console POST."""


def field(form: FormData, name: str, *, default: str = "", max_length: int = 256) -> str:
    """A text field of ``form`` (stripped, at most ``max_length`` characters, no NUL)."""
    value = form.get(name)
    if not isinstance(value, str):
        return default
    return value.replace("\x00", "").strip()[:max_length]


__all__ = [
    "COOKIE",
    "SECURE_COOKIE",
    "Form",
    "LoginRequired",
    "User",
    "checked_form",
    "client_address",
    "cookie_name",
    "current_user",
    "field",
    "here",
    "origin_ok",
    "read_form",
    "require",
    "safe_next",
]
