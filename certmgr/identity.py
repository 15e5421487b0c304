"""Device identity: who a phone is, as certificate issuance and policy selection see it. Pure, no I/O."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

from certmgr.errors import InputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAC_HEX = re.compile(r"^[0-9a-fA-F]{12}$")
_E164 = re.compile(r"^\+?[0-9]{1,20}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def normalize_mac(value: str) -> str:
    """Normalise a MAC address to upper-case colon form ``00:1A:E8:12:34:56``.

    Accepts colons, dashes, dots or no separator.

    Raises:
        InputError: if ``value`` is not a 48-bit MAC address.
    """
    raw = re.sub(r"[:\-.\s]", "", value or "")
    if not _MAC_HEX.match(raw):
        raise InputError(f"invalid MAC address {value!r}: expected 12 hex digits such as 00:1A:E8:12:34:56")
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2)).upper()


def mac_token(mac: str) -> str:
    """The MAC as 12 lower-case hex digits without separators, for file names and DNS templates."""
    return normalize_mac(mac).replace(":", "").lower()


def ip_address(value: str) -> IPAddress:
    """:func:`ipaddress.ip_address`, faster for a canonical dotted-quad IPv4 address (what the inventory stores):
    that one is read by the C library and accepted only if it prints back exactly as given (no leading zeros, no
    short forms), so the result and the errors are those of :mod:`ipaddress`.

    Raises:
        ValueError: if ``value`` is not an IP address.
    """
    try:
        packed = socket.inet_pton(socket.AF_INET, value)
    except (OSError, TypeError, ValueError):
        return ipaddress.ip_address(value)
    if socket.inet_ntop(socket.AF_INET, packed) != value:
        return ipaddress.ip_address(value)
    return ipaddress.IPv4Address(packed)


def parse_ip(value: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address.

    Raises:
        InputError: if ``value`` is not an IP address.
    """
    try:
        return ip_address(value.strip())
    except ValueError as exc:
        raise InputError(f"invalid IP address {value!r}") from exc


def validate_dns_name(value: str) -> str:
    """Return the lower-cased DNS name.

    Raises:
        InputError: if ``value`` is not a valid host name (labels of letters, digits and inner dashes).
    """
    name = value.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(p) for p in name.split(".")):
        raise InputError(f"invalid DNS name {value!r}")
    return name


def validate_e164(value: str) -> str:
    """Return the E.164 number without spaces.

    Raises:
        InputError: if ``value`` is not digits (optionally with a leading +).
    """
    number = value.replace(" ", "")
    if not _E164.match(number):
        raise InputError(f"invalid E.164 number {value!r}")
    return number


@dataclass(frozen=True)
class DeviceIdentity:
    """What certmgr knows about a phone for issuing its certificate.

    ``mac`` is normalised (see :func:`normalize_mac`); ``ips`` has at least one address for IP SANs.
    """

    mac: str
    ips: tuple[IPAddress, ...] = ()
    dns_names: tuple[str, ...] = ()
    e164: str | None = None
    model: str | None = None
    firmware: str | None = None
    hostname: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def create(
        cls,
        mac: str,
        ips: list[str] | tuple[str, ...] = (),
        dns_names: list[str] | tuple[str, ...] = (),
        e164: str | None = None,
        model: str | None = None,
        firmware: str | None = None,
        hostname: str | None = None,
    ) -> DeviceIdentity:
        """Validate raw strings into an identity.

        Raises:
            InputError: for an invalid MAC, IP address, DNS name or E.164 number.
        """
        return cls(
            mac=normalize_mac(mac),
            ips=tuple(parse_ip(ip) for ip in ips),
            dns_names=tuple(validate_dns_name(n) for n in dns_names),
            e164=validate_e164(e164) if e164 else None,
            model=model or None,
            firmware=firmware or None,
            hostname=validate_dns_name(hostname) if hostname else None,
        )
