"""Every dependency of the API routes, in one module: the runtime, the per-request session, and bearer-token
access control (``Viewer`` / ``Operator`` / ``Admin``).

Route modules import these aliases from here and never the application module, so ``certmgr.api`` has no import
cycle: ``app`` imports the routes, the routes import ``deps``, and ``deps`` imports nothing of the API.

``Authorization: Bearer cmt_…`` is checked against the stored SHA-256 of every token (see
:mod:`certmgr.audit.tokens`). Missing, malformed, unknown and revoked tokens get 401 with
``WWW-Authenticate: Bearer``; a role too low for the route gets 403. Both are audited with the client address,
method and path — never with the token value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from certmgr.audit.tokens import Principal, Role, authenticate
from certmgr.db.engine import session_scope
from certmgr.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The :class:`Runtime` the application was built around."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
"""The process's runtime (settings, clock, engine, policies, CA)."""


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    """A session in one transaction per request (committed when the route returns)."""
    with session_scope(rt.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
"""A database session, committed when the route returns."""

_bearer = HTTPBearer(auto_error=False, description="An API token: `certmgr token create --role R --name N`.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def client_context(request: Request) -> dict[str, str]:
    """What an audit record of a refused request says about it: client address, method, path (clipped)."""
    client = request.client.host if request.client is not None else ""
    return {"client": client, "method": request.method, "path": request.url.path[:200]}


def require(role: Role) -> Callable[[Request, RuntimeDep, BearerDep], Principal]:
    """A dependency that authenticates the request and demands at least ``role``.

    The returned callable raises (and so the route answers):

    Raises:
        AuthenticationError: 401 for a missing, malformed, unknown or revoked token.
        PermissionDeniedError: 403 if the token's role is below ``role``.
    """

    def dependency(request: Request, rt: RuntimeDep, credentials: BearerDep) -> Principal:
        token = credentials.credentials if credentials is not None else None
        return authenticate(rt.engine, token, needed=role, now=rt.clock.now(), context=client_context(request))

    dependency.__name__ = f"require_{role.value}"
    return dependency


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
"""The caller, who has at least the viewer role."""
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
"""The caller, who has at least the operator role."""
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
"""The caller, who has the admin role."""

__all__ = [
    "Admin",
    "BearerDep",
    "Operator",
    "RuntimeDep",
    "SessionDep",
    "Viewer",
    "client_context",
    "get_runtime",
    "get_session",
    "require",
]
