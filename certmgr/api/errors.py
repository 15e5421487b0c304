"""The one mapping from certmgr errors to HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from certmgr import errors as e

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


def status_for(error: e.CertmgrError) -> int:
    """HTTP status for ``error``; 500 only for errors no rule names."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_body(error: e.CertmgrError) -> dict[str, object]:
    """The JSON body of an error response: a stable code and the one-line message (never a secret)."""
    return {"error": type(error).__name__, "detail": error.message}


def install_error_handlers(app: FastAPI) -> None:
    """Register the certmgr error handler on ``app``."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, e.CertmgrError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, e.AuthenticationError) else None
        return JSONResponse(status_code=status_for(exc), content=error_body(exc), headers=headers)

    app.add_exception_handler(e.CertmgrError, handle)
