"""Name templates of policies (``"{mac_hex}.phones.example.net"``) and rendering a phone's certificate names.

Templates use a deliberately small language: literal text and ``{variable}`` fields naming one of
:data:`TEMPLATE_VARIABLES`. Attribute or index access (``{mac.upper}``, ``{ip[0]}``), positional fields
(``{}``, ``{0}``), conversions (``{mac!r}``) and format specs (``{mac:>20}``) are refused when the policy is
loaded, so rendering can never reach into Python objects. ``{{`` and ``}}`` write literal braces.

A template renders to ``None`` ("nothing") when it refers to a variable the phone does not have (no E.164
number, no host name …). What happens then depends on where the template is used; see
:func:`render_leaf_names`. Pure, no I/O.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from certmgr.errors import InputError
from certmgr.identity import DeviceIdentity, IPAddress, mac_token, validate_dns_name

if TYPE_CHECKING:
    from certmgr.policy.model import Policy

#: Variables a template may use, with what they hold.
TEMPLATE_VARIABLES: Mapping[str, str] = {
    "mac": "MAC address, upper-case with colons: 00:1A:E8:12:34:56",
    "mac_hex": "MAC address, 12 lower-case hex digits: 001ae8123456",
    "mac_dashed": "MAC address, upper-case with dashes: 00-1A-E8-12-34-56",
    "e164": "the phone's E.164 number, if known",
    "hostname": "the phone's host name, if known",
    "ip": "the phone's first IP address, if known",
    "model": "the device type, e.g. 'OpenStage 60', if known",
    "firmware": "the firmware version, if known",
}

_FORMATTER = string.Formatter()
_DNS_LITERAL = re.compile(r"^[A-Za-z0-9.-]*$")

# Policy key and RFC 5280 upper bound (ub-*) of each subject attribute a policy can template.
_ATTRIBUTE_LIMITS: Mapping[x509.ObjectIdentifier, tuple[str, int]] = {
    NameOID.COMMON_NAME: ("subject.common_name", 64),
    NameOID.ORGANIZATION_NAME: ("subject.organization", 64),
    NameOID.ORGANIZATIONAL_UNIT_NAME: ("subject.organizational_unit", 64),
    NameOID.LOCALITY_NAME: ("subject.locality", 128),
    NameOID.STATE_OR_PROVINCE_NAME: ("subject.state", 128),
}


def _parse(template: str) -> list[tuple[str, str | None]]:
    """Split ``template`` into (literal, variable) pairs after checking it uses only plain known variables."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}; write '{{{{' and '}}}}' for braces") from None
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None:
            if not field.isidentifier():
                raise ValueError(
                    f"invalid template {template!r}: {{{field}}} is not a plain variable; only {{name}} "
                    "fields are allowed (no positional fields, attribute or index access)"
                )
            if spec or conversion:
                raise ValueError(
                    f"invalid template {template!r}: {{{field}}} has a format spec or conversion; only plain "
                    "{name} fields are allowed"
                )
            if field not in TEMPLATE_VARIABLES:
                raise ValueError(
                    f"unknown template variable {{{field}}} in {template!r}; known: " + ", ".join(TEMPLATE_VARIABLES)
                )
        parts.append((literal, field))
    return parts


def check_template(template: str) -> str:
    """Return ``template`` unchanged if it is a valid, non-empty template.

    Raises:
        ValueError: if it is empty, malformed, or uses anything but plain ``{name}`` fields of known
            variables.
    """
    if not template.strip():
        raise ValueError("must not be empty")
    _parse(template)
    return template


def check_dns_template(template: str) -> str:
    """Like :func:`check_template`, and the literal text may only hold host-name characters (letters, digits,
    ``.`` and ``-``), so typos such as ``"phone_{mac_hex}"`` are caught when the policy is loaded.

    Raises:
        ValueError: as :func:`check_template`, or for a character that can never be part of a host name.
    """
    check_template(template)
    for literal, _ in _parse(template):
        if not _DNS_LITERAL.match(literal):
            raise ValueError(
                f"DNS template {template!r} contains {literal!r}: only letters, digits, '.' and '-' are "
                "allowed outside {variables}"
            )
    return template


