"""Address rules: when two addresses are the same phone, and which peers are trusted NAT/proxy addresses. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``::ffff:a.b.c.d`` (how a dual-stack listener sees an IPv4 peer) as ``a.b.c.d``; others unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
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


__all__ = ["peer_is_trusted_proxy", "same_ip"]
