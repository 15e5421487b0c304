"""The renewal run's per-row decision (:func:`certmgr.renewal.service.decide`) gives exactly what the full trigger
path gives (:func:`certmgr.renewal.triggers.reissue_reasons` with the planner's plan) — its shortcut for rows
whose names cannot change included — for any row: revoked or not, any issuer, policy changed or not, SANs that
match the phone's address or not, DNS names, drift, operator requests, any date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from certmgr.errors import CertmgrError
from certmgr.pki.types import KeyType
from certmgr.policy import Policy, parse_policy
from certmgr.renewal import service
from certmgr.renewal.planner import RenewalInput, plan_renewal
from certmgr.renewal.service import CurrentRow, decide
from certmgr.renewal.triggers import CertFacts, DeviceFacts, PolicyFacts, reissue_reasons

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CA = "ab" * 32
MAC = "00:1A:E8:12:34:56"

SUBJECT = {"common_name": "{ip}"}
POLICIES = [
    parse_policy({"name": "plain", "subject": SUBJECT, "renewal": {"renew_before": "30d"}}, source="plain.toml"),
    parse_policy(
        {
            "name": "windowed",
            "subject": SUBJECT,
            "renewal": {"renew_at_fraction": 0.75, "jitter": "12h"},
            "windows": [{"days": "*", "hours": "22-05", "timezone": "Europe/Berlin"}],
        },
        source="windowed.toml",
    ),
    parse_policy(
        {
            "name": "named",
            "subject": SUBJECT,
            "san": {"dns": ["phone-{mac_hex}.example.com"]},
            "renewal": {"renew_before": "30d"},
        },
        source="named.toml",
    ),
    parse_policy(
        {
            "name": "no-ip",
            "subject": {"common_name": "p-{mac_hex}"},
            "san": {"ip": False, "dns": ["p-{mac_hex}.example"]},
        },
        source="no-ip.toml",
    ),
]


def _facts(policy: Policy, row: CurrentRow) -> PolicyFacts:
    """The policy facts the renewal run hands to decide (rendered for the phone when they can differ)."""
    changed = row.policy_digest != policy.digest or row.policy_name != policy.name
    return (
        PolicyFacts.from_policy(policy, row.identity())
        if changed or policy.san.dns
        else PolicyFacts.from_policy(policy)
    )


def _full_path(
    row: CurrentRow, policy: Policy, facts: PolicyFacts, issuing: str | None, manual_at: datetime | None
) -> object:
    """The reference: every trigger through reissue_reasons, no shortcut."""
    manual = manual_at is not None and manual_at >= row.created_at
    try:
        plan = plan_renewal(RenewalInput.from_policy(row.cert_id, row.mac, row.not_before, row.not_after, policy), NOW)
        cert = CertFacts(
            cert_id=row.cert_id, not_before=row.not_before, not_after=row.not_after, sans=row.sans,
            key_type=row.key_type, issuer_fingerprint=row.issuer_fingerprint, policy_name=row.policy_name,
            policy_digest=row.policy_digest, subject=row.subject,
            revoked=row.status == "revoked" or row.revoked_at is not None,
        )  # fmt: skip
        return plan, reissue_reasons(cert, DeviceFacts.from_row(row, manual=manual), facts, issuing, NOW)
    except ValueError as exc:
        return type(exc)


def _decided(
    row: CurrentRow, policy: Policy, facts: PolicyFacts, issuing: str | None, manual_at: datetime | None
) -> object:
    try:
        return decide(row, policy, facts, issuing, NOW, manual_at)
    except ValueError as exc:
        return type(exc)


@st.composite
def rows(draw: st.DrawFn, names_fixed: bool = False) -> tuple[CurrentRow, Policy]:
    """A row and its policy; with ``names_fixed`` one whose names cannot change (the shortcut's rows): the policy
    unchanged and without DNS names, none for the phone, SANs exactly its address."""
    policy = draw(st.sampled_from(POLICIES[:2] if names_fixed else POLICIES))
    ip = draw(st.sampled_from(["10.1.2.3", "10.1.2.4", "fd00::1", "fd00:0::1"] + ([] if names_fixed else [None])))
    sans = (
        (f"IP:{ip}",)
        if names_fixed
        else draw(
            st.sampled_from(
                [
                    (f"IP:{ip}",),
                    ("IP:10.1.2.3",),
                    (),
                    ("DNS:phone-001ae8123456.example.com", f"IP:{ip}"),
                    ("DNS:p-001ae8123456.example",),
                    ("ip:10.1.2.3",),
                    (f"IP:{ip}", "IP:10.9.9.9"),
                ]
            )
        )
    )
    age = timedelta(hours=draw(st.integers(min_value=-24, max_value=420 * 24)))
    lifetime = draw(st.sampled_from([timedelta(days=397), timedelta(days=30), timedelta(days=800)]))
    not_before = NOW - age
    created = not_before + timedelta(minutes=5)
    row = CurrentRow(
        device_id=7,
        mac=MAC,
        ip=ip,
        dns_names=()
        if names_fixed
        else draw(st.sampled_from([(), ("phone-001ae8123456.example.com",), ("other.example",)])),
        drift=draw(st.booleans()),
        device_policy=policy.name,
        e164=None,
        device_type=None,
        software_version=None,
        hostname=None,
        cert_id=draw(st.integers(min_value=1, max_value=10**6)),
        serial="01",
        not_before=not_before,
        not_after=not_before + lifetime,
        sans=sans,
        subject=draw(st.sampled_from([f"CN={ip}", "CN=somebody"])),
        key_type=draw(st.sampled_from([KeyType.EC_P256, KeyType.RSA_2048])),
        issuer_fingerprint=draw(st.sampled_from([CA, "cd" * 32, ":".join(["AB"] * 32)])),
        policy_name=policy.name if names_fixed else draw(st.sampled_from([policy.name, "old", None])),
        policy_digest=policy.digest if names_fixed else draw(st.sampled_from([policy.digest, "0" * 64, None])),
        status=draw(st.sampled_from(["active", "revoked"])),
        revoked_at=draw(st.sampled_from([None, NOW - timedelta(days=1)])),
        created_at=created,
    )
    return row, policy


@settings(max_examples=600, deadline=None)
@given(
    rows(),
    st.sampled_from([CA, "cd" * 32, None]),
    st.sampled_from([None, NOW - timedelta(days=500), NOW - timedelta(minutes=1)]),
)
def test_decide_gives_what_every_trigger_gives(
    drawn: tuple[CurrentRow, Policy], issuing: str | None, manual_at: datetime | None
) -> None:
    row, policy = drawn
    try:
        facts = _facts(policy, row)
    except CertmgrError:
        assume(False)  # the run logs such a row and goes on (no address for the policy's names): not decided
        return
    assert _decided(row, policy, facts, issuing, manual_at) == _full_path(row, policy, facts, issuing, manual_at)


def test_an_address_that_is_not_an_ip_is_refused_on_every_path() -> None:
    policy = POLICIES[0]
    row = CurrentRow(
        7, MAC, "None", (), False, policy.name, None, None, None, None, 1, "01", NOW - timedelta(days=1),
        NOW + timedelta(days=396), ("IP:None",), "CN=x", KeyType.EC_P256, CA, policy.name, policy.digest, "active",
        None, NOW - timedelta(days=1),
    )  # fmt: skip
    facts = PolicyFacts.from_policy(policy)
    assert _full_path(row, policy, facts, CA, None) is ValueError
    assert _decided(row, policy, facts, CA, None) is ValueError


@settings(max_examples=400, deadline=None)
@given(
    rows(names_fixed=True),
    st.sampled_from([CA, "cd" * 32, None]),
    st.sampled_from([None, NOW - timedelta(days=500), NOW - timedelta(minutes=1)]),
)
def test_a_row_whose_names_cannot_change_takes_the_shortcut_and_gets_every_trigger(
    drawn: tuple[CurrentRow, Policy], issuing: str | None, manual_at: datetime | None
) -> None:
    """Every such row skips the SAN comparisons (the full path is not called) and still gets revocation, CA
    rotation, drift, the operator's request and the date, exactly as the full path gives them."""
    row, policy = drawn
    facts = _facts(policy, row)
    expected = _full_path(row, policy, facts, issuing, manual_at)
    with mock.patch.object(service, "reissue_reasons", side_effect=AssertionError("the full path was taken")):
        assert _decided(row, policy, facts, issuing, manual_at) == expected
