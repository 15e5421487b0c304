"""Device identity: MAC / IP / DNS / E.164 validation and the frozen DeviceIdentity."""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmgr.errors import InputError
from certmgr.identity import (
    DeviceIdentity,
    ip_address,
    mac_token,
    normalize_mac,
    parse_ip,
    validate_dns_name,
    validate_e164,
)


@pytest.mark.parametrize(
    "raw",
    ["00:1a:e8:12:34:56", "00-1A-E8-12-34-56", "001a.e812.3456", "001AE8123456", " 00:1a:e8:12:34:56 "],
)
def test_normalize_mac_accepts_common_notations(raw: str) -> None:
    assert normalize_mac(raw) == "00:1A:E8:12:34:56"


@pytest.mark.parametrize("raw", ["", "00:1a:e8:12:34", "00:1a:e8:12:34:56:78", "00:1a:e8:12:34:zz", "not-a-mac"])
def test_normalize_mac_rejects_invalid(raw: str) -> None:
    with pytest.raises(InputError, match="invalid MAC address"):
        normalize_mac(raw)


@given(st.text(alphabet="0123456789abcdefABCDEF", min_size=12, max_size=12))
def test_normalize_mac_is_idempotent_and_canonical(raw: str) -> None:
    once = normalize_mac(raw)
    assert normalize_mac(once) == once
    assert once == once.upper()
    assert len(once.split(":")) == 6
    assert mac_token(raw) == raw.lower()


def test_mac_token_is_lower_hex_without_separators() -> None:
    assert mac_token("00:1A:E8:12:34:56") == "001ae8123456"
    assert set(mac_token("00-1A-E8-12-34-56")) <= set(string.hexdigits.lower())


def test_parse_ip_v4_and_v6() -> None:
    assert parse_ip("10.0.0.5") == ipaddress.IPv4Address("10.0.0.5")
    assert parse_ip(" 2001:db8::1 ") == ipaddress.IPv6Address("2001:db8::1")


@pytest.mark.parametrize("raw", ["", "10.0.0.256", "10.0.0", "phone.example", "10.0.0.0/8"])
def test_parse_ip_rejects_invalid(raw: str) -> None:
    with pytest.raises(InputError, match="invalid IP address"):
        parse_ip(raw)


def test_validate_dns_name_lowercases_and_strips_root_dot() -> None:
    assert validate_dns_name("Phone-1.Example.NET.") == "phone-1.example.net"


@pytest.mark.parametrize("raw", ["", "-bad.example", "bad-.example", "a..b", "under_score.example", "x" * 64 + ".net"])
def test_validate_dns_name_rejects_invalid(raw: str) -> None:
    with pytest.raises(InputError, match="invalid DNS name"):
        validate_dns_name(raw)


def test_validate_e164() -> None:
    assert validate_e164("+49 89 1234") == "+49891234"
    with pytest.raises(InputError, match=r"invalid E\.164"):
        validate_e164("+49-89-1234")


def test_device_identity_create_normalises_everything() -> None:
    ident = DeviceIdentity.create(
        mac="00-1a-e8-12-34-56",
        ips=["10.0.0.5", "2001:db8::5"],
        dns_names=["Phone.Example.net"],
        e164="+49 30 1",
        model="OpenStage 60",
        hostname="Phone",
    )
    assert ident.mac == "00:1A:E8:12:34:56"
    assert ident.ips == (ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("2001:db8::5"))
    assert ident.dns_names == ("phone.example.net",)
    assert ident.e164 == "+49301"
    assert ident.hostname == "phone"
    with pytest.raises(AttributeError):
        ident.mac = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("mac", "zz"), ("ips", ["1.2.3"]), ("dns_names", ["-x"]), ("e164", "abc"), ("hostname", "a_b")],
)
def test_device_identity_create_rejects_each_invalid_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"mac": "001ae8123456", "ips": ["10.0.0.5"], field: value}
    with pytest.raises(InputError):
        DeviceIdentity.create(**kwargs)  # type: ignore[arg-type]


_ODD_ADDRESSES = ["010.0.0.1", "1.2.3", "1.2.3.04", "256.1.1.1", " 1.2.3.4", "1.2.3.4 ", "", "abc", "1.2.3.4\x00",
                  "::1", "::ffff:1.2.3.4", "0.0.0.0", "255.255.255.255", "1.2.3.4/32", "0x1.2.3.4"]  # fmt: skip


def _outcome(parse: Callable[[str], object], value: str) -> object:
    try:
        return parse(value)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("value", _ODD_ADDRESSES)
def test_fast_ip_address_agrees_with_ipaddress_on_odd_input(value: str) -> None:
    expected, got = _outcome(ipaddress.ip_address, value), _outcome(ip_address, value)
    assert got == expected
    assert type(got) is type(expected)


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:x ", max_size=20)))
def test_fast_ip_address_agrees_with_ipaddress(value: str) -> None:
    assert _outcome(ip_address, value) == _outcome(ipaddress.ip_address, value)
