"""What a notification is, what a channel reports back, and which certificates deserve an expiry warning.

Pure: no I/O, no clock reads (``now`` is an argument).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from certmgr.clock import ensure_utc

NotificationKind = Literal["expiry", "deployment-failed", "drift", "ca-expiring", "audit-chain-failure", "test"]
NOTIFICATION_KINDS: frozenset[str] = frozenset(
    {"expiry", "deployment-failed", "drift", "ca-expiring", "audit-chain-failure", "test"}
)

#: At most this many certificates are listed in an expiry notification's ``data`` (the count is always exact).
EXPIRY_DATA_LIMIT = 1000
#: At most this many certificates are listed in an expiry notification's text.
EXPIRY_TEXT_LIMIT = 50


@dataclass(frozen=True)
class Notification:
    """One message to the operators. ``data`` must be JSON-serialisable (datetimes are written ISO 8601).

    Raises:
        ValueError: (on construction) for an unknown ``kind`` or an empty ``subject``.
    """

    kind: NotificationKind
    subject: str
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in NOTIFICATION_KINDS:
            raise ValueError(f"unknown notification kind {self.kind!r}; expected one of {sorted(NOTIFICATION_KINDS)}")
        if not self.subject.strip():
            raise ValueError("a notification needs a subject")

    def to_json(self) -> dict[str, Any]:
        """The JSON document a webhook receives: ``source``, ``kind``, ``subject``, ``text``, ``data``."""
        data = json.loads(json.dumps(dict(self.data), default=_json_default))
        return {"source": "certmgr", "kind": self.kind, "subject": self.subject, "text": self.text, "data": data}


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class ChannelResult:
    """The outcome of sending one notification over one channel to one target.

    ``target`` never holds a secret: webhook URLs are shown as ``scheme://host:port/…``, e-mail as the server.
    ``error`` is a one-line reason when not delivered (never a password or URL token).
    """

    channel: Literal["webhook", "smtp"]
    target: str
    delivered: bool
    attempts: int
    error: str | None = None
    status_code: int | None = None


class Channel(Protocol):
    """A way to reach the operators (webhook, e-mail …)."""

    @property
    def name(self) -> str: ...

    async def send(self, notification: Notification) -> list[ChannelResult]:
        """Deliver ``notification``; one result per target. Never raises for delivery failures."""
        ...


def redact_url(url: str) -> str:
    """``https://hooks.example.com/services/T0/B0/SECRET`` → ``https://hooks.example.com/…``.

    Webhook URLs often carry a token in the path or query, so only scheme, host and port are shown.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}{port}/…"


@dataclass(frozen=True)
class ExpiryFacts:
    """A certificate currently on a phone, as the expiry check sees it.

    ``has_verified_successor`` is True when a newer certificate for the same phone is already verified on it;
    such a certificate may expire unnoticed.
    """

    cert_id: int | str
    device: str  # the MAC, or another label an operator recognises
    not_after: datetime
    has_verified_successor: bool = False


def expiring_certificates(certs: Iterable[ExpiryFacts], now: datetime, days: int) -> list[ExpiryFacts]:
    """Certificates expiring within ``days`` days of ``now`` (or already expired) without a verified successor,
    soonest first (ties by id).

    Raises:
        ValueError: if ``days`` is negative or ``now`` (or a ``not_after``) is naive.
    """
    if days < 0:
        raise ValueError("days must not be negative")
    horizon = ensure_utc(now) + timedelta(days=days)
    chosen = [c for c in certs if not c.has_verified_successor and ensure_utc(c.not_after) <= horizon]
    return sorted(chosen, key=lambda c: (ensure_utc(c.not_after), str(c.cert_id)))


def expiry_notifications(certs: Iterable[ExpiryFacts], now: datetime, days: int) -> list[Notification]:
    """One digest notification about every certificate :func:`expiring_certificates` chooses; empty if none.

    A digest rather than one message per certificate: a mass expiry of 10,000 certificates must not send
    10,000 e-mails. The text lists the first :data:`EXPIRY_TEXT_LIMIT` certificates, ``data["certificates"]``
    the first :data:`EXPIRY_DATA_LIMIT` (``data["truncated"]`` says whether more exist); ``data["count"]`` and
    ``data["expired"]`` are exact.

    Raises:
        ValueError: as :func:`expiring_certificates`.
    """
    now = ensure_utc(now)
    chosen = expiring_certificates(certs, now, days)
    if not chosen:
        return []
    expired = sum(1 for c in chosen if ensure_utc(c.not_after) <= now)
    subject = f"{len(chosen)} phone certificate(s) expire within {days} days without a verified successor"
    if expired:
        subject += f" ({expired} already expired)"
    lines = [
        f"{c.device}  certificate {c.cert_id}  "
        + ("EXPIRED" if ensure_utc(c.not_after) <= now else "expires")
        + f" {ensure_utc(c.not_after).isoformat()}"
        for c in chosen[:EXPIRY_TEXT_LIMIT]
    ]
    if len(chosen) > EXPIRY_TEXT_LIMIT:
        lines.append(f"… and {len(chosen) - EXPIRY_TEXT_LIMIT} more")
    text = (
        "These phone certificates expire soon and no renewed certificate has been verified on the phone yet:\n\n"
        + "\n".join(lines)
    )
    data = {
        "count": len(chosen),
        "expired": expired,
        "days": days,
        "truncated": len(chosen) > EXPIRY_DATA_LIMIT,
        "certificates": [
            {
                "cert_id": c.cert_id,
                "device": c.device,
                "not_after": ensure_utc(c.not_after).isoformat(),
                "expired": ensure_utc(c.not_after) <= now,
            }
            for c in chosen[:EXPIRY_DATA_LIMIT]
        ],
    }
    return [Notification(kind="expiry", subject=subject, text=text, data=data)]
