"""Request parsing guards that every API route shares: what a JSON body may hold before any route sees it.

FastAPI decodes a JSON body with :func:`json.loads`, which turns the escape ``"\\ud800"`` into a ``str`` holding
a lone UTF-16 surrogate — text that cannot be encoded as UTF-8, so it fails wherever it goes next (the database
driver, the audit chain's canonical JSON, an error message being rendered). Query strings, paths, headers and
forms cannot carry one (they are percent- or byte-decoded with replacement), so a JSON string is the only way
in, and this is the one place it is closed: a body holding a lone surrogate is answered 422 before routing.

The same guard caps a JSON body at :data:`MAX_JSON_BODY` bytes (413), so no route buffers an unbounded body.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certmgr import errors as e
from certmgr.api.errors import error_body

#: Largest JSON request body the API reads (every request body of the API is a small object).
MAX_JSON_BODY = 1024 * 1024
#: A JSON escape of a UTF-16 surrogate (high or low); a body without one cannot hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
LONE_SURROGATE = "body: a JSON string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would decode this request's body as JSON: ``application/json``, ``application/*+json``,
    or no content type at all."""
    content_type = b""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            content_type = value
            break
    if not content_type:
        return True
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


def holds_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in the decoded JSON ``value`` holds a lone surrogate. ``json.loads``
    joins a valid escaped pair into one character, so every surrogate left is a lone one."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def _answer(send: Send, status: int, error: e.CertmgrError) -> None:
    body = json.dumps(error_body(error), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class JsonInputGuard:
    """ASGI middleware: read a JSON request body (at most :data:`MAX_JSON_BODY` bytes, else 413), refuse a lone
    surrogate in it (422), and hand the body on to the app unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_JSON_BODY:
                await _answer(send, 413, e.InputError(f"body: a JSON body is at most {MAX_JSON_BODY} bytes"))
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if _SURROGATE_ESCAPE.search(body) is not None:
            try:
                lone = holds_lone_surrogate(json.loads(body))
            except (ValueError, RecursionError):
                lone = False  # not JSON (or too deep to decode): FastAPI answers that itself
            if lone:
                await _answer(send, 422, e.InputError(LONE_SURROGATE))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as the app would

        await self.app(scope, replay, send)


def install_input_guards(app: Any) -> None:
    """Wrap ``app`` (a FastAPI app) in :class:`JsonInputGuard`."""
    app.add_middleware(JsonInputGuard)


__all__ = ["LONE_SURROGATE", "MAX_JSON_BODY", "JsonInputGuard", "holds_lone_surrogate", "install_input_guards"]
