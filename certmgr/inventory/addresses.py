"""Address rules: when two addresses are the same phone, which peers speak for a phone, and where a contact-me
may go. Pure.

In Default Mode a phone authenticates nothing; what certmgr knows is the address the phone has (the known
address, moved only on proof of possession or by an operator). A message speaks for a phone only when its TCP
peer is that address or a trusted NAT/proxy (:func:`peer_is_phone`); and a contact-me only ever goes to the
phone's own address (or a trusted proxy), on the protocol's contact-me path (:func:`contact_me_target`): a
``contact-me-uri`` cannot steer certmgr's HTTP client anywhere else (no server-side request forgery).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from certmgr.errors import ProtocolError
from certmgr.wpi.contactme import CONTACT_ME_PATH, ContactMeTarget, parse_contact_me_uri


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``::ffff:a.b.c.d`` (how a dual-stack listener sees an IPv4 peer) as ``a.b.c.d``; others unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical_ip(address: str | None) -> str | None:
    """``address`` as certmgr stores a phone's address: an IPv4-mapped IPv6 peer (``::ffff:a.b.c.d``, how a
    dual-stack listener sees an IPv4 phone) as its IPv4 address; anything that is not an address unchanged."""
    if address is None:
        return None
    try:
        return str(_unmapped(ipaddress.ip_address(address)))
    except ValueError:
        return address


def same_ip(a: str | None, b: str | None) -> bool:
    """True if ``a`` and ``b`` are the same IP address (IPv4-mapped IPv6 unwrapped)."""
    if a is None or b is None:
        return False
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    return _unmapped(ia) == _unmapped(ib)


def peer_is_trusted_proxy(peer: str | None, trusted: Iterable[str]) -> bool:
    """True if ``peer`` is one of the trusted NAT/proxy addresses (single addresses or networks); an
    IPv4-mapped IPv6 peer or entry counts as its IPv4 address."""
    if peer is None:
        return False
    try:
        addr = _unmapped(ipaddress.ip_address(peer))
    except ValueError:
        return False
    for entry in trusted:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
            mapped = _unmapped(network.network_address)
            if mapped is not network.network_address:  # ::ffff:a.b.c.d/n → a.b.c.d/(n - 96)
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        if addr in network:
            return True
    return False


def peer_is_phone(peer: str | None, phone_address: str | None, trusted: Iterable[str]) -> bool:
    """True if a message from TCP peer ``peer`` speaks for the phone at ``phone_address``: the same address, or a
    trusted NAT/proxy address."""
    return same_ip(peer, phone_address) or peer_is_trusted_proxy(peer, trusted)


def contact_me_target(uri: str, phone_address: str | None, trusted: Iterable[str]) -> ContactMeTarget:
    """The contact-me target of a reported ``contact-me-uri``, if certmgr may send there: an IP literal (no DNS
    name) that is the phone's own address or a trusted proxy, on the protocol's contact-me path; the port stays
    the phone's choice.

    Raises:
        ProtocolError: naming what is refused.
    """
    target = parse_contact_me_uri(uri)
    if target.ip is None:
        raise ProtocolError("contact-me-uri names a DNS name; only the phone's own address is accepted")
    host = str(target.ip)
    if not (same_ip(host, phone_address) or peer_is_trusted_proxy(host, trusted)):
        raise ProtocolError(f"contact-me-uri names {host}, not the phone's address")
    if target.path != CONTACT_ME_PATH:
        raise ProtocolError("contact-me-uri names another path than the protocol's contact-me path")
    return target


__all__ = ["canonical_ip", "contact_me_target", "peer_is_phone", "peer_is_trusted_proxy", "same_ip"]
