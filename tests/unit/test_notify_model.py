"""Notifications: validation, JSON form, URL redaction, and which certificates get an expiry warning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certmgr.notify import (
    EXPIRY_DATA_LIMIT,
    EXPIRY_TEXT_LIMIT,
    ExpiryFacts,
    Notification,
    expiring_certificates,
    expiry_notifications,
    redact_url,
)

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_notification_json_form() -> None:
    note = Notification("drift", "drift on 3 phones", "text", {"at": NOW, "macs": ["00:1A:E8:00:00:01"]})
    assert note.to_json() == {
        "source": "certmgr",
        "kind": "drift",
        "subject": "drift on 3 phones",
        "text": "text",
        "data": {"at": NOW.isoformat(), "macs": ["00:1A:E8:00:00:01"]},
    }


def test_notification_validation() -> None:
    with pytest.raises(ValueError, match="unknown notification kind"):
        Notification("nonsense", "s", "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subject"):
        Notification("test", "  ", "t")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/services/T0/B0/SECRET", "https://hooks.example.com/…"),
        ("http://127.0.0.1:8080/hook?token=SECRET", "http://127.0.0.1:8080/…"),
        ("https://user:SECRET@example.com/x", "https://example.com/…"),
        ("http://[::1]:9000/SECRET", "http://[::1]:9000/…"),
    ],
)
def test_redact_url_hides_paths_queries_and_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


def facts(n: int, days: float, successor: bool = False) -> ExpiryFacts:
    return ExpiryFacts(n, f"00:1A:E8:00:00:{n:02X}", NOW + timedelta(days=days), successor)


def test_expiring_certificates_within_days_without_a_verified_successor() -> None:
    certs = [
        facts(1, 3),
        facts(2, 20),  # too far away
        facts(3, 1, successor=True),  # already replaced on the phone
        facts(4, -2),  # expired, no successor: the worst case
        facts(5, 14),  # exactly at the horizon
    ]
    chosen = expiring_certificates(certs, NOW, 14)
    assert [c.cert_id for c in chosen] == [4, 1, 5]


def test_expiry_notification_is_one_digest() -> None:
    notes = expiry_notifications([facts(1, 3), facts(4, -2), facts(2, 30)], NOW, 14)
    assert len(notes) == 1
    note = notes[0]
    assert note.kind == "expiry"
    assert note.subject.startswith("2 phone certificate(s) expire within 14 days")
    assert "1 already expired" in note.subject
    assert "00:1A:E8:00:00:04" in note.text
    assert "EXPIRED" in note.text
    assert note.data["count"] == 2
    assert note.data["expired"] == 1
    assert [c["cert_id"] for c in note.data["certificates"]] == [4, 1]


def test_no_expiring_certificate_no_notification() -> None:
    assert expiry_notifications([facts(1, 30), facts(2, 1, successor=True)], NOW, 14) == []


def test_mass_expiry_digest_is_capped_but_counts_everything() -> None:
    certs = [ExpiryFacts(i, f"dev{i}", NOW + timedelta(hours=i % 100)) for i in range(10_000)]
    (note,) = expiry_notifications(certs, NOW, 7)
    assert note.data["count"] == 10_000
    assert note.data["truncated"] is True
    assert len(note.data["certificates"]) == EXPIRY_DATA_LIMIT
    assert note.text.count("\n") < EXPIRY_TEXT_LIMIT + 5
    assert f"and {10_000 - EXPIRY_TEXT_LIMIT} more" in note.text


def test_expiry_rejects_negative_days_and_naive_times() -> None:
    with pytest.raises(ValueError, match="negative"):
        expiring_certificates([], NOW, -1)
    with pytest.raises(ValueError, match="naive"):
        expiring_certificates([], datetime(2026, 1, 1), 1)  # noqa: DTZ001