def template_variables(identity: DeviceIdentity) -> dict[str, str | None]:
    """The values of :data:`TEMPLATE_VARIABLES` for ``identity``; ``None`` where the phone has no value."""
    return {
        "mac": identity.mac,
        "mac_hex": mac_token(identity.mac),
        "mac_dashed": identity.mac.replace(":", "-"),
        "e164": identity.e164,
        "hostname": identity.hostname,
        "ip": str(identity.ips[0]) if identity.ips else None,
        "model": identity.model,
        "firmware": identity.firmware,
    }


def render_template(template: str, variables: Mapping[str, str | None]) -> str | None:
    """Render ``template``; ``None`` if it uses a variable whose value is ``None`` or absent.

    Raises:
        ValueError: if the template itself is invalid (see :func:`check_template`).
    """
    out: list[str] = []
    for literal, field in _parse(template):
        out.append(literal)
        if field is not None:
            value = variables.get(field)
            if value is None:
                return None
            out.append(value)
    return "".join(out)


@dataclass(frozen=True)
class RenderedNames:
    """The names a phone's leaf certificate carries, rendered from its policy."""

    subject: x509.Name
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]


def render_leaf_names(policy: Policy, identity: DeviceIdentity) -> RenderedNames:
    """Render the subject and the subject alternative names of ``identity``'s certificate under ``policy``.

    * Subject: attributes in the order C, ST, L, O, OU, CN. An optional attribute whose template renders to
      nothing (missing variable) or to blank text is left out. A common name that renders to nothing or blank
      falls back to the phone's first IP address, or to its MAC if it has none.
    * DNS names: every ``san.dns`` template, in order, lower-cased, duplicates dropped; a template that
      renders to nothing for this phone (missing variable) is skipped; then the identity's explicit
      ``dns_names``.
    * IP addresses: all the phone's addresses if ``san.ip`` is true.

    Raises:
        InputError: if a rendered DNS name is not a valid host name, a rendered attribute is longer than
            RFC 5280 allows, or the certificate would carry no subject alternative name at all.
    """
    variables = template_variables(identity)
    subject = policy.subject
    attributes: list[x509.NameAttribute[str]] = []
    if subject.country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, subject.country))
    optional = (
        (NameOID.STATE_OR_PROVINCE_NAME, subject.state),
        (NameOID.LOCALITY_NAME, subject.locality),
        (NameOID.ORGANIZATION_NAME, subject.organization),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, subject.organizational_unit),
    )
    for oid, template in optional:
        value = (render_template(template, variables) or "").strip() if template else ""
        if value:
            attributes.append(_attribute(oid, value))
    common_name = (render_template(subject.common_name, variables) or "").strip()
    attributes.append(_attribute(NameOID.COMMON_NAME, common_name or variables["ip"] or identity.mac))

    dns_names: list[str] = []
    for template in policy.san.dns:
        rendered = render_template(template, variables)
        if rendered is None:
            continue
        try:
            name = validate_dns_name(rendered)
        except InputError:
            raise InputError(
                f"DNS template {template!r} renders to {rendered!r} for {identity.mac}, which is not a valid "
                f"host name (policy {policy.name!r})",
                mac=identity.mac,
                policy=policy.name,
            ) from None
        if name not in dns_names:
            dns_names.append(name)
    # Names given explicitly for this phone (``certmgr issue --dns``, pre-registration) are always included:
    # an operator who names a host expects it in the certificate.
    for name in identity.dns_names:
        if name not in dns_names:
            dns_names.append(name)
    ips = identity.ips if policy.san.ip else ()
    if not dns_names and not ips:
        raise InputError(
            f"no subject alternative name for {identity.mac} under policy {policy.name!r}: the phone has no "
            "IP address for san.ip and no san.dns template could be rendered",
            mac=identity.mac,
            policy=policy.name,
        )
    return RenderedNames(subject=x509.Name(attributes), dns_names=tuple(dns_names), ip_addresses=ips)


def render_friendly_name(policy: Policy, identity: DeviceIdentity) -> bytes:
    """The PKCS#12 friendly name (UTF-8) from ``pkcs12.friendly_name``; the MAC if it renders to nothing."""
    rendered = render_template(policy.pkcs12.friendly_name, template_variables(identity))
    return (rendered.strip() if rendered and rendered.strip() else identity.mac).encode("utf-8")


def _attribute(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    key, limit = _ATTRIBUTE_LIMITS[oid]
    if len(value) > limit:
        raise InputError(f"{key} renders to {len(value)} characters, more than the {limit} RFC 5280 allows: {value!r}")
    return x509.NameAttribute(oid, value)
