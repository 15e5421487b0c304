"""The one mapping from certmgr errors to HTTP responses — and the answers to input no route can handle.

Besides :class:`~certmgr.errors.CertmgrError` (mapped by :func:`status_for`), two kinds of hostile input are
answered here for every route, so that no input ever turns into a 5xx or a traceback:

* a request-validation error (FastAPI's 422) whose detail echoes text that cannot be encoded — a lone UTF-16
  surrogate, a non-finite number: the echo is made encodable (:func:`encodable`) instead of the handler failing;
* input nested so deeply that parsing it exhausts the recursion limit (TOML nested 3,000 deep, say): a 422
  with one log line instead of a 500 and a traceback thousands of lines long.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from certmgr import errors as e

log = logging.getLogger("certmgr.api")

_STATUS: tuple[tuple[type[e.CertmgrError], int], ...] = (
    (e.PolicySetError, 422),
    (e.PolicyError, 422),
    (e.InputError, 422),
    (e.ProtocolError, 400),
    (e.AuthenticationError, 401),
    (e.PermissionDeniedError, 403),
    (e.NotFoundError, 404),
    (e.CAExistsError, 409),
    (e.ConflictError, 409),
    (e.IssuanceError, 422),
    (e.SchemaTooNewError, 503),
    (e.DatabaseError, 503),
    (e.CANotInitialisedError, 503),
    (e.CAError, 503),
    (e.KeyStoreError, 503),
    (e.ConfigError, 503),
    (e.StorageError, 503),
    (e.DeploymentError, 502),
)

#: The longest echo of a rejected value in a validation error (longer ones are cut).
MAX_ECHO = 256
NESTED_TOO_DEEPLY = "the input is nested too deeply"


def status_for(error: e.CertmgrError) -> int:
    """HTTP status for ``error``; 500 only for errors no rule names."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_body(error: e.CertmgrError) -> dict[str, object]:
    """The JSON body of an error response: a stable code and the one-line message (never a secret)."""
    return {"error": type(error).__name__, "detail": encodable(error.message)}


def encodable(value: Any, depth: int = 0) -> Any:
    """``value`` (JSON-like) made safe to render as JSON: bytes are decoded (undecodable ones replaced), lone
    surrogates become U+FFFD, non-finite numbers and other objects become strings, strings longer than
    :data:`MAX_ECHO` are cut, nesting past 32 levels is elided."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: MAX_ECHO * 4]).decode("utf-8", "replace")
    if isinstance(value, str):
        text = value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "…"
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= 32:
        return "…"
    if isinstance(value, dict):
        return {str(encodable(k, depth + 1)): encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v, depth + 1) for v in value]
    return encodable(str(value), depth + 1)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers of this module on ``app``: certmgr errors, request-validation errors, recursion."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, e.CertmgrError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, e.AuthenticationError) else None
        return JSONResponse(status_code=status_for(exc), content=error_body(exc), headers=headers)

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own answer (422, {"detail": [...]}), with an echo that can always be encoded.
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(status_code=422, content={"detail": encodable(exc.errors())})

    async def nested_too_deeply(request: Request, _exc: Exception) -> JSONResponse:
        # One line, no traceback: a traceback of a RecursionError is thousands of lines per request.
        log.warning(
            "%s %s: input nested too deeply (recursion limit reached); answered 422",
            request.method,
            request.url.path[:200],
        )
        return JSONResponse(status_code=422, content=error_body(e.InputError(NESTED_TOO_DEEPLY)))

    app.add_exception_handler(e.CertmgrError, handle)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(RecursionError, nested_too_deeply)
