"""Templates: the restricted language, rendering certificate names and missing variables."""

from __future__ import annotations

import ipaddress
import tomllib

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certmgr.errors import InputError
from certmgr.identity import DeviceIdentity
from certmgr.policy import Policy, parse_policy, render_friendly_name, render_leaf_names, template_variables
from certmgr.policy.templates import check_dns_template, check_template, render_template

FULL = DeviceIdentity.create(
    mac="00-1a-e8-12-34-56",
    ips=["10.1.2.3", "2001:db8::7"],
    e164="+4989123456",
    model="OpenStage 60",
    firmware="V3 R5.13.0",
    hostname="Phone-12.example.net",
)
BARE = DeviceIdentity.create(mac="00:1A:E8:AB:CD:EF")


def policy(body: str) -> Policy:
    return parse_policy(tomllib.loads('name = "t"\n' + body), "t.toml")


# --- the template language ----------------------------------------------------------------------------------
def test_variables_of_a_full_identity() -> None:
    assert template_variables(FULL) == {
        "mac": "00:1A:E8:12:34:56",
        "mac_hex": "001ae8123456",
        "mac_dashed": "00-1A-E8-12-34-56",
        "e164": "+4989123456",
        "hostname": "phone-12.example.net",
        "ip": "10.1.2.3",
        "model": "OpenStage 60",
        "firmware": "V3 R5.13.0",
    }


def test_variables_missing_on_a_bare_identity_are_none() -> None:
    variables = template_variables(BARE)
    assert [k for k, v in variables.items() if v is None] == ["e164", "hostname", "ip", "model", "firmware"]


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{mac.real}", "not a plain variable"),
        ("{ip[0]}", "not a plain variable"),
        ("{}", "not a plain variable"),
        ("{0}", "not a plain variable"),
        ("{mac!r}", "format spec or conversion"),
        ("{mac:>20}", "format spec or conversion"),
        ("{mac:{ip}}", "format spec or conversion"),
        ("{serial}", "unknown template variable {serial}"),
        ("{__class__}", "unknown template variable"),
        ("{mac", "invalid template"),
        ("mac}", "invalid template"),
        ("   ", "must not be empty"),
    ],
)
def test_check_template_refuses(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace("[", r"\[")):
        check_template(template)


def test_render_literal_braces_and_missing_variable() -> None:
    assert render_template("{{x}} {mac_hex}", template_variables(FULL)) == "{x} 001ae8123456"
    assert render_template("tel-{e164}", template_variables(BARE)) is None
    assert render_template("static", {}) == "static"


def test_dns_template_literal_characters() -> None:
    assert check_dns_template("{mac_hex}.phones.example-net.de") == "{mac_hex}.phones.example-net.de"
    with pytest.raises(ValueError, match=r"contains ' \.example\.net': only letters"):
        check_dns_template("{mac_hex} .example.net")


# --- render_leaf_names --------------------------------------------------------------------------------------
FULL_POLICY = """
[subject]
common_name = "{hostname}"
organization = "Example {model}"
organizational_unit = "Phones"
country = "de"
locality = "Munich"
state = "Bavaria"
[san]
dns = [
    "{mac_hex}.phones.example.net",
    "{hostname}",
    "{mac_dashed}.example.net",
    "{mac_hex}.PHONES.example.net",  # same name again after lower-casing: dropped
]
"""


def test_full_render() -> None:
    names = render_leaf_names(policy(FULL_POLICY), FULL)
    assert names.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Bavaria"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Munich"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example OpenStage 60"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Phones"),
            x509.NameAttribute(NameOID.COMMON_NAME, "phone-12.example.net"),
        ]
    )
    assert names.dns_names == (
        "001ae8123456.phones.example.net",
        "phone-12.example.net",
        "00-1a-e8-12-34-56.example.net",
    )
    assert names.ip_addresses == (ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("2001:db8::7"))


def test_invalid_rendered_dns_name_raises_input_error() -> None:
    # "+49…" is the phone's E.164 number; "+" cannot appear in a host name.
    with pytest.raises(InputError, match=r"renders to 'tel\+4989123456\.example\.net' for 00:1A:E8:12:34:56"):
        render_leaf_names(policy('[subject]\ncommon_name = "{ip}"\n[san]\ndns = ["tel{e164}.example.net"]\n'), FULL)


