"""API bearer tokens: creation, listing, revocation and authentication, every step audited.

A token is ``cmt_`` followed by ``secrets.token_urlsafe(32)`` (256 bits of randomness). Only its SHA-256 is
stored (:class:`~certmgr.db.models.ApiToken.token_hash`); the value itself is returned once by
:func:`create_token` and never written anywhere by certmgr. Because the token is high-entropy, a plain
SHA-256 (no salt, no slow KDF) is enough and lets authentication be one indexed lookup.

Roles are ordered: ``viewer`` (read) < ``operator`` (renew, deploy, retry, approve) < ``admin`` (revoke,
tokens, policies, CA, key export). A token of a higher role may do everything a lower role may.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

import sqlalchemy.exc
from sqlalchemy import update
from sqlmodel import Session, col, select

from certmgr.audit.log import append_event
from certmgr.db.engine import session_scope
from certmgr.db.models import ApiToken
from certmgr.errors import AuthenticationError, ConflictError, InputError, NotFoundError, PermissionDeniedError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Engine

TOKEN_PREFIX = "cmt_"  # noqa: S105 - a recognisable prefix, not a secret
LAST_USED_GRANULARITY = timedelta(minutes=1)
"""``last_used_at`` is written at most once per this interval and token, so reads stay reads."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TOKEN_SHAPE = re.compile(r"^cmt_[A-Za-z0-9_-]{20,128}$")


