"""``/api/v1/tokens``: list and revoke API tokens (admin). Tokens are created with the CLI only, so a token
value is never part of an HTTP response."""

from __future__ import annotations

from fastapi import APIRouter

from certmgr.api.common import IdPath
from certmgr.api.deps import Admin, RuntimeDep, SessionDep
from certmgr.api.schemas import Page, TokenPublic
from certmgr.audit.tokens import get_token, list_tokens, revoke_token

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.get("", response_model=Page[TokenPublic])
def tokens_list(_who: Admin, session: SessionDep) -> Page[TokenPublic]:
    """Every token, revoked ones included (admin). Few enough for one page."""
    return Page(items=[TokenPublic.of(t) for t in list_tokens(session)], next_cursor=None)


@router.post("/{token_id}/revoke", response_model=TokenPublic)
def tokens_revoke(token_id: IdPath, who: Admin, rt: RuntimeDep, session: SessionDep) -> TokenPublic:
    """Revoke a token (admin); audited. 404 unknown id, 409 already revoked."""
    info = get_token(session, token_id)
    return TokenPublic.of(revoke_token(session, info.name, actor=who.actor, now=rt.clock.now()))
