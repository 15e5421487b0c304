"""The rule "does this phone need a new certificate" (:func:`certmgr.deploy.reconcile.issue_reason`), pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certmgr.db.models import IssueReason
from certmgr.deploy.reconcile import HeldCertificate, issue_reason

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
EARLIER = NOW - timedelta(seconds=1)


def test_nothing_held_is_an_enrollment() -> None:
    assert issue_reason("10.0.0.1", [], NOW) is IssueReason.ENROLLMENT


def test_an_unexpired_certificate_naming_the_address_covers_the_phone() -> None:
    assert issue_reason("10.0.0.1", [HeldCertificate(LATER, ["IP:10.0.0.1"])], NOW) is None


def test_the_address_is_compared_as_an_address_not_as_text() -> None:
    assert issue_reason("10.0.0.1", [HeldCertificate(LATER, ["IP:10.0.0.10"])], NOW) is IssueReason.IP_CHANGE
    assert issue_reason("2001:db8:0::1", [HeldCertificate(LATER, ["IP:2001:db8::1"])], NOW) is None


def test_an_unexpired_certificate_for_another_address_is_an_ip_change() -> None:
    held = [HeldCertificate(LATER, ["IP:10.0.0.2"]), HeldCertificate(EARLIER, ["IP:10.0.0.1"])]
    assert issue_reason("10.0.0.1", held, NOW) is IssueReason.IP_CHANGE


def test_only_expired_certificates_is_a_renewal() -> None:
    assert issue_reason("10.0.0.1", [HeldCertificate(NOW, ["IP:10.0.0.1"])], NOW) is IssueReason.RENEWAL
