"""Pure hash-chain arithmetic of the audit log: every kind of tampering names the first bad sequence number."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from certmgr.audit.chain import (
    GENESIS_HASH,
    ChainedEvent,
    StoredEvent,
    canonical_json,
    event_hash,
    verify_chain,
)

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _event(seq: int, **details: object) -> ChainedEvent:
    return ChainedEvent(
        seq=seq,
        at=T0 + timedelta(seconds=seq),
        actor="test",
        action="thing.happened",
        subject_type="thing",
        subject_id=str(seq),
        details=details or {"n": seq},
    )


def _chain(n: int) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        ev = _event(seq)
        digest = event_hash(prev, ev)
        out.append(StoredEvent(ev, prev, digest))
        prev = digest
    return out


def _head(events: list[StoredEvent]) -> tuple[int, str]:
    return (events[-1].event.seq, events[-1].hash) if events else (0, GENESIS_HASH)


def test_canonical_json_is_key_order_independent() -> None:
    a = dataclasses.replace(_event(1), details={"a": 1, "b": [1, 2]})
    b = dataclasses.replace(_event(1), details={"b": [1, 2], "a": 1})
    assert canonical_json(a) == canonical_json(b)
    assert b" " not in canonical_json(a)


def test_hash_depends_on_previous_hash_and_seq() -> None:
    ev = _event(1)
    assert event_hash(GENESIS_HASH, ev) != event_hash("1" * 64, ev)
    assert event_hash(GENESIS_HASH, ev) != event_hash(GENESIS_HASH, dataclasses.replace(ev, seq=2))


def test_empty_chain_is_ok() -> None:
    assert verify_chain([], expected_head=(0, GENESIS_HASH)).ok


@given(st.integers(min_value=1, max_value=30))
def test_intact_chain_verifies(n: int) -> None:
    events = _chain(n)
    verdict = verify_chain(events, expected_head=_head(events))
    assert verdict.ok
    assert verdict.checked == n
    assert verdict.first_bad_seq is None


@given(st.integers(min_value=2, max_value=20), st.data())
def test_modified_event_names_its_seq(n: int, data: st.DataObject) -> None:
    events = _chain(n)
    k = data.draw(st.integers(min_value=1, max_value=n))
    victim = events[k - 1]
    events[k - 1] = dataclasses.replace(victim, event=dataclasses.replace(victim.event, details={"n": -1}))
    verdict = verify_chain(events, expected_head=_head(_chain(n)))
    assert not verdict.ok
    assert verdict.first_bad_seq == k
    assert verdict.reason is not None
    assert "modified" in verdict.reason


@given(st.integers(min_value=3, max_value=20), st.data())
def test_deleted_event_names_its_seq(n: int, data: st.DataObject) -> None:
    events = _chain(n)
    k = data.draw(st.integers(min_value=1, max_value=n - 1))
    head = _head(events)
    del events[k - 1]
    verdict = verify_chain(events, expected_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == k


def test_rehashed_modification_breaks_the_next_link() -> None:
    events = _chain(5)
    head = _head(events)
    forged = dataclasses.replace(events[2].event, details={"n": "forged"})
    events[2] = StoredEvent(forged, events[2].prev_hash, event_hash(events[2].prev_hash, forged))
    verdict = verify_chain(events, expected_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == 4
    assert verdict.reason == "link to the previous event is broken"


def test_truncated_newest_events_detected_by_head() -> None:
    events = _chain(6)
    head = _head(events)
    verdict = verify_chain(events[:4], expected_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == 5
    assert verdict.reason is not None
    assert "truncated" in verdict.reason


def test_all_events_truncated_detected_by_head() -> None:
    events = _chain(3)
    verdict = verify_chain([], expected_head=_head(events))
    assert not verdict.ok
    assert verdict.first_bad_seq == 1


def test_forged_event_appended_beyond_the_head_is_named() -> None:
    events = _chain(4)
    head = _head(events)
    forged = _event(5)
    events.append(StoredEvent(forged, events[-1].hash, event_hash(events[-1].hash, forged)))
    verdict = verify_chain(events, expected_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == 5


def test_forged_event_inserted_with_a_gap_is_named() -> None:
    events = _chain(4)
    head = _head(events)
    forged = _event(7)
    events.append(StoredEvent(forged, events[-1].hash, event_hash(events[-1].hash, forged)))
    verdict = verify_chain(events, expected_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == 5


def test_replaced_last_event_is_named() -> None:
    events = _chain(4)
    head = _head(events)
    forged = _event(4, n="forged")
    events[-1] = StoredEvent(forged, events[-2].hash, event_hash(events[-2].hash, forged))
    verdict = verify_chain(events, expected_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == 4


def test_without_expected_head_truncation_is_invisible() -> None:
    # Documents why the head is recorded separately: the links alone cannot see a cut-off tail.
    assert verify_chain(_chain(5)[:3]).ok
