"""The address rules D10 rests on (pure): when a TCP peer is the phone's known address — also as an IPv4-mapped
IPv6 peer, the way a dual-stack listener (``wpi_host = "::"``) sees every IPv4 phone — when it is a configured
trusted NAT/proxy address, and what :func:`certmgr.deploy.admission.decide` makes of it."""

from __future__ import annotations

import itertools

import pytest

from certmgr.deploy.admission import CallFacts, Decision, decide
from certmgr.inventory.addresses import peer_is_trusted_proxy, same_ip
from certmgr.wpi.messages import Reason


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("10.0.0.5", "::ffff:10.0.0.5"),
        ("::ffff:a00:5", "10.0.0.5"),  # the same mapped address in hex notation
        ("::FFFF:10.0.0.5", "::ffff:10.0.0.5"),
        ("2001:db8::1", "2001:db8:0::1"),
    ],
)
def test_same_ip_unwraps_ipv4_mapped_ipv6(a: str, b: str) -> None:
    """Pins the ``ipv4_mapped`` unwrapping of ``same_ip``: without it the real phone, seen by a dual-stack
    listener as ``::ffff:10.0.0.5``, would not match its own known address ``10.0.0.5``."""
    assert same_ip(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("::ffff:10.0.0.5", "10.0.0.6"),
        ("10.0.0.5", "::ffff:10.0.0.50"),
        ("::10.0.0.5", "10.0.0.5"),  # IPv4-compatible (deprecated), not IPv4-mapped: a different address
        ("64:ff9b::a00:5", "10.0.0.5"),  # NAT64 prefix: not the same host as far as D10 knows
        ("fe80::1%eth0", "fe80::1"),
        ("10.0.0.5", None),
        (None, "10.0.0.5"),
        (None, None),
        ("10.0.0.5", "not-an-ip"),
        ("10.0.0.5 ", "10.0.0.5"),
        ("010.000.000.005", "10.0.0.5"),  # leading zeros are refused by ipaddress, never read as octal
        ("phone.example", "phone.example"),
    ],
)
def test_same_ip_refuses_everything_else(a: str | None, b: str | None) -> None:
    assert not same_ip(a, b)


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.9.0.1", ["10.9.0.1"]),
        ("10.9.0.77", ["192.0.2.1", "10.9.0.0/24"]),
        ("10.9.0.1", [" 10.9.0.1 "]),
        ("10.9.0.1", ["garbage", "10.9.0.1"]),  # an unusable entry does not hide the good one
        ("::ffff:10.9.0.1", ["10.9.0.1"]),  # dual-stack listener, IPv4 proxy
        ("::ffff:10.9.0.77", ["10.9.0.0/24"]),
        ("10.9.0.1", ["::ffff:10.9.0.1"]),  # the entry written in mapped form
        ("2001:db8::7", ["2001:db8::/64"]),
    ],
)
def test_trusted_proxy_accepted(peer: str, trusted: list[str]) -> None:
    """Pins ``peer_is_trusted_proxy``: a configured NAT/proxy address is accepted instead of the phone's own —
    also when the listener sees it IPv4-mapped."""
    assert peer_is_trusted_proxy(peer, trusted)


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.9.0.2", ["10.9.0.1"]),
        ("10.9.1.1", ["10.9.0.0/24"]),
        ("::ffff:10.9.0.2", ["10.9.0.1"]),
        (None, ["10.9.0.1"]),
        ("10.9.0.1", []),
        ("not-an-ip", ["0.0.0.0/0"]),
        ("10.9.0.1", ["garbage", "", "10.9.0.1/33"]),
    ],
)
def test_untrusted_peer_refused(peer: str | None, trusted: list[str]) -> None:
    assert not peer_is_trusted_proxy(peer, trusted)


# --- D10: what decide() makes of the facts ---------------------------------------------------------------
_ALL = list(itertools.product([True, False], repeat=4))


@pytest.mark.parametrize(("write_pending", "started_by_us", "peer_matches", "approved"), _ALL)
def test_solicited_gets_the_key_only_when_every_check_holds(
    write_pending: bool, started_by_us: bool, peer_matches: bool, approved: bool
) -> None:
    """Pins ``CallFacts.problems`` / ``decide``: a ``solicited`` call is served only if certmgr started it, the
    peer matches (the phone's address or a trusted proxy) and the phone is approved; otherwise REFUSE. Removing
    the ``peer_matches`` check (or any other) from ``problems`` makes the rows with that fact False fail."""
    facts = CallFacts(Reason.SOLICITED, write_pending, started_by_us, peer_matches, approved)
    expected = Decision.SERVE if (started_by_us and peer_matches and approved) else Decision.REFUSE
    assert decide(facts) is expected
    if not peer_matches:
        assert any("peer address" in p for p in facts.problems())


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.SOLICITED])
@pytest.mark.parametrize(("write_pending", "started_by_us", "peer_matches", "approved"), _ALL)
def test_phone_initiated_calls_never_carry_the_key(
    reason: Reason, write_pending: bool, started_by_us: bool, peer_matches: bool, approved: bool
) -> None:
    """D9 + D10: a call the phone started never gets a write (the key): a pending write is DEFERred; a verify
    job (no key) runs only when every check holds, otherwise the call is IGNOREd."""
    facts = CallFacts(reason, write_pending, started_by_us, peer_matches, approved)
    decision = decide(facts)
    if write_pending:
        assert decision is Decision.DEFER
    elif started_by_us and peer_matches and approved:
        assert decision is Decision.SERVE
    else:
        assert decision is Decision.IGNORE