def test_dns_name_from_a_too_long_label_raises_input_error() -> None:
    long_model = DeviceIdentity.create(mac="00:1A:E8:00:00:01", ips=["10.0.0.1"], model="x" * 70)
    with pytest.raises(InputError, match="not a valid host name"):
        render_leaf_names(policy('[subject]\ncommon_name = "{ip}"\n[san]\ndns = ["{model}.example.net"]\n'), long_model)


def test_missing_variables_skip_dns_and_optional_attributes_and_cn_falls_back_to_ip() -> None:
    phone = DeviceIdentity.create(mac="00:1A:E8:00:00:01", ips=["10.0.0.9"])  # no hostname, model, e164
    names = render_leaf_names(policy(FULL_POLICY), phone)
    assert names.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "10.0.0.9"
    assert names.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []  # "Example {model}"
    assert names.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "Phones"
    assert names.dns_names == ("001ae8000001.phones.example.net", "00-1a-e8-00-00-01.example.net")
    assert names.ip_addresses == (ipaddress.ip_address("10.0.0.9"),)


def test_cn_falls_back_to_mac_without_ip() -> None:
    names = render_leaf_names(policy('[subject]\ncommon_name = "{ip}"\n[san]\ndns = ["{mac_hex}.example.net"]\n'), BARE)
    assert names.subject.rfc4514_string() == "CN=00:1A:E8:AB:CD:EF"
    assert names.ip_addresses == ()


def test_san_ip_false_leaves_out_addresses() -> None:
    names = render_leaf_names(
        policy('[subject]\ncommon_name = "x"\n[san]\nip = false\ndns = ["{mac_hex}.example.net"]\n'), FULL
    )
    assert names.ip_addresses == ()
    assert names.dns_names == ("001ae8123456.example.net",)


def test_no_san_at_all_raises_input_error() -> None:
    with pytest.raises(InputError, match="no subject alternative name for 00:1A:E8:AB:CD:EF"):
        render_leaf_names(policy('[subject]\ncommon_name = "{ip}"\n[san]\ndns = ["{hostname}"]\n'), BARE)


def test_too_long_common_name_raises_input_error() -> None:
    phone = DeviceIdentity.create(mac="00:1A:E8:00:00:01", ips=["10.0.0.1"], model="M" * 56)
    with pytest.raises(InputError, match=r"subject.common_name renders to 65 characters, more than the 64"):
        render_leaf_names(policy('[subject]\ncommon_name = "{model}-{ip}"\n'), phone)


def test_friendly_name() -> None:
    assert render_friendly_name(policy('[subject]\ncommon_name = "{ip}"\n'), FULL) == b"WBM 00:1A:E8:12:34:56"
    custom = policy('[subject]\ncommon_name = "{ip}"\n[pkcs12]\nfriendly_name = "{model} \u00e9 {mac_hex}"\n')
    assert render_friendly_name(custom, FULL) == "OpenStage 60 \u00e9 001ae8123456".encode()
    assert render_friendly_name(custom, BARE) == b"00:1A:E8:AB:CD:EF"  # no model: falls back to the MAC


def test_dns_template_for_a_phone_without_e164_is_skipped() -> None:
    templates = policy('[subject]\ncommon_name = "{ip}"\n[san]\ndns = ["tel{e164}.example.net", "{mac_hex}.x.net"]\n')
    phone = DeviceIdentity.create(mac="00:1A:E8:00:00:01", ips=["10.0.0.9"], e164="4989123")
    assert render_leaf_names(templates, phone).dns_names == ("tel4989123.example.net", "001ae8000001.x.net")
    assert render_leaf_names(templates, BARE).dns_names == ("001ae8abcdef.x.net",)


def test_explicit_identity_dns_names_are_added_after_templates() -> None:
    from certmgr.identity import DeviceIdentity
    from certmgr.policy import load_policies
    from tests.conftest import REPO

    policy = load_policies(REPO / "policies").get("default")
    identity = DeviceIdentity.create(mac="00:1A:E8:00:00:01", ips=["10.0.0.1"], dns_names=["Phone1.Example.NET"])
    names = render_leaf_names(policy, identity)
    assert "phone1.example.net" in names.dns_names
