"""Address rules: when two addresses are the same phone, and which peers are trusted NAT/proxy addresses. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def same_ip(a: str | None, b: str | None) -> bool:
    """True if ``a`` and ``b`` are the same IP address (IPv4-mapped IPv6 unwrapped)."""
    if a is None or b is None:
        return False
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    if isinstance(ia, ipaddress.IPv6Address) and ia.ipv4_mapped is not None:
        ia = ia.ipv4_mapped
    if isinstance(ib, ipaddress.IPv6Address) and ib.ipv4_mapped is not None:
        ib = ib.ipv4_mapped
    return ia == ib


def peer_is_trusted_proxy(peer: str | None, trusted: Iterable[str]) -> bool:
    """True if ``peer`` is one of the trusted NAT/proxy addresses (single addresses or networks)."""
    if peer is None:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if addr in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


__all__ = ["peer_is_trusted_proxy", "same_ip"]
