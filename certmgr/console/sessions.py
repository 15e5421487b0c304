"""Console logins: server-side sessions tied to an API token, CSRF tokens, and the failed-login throttle.

* A session id is ``secrets.token_urlsafe(32)``; only its SHA-256 is stored (``console_session.id_hash``). The id
  lives in the browser's cookie, the API token never does: the token is checked once, at login, with
  :func:`certmgr.audit.tokens.authenticate` (which audits a failure), and the session then refers to it by id.
* A session ends after ``console_idle_minutes`` without a request, ``console_session_hours`` after its login, at
  logout, and as soon as its token is revoked (checked on every request, whatever revoked it: the console, the
  API or the CLI). Times come from the injected clock.
* The CSRF token of a session is an HMAC of the session id (a one-way derivation: it reveals nothing about the
  id, and needs no storage). Every console POST carries it.
* :class:`LoginThrottle` counts failed logins per source address in a sliding window (memory bounded).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, update
from sqlmodel import col, select

from certmgr.audit.log import append_event
from certmgr.audit.tokens import Principal, Role, authenticate, parse_role
from certmgr.db.engine import session_scope
from certmgr.db.models import ApiToken, ConsoleSession
from certmgr.settings import Settings

#: ``last_seen_at`` is written at most once per this interval and session, so page views stay reads.
TOUCH_GRANULARITY = timedelta(minutes=1)
SESSION_ID_BYTES = 32
_CSRF_LABEL = b"certmgr console csrf v1"


def hash_session_id(raw: str) -> str:
    """SHA-256 hex of a session id (what the database stores)."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def csrf_token(raw: str) -> str:
    """The CSRF token of the session whose id is ``raw``."""
    return hmac.new(raw.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(raw: str, presented: str | None) -> bool:
    """Whether ``presented`` is the CSRF token of session ``raw`` (constant-time comparison)."""
    return presented is not None and hmac.compare_digest(csrf_token(raw), presented)


@dataclass(frozen=True)
class ConsolePrincipal(Principal):
    """A console user: the token that logged in, its role, and the session. Audited as ``console:<name>``."""

    session_id: int = 0
    csrf: str = ""

    @property
    def actor(self) -> str:
        """How the console user appears in audit events."""
        return f"console:{self.name}"


@dataclass(frozen=True)
class Lifetimes:
    """How long sessions live."""

    idle: timedelta
    absolute: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Lifetimes:
        return cls(timedelta(minutes=settings.console_idle_minutes), timedelta(hours=settings.console_session_hours))


def login(engine: Engine, token: str, *, now: datetime, lifetimes: Lifetimes, client: str) -> tuple[str, Principal]:
    """Check ``token`` and open a session for it; returns the new session id (for the cookie) and the principal.

    Raises:
        AuthenticationError: for a missing, malformed, unknown or revoked token (audited by ``authenticate``).
    """
    principal = authenticate(
        engine,
        token,
        needed=Role.VIEWER,
        now=now,
        context={"client": client, "method": "POST", "path": "/ui/login", "via": "console"},
    )
    raw = secrets.token_urlsafe(SESSION_ID_BYTES)
    with session_scope(engine) as session:
        session.add(
            ConsoleSession(
                id_hash=hash_session_id(raw),
                token_id=principal.token_id,
                role=principal.role.value,
                client=client[:64],
                created_at=now,
                last_seen_at=now,
                expires_at=now + lifetimes.absolute,
            )
        )
        append_event(
            session,
            at=now,
            actor=f"console:{principal.name}",
            action="console.login",
            subject_type="token",
            subject_id=principal.name,
            details={"client": client[:64], "role": principal.role.value},
        )
    return raw, principal


def resolve(engine: Engine, raw: str | None, *, now: datetime, lifetimes: Lifetimes) -> ConsolePrincipal | None:
    """The principal of the session whose id is ``raw``, or ``None`` if there is none or it has ended (idle,
    absolute expiry, token revoked). An ended session's row is deleted."""
    if not raw or len(raw) > 128:
        return None
    digest = hash_session_id(raw)
    with session_scope(engine) as session:
        row = session.exec(
            select(ConsoleSession, ApiToken)
            .join(ApiToken, col(ApiToken.id) == col(ConsoleSession.token_id))
            .where(col(ConsoleSession.id_hash) == digest)
        ).first()
        if row is None:
            return None
        stored, token = row
        ended = token.revoked_at is not None or stored.expires_at <= now or stored.last_seen_at + lifetimes.idle <= now
        if ended:
            session.execute(delete(ConsoleSession).where(col(ConsoleSession.id) == stored.id))
            return None
        if now - stored.last_seen_at >= TOUCH_GRANULARITY:
            session.execute(update(ConsoleSession).where(col(ConsoleSession.id) == stored.id).values(last_seen_at=now))
        assert stored.id is not None
        assert token.id is not None
        return ConsolePrincipal(
            token_id=token.id,
            name=token.name,
            role=parse_role(stored.role),
            session_id=stored.id,
            csrf=csrf_token(raw),
        )


def logout(engine: Engine, raw: str, *, now: datetime, actor: str) -> None:
    """End the session whose id is ``raw`` (audited)."""
    with session_scope(engine) as session:
        gone = session.execute(delete(ConsoleSession).where(col(ConsoleSession.id_hash) == hash_session_id(raw)))
        if gone.rowcount:  # type: ignore[attr-defined]
            append_event(
                session, at=now, actor=actor, action="console.logout", subject_type="", subject_id="", details={}
            )


def end_sessions_of(engine: Engine, token_id: int) -> int:
    """Delete every session of the token ``token_id`` (after its revocation); returns how many."""
    with session_scope(engine) as session:
        result = session.execute(delete(ConsoleSession).where(col(ConsoleSession.token_id) == token_id))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def purge_expired(engine: Engine, now: datetime, lifetimes: Lifetimes) -> int:
    """Delete sessions past their absolute or idle expiry; returns how many."""
    with session_scope(engine) as session:
        result = session.execute(
            delete(ConsoleSession).where(
                (col(ConsoleSession.expires_at) <= now) | (col(ConsoleSession.last_seen_at) <= now - lifetimes.idle)
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class LoginThrottle:
    """Failed console logins per source address in a sliding window of ``window``; at ``limit`` failures the
    address is refused until the oldest one leaves the window. At most ``max_addresses`` are tracked (the least
    recently failing are forgotten first), so memory stays bounded whatever the traffic."""

    def __init__(self, limit: int, window: timedelta, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: datetime) -> deque[datetime] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str, now: datetime) -> timedelta | None:
        """How long ``address`` must wait before it may try again, or ``None`` if it may try now."""
        with self._lock:
            times = self._recent(address, now)
            if times is None or len(times) < self.limit:
                return None
            return times[0] + self.window - now

    def failed(self, address: str, now: datetime) -> None:
        """Record one failed login from ``address``."""
        with self._lock:
            times = self._recent(address, now) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)


__all__ = [
    "ConsolePrincipal",
    "Lifetimes",
    "LoginThrottle",
    "csrf_ok",
    "csrf_token",
    "end_sessions_of",
    "hash_session_id",
    "login",
    "logout",
    "purge_expired",
    "resolve",
]
