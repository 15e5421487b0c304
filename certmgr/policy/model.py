"""Policy models: the TOML schema of one policy file and the parsed, typed :class:`Policy`. Pure, no I/O.

Two layers:

* :class:`PolicyDocument` mirrors the TOML file exactly (sections ``[match]``, ``[key]`` …), so a validation
  error's location *is* the dotted TOML key. Values are parsed while validating: durations become
  :class:`~datetime.timedelta`, networks :mod:`ipaddress` objects, windows' days a set of weekday numbers.
  Unknown keys are errors (``extra="forbid"``), and booleans and numbers are not coerced from strings.
* :class:`Policy` is what the rest of certmgr uses: flat typed fields (``policy.key_type``,
  ``policy.validity``, ``policy.windows`` …), the file name it came from and a content digest.

:func:`parse_policy` turns the ``dict`` from a TOML file into a :class:`Policy` and reports *every* problem of
that file as a :class:`~certmgr.errors.PolicyError` with file, dotted key and a one-line reason. The file
schema is documented key by key in ``policies/README.md``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from certmgr.errors import InputError, PolicyError, PolicySetError
from certmgr.identity import DeviceIdentity
from certmgr.pki.types import KeyType, Pkcs12Profile
from certmgr.policy.duration import format_duration, parse_duration
from certmgr.policy.templates import check_dns_template, check_template
from certmgr.policy.windows import ALL_DAYS, MaintenanceWindow, load_timezone, parse_days, parse_hours

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Enrollment = Literal["auto", "approve"]

#: The shipped catch-all policy's file name; it is always selected last.
DEFAULT_POLICY_FILE = "default.toml"
#: Used when ``[renewal]`` sets neither ``renew_before`` nor ``renew_at_fraction``.
DEFAULT_RENEW_AT_FRACTION = 2 / 3

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ITEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_HEX = re.compile(r"^[0-9A-F]+$")


# --- field types --------------------------------------------------------------------------------------------
def _duration(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        return value
    raise ValueError(f"must be a duration string such as '397d' or '12h', not {value!r}")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _optional_duration_json(value: timedelta | None) -> str | None:
    return None if value is None else format_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
OptionalPositiveDuration = Annotated[
    timedelta | None,
    BeforeValidator(_duration),
    AfterValidator(lambda v: None if v is None else _positive(v)),
    PlainSerializer(_optional_duration_json, return_type=str | None),
]


def _fraction(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number between 0 and 1 (exclusive) such as 0.667, not {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"must be greater than 0 and less than 1, not {value!r}")
    return float(value)


def _policy_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"invalid policy name {value!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _device_glob(value: object) -> object:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("a device type pattern must not be empty")
        return value.strip().lower()
    return value


def _mac_prefix(value: object) -> object:
    """``"00:1A:E8"``, ``"00-1a-e8"`` or ``"001AE8"`` → ``"00:1A:E8"`` (whole octets, 1 to 6 of them)."""
    if not isinstance(value, str):
        return value
    text = value.strip().upper()
    groups = re.split(r"[:-]", text) if re.search(r"[:-]", text) else re.findall(r"..?", text)
    if not (1 <= len(groups) <= 6 and all(len(g) == 2 and _HEX.match(g) for g in groups)):
        raise ValueError(f"invalid MAC prefix {value!r}: expected 1-6 whole octets such as '00:1A:E8'")
    return ":".join(groups)


def _network(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"must be a network string such as '10.1.0.0/16', not {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid network {value!r}: {exc}") from None


def _secret_name(value: str) -> str:
    if not _SECRET_NAME.match(value):
        raise ValueError(
            f"invalid secret name {value!r}: the name of a secret in settings (pkcs12_passwords), "
            "1-64 letters, digits, '.', '_' or '-' — never the password itself"
        )
    return value


def _item_name(value: str) -> str:
    if not _ITEM_NAME.match(value):
        raise ValueError(f"invalid WPI item name {value!r}: letters, digits, '.', '_' or '-'")
    return value


def _country(value: str) -> str:
    if not _COUNTRY.match(value.upper()):
        raise ValueError(f"invalid country {value!r}: expected a two-letter ISO 3166 code such as 'DE'")
    return value.upper()


def _days(value: object) -> object:
    if isinstance(value, str):
        return parse_days(value)
    if isinstance(value, frozenset):
        return value
    raise ValueError(f"must be a day string such as 'mon-fri' or '*', not {value!r}")


def _hours(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(f"must be an hour range string such as '22-05' or '*', not {value!r}")
    return parse_hours(value)


def _timezone(value: str) -> str:
    load_timezone(value)
    return value


Template = Annotated[str, AfterValidator(check_template)]
DnsTemplate = Annotated[str, AfterValidator(check_dns_template)]
PolicyName = Annotated[str, AfterValidator(_policy_name)]
DeviceGlob = Annotated[str, BeforeValidator(_device_glob)]
MacPrefix = Annotated[str, BeforeValidator(_mac_prefix)]
Network = Annotated[IPNetwork, BeforeValidator(_network), PlainSerializer(str, return_type=str)]
Days = Annotated[frozenset[int], BeforeValidator(_days), PlainSerializer(lambda d: sorted(d), return_type=list[int])]
Hours = Annotated[tuple[int, int], BeforeValidator(_hours)]


# --- the file schema ----------------------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MatchSection(_Section):
    """``[match]``: which phones the policy is for. Lists are OR'ed, given criteria AND'ed; empty = all."""

    device_types: tuple[DeviceGlob, ...] = ()
    mac_prefixes: tuple[MacPrefix, ...] = ()
    networks: tuple[Network, ...] = ()

    @field_validator("device_types", "mac_prefixes", "networks")
    @classmethod
    def _not_empty(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if not value:
            raise ValueError("must not be an empty list; leave the key out to match any phone on this criterion")
        return value

    @property
    def is_catch_all(self) -> bool:
        """True if no criterion is given, so every phone matches."""
        return not (self.device_types or self.mac_prefixes or self.networks)

    def matches(self, identity: DeviceIdentity) -> bool:
        """True if ``identity`` meets every given criterion.

        A ``device_types`` criterion never matches a phone whose model is unknown, a ``networks`` criterion
        never one without an IP address.
        """
        if self.device_types:
            model = (identity.model or "").lower()
            if not identity.model or not any(fnmatchcase(model, glob) for glob in self.device_types):
                return False
        if self.mac_prefixes and not any(identity.mac.startswith(prefix) for prefix in self.mac_prefixes):
            return False
        return not self.networks or any(
            ip.version == net.version and ip in net for ip in identity.ips for net in self.networks
        )


class KeySection(_Section):
    """``[key]``: the phone's key pair."""

    type: KeyType = KeyType.RSA_2048


