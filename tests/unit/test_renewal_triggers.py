"""Reissue triggers: each trigger fires (and only when it should), with explanations; relevant policy fields."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from certmgr.db.models import Certificate, CertificateStatus, Device, IssueReason
from certmgr.identity import DeviceIdentity
from certmgr.pki.types import KeyType
from certmgr.policy import parse_policy
from certmgr.renewal import CertFacts, DeviceFacts, PolicyFacts, Reason, Trigger, reissue_reasons

NB = datetime(2026, 1, 5, tzinfo=UTC)
NOW = NB + timedelta(days=10)
MAC = "00:1A:E8:12:34:56"
CA = "ab" * 32
IP = ipaddress.ip_address("10.1.2.3")

CERT = CertFacts(
    cert_id=1,
    not_before=NB - timedelta(minutes=5),
    not_after=NB + timedelta(days=397),
    sans=("DNS:phone-001ae8123456.example.com", "IP:10.1.2.3"),
    key_type=KeyType.RSA_2048,
    issuer_fingerprint=CA,
    policy_name="default",
    policy_digest="d1",
    subject="CN=10.1.2.3",
)
DEVICE = DeviceFacts(mac=MAC, ips=(IP,))
POLICY = PolicyFacts(
    name="default",
    digest="d1",
    key_type=KeyType.RSA_2048,
    validity=timedelta(days=397),
    san_ip=True,
    expected_subject="CN=10.1.2.3",
    expected_dns=frozenset({"phone-001ae8123456.example.com"}),
    renew_before=timedelta(days=30),
)


def triggers(reasons: list[Reason]) -> list[Trigger]:
    return [r.trigger for r in reasons]


def run(
    cert: CertFacts = CERT,
    device: DeviceFacts = DEVICE,
    policy: PolicyFacts = POLICY,
    ca: str | None = CA,
    now: datetime = NOW,
) -> list[Reason]:
    return reissue_reasons(cert, device, policy, ca, now)


def test_a_current_certificate_needs_nothing() -> None:
    assert run() == []


def test_revoked() -> None:
    reasons = run(cert=replace(CERT, revoked=True))
    assert triggers(reasons) == [Trigger.REVOKED]
    assert "revoked" in reasons[0].explanation
    assert reasons[0].issue_reason == IssueReason.REVOCATION.value


def test_ca_rotation() -> None:
    reasons = run(ca="cd" * 32)
    assert triggers(reasons) == [Trigger.CA_ROTATION]
    assert reasons[0].details == {"issuer": CA, "active": "cd" * 32}
    assert "active issuing CA" in reasons[0].explanation


def test_ca_fingerprint_spelling_does_not_matter_and_no_active_ca_skips_the_check() -> None:
    colons = ":".join(["AB"] * 32)
    assert run(ca=colons) == []
    assert run(ca=None) == []


def test_policy_change_of_key_type() -> None:
    reasons = run(policy=replace(POLICY, digest="d2", key_type=KeyType.EC_P256))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]
    assert "key type rsa-2048 → ec-p256" in reasons[0].explanation
    assert reasons[0].details["policy"] == "default"


def test_policy_change_to_a_shorter_validity() -> None:
    reasons = run(policy=replace(POLICY, digest="d2", validity=timedelta(days=90)))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]
    assert "validity" in reasons[0].explanation


def test_longer_validity_is_not_a_reason() -> None:
    assert run(policy=replace(POLICY, digest="d2", validity=timedelta(days=500))) == []


def test_backdated_not_before_is_not_a_longer_validity() -> None:
    # Issuance backdates not_before by 5 minutes: the certificate is 397d5m long under a 397d policy.
    assert run(policy=replace(POLICY, digest="d2")) == []


def test_policy_change_of_subject() -> None:
    reasons = run(policy=replace(POLICY, digest="d2", expected_subject="CN=10.1.2.3,O=ACME"))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]
    assert "subject" in reasons[0].explanation


def test_policy_change_of_dns_template() -> None:
    reasons = run(policy=replace(POLICY, digest="d2", expected_dns=frozenset({"p-001ae8123456.corp.example"})))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]
    assert "san.dns" in reasons[0].explanation


@pytest.mark.parametrize(
    ("cert_sans", "san_ip", "word"),
    [
        (("DNS:phone-001ae8123456.example.com",), True, "IP SANs added"),
        (("DNS:phone-001ae8123456.example.com", "IP:10.1.2.3"), False, "IP SANs removed"),
    ],
)
def test_policy_change_of_san_ip(cert_sans: tuple[str, ...], san_ip: bool, word: str) -> None:
    reasons = run(cert=replace(CERT, sans=cert_sans), policy=replace(POLICY, digest="d2", san_ip=san_ip))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]
    assert word in reasons[0].explanation


def test_irrelevant_policy_changes_do_not_reissue() -> None:
    # Another digest (say new windows, description or PKCS#12 profiles) but the same certificate content.
    assert run(policy=replace(POLICY, digest="d2", jitter=timedelta(hours=6))) == []


def test_certificate_without_digest_is_compared_field_by_field() -> None:
    assert run(cert=replace(CERT, policy_digest=None)) == []
    reasons = run(cert=replace(CERT, policy_digest=None), policy=replace(POLICY, key_type=KeyType.RSA_3072))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]


def test_moving_to_another_policy_counts_as_a_change() -> None:
    reasons = run(policy=replace(POLICY, name="lab", digest="d1", key_type=KeyType.EC_P384))
    assert triggers(reasons) == [Trigger.POLICY_CHANGE]


def test_address_change_of_ip() -> None:
    reasons = run(device=replace(DEVICE, ips=(ipaddress.ip_address("10.9.9.9"),)))
    assert triggers(reasons) == [Trigger.ADDRESS_CHANGE]
    assert "10.1.2.3" in reasons[0].explanation
    assert "10.9.9.9" in reasons[0].explanation
    assert reasons[0].issue_reason == IssueReason.IP_CHANGE.value


def test_unknown_device_address_is_not_an_address_change() -> None:
    assert run(device=replace(DEVICE, ips=())) == []


def test_address_change_of_explicit_dns_name() -> None:
    reasons = run(device=replace(DEVICE, dns_names=("wbm.example.com",)))
    assert triggers(reasons) == [Trigger.ADDRESS_CHANGE]
    assert "wbm.example.com" in reasons[0].explanation


def test_address_change_of_rendered_name_with_an_unchanged_policy() -> None:
    # Same policy, but the {hostname}-based DNS template now renders another name: the phone changed.
    reasons = run(policy=replace(POLICY, expected_dns=frozenset({"newname.example.com"})))
    assert triggers(reasons) == [Trigger.ADDRESS_CHANGE]


def test_drift() -> None:
    reasons = run(device=replace(DEVICE, drift=True))
    assert triggers(reasons) == [Trigger.DRIFT]
    assert reasons[0].issue_reason == "drift"


def test_manual() -> None:
    reasons = run(device=replace(DEVICE, manual=True))
    assert triggers(reasons) == [Trigger.MANUAL]
    assert "operator" in reasons[0].explanation


def test_renewal_due() -> None:
    assert run(now=NB + timedelta(days=366)) == []
    reasons = run(now=NB + timedelta(days=368))
    assert triggers(reasons) == [Trigger.RENEWAL_DUE]
    assert reasons[0].details["plan"] == "overdue"
    assert reasons[0].issue_reason == IssueReason.RENEWAL.value


def test_renewal_due_when_expired() -> None:
    reasons = run(now=NB + timedelta(days=400))
    assert triggers(reasons) == [Trigger.RENEWAL_DUE]
    assert "expired" in reasons[0].explanation


def test_overdue_renewal_waiting_for_a_window_is_not_due_yet() -> None:
    from certmgr.policy import MaintenanceWindow

    nightly = MaintenanceWindow.parse("*", "22-05", "UTC")
    policy = replace(POLICY, windows=(nightly,))
    at_noon = (NB + timedelta(days=368)).replace(hour=12)
    assert run(policy=policy, now=at_noon) == []
    assert triggers(run(policy=policy, now=at_noon.replace(hour=22))) == [Trigger.RENEWAL_DUE]


def test_several_triggers_in_a_fixed_order() -> None:
    reasons = run(
        cert=replace(CERT, revoked=True),
        device=DeviceFacts(MAC, (ipaddress.ip_address("10.9.9.9"),), drift=True, manual=True),
        policy=replace(POLICY, digest="d2", key_type=KeyType.EC_P256),
        ca="cd" * 32,
        now=NB + timedelta(days=400),
    )
    assert triggers(reasons) == list(Trigger)
    assert all(r.explanation for r in reasons)


def test_every_trigger_maps_to_an_issue_reason() -> None:
    assert {t.issue_reason for t in Trigger} <= {r.value for r in IssueReason}


def test_facts_from_database_rows_and_a_real_policy() -> None:
    policy = parse_policy(
        {
            "name": "default",
            "subject": {"common_name": "{ip}"},
            "san": {"dns": ["phone-{mac_hex}.example.com"]},
            "renewal": {"renew_before": "30d"},
        },
        source="default.toml",
    )
    identity = DeviceIdentity.create(MAC, ips=["10.1.2.3"])
    facts = PolicyFacts.from_policy(policy, identity)
    assert facts.expected_dns == frozenset({"phone-001ae8123456.example.com"})
    assert facts.expected_subject == "CN=10.1.2.3"
    device_row = Device(mac=MAC, ip="10.1.2.3", dns_names=[], created_at=NB, updated_at=NB)
    cert_row = Certificate(
        id=5,
        device_id=1,
        serial="01",
        subject="CN=10.1.2.3",
        sans=["DNS:phone-001ae8123456.example.com", "IP:10.1.2.3"],
        key_type=KeyType.RSA_2048,
        not_before=NB - timedelta(minutes=5),
        not_after=NB + timedelta(days=397),
        fingerprint_sha256="00" * 32,
        cert_pem="",
        key_blob=b"",
        issuer_fingerprint=CA,
        policy_name="default",
        policy_digest=policy.digest,
        status=CertificateStatus.ACTIVE,
        reason=IssueReason.ENROLLMENT,
        created_at=NB,
    )
    cert = CertFacts.from_row(cert_row)
    device = DeviceFacts.from_row(device_row)
    assert cert.cert_id == 5
    assert cert.ip_sans == frozenset({IP})
    assert device.ips == (IP,)
    assert reissue_reasons(cert, device, facts, CA, NOW) == []
    assert triggers(reissue_reasons(cert, DeviceFacts.from_row(device_row, manual=True), facts, CA, NOW)) == [
        Trigger.MANUAL
    ]
    cert_row.status = CertificateStatus.REVOKED
    assert CertFacts.from_row(cert_row).revoked


@pytest.mark.parametrize("days", [10, 380, 398])
def test_a_plan_made_by_the_caller_gives_the_same_reasons(days: int) -> None:
    """``decide`` hands its plan over instead of having the row planned twice; the answer is the same."""
    from certmgr.renewal.planner import plan_renewal
    from certmgr.renewal.triggers import renewal_input

    now = NB + timedelta(days=days)
    plan = plan_renewal(renewal_input(CERT, DEVICE, POLICY), now)
    for ca in (CA, "cd" * 32):
        assert reissue_reasons(CERT, DEVICE, POLICY, ca, now, plan) == reissue_reasons(CERT, DEVICE, POLICY, ca, now)
