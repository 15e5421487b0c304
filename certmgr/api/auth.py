"""Bearer-token access control for the API: ``require(role)`` dependencies.

``Authorization: Bearer cmt_…`` is checked against the stored SHA-256 of every token (see
:mod:`certmgr.audit.tokens`). Missing, malformed, unknown and revoked tokens get 401 with
``WWW-Authenticate: Bearer``; a role too low for the route gets 403. Both are audited with the client address,
method and path — never with the token value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from certmgr.api.app import RuntimeDep
from certmgr.audit.tokens import Principal, Role, authenticate

_bearer = HTTPBearer(auto_error=False, description="An API token: `certmgr token create --role R --name N`.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require(role: Role) -> Callable[[Request, RuntimeDep, BearerDep], Principal]:
    """A dependency that authenticates the request and demands at least ``role``.

    The returned callable raises (and so the route answers):

    Raises:
        AuthenticationError: 401 for a missing, malformed, unknown or revoked token.
        PermissionDeniedError: 403 if the token's role is below ``role``.
    """

    def dependency(request: Request, rt: RuntimeDep, credentials: BearerDep) -> Principal:
        client = request.client.host if request.client is not None else ""
        context = {"client": client, "method": request.method, "path": request.url.path[:200]}
        token = credentials.credentials if credentials is not None else None
        return authenticate(rt.engine, token, needed=role, now=rt.clock.now(), context=context)

    dependency.__name__ = f"require_{role.value}"
    return dependency


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
"""The caller, who has at least the viewer role."""
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
"""The caller, who has at least the operator role."""
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
"""The caller, who has the admin role."""

__all__ = ["Admin", "Operator", "Viewer", "require"]
