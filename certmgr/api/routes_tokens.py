"""``/api/v1/tokens``: list and revoke API tokens (admin). Tokens are created with the CLI only, so a token
value is never part of an HTTP response."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from certmgr.api.app import RuntimeDep
from certmgr.api.auth import Admin
from certmgr.api.routes_common import IdPath, Page, SessionDep
from certmgr.audit.tokens import TokenInfo, get_token, list_tokens, revoke_token

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


class TokenPublic(BaseModel):
    """A token's public facts (never its value or hash)."""

    id: int
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _public(info: TokenInfo) -> TokenPublic:
    return TokenPublic(
        id=info.id,
        name=info.name,
        role=info.role.value,
        created_at=info.created_at,
        revoked_at=info.revoked_at,
        last_used_at=info.last_used_at,
    )


@router.get("", response_model=Page[TokenPublic])
def tokens_list(_who: Admin, session: SessionDep) -> Page[TokenPublic]:
    """Every token, revoked ones included (admin). Few enough for one page."""
    return Page(items=[_public(t) for t in list_tokens(session)], next_cursor=None)


@router.post("/{token_id}/revoke", response_model=TokenPublic)
def tokens_revoke(token_id: IdPath, who: Admin, rt: RuntimeDep, session: SessionDep) -> TokenPublic:
    """Revoke a token (admin); audited. 404 unknown id, 409 already revoked."""
    info = get_token(session, token_id)
    return _public(revoke_token(session, info.name, actor=who.actor, now=rt.clock.now()))
