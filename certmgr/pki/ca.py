"""The two-level CA: declarative definitions (``ca/ca.toml``) and the pure builders of the CA certificates.

The definition file says *what* the CA looks like (names, key types, lifetimes); the key material generated
from it lives in the data directory (see :mod:`certmgr.pki.store`) and never in git.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certmgr.clock import ensure_utc
from certmgr.errors import CAError
from certmgr.pki.keys import PrivateKey, PublicKey, generate_private_key
from certmgr.pki.types import KeyType

CLOCK_SKEW_BACKDATE = timedelta(minutes=5)
"""How far ``notBefore`` is set into the past, so that devices whose clock runs slightly behind accept a new
certificate at once. Never earlier than the issuer's own ``notBefore``."""

_DURATION = re.compile(r"^\s*(?P<amount>[0-9]+)\s*(?P<unit>[dh])\s*$")
_SECTIONS = ("root", "issuing")
_REQUIRED_KEYS = ("common_name", "key", "validity")
_ALLOWED_KEYS = frozenset(
    {"common_name", "organization", "organizational_unit", "country", "key", "validity", "path_length"}
)


@dataclass(frozen=True)
class CADefinition:
    """One CA level (root or issuing) as declared in ``ca.toml``.

    ``path_length`` is the BasicConstraints pathLenConstraint; ``None`` means unlimited.
    """

    common_name: str
    organization: str | None
    organizational_unit: str | None
    country: str | None
    key_type: KeyType
    validity: timedelta
    path_length: int | None

    def subject(self) -> x509.Name:
        """The subject distinguished name, most significant attribute first (C, O, OU, CN)."""
        attributes: list[x509.NameAttribute[str]] = []
        if self.country:
            attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, self.country))
        if self.organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization))
        if self.organizational_unit:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.organizational_unit))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, self.common_name))
        return x509.Name(attributes)


@dataclass(frozen=True)
class CAHierarchyDefinition:
    """The whole CA: a root and the issuing CA directly below it. ``source`` names the file it came from."""

    root: CADefinition
    issuing: CADefinition
    source: str = "<memory>"


@dataclass(frozen=True)
class Issuer:
    """What is needed to sign leaf certificates.

    ``chain`` is the issuing certificate first, then any intermediates, without the root; ``root`` is the root
    certificate when it is known.
    """

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate | None


def parse_duration(value: str) -> timedelta:
    """Parse ``"7300d"`` (days) or ``"36h"`` (hours) into a positive :class:`timedelta`.

    Raises:
        ValueError: if ``value`` is not a positive whole number followed by ``d`` or ``h``.
    """
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"expected a duration such as '7300d' or '36h', got {value!r}")
    amount = int(match.group("amount"))
    if amount <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return timedelta(days=amount) if match.group("unit") == "d" else timedelta(hours=amount)


