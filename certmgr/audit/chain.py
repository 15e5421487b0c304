"""Pure hash-chain arithmetic for audit events. No I/O.

Each event's hash is SHA-256 over the previous event's hash and a canonical JSON rendering of the event (its
sequence number included), so that modifying, deleting, inserting or truncating events breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class ChainedEvent:
    """The hashed content of one audit event."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    details: Mapping[str, Any]


def canonical_json(event: ChainedEvent) -> bytes:
    """Deterministic JSON of ``event``: sorted keys, no spaces, UTC ISO timestamp with microseconds."""
    doc = {
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "details": event.details,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def event_hash(prev_hash: str, event: ChainedEvent) -> str:
    """SHA-256 (hex) over the previous hash and the canonical JSON of ``event``."""
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical_json(event)).hexdigest()


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from storage, with the hashes stored beside it."""

    event: ChainedEvent
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainVerdict:
    """Outcome of :func:`verify_chain`. ``first_bad_seq`` names the first event that does not fit."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(events: Iterable[StoredEvent], *, expected_head: tuple[int, str] | None = None) -> ChainVerdict:
    """Walk ``events`` in sequence order and check every link.

    ``expected_head`` is the (seq, hash) recorded separately as the chain's head; it detects truncation of the
    newest events, which the links alone cannot.
    """
    prev_hash = GENESIS_HASH
    expected_seq = 1
    checked = 0
    last: tuple[int, str] | None = None
    hash_at_head = GENESIS_HASH if expected_head is not None and expected_head[0] == 0 else None
    for stored in events:
        seq = stored.event.seq
        if seq != expected_seq:
            what = "deleted" if seq > expected_seq else "inserted or reordered"
            return ChainVerdict(False, checked, expected_seq, f"event {expected_seq} is missing ({what})")
        if stored.prev_hash != prev_hash:
            return ChainVerdict(False, checked, seq, "link to the previous event is broken")
        if event_hash(prev_hash, stored.event) != stored.hash:
            return ChainVerdict(False, checked, seq, "content does not match its hash (modified)")
        prev_hash = stored.hash
        expected_seq += 1
        checked += 1
        last = (seq, stored.hash)
        if expected_head is not None and seq == expected_head[0]:
            hash_at_head = stored.hash
    if expected_head is not None and expected_head != (last or (0, GENESIS_HASH)):
        head_seq, head_hash = expected_head
        if last is None or head_seq > last[0]:
            return ChainVerdict(False, checked, (last[0] + 1) if last else 1, "events after this were truncated")
        if hash_at_head == head_hash:  # the chain agrees with the head up to there: later events were added
            return ChainVerdict(False, checked, head_seq + 1, "event was appended beyond the recorded head")
        return ChainVerdict(False, checked, head_seq, "chain head does not match the recorded head")
    return ChainVerdict(True, checked)
