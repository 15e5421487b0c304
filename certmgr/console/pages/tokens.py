"""``/ui/tokens`` (admin): list the API tokens, create one (its value is shown once, on the answer page, and
never stored), revoke one — which also ends its console sessions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from certmgr.api.deps import RuntimeDep
from certmgr.audit.tokens import Role, create_token, get_token, list_tokens, parse_role, revoke_token
from certmgr.console.auth import Form, User, field, require
from certmgr.console.pages.common import ROUTE, int_id, params, see_other
from certmgr.console.render import render_page
from certmgr.console.sessions import end_sessions_of
from certmgr.db.engine import session_scope

router = APIRouter(**ROUTE)  # type: ignore[arg-type]


@router.get("/ui/tokens")
def tokens_page(request: Request, rt: RuntimeDep, user: User) -> Response:
    """Every token, revoked ones included (admin)."""
    require(rt, user, Role.ADMIN, request)
    with session_scope(rt.engine) as session:
        tokens = list_tokens(session)
    done = {"revoked": "The token is revoked and its console sessions have ended."}.get(params(request).get("done", ""))
    return render_page(request, "tokens.html", {"tokens": tokens, "roles": [r.value for r in Role], "done": done})


@router.post("/ui/tokens")
def tokens_create(request: Request, rt: RuntimeDep, user: User, form: Form) -> Response:
    """Create a token (admin); the answer shows its value once. Not cached (``no-store``), never logged."""
    require(rt, user, Role.ADMIN, request)
    role = parse_role(field(form, "role", max_length=16))
    name = field(form, "name", max_length=64)
    with session_scope(rt.engine) as session:
        info, value = create_token(session, name=name, role=role, actor=user.actor, now=rt.clock.now())
    return render_page(request, "token_created.html", {"info": info, "value": value}, status=201)


@router.post("/ui/tokens/{token_id}/revoke")
def tokens_revoke(request: Request, rt: RuntimeDep, user: User, _form: Form, token_id: str) -> Response:
    """Revoke a token (admin) and end its console sessions."""
    require(rt, user, Role.ADMIN, request)
    ident = int_id(token_id, "token")
    with session_scope(rt.engine) as session:
        info = get_token(session, ident)
        revoke_token(session, info.name, actor=user.actor, now=rt.clock.now())
    end_sessions_of(rt.engine, ident)
    return see_other("/ui/tokens?done=revoked")


__all__ = ["router"]
