"""contact-me form and contact-me-uri."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmgr.errors import ProtocolError
from certmgr.wpi.contactme import (
    ContactMeRequest,
    ContactMeTarget,
    build_contact_me,
    parse_contact_me,
    parse_contact_me_uri,
)


def test_build_contact_me_d4() -> None:
    assert build_contact_me("10.0.0.5", 18443) == b"ContactMe=true&dls_ip_addr=10.0.0.5&dls_ip_port=18443"


def test_build_contact_me_ipv6_is_form_encoded() -> None:
    body = build_contact_me(ipaddress.ip_address("2001:db8::1"), 18443)
    assert body == b"ContactMe=true&dls_ip_addr=2001%3Adb8%3A%3A1&dls_ip_port=18443"
    assert parse_contact_me(body).dls_ip_addr == ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(("addr", "port"), [("dls.example", 18443), ("10.0.0.5", 0), ("10.0.0.5", 70000)])
def test_build_contact_me_rejects_bad_target(addr: str, port: int) -> None:
    with pytest.raises(ProtocolError):
        build_contact_me(addr, port)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"ContactMe=true", ContactMeRequest(True)),
        (
            b"ContactMe=true&dls_ip_addr=10.0.0.5&dls_ip_port=18443",
            ContactMeRequest(True, ipaddress.ip_address("10.0.0.5"), 18443),
        ),
        (
            b"dls_ip_port=18443&ContactMe=TRUE&dls_ip_addr=10.0.0.5",
            ContactMeRequest(True, ipaddress.ip_address("10.0.0.5"), 18443),
        ),
        ("?ContactMe=false", ContactMeRequest(False)),
        (b"ContactMe=true&unknown=1", ContactMeRequest(True)),
    ],
)
def test_parse_contact_me(body: bytes | str, expected: ContactMeRequest) -> None:
    assert parse_contact_me(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"dls_ip_addr=10.0.0.5",
        b"ContactMe=true&ContactMe=true",
        b"ContactMe=true&dls_ip_addr=host.example",
        b"ContactMe=true&dls_ip_port=eighty",
        b"ContactMe=true&dls_ip_port=0",
        b"ContactMe=true&" + b"a=b&" * 20,
        b"ContactMe=\xff",
        b"x" * 5000,
    ],
)
def test_parse_contact_me_rejects(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_contact_me(body)


@given(
    st.ip_addresses(),
    st.integers(1, 65535),
)
def test_contact_me_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    assert parse_contact_me(build_contact_me(addr, port)) == ContactMeRequest(True, addr, port)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "http://192.168.1.4:8085/contact_dls.html/ContactDLS",
            ContactMeTarget("http", "192.168.1.4", 8085, "/contact_dls.html/ContactDLS"),
        ),
        (
            " http://[2001:db8::7]:8085/contact_dls.html/ContactDLS ",
            ContactMeTarget("http", "2001:db8::7", 8085, "/contact_dls.html/ContactDLS"),
        ),
        (
            "HTTP://Phone-1.Example:8085",
            ContactMeTarget("http", "phone-1.example", 8085, "/contact_dls.html/ContactDLS"),
        ),
        (
            "https://10.0.0.9/contact_dls.html/ContactDLS",
            ContactMeTarget("https", "10.0.0.9", 443, "/contact_dls.html/ContactDLS"),
        ),
        ("http://10.0.0.9/x", ContactMeTarget("http", "10.0.0.9", 80, "/x")),
    ],
)
def test_parse_contact_me_uri(uri: str, expected: ContactMeTarget) -> None:
    assert parse_contact_me_uri(uri) == expected


def test_target_helpers() -> None:
    t = parse_contact_me_uri("http://[2001:db8::7]:8085/contact_dls.html/ContactDLS")
    assert t.ip == ipaddress.ip_address("2001:db8::7")
    assert t.url == "http://[2001:db8::7]:8085/contact_dls.html/ContactDLS"
    assert parse_contact_me_uri("http://phone.example:8085/").ip is None
    assert parse_contact_me_uri("http://10.1.2.3:8085/p").url == "http://10.1.2.3:8085/p"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "ftp://10.0.0.1/x",
        "file:///etc/passwd",
        "http://user:pw@10.0.0.1:8085/x",
        "http://10.0.0.1:8085/x?y=1",
        "http://10.0.0.1:8085/x#frag",
        "http://10.0.0.1:99999/x",
        "http://10.0.0.1:0/x",
        "http://10.0.0.1:port/x",
        "http:///x",
        "http://bad_host!:8085/x",
        "http://[zz::1]:8085/x",
        "http://10.0.0.1:8085/a b",
        "http://10.0.0.1:8085/\x00",
        "http://10.0.0.1:8085/" + "a" * 300,
        "//10.0.0.1:8085/x",
    ],
)
def test_parse_contact_me_uri_rejects(uri: str) -> None:
    with pytest.raises(ProtocolError):
        parse_contact_me_uri(uri)
