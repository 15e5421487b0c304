"""``/ui/login`` and ``/ui/logout``.

Login takes an existing API token (form field ``token``, a password field), checks it once, and opens a
server-side session (:mod:`certmgr.console.sessions`); the token is never stored in the browser. The login form
carries its own CSRF value (a short-lived ``certmgr_login`` cookie, double-submitted) and the same-origin check;
failed logins are audited (by :func:`certmgr.audit.tokens.authenticate`) and throttled per source address (429).
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response

from certmgr.api.deps import RuntimeDep
from certmgr.audit.log import append_event
from certmgr.console.auth import (
    Form,
    User,
    client_address,
    cookie_name,
    field,
    origin_ok,
    read_form,
    safe_next,
)
from certmgr.console.pages.common import ROUTE, params, see_other
from certmgr.console.render import render_page
from certmgr.console.sessions import Lifetimes, login, logout
from certmgr.db.engine import session_scope
from certmgr.errors import AuthenticationError, PermissionDeniedError

router = APIRouter(**ROUTE)  # type: ignore[arg-type]
log = logging.getLogger("certmgr.console")

LOGIN_FORM_SECONDS = 3600
MAX_TOKEN = 256


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def _login_form(request: Request, next_path: str, *, error: str | None = None, status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render_page(
        request, "login.html", {"next_path": next_path, "login_nonce": nonce, "error": error}, status=status
    )
    _set_cookie(response, request, cookie_name(request, login=True), nonce, LOGIN_FORM_SECONDS)
    return response


@router.get("/ui/login")
def login_page(request: Request) -> Response:
    """The login form (one password field, ``token``)."""
    return _login_form(request, safe_next(params(request).get("next")))


@router.post("/ui/login")
async def login_submit(request: Request, rt: RuntimeDep) -> Response:
    """Check the token and open a session; back to the page asked for (``next``)."""
    now = rt.clock.now()
    client = client_address(request)
    form = await read_form(request)
    next_path = safe_next(field(form, "next", max_length=1024))
    nonce = request.cookies.get(cookie_name(request, login=True))
    presented = field(form, "login_nonce", max_length=64)
    if not origin_ok(request) or not nonce or not secrets.compare_digest(nonce, presented):
        raise PermissionDeniedError("the login form expired or came from another site: load it again")
    throttle = request.app.state.console_throttle
    wait = throttle.retry_after(client, now)
    if wait is not None:
        minutes = max(1, int(wait / timedelta(minutes=1) + 0.999))
        with session_scope(rt.engine) as session:
            append_event(
                session,
                at=now,
                actor="anonymous",
                action="console.login-throttled",
                subject_type="",
                subject_id="",
                details={"client": client[:64]},
            )
        response = _login_form(
            request,
            next_path,
            error=f"Too many failed logins from your address: try again in {minutes} min.",
            status=429,
        )
        response.headers["Retry-After"] = str(int(wait.total_seconds()) + 1)
        return response
    token = field(form, "token", max_length=MAX_TOKEN)
    try:
        raw, _principal = login(rt.engine, token, now=now, lifetimes=Lifetimes.of(rt.settings), client=client)
    except AuthenticationError:
        throttle.failed(client, now)
        return _login_form(
            request, next_path, error="That token is not valid (unknown, malformed or revoked).", status=401
        )
    response = see_other(next_path)
    _set_cookie(response, request, cookie_name(request), raw, None)
    response.delete_cookie(cookie_name(request, login=True), path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/ui/logout")
def logout_submit(request: Request, rt: RuntimeDep, user: User, _form: Form) -> Response:
    """End the session and forget the cookie."""
    raw = request.cookies.get(cookie_name(request))
    if raw:
        logout(rt.engine, raw, now=rt.clock.now(), actor=user.actor)
    response = see_other("/ui/login")
    response.delete_cookie(cookie_name(request), path="/", secure=True, httponly=True, samesite="strict")
    return response


__all__ = ["router"]