class Role(StrEnum):
    """Roles of API tokens, ordered by :attr:`rank`."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """Whether a token of this role may do what ``needed`` may."""
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of an API request."""

    token_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        """How the caller appears in audit events: ``token:<name>``."""
        return f"token:{self.name}"


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token (never its value or hash)."""

    id: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def generate_token() -> str:
    """A fresh token value: the prefix and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex of ``token`` (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_role(value: str) -> Role:
    """The :class:`Role` called ``value``.

    Raises:
        InputError: if ``value`` is not viewer, operator or admin.
    """
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise InputError(f"unknown role {value!r}: use viewer, operator or admin") from None


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InputError(
            f"invalid token name {name!r}: 1-64 characters, letters, digits, '.', '_', '@', '-', "
            "starting with a letter or digit"
        )
    return name


def _info(row: ApiToken) -> TokenInfo:
    assert row.id is not None
    return TokenInfo(row.id, row.name, parse_role(row.role), row.created_at, row.revoked_at, row.last_used_at)


def create_token(session: Session, *, name: str, role: Role, actor: str, now: datetime) -> tuple[TokenInfo, str]:
    """Create a token called ``name`` with ``role`` inside the caller's transaction (audited).

    Returns the token's public facts and its value; the value is not stored and cannot be shown again.

    Raises:
        InputError: if ``name`` is not a valid token name.
        ConflictError: if a token of that name exists (revoked tokens keep their name).
    """
    _check_name(name)
    if session.exec(select(ApiToken).where(col(ApiToken.name) == name)).first() is not None:
        raise ConflictError(f"a token named {name!r} already exists", name=name)
    value = generate_token()
    row = ApiToken(name=name, role=role.value, token_hash=hash_token(value), created_at=now)
    session.add(row)
    try:
        session.flush()
    except sqlalchemy.exc.IntegrityError as exc:
        raise ConflictError(f"a token named {name!r} already exists", name=name) from exc
    append_event(
        session,
        at=now,
        actor=actor,
        action="token.created",
        subject_type="token",
        subject_id=name,
        details={"role": role.value},
    )
    return _info(row), value


def list_tokens(session: Session) -> list[TokenInfo]:
    """Every token (revoked ones included), by name."""
    return [_info(row) for row in session.exec(select(ApiToken).order_by(col(ApiToken.name)))]


def get_token(session: Session, token_id: int) -> TokenInfo:
    """The token with id ``token_id``.

    Raises:
        NotFoundError: if there is none.
    """
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token with id {token_id}", id=token_id)
    return _info(row)


def revoke_token(session: Session, name: str, *, actor: str, now: datetime) -> TokenInfo:
    """Revoke the token called ``name`` inside the caller's transaction (audited); it fails from now on.

    Raises:
        NotFoundError: if there is no such token.
        ConflictError: if it is already revoked.
    """
    row = session.exec(select(ApiToken).where(col(ApiToken.name) == name)).first()
    if row is None:
        raise NotFoundError(f"no token named {name!r}", name=name)
    if row.revoked_at is not None:
        raise ConflictError(f"token {name!r} was already revoked at {row.revoked_at.isoformat()}", name=name)
    row.revoked_at = now
    session.add(row)
    session.flush()
    append_event(
        session, at=now, actor=actor, action="token.revoked", subject_type="token", subject_id=name, details={}
    )
    return _info(row)


def _record_failure(engine: Engine, now: datetime, action: str, details: dict[str, str], name: str = "") -> None:
    """Audit a refused request in its own transaction (the request's own work is never committed)."""
    with session_scope(engine) as session:
        append_event(
            session,
            at=now,
            actor=f"token:{name}" if name else "anonymous",
            action=action,
            subject_type="token" if name else "",
            subject_id=name,
            details=details,
        )


def authenticate(
    engine: Engine,
    token: str | None,
    *,
    needed: Role,
    now: datetime,
    context: dict[str, str] | None = None,
) -> Principal:
    """Check ``token`` and that its role allows ``needed``; refusals are audited (never with the token value).

    ``context`` (client address, method, path) is added to the audit record of a refusal. A successful use
    updates ``last_used_at`` at most once per :data:`LAST_USED_GRANULARITY`.

    Raises:
        AuthenticationError: if ``token`` is missing, malformed, unknown or revoked.
        PermissionDeniedError: if the token's role is below ``needed``.
    """
    details = dict(context or {})
    if not token:
        _record_failure(engine, now, "auth.failed", {**details, "reason": "no bearer token"})
        raise AuthenticationError("authentication required: send 'Authorization: Bearer <token>'")
    if not _TOKEN_SHAPE.fullmatch(token):
        _record_failure(engine, now, "auth.failed", {**details, "reason": "malformed token"})
        raise AuthenticationError("invalid or revoked token")
    digest = hash_token(token)
    with session_scope(engine) as session:
        row = session.exec(select(ApiToken).where(col(ApiToken.token_hash) == digest)).first()
        if row is not None and row.revoked_at is None:
            stale = row.last_used_at is None or now - row.last_used_at >= LAST_USED_GRANULARITY
            if stale:
                session.execute(update(ApiToken).where(col(ApiToken.id) == row.id).values(last_used_at=now))
    if row is None:
        # A short hash prefix lets repeated attempts with one value be correlated without storing the value.
        _record_failure(engine, now, "auth.failed", {**details, "reason": "unknown token", "hint": digest[:8]})
        raise AuthenticationError("invalid or revoked token")
    if row.revoked_at is not None:
        _record_failure(engine, now, "auth.failed", {**details, "reason": "revoked token"}, name=row.name)
        raise AuthenticationError("invalid or revoked token")
    assert row.id is not None
    principal = Principal(row.id, row.name, parse_role(row.role))
    if not principal.role.allows(needed):
        _record_failure(
            engine,
            now,
            "auth.denied",
            {**details, "role": principal.role.value, "needed": needed.value},
            name=row.name,
        )
        raise PermissionDeniedError(f"role {principal.role.value} may not do this (needs {needed.value})")
    return principal


def roles() -> Sequence[Role]:
    """All roles, lowest first."""
    return sorted(Role, key=lambda r: r.rank)


__all__ = [
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "TokenInfo",
    "authenticate",
    "create_token",
    "generate_token",
    "get_token",
    "hash_token",
    "list_tokens",
    "parse_role",
    "revoke_token",
    "roles",
]
