"""Mounting the console on the API application: pages at ``/ui/``, ``/`` redirecting there, static files at
``/ui/static/``, the security middleware, and HTML error pages for console paths (JSON stays JSON for the API).

Never mounted on the phone-facing listeners: :func:`certmgr.serve.build_listeners` builds those from
:mod:`certmgr.phones.listener` only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from certmgr.api.app import create_app
from certmgr.api.errors import status_for
from certmgr.console.auth import LoginRequired
from certmgr.console.bulk import JobRunner, mark_interrupted
from certmgr.console.render import STATIC, render_page
from certmgr.console.security import ConsoleSecurity, is_console_path
from certmgr.console.sessions import LoginThrottle
from certmgr.console.waves import WaveCache
from certmgr.errors import CertmgrError

if TYPE_CHECKING:
    from certmgr.runtime import Runtime
    from certmgr.scheduling.scheduler import SchedulerMonitor

_TITLES = {
    400: "Bad request",
    401: "Log in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Not possible now",
    413: "Too large",
    414: "Address too long",
    422: "Cannot do that",
    429: "Too many attempts",
    502: "Phone problem",
    503: "Unavailable",
}


def error_page(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The console's error page (status code, a title and the one-line message; never a traceback)."""
    response = render_page(
        request,
        "error.html",
        {"status": status, "title": _TITLES.get(status, "Error"), "detail": message},
        status=status,
    )
    if headers:
        response.headers.update(headers)
    return response


def _login_redirect(request: Request, next_path: str) -> Response:
    from urllib.parse import quote

    target = "/ui/login" if next_path in ("/ui/", "/ui") else f"/ui/login?next={quote(next_path, safe='')}"
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _install_handlers(app: FastAPI) -> None:
    """HTML for console paths, the previous (JSON) handlers elsewhere."""
    previous: dict[Any, Any] = dict(app.exception_handlers)

    async def certmgr_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CertmgrError)
        if not is_console_path(request.url.path):
            handler = previous.get(CertmgrError)
            assert handler is not None
            response: Response = await handler(request, exc)
            return response
        return error_page(request, status_for(exc), exc.message)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return _login_redirect(request, exc.next_path)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not is_console_path(request.url.path):
            from fastapi.exception_handlers import http_exception_handler

            return await http_exception_handler(request, exc)
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else ""
        return error_page(request, exc.status_code, detail or "There is no such page.", dict(exc.headers or {}))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not is_console_path(request.url.path):
            handler = previous.get(RequestValidationError)
            if handler is None:
                from fastapi.exception_handlers import request_validation_exception_handler

                return await request_validation_exception_handler(request, exc)
            response: Response = await handler(request, exc)  # the API's own (always encodable) 422
            return response
        return error_page(request, 400, "The request could not be understood.")

    app.add_exception_handler(CertmgrError, certmgr_error)
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def mount_console(app: FastAPI, runtime: Runtime) -> None:
    """Serve the console from ``app`` (see the module docstring)."""
    from certmgr.console.pages import ROUTERS

    settings = runtime.settings
    app.state.console_throttle = LoginThrottle(
        settings.console_login_attempts, timedelta(seconds=settings.console_login_window_seconds)
    )
    app.state.console_waves = WaveCache(runtime)
    app.state.console_jobs = JobRunner(runtime)
    mark_interrupted(runtime)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    for router in ROUTERS:
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    _install_handlers(app)
    app.add_middleware(ConsoleSecurity)


def create_web_app(
    runtime: Runtime, scheduler: SchedulerMonitor | None = None, *, console: bool | None = None
) -> FastAPI:
    """The API listener's application: the API (:func:`certmgr.api.app.create_app`) and, unless ``console`` (default:
    the ``console_enabled`` setting) is false, the web console at ``/ui/``."""
    app = create_app(runtime, scheduler)
    if runtime.settings.console_enabled if console is None else console:
        mount_console(app, runtime)
    return app


__all__ = ["create_web_app", "error_page", "mount_console"]
