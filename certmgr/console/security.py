"""The console's HTTP hardening, as one ASGI middleware in front of the whole API application:

* console responses (``/`` and ``/ui/…``) carry the Content-Security-Policy of :data:`CSP` (no inline script or
  style, nothing from elsewhere), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``,
  ``X-Frame-Options: DENY`` and ``Cache-Control: no-store`` (pages hold fleet data; static files may be cached);
  every response carries ``X-Content-Type-Options``;
* a console request with a query string over :data:`MAX_QUERY` bytes gets 414, a console POST without a length
  411 and one over :data:`MAX_BODY` bytes 413 — before any route runs.

The same-origin check of POSTs (``Origin`` / ``Sec-Fetch-Site``) is :func:`same_origin`; the routes call it
together with the CSRF check (:mod:`certmgr.console.auth`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'"
)
MAX_QUERY = 2048
MAX_BODY = 64 * 1024
CONSOLE_PREFIX = "/ui"
STATIC_PREFIX = "/ui/static/"

_PAGE_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def is_console_path(path: str) -> bool:
    """Whether ``path`` belongs to the console (``/`` redirects into it)."""
    return path == "/" or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def _plain(status: int, text: str) -> tuple[Message, Message]:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>certmgr</title></head>"
        f"<body><main><h1>{status}</h1><p>{text}</p></main></body></html>"
    ).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body}


class ConsoleSecurity:
    """The middleware of the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        console = is_console_path(path)
        static = path.startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                if console:
                    drop = {name for name, _ in _PAGE_HEADERS} | ({b"cache-control"} if not static else set())
                    headers = [(k, v) for k, v in headers if k.lower() not in drop]
                    headers.extend(_PAGE_HEADERS)
                    headers.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                else:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        if console:
            refusal = self._refusal(scope)
            if refusal is not None:
                start, body = refusal
                await send_with_headers(start)
                await send(body)
                return
        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _refusal(scope: Scope) -> tuple[Message, Message] | None:
        if len(scope.get("query_string", b"")) > MAX_QUERY:
            return _plain(414, "The address is too long.")
        if scope.get("method") == "POST":
            length = Headers(scope=scope).get("content-length")
            if length is None:
                return _plain(411, "A form must say its length.")
            if not length.isdigit() or int(length) > MAX_BODY:
                return _plain(413, "The form is too large.")
        return None


def same_origin(headers: Headers, scheme: str, host: str | None) -> bool:
    """Whether a browser request comes from a page of this console: ``Sec-Fetch-Site`` (when sent) is
    ``same-origin`` (or ``none``: typed by the user), and ``Origin`` (when sent) is this scheme and host.
    A request with neither header comes from no current browser; the CSRF token still guards it."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin == "null" or host is None:
        return False
    parts = urlsplit(origin)
    return parts.scheme == scheme and parts.netloc.lower() == host.lower() and not parts.path.strip("/")


__all__ = ["CSP", "MAX_BODY", "MAX_QUERY", "ConsoleSecurity", "is_console_path", "same_origin"]