def load_ca_definition(path: Path) -> CAHierarchyDefinition:
    """Read and validate a CA definition file (``[root]`` and ``[issuing]`` sections).

    Raises:
        CAError: if the file cannot be read or parsed, or a key is missing, unknown or invalid; the message
            and the fields ``file``, ``key`` and ``reason`` say which and why.
    """
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _definition_error(file, "", f"cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _definition_error(file, "", f"not valid TOML: {exc}") from exc
    return parse_ca_definition(raw, source=file)


def parse_ca_definition(raw: dict[str, Any], source: str = "<memory>") -> CAHierarchyDefinition:
    """Validate an already parsed TOML document into a :class:`CAHierarchyDefinition`.

    Raises:
        CAError: naming ``source``, the offending key and the reason.
    """
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise _definition_error(source, unknown[0], "unknown section (expected [root] and [issuing])")
    root = _parse_level(raw, "root", source)
    issuing = _parse_level(raw, "issuing", source)
    if root.path_length is not None and issuing.path_length is not None and root.path_length <= issuing.path_length:
        raise _definition_error(
            source,
            "root.path_length",
            "must be greater than issuing.path_length (the issuing CA is below it)",
        )
    if root.path_length == 0:
        raise _definition_error(source, "root.path_length", "must be at least 1: the issuing CA is below the root")
    return CAHierarchyDefinition(root=root, issuing=issuing, source=source)


def build_root(defn: CAHierarchyDefinition, now: datetime) -> tuple[PrivateKey, x509.Certificate]:
    """Generate the root key and its self-signed certificate, valid from ``now`` (minus the skew backdate).

    Raises:
        ValueError: if ``now`` is a naive datetime.
    """
    now = ensure_utc(now).replace(microsecond=0)
    level = defn.root
    key = generate_private_key(level.key_type)
    subject = level.subject()
    not_before = now - CLOCK_SKEW_BACKDATE
    builder = _ca_builder(
        subject=subject,
        issuer=subject,
        public_key=key.public_key(),
        not_before=not_before,
        not_after=now + level.validity,
        path_length=level.path_length,
        aki=x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
    )
    return key, builder.sign(key, hashes.SHA256())


def build_issuing(
    defn: CAHierarchyDefinition, root_key: PrivateKey, root_cert: x509.Certificate, now: datetime
) -> tuple[PrivateKey, x509.Certificate]:
    """Generate the issuing CA key and its certificate signed by the root.

    The validity starts at ``now`` minus the skew backdate (not before the root's) and is clipped so that it
    never ends after the root's.

    Raises:
        CAError: if the root is not valid at ``now``.
        ValueError: if ``now`` is a naive datetime.
    """
    now = ensure_utc(now).replace(microsecond=0)
    if not root_cert.not_valid_before_utc <= now < root_cert.not_valid_after_utc:
        raise CAError("the root CA certificate is not valid now; cannot sign an issuing CA with it")
    level = defn.issuing
    key = generate_private_key(level.key_type)
    builder = _ca_builder(
        subject=level.subject(),
        issuer=root_cert.subject,
        public_key=key.public_key(),
        not_before=max(now - CLOCK_SKEW_BACKDATE, root_cert.not_valid_before_utc),
        not_after=min(now + level.validity, root_cert.not_valid_after_utc),
        path_length=level.path_length,
        aki=authority_key_identifier_for(root_cert),
    )
    return key, builder.sign(root_key, hashes.SHA256())


def authority_key_identifier_for(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AuthorityKeyIdentifier for certificates signed by ``issuer_cert``.

    It repeats the issuer's SKI, or is derived from the issuer's key when the issuer has no SKI extension.

    Raises:
        CAError: if the issuer's key is neither RSA nor EC.
    """
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer_cert.public_key()
        if not isinstance(public_key, PublicKey):
            raise CAError(f"unsupported issuer key algorithm {type(public_key).__name__}") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
    aki: x509.AuthorityKeyIdentifier,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )


def _parse_level(raw: dict[str, Any], section: str, source: str) -> CADefinition:
    table = raw.get(section)
    if not isinstance(table, dict):
        raise _definition_error(source, section, "missing section" if table is None else "must be a table")
    unknown = sorted(set(table) - _ALLOWED_KEYS)
    if unknown:
        raise _definition_error(source, f"{section}.{unknown[0]}", "unknown key")
    for name in _REQUIRED_KEYS:
        if name not in table:
            raise _definition_error(source, f"{section}.{name}", "missing")

    def text(name: str) -> str:
        value = table[name]
        if not isinstance(value, str) or not value.strip():
            raise _definition_error(source, f"{section}.{name}", "must be a non-empty string")
        if len(value.strip()) > 64:
            raise _definition_error(source, f"{section}.{name}", "must be at most 64 characters (RFC 5280)")
        return value.strip()

    def optional_text(name: str) -> str | None:
        return text(name) if name in table else None

    country = optional_text("country")
    if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
        raise _definition_error(source, f"{section}.country", "must be a two-letter upper-case ISO 3166 code")

    key_value = table["key"]
    if not isinstance(key_value, str) or key_value not in {k.value for k in KeyType}:
        allowed = ", ".join(k.value for k in KeyType)
        raise _definition_error(source, f"{section}.key", f"must be one of {allowed}")
    key_type = KeyType(key_value)

    validity_value = table["validity"]
    if not isinstance(validity_value, str):
        raise _definition_error(source, f"{section}.validity", "must be a string such as '7300d'")
    try:
        validity = parse_duration(validity_value)
    except ValueError as exc:
        raise _definition_error(source, f"{section}.validity", str(exc)) from None

    path_length = table.get("path_length")
    if path_length is not None and (
        isinstance(path_length, bool) or not isinstance(path_length, int) or path_length < 0
    ):
        raise _definition_error(source, f"{section}.path_length", "must be a whole number >= 0")

    return CADefinition(
        common_name=text("common_name"),
        organization=optional_text("organization"),
        organizational_unit=optional_text("organizational_unit"),
        country=country,
        key_type=key_type,
        validity=validity,
        path_length=path_length,
    )


def _definition_error(file: str, key: str, reason: str) -> CAError:
    where = f"{file}: {key}" if key else file
    return CAError(f"{where}: {reason}", file=file, key=key, reason=reason)