class ValiditySection(_Section):
    """``[validity]``: how long a certificate is valid."""

    duration: PositiveDuration = timedelta(days=397)
    clip_to_ca: StrictBool = False


class RenewalSection(_Section):
    """``[renewal]``: when a certificate is renewed. Exactly one of ``renew_before`` and ``renew_at_fraction``
    is set after validation (the fraction 2/3 if the file sets neither)."""

    renew_before: OptionalPositiveDuration = None
    renew_at_fraction: Annotated[float | None, BeforeValidator(_fraction)] = None
    jitter: Duration = timedelta(0)

    @model_validator(mode="before")
    @classmethod
    def _default_fraction(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "renew_before" not in data and "renew_at_fraction" not in data:
            return {**data, "renew_at_fraction": DEFAULT_RENEW_AT_FRACTION}
        return data

    @model_validator(mode="after")
    def _one_rule(self) -> RenewalSection:
        if self.renew_before is not None and self.renew_at_fraction is not None:
            raise ValueError("renew_before and renew_at_fraction contradict each other; set only one")
        return self

    def renewal_window(self, validity: timedelta) -> timedelta:
        """Time between the planned renewal and expiry for a certificate valid for ``validity``."""
        if self.renew_before is not None:
            return self.renew_before
        return validity - validity * (self.renew_at_fraction or DEFAULT_RENEW_AT_FRACTION)

    def renew_at(self, not_before: datetime, not_after: datetime) -> datetime:
        """Planned renewal time of a certificate valid from ``not_before`` to ``not_after``, before jitter.

        The renewal scheduler may add a random delay in ``[0, jitter)``; the policy guarantees ``jitter`` is
        shorter than the renewal window, so the delayed renewal still happens before expiry.
        """
        return not_after - self.renewal_window(not_after - not_before)


class SubjectSection(_Section):
    """``[subject]``: the certificate subject. Every value but ``country`` is a template."""

    common_name: Template
    organization: Template | None = None
    organizational_unit: Template | None = None
    country: Annotated[str, AfterValidator(_country)] | None = None
    locality: Template | None = None
    state: Template | None = None


class SanSection(_Section):
    """``[san]``: subject alternative names."""

    ip: StrictBool = True
    dns: tuple[DnsTemplate, ...] = ()


class Pkcs12Section(_Section):
    """``[pkcs12]``: how the key and certificates are packed for the phone (protocol doc D7)."""

    profiles: tuple[Pkcs12Profile, ...] = (Pkcs12Profile.PLAIN,)
    password_secret: Annotated[str, AfterValidator(_secret_name)] | None = None
    password_item: Annotated[str, AfterValidator(_item_name)] | None = None
    include_root: StrictBool = False
    friendly_name: Template = "WBM {mac}"

    @field_validator("profiles")
    @classmethod
    def _ordered_set(cls, value: tuple[Pkcs12Profile, ...]) -> tuple[Pkcs12Profile, ...]:
        if not value:
            raise ValueError("must list at least one profile: plain, legacy or modern")
        repeated = sorted({p.value for p in value if value.count(p) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    @property
    def needs_password(self) -> bool:
        """True if any listed profile needs a password."""
        return any(profile.needs_password for profile in self.profiles)


class EnrollmentSection(_Section):
    """``[enrollment]``: whether a newly seen phone gets a certificate at once or after approval."""

    mode: Enrollment = "auto"


class WindowSection(_Section):
    """One ``[[windows]]`` entry."""

    days: Days = ALL_DAYS
    hours: Hours
    timezone: Annotated[str, AfterValidator(_timezone)]

    def to_window(self) -> MaintenanceWindow:
        """The :class:`MaintenanceWindow` this entry describes."""
        return MaintenanceWindow(
            days=self.days, start_hour=self.hours[0], end_hour=self.hours[1], tz=load_timezone(self.timezone)
        )


class PolicyDocument(_Section):
    """One policy file, exactly as written (see ``policies/README.md``)."""

    name: PolicyName
    description: str = ""
    match: MatchSection = Field(default_factory=MatchSection)
    key: KeySection = Field(default_factory=KeySection)
    validity: ValiditySection = Field(default_factory=ValiditySection)
    renewal: RenewalSection = Field(default_factory=RenewalSection)
    subject: SubjectSection
    san: SanSection = Field(default_factory=SanSection)
    pkcs12: Pkcs12Section = Field(default_factory=Pkcs12Section)
    enrollment: EnrollmentSection = Field(default_factory=EnrollmentSection)
    windows: tuple[WindowSection, ...] = ()

    def canonical_json(self) -> str:
        """Deterministic JSON of the parsed content: equal policies give equal text whatever their spelling
        (key order, comments, ``"720h"`` vs ``"30d"``, ``"sat,sun"`` vs ``"sat-sun"``)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- the parsed policy --------------------------------------------------------------------------------------
class Policy(BaseModel):
    """A validated policy as the rest of certmgr uses it. Build it with :func:`parse_policy` or the loader."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    description: str
    source: str  # file name the policy was loaded from, e.g. "default.toml"
    digest: str  # sha256 hex of PolicyDocument.canonical_json(): changes iff the policy's content changes
    match: MatchSection
    key_type: KeyType
    validity: Duration
    clip_to_ca: bool
    renewal: RenewalSection
    subject: SubjectSection
    san: SanSection
    pkcs12: Pkcs12Section
    enrollment: Enrollment
    windows: tuple[MaintenanceWindow, ...]

    @property
    def is_catch_all(self) -> bool:
        """True if the policy matches every phone (no ``[match]`` criteria)."""
        return self.match.is_catch_all

    def matches(self, identity: DeviceIdentity) -> bool:
        """True if this policy applies to ``identity`` (see :meth:`MatchSection.matches`)."""
        return self.match.matches(identity)


def parse_policy(data: Mapping[str, Any], source: str, known_secrets: AbstractSet[str] | None = None) -> Policy:
    """Validate the TOML content ``data`` of the file ``source`` into a :class:`Policy`.

    Besides the schema this checks the rules between keys: ``renew_before`` and ``jitter`` against the
    validity, the password secret against the PKCS#12 profiles (and against ``known_secrets``, the names of
    the secrets configured in settings, when given), and that the certificate gets at least one SAN.

    Raises:
        PolicySetError: with one :class:`~certmgr.errors.PolicyError` (file ``source``, dotted key,
            reason) per problem found.
    """
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise PolicySetError([PolicyError(source, _dotted(e["loc"]), _reason(e)) for e in exc.errors()]) from None
    problems = [PolicyError(source, key, reason) for key, reason in _relations(document, known_secrets)]
    if problems:
        raise PolicySetError(problems)
    return Policy(
        name=document.name,
        description=document.description,
        source=source,
        digest=hashlib.sha256(document.canonical_json().encode("utf-8")).hexdigest(),
        match=document.match,
        key_type=document.key.type,
        validity=document.validity.duration,
        clip_to_ca=document.validity.clip_to_ca,
        renewal=document.renewal,
        subject=document.subject,
        san=document.san,
        pkcs12=document.pkcs12,
        enrollment=document.enrollment.mode,
        windows=tuple(window.to_window() for window in document.windows),
    )


def _relations(document: PolicyDocument, known_secrets: AbstractSet[str] | None) -> list[tuple[str, str]]:
    """Problems between keys of an otherwise schema-valid document, as (dotted key, reason)."""
    problems: list[tuple[str, str]] = []
    validity, renewal, pkcs12 = document.validity.duration, document.renewal, document.pkcs12
    if renewal.renew_before is not None and renewal.renew_before >= validity:
        problems.append(
            (
                "renewal.renew_before",
                f"{format_duration(renewal.renew_before)} must be shorter than validity.duration "
                f"({format_duration(validity)})",
            )
        )
    else:
        window = renewal.renewal_window(validity)
        if renewal.jitter >= window:
            problems.append(
                (
                    "renewal.jitter",
                    f"{format_duration(renewal.jitter)} must be shorter than the renewal window "
                    f"({format_duration(timedelta(seconds=int(window.total_seconds())))} between the planned "
                    "renewal and expiry), or a delayed renewal could come after expiry",
                )
            )
    password_profiles = [p.value for p in pkcs12.profiles if p.needs_password]
    if password_profiles and pkcs12.password_secret is None:
        problems.append(
            (
                "pkcs12.password_secret",
                f"required because profile {', '.join(password_profiles)} needs a password: name a secret "
                "configured in settings (pkcs12_passwords)",
            )
        )
    if not password_profiles and pkcs12.password_secret is not None:
        problems.append(
            ("pkcs12.password_secret", "is set but no listed profile uses a password; add legacy or modern")
        )
    if pkcs12.password_item is not None and pkcs12.password_secret is None:
        problems.append(("pkcs12.password_item", "needs pkcs12.password_secret: the item carries that password"))
    if known_secrets is not None and pkcs12.password_secret is not None and pkcs12.password_secret not in known_secrets:
        known = ", ".join(sorted(known_secrets)) or "none"
        problems.append(
            (
                "pkcs12.password_secret",
                f"unknown secret {pkcs12.password_secret!r}: not configured in settings (pkcs12_passwords); "
                f"configured: {known}",
            )
        )
    if not document.san.ip and not document.san.dns:
        problems.append(("san", "no subject alternative name: set ip = true or list dns templates"))
    return problems


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``("windows", 0, "hours")`` → ``"windows[0].hours"``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key


_TYPE_REASONS = {
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "tuple_type": "must be an array",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "int_type": "must be an integer",
}


def _reason(error: ErrorDetails) -> str:
    """A one-line, human reason for a pydantic error, naming the offending value if it is short."""
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    message = _TYPE_REASONS.get(kind, error["msg"].replace("Input should be", "must be"))
    value = error.get("input")
    if isinstance(value, Mapping):
        return f"{message}, not a table"
    if isinstance(value, list | tuple):
        return f"{message}, not an array"
    shown = repr(value)
    return f"{message}, not {shown if len(shown) <= 60 else shown[:57] + '...'}"


# --- a set of policies --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySet:
    """Policies in selection order (the loader puts ``default.toml`` last); the first match wins."""

    policies: tuple[Policy, ...]

    def __iter__(self) -> Iterator[Policy]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    @property
    def names(self) -> tuple[str, ...]:
        """Policy names in selection order."""
        return tuple(policy.name for policy in self.policies)

    @property
    def digest(self) -> str:
        """sha256 hex over the ordered (name, digest) pairs: changes if any policy or the order changes."""
        text = "\n".join(f"{policy.name} {policy.digest}" for policy in self.policies)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def select(self, identity: DeviceIdentity) -> Policy:
        """The first policy that matches ``identity``.

        Raises:
            PolicyError: if none matches; cannot happen for a set from the loader, whose ``default.toml``
                matches every phone.
        """
        for policy in self.policies:
            if policy.matches(identity):
                return policy
        raise PolicyError(
            "<policy set>", "match", f"no policy matches the phone {identity.mac} (model {identity.model!r})"
        )

    def get(self, name: str) -> Policy:
        """The policy called ``name``.

        Raises:
            InputError: if there is no such policy.
        """
        for policy in self.policies:
            if policy.name == name:
                return policy
        raise InputError(f"unknown policy {name!r}; known: {', '.join(self.names)}", policy=name)
