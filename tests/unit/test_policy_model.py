"""Policy schema: defaults, every validation rule with its file/key/reason, matching and the digest."""

from __future__ import annotations

import hashlib
import ipaddress
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from certmgr.errors import PolicyError, PolicySetError
from certmgr.identity import DeviceIdentity
from certmgr.pki.types import KeyType, Pkcs12Profile
from certmgr.policy import Policy, PolicyDocument, load_policy_file, parse_policy

MINIMAL = 'name = "p"\n[subject]\ncommon_name = "{ip}"\n'


def load(tmp_path: Path, text: str, known_secrets: set[str] | None = None) -> Policy:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy_file(path, known_secrets)


def errors(tmp_path: Path, text: str, known_secrets: set[str] | None = None) -> list[PolicyError]:
    with pytest.raises(PolicySetError) as info:
        load(tmp_path, text, known_secrets)
    return info.value.errors


def test_minimal_policy_gets_documented_defaults(tmp_path: Path) -> None:
    policy = load(tmp_path, MINIMAL)
    assert policy.name == "p"
    assert policy.source == "p.toml"
    assert policy.description == ""
    assert policy.key_type is KeyType.RSA_2048
    assert policy.validity == timedelta(days=397)
    assert policy.clip_to_ca is False
    assert policy.renewal.renew_before is None
    assert policy.renewal.renew_at_fraction == pytest.approx(2 / 3)
    assert policy.renewal.jitter == timedelta(0)
    assert policy.subject.common_name == "{ip}"
    assert policy.subject.organization is None
    assert policy.san.ip is True
    assert policy.san.dns == ()
    assert policy.pkcs12.profiles == (Pkcs12Profile.PLAIN,)
    assert policy.pkcs12.password_secret is None
    assert policy.pkcs12.include_root is False
    assert policy.pkcs12.friendly_name == "WBM {mac}"
    assert policy.enrollment == "auto"
    assert policy.windows == ()
    assert policy.is_catch_all


def test_full_policy_is_typed(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        MINIMAL
        + """
[match]
device_types = ["OpenStage*"]
mac_prefixes = ["001ae8", "00-1A-E9"]
networks = ["10.1.0.0/16", "2001:db8::/32"]
[key]
type = "ec-p384"
[validity]
duration = "90d"
clip_to_ca = true
[renewal]
renew_before = "2w"
jitter = "6h"
[pkcs12]
profiles = ["modern", "plain"]
password_secret = "p12"
password_item = "wbm-password"
[enrollment]
mode = "approve"
[[windows]]
days = "mon-fri"
hours = "22-05"
timezone = "Europe/Berlin"
""",
        known_secrets={"p12"},
    )
    assert policy.match.device_types == ("openstage*",)
    assert policy.match.mac_prefixes == ("00:1A:E8", "00:1A:E9")
    assert policy.match.networks == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert policy.key_type is KeyType.EC_P384
    assert policy.validity == timedelta(days=90)
    assert policy.clip_to_ca is True
    assert policy.renewal.renew_before == timedelta(days=14)
    assert policy.renewal.renew_at_fraction is None
    assert policy.renewal.jitter == timedelta(hours=6)
    assert policy.pkcs12.profiles == (Pkcs12Profile.MODERN, Pkcs12Profile.PLAIN)
    assert policy.pkcs12.needs_password
    assert policy.enrollment == "approve"
    (window,) = policy.windows
    assert (window.days, window.start_hour, window.end_hour, window.tz.key) == (
        frozenset(range(5)),
        22,
        5,
        "Europe/Berlin",
    )


# Each case: extra TOML appended to (or replacing) the minimal policy, the dotted key, a piece of the reason.
INVALID = [
    pytest.param('name = "p"\n', "subject", "required key is missing", id="missing-subject"),
    pytest.param('[subject]\ncommon_name = "x"\n', "name", "required key is missing", id="missing-name"),
    pytest.param('name = "bad name"\n[subject]\ncommon_name = "x"\n', "name", "invalid policy name", id="name"),
    pytest.param("colour = 1\n" + MINIMAL, "colour", "unknown key", id="unknown-top-level"),
    pytest.param(MINIMAL + "[key]\nsize = 2048\n", "key.size", "unknown key", id="unknown-in-section"),
    pytest.param(MINIMAL + "[key]\ntype = 'rsa-1024'\n", "key.type", "must be 'rsa-2048'", id="key-type"),
    pytest.param("key = 'rsa'\n" + MINIMAL, "key", "must be a table, not 'rsa'", id="section-not-table"),
    pytest.param(MINIMAL + "[validity]\nduration = '397'\n", "validity.duration", "invalid duration '397'", id="dur"),
    pytest.param(
        MINIMAL + "[validity]\nduration = 397\n",
        "validity.duration",
        "must be a duration string",
        id="dur-int",
    ),
    pytest.param(MINIMAL + "[validity]\nduration = '0s'\n", "validity.duration", "longer than 0s", id="dur-zero"),
    pytest.param(
        MINIMAL + "[validity]\nclip_to_ca = 'yes'\n",
        "validity.clip_to_ca",
        "true or false, not 'yes'",
        id="bool",
    ),
    pytest.param(
        MINIMAL + "[renewal]\nrenew_before = '30d'\nrenew_at_fraction = 0.5\n",
        "renewal",
        "contradict each other",
        id="renewal-both",
    ),
    pytest.param(
        MINIMAL + "[renewal]\nrenew_at_fraction = 1\n",
        "renewal.renew_at_fraction",
        "less than 1",
        id="frac-1",
    ),
    pytest.param(
        MINIMAL + "[renewal]\nrenew_at_fraction = 0.0\n",
        "renewal.renew_at_fraction",
        "greater than 0",
        id="frac-0",
    ),
    pytest.param(
        MINIMAL + "[renewal]\nrenew_at_fraction = '0.5'\n",
        "renewal.renew_at_fraction",
        "must be a number",
        id="frac-str",
    ),
    pytest.param(
        MINIMAL + "[renewal]\nrenew_before = '397d'\n",
        "renewal.renew_before",
        "397d must be shorter than validity.duration (397d)",
        id="renew-before-validity",
    ),
    pytest.param(
        MINIMAL + "[renewal]\nrenew_before = '30d'\njitter = '30d'\n",
        "renewal.jitter",
        "30d must be shorter than the renewal window (30d",
        id="jitter-window",
    ),
    pytest.param(
        MINIMAL + "[validity]\nduration = '3d'\n[renewal]\njitter = '5d'\n",
        "renewal.jitter",
        "5d must be shorter than the renewal window (1d",
        id="jitter-validity",
    ),
    pytest.param(
        MINIMAL + "[match]\ndevice_types = []\n",
        "match.device_types",
        "must not be an empty list",
        id="empty-list",
    ),
    pytest.param(
        MINIMAL + "[match]\nmac_prefixes = ['00:1A:E']\n",
        "match.mac_prefixes[0]",
        "invalid MAC prefix",
        id="mac",
    ),
    pytest.param(
        MINIMAL + "[match]\nnetworks = ['10.1.0.1/16']\n", "match.networks[0]", "host bits set", id="net-bits"
    ),
    pytest.param(MINIMAL + "[match]\nnetworks = ['x']\n", "match.networks[0]", "invalid network 'x'", id="net"),
    pytest.param(MINIMAL + "[match]\nnetworks = '10.0.0.0/8'\n", "match.networks", "must be an array", id="net-str"),
    pytest.param(
        'name = "p"\n[subject]\ncommon_name = "{serial}"\n',
        "subject.common_name",
        "unknown template variable {serial}",
        id="template-var",
    ),
    pytest.param(
        'name = "p"\n[subject]\ncommon_name = "{mac.upper}"\n',
        "subject.common_name",
        "only {name} fields are allowed",
        id="template-attr",
    ),
    pytest.param(
        'name = "p"\n[subject]\ncommon_name = ""\n', "subject.common_name", "must not be empty", id="cn-empty"
    ),
    pytest.param(
        'name = "p"\n[subject]\ncommon_name = "{ip}"\ncountry = "DEU"\n',
        "subject.country",
        "two-letter ISO 3166",
        id="country",
    ),
    pytest.param(
        MINIMAL.replace("[subject]", "[subject]\norganization = '{mac:>30}'"),
        "subject.organization",
        "format spec or conversion",
        id="template-spec",
    ),
    pytest.param(MINIMAL + "[san]\ndns = ['phone_{mac_hex}']\n", "san.dns[0]", "contains 'phone_'", id="dns-literal"),
    pytest.param(MINIMAL + "[san]\nip = false\n", "san", "no subject alternative name", id="no-san"),
    pytest.param(MINIMAL + "[pkcs12]\nprofiles = []\n", "pkcs12.profiles", "at least one profile", id="profiles-empty"),
    pytest.param(
        MINIMAL + "[pkcs12]\nprofiles = ['plain', 'plain']\n",
        "pkcs12.profiles",
        "lists plain more than once",
        id="dup",
    ),
    pytest.param(
        MINIMAL + "[pkcs12]\nprofiles = ['rc2']\n",
        "pkcs12.profiles[0]",
        "'plain', 'legacy' or 'modern'",
        id="pr",
    ),
    pytest.param(
        MINIMAL + "[pkcs12]\nprofiles = ['plain', 'legacy']\n",
        "pkcs12.password_secret",
        "required because profile legacy needs a password",
        id="secret-missing",
    ),
    pytest.param(
        MINIMAL + "[pkcs12]\npassword_secret = 's'\n",
        "pkcs12.password_secret",
        "no listed profile uses a password",
        id="secret-unused",
    ),
    pytest.param(
        MINIMAL + "[pkcs12]\npassword_secret = 'my secret pw!'\nprofiles = ['modern']\n",
        "pkcs12.password_secret",
        "never the password itself",
        id="secret-name",
    ),
    pytest.param(
        MINIMAL + "[pkcs12]\npassword_item = 'pw'\n",
        "pkcs12.password_item",
        "needs pkcs12.password_secret",
        id="item-without-secret",
    ),
    pytest.param(MINIMAL + "[enrollment]\nmode = 'manual'\n", "enrollment.mode", "'auto' or 'approve'", id="mode"),
    pytest.param(
        MINIMAL + "[[windows]]\ndays = 'mon-fry'\nhours = '22-05'\ntimezone = 'UTC'\n",
        "windows[0].days",
        "'fry' is not a day",
        id="win-days",
    ),
    pytest.param(
        MINIMAL + "[[windows]]\nhours = '25-05'\ntimezone = 'UTC'\n",
        "windows[0].hours",
        "start must be 0-23",
        id="win-h",
    ),
    pytest.param(
        MINIMAL + "[[windows]]\nhours = '*'\ntimezone = 'UTC'\n[[windows]]\nhours = '*'\ntimezone = 'Europe/Berln'\n",
        "windows[1].timezone",
        "unknown time zone 'Europe/Berln'",
        id="win-tz",
    ),
    pytest.param(
        MINIMAL + "[[windows]]\ndays = ['mon']\nhours = '*'\ntimezone = 'UTC'\n",
        "windows[0].days",
        "must be a day string such as 'mon-fri'",
        id="win-days-array",
    ),
    pytest.param(
        MINIMAL + "[[windows]]\nhours = '*'\n",
        "windows[0].timezone",
        "required key is missing",
        id="win-no-tz",
    ),
]


@pytest.mark.parametrize(("text", "key", "reason"), INVALID)
def test_invalid_policy_names_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    found = errors(tmp_path, text)
    assert [(e.file, e.key) for e in found] == [("p.toml", key)], [e.message for e in found]
    assert reason in found[0].reason
    assert found[0].message == f"p.toml: {key}: {found[0].reason}"
    assert "\n" not in found[0].message


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        'name = "p"\nextra = 1\n[key]\ntype = "dsa"\n[validity]\nduration = "1y"\n[subject]\ncommon_name = "{x}"\n',
    )
    assert sorted(e.key for e in found) == ["extra", "key.type", "subject.common_name", "validity.duration"]


def test_unknown_secret_is_an_error_only_when_secrets_are_known(tmp_path: Path) -> None:
    text = MINIMAL + "[pkcs12]\nprofiles = ['legacy']\npassword_secret = 'phones'\n"
    assert load(tmp_path, text).pkcs12.password_secret == "phones"
    assert load(tmp_path, text, known_secrets={"phones"}).pkcs12.password_secret == "phones"
    (error,) = errors(tmp_path, text, known_secrets={"other", "more"})
    assert error.key == "pkcs12.password_secret"
    assert error.reason.startswith("unknown secret 'phones': not configured in settings")
    assert "configured: more, other" in error.reason


def test_parse_policy_accepts_a_mapping() -> None:
    policy = parse_policy(tomllib.loads(MINIMAL), "inline.toml")
    assert policy.source == "inline.toml"


def test_policy_dumps_to_json_with_policy_spellings(tmp_path: Path) -> None:
    dumped = load(tmp_path, MINIMAL + "[[windows]]\ndays = 'sat,sun'\nhours = '22-05'\ntimezone = 'UTC'\n").model_dump(
        mode="json"
    )
    assert dumped["validity"] == "397d"
    assert dumped["renewal"] == {"renew_before": None, "renew_at_fraction": pytest.approx(2 / 3), "jitter": "0s"}
    assert dumped["windows"] == [{"days": [5, 6], "start_hour": 22, "end_hour": 5, "tz": "UTC"}]


def test_policy_is_immutable(tmp_path: Path) -> None:
    policy = load(tmp_path, MINIMAL)
    with pytest.raises(ValidationError):
        policy.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        policy.renewal.jitter = timedelta(hours=1)  # type: ignore[misc]


# --- digest -------------------------------------------------------------------------------------------------
def test_digest_is_sha256_of_canonical_json(tmp_path: Path) -> None:
    policy = load(tmp_path, MINIMAL)
    document = PolicyDocument.model_validate(tomllib.loads(MINIMAL))
    assert policy.digest == hashlib.sha256(document.canonical_json().encode()).hexdigest()
    assert '"validity":{"clip_to_ca":false,"duration":"397d"}' in document.canonical_json()


def test_digest_ignores_spelling_but_not_content(tmp_path: Path) -> None:
    a = MINIMAL + "[renewal]\nrenew_before = '30d'\n[[windows]]\ndays = 'sat,sun'\nhours = '*'\ntimezone = 'UTC'\n"
    b = (
        'name = "p"  # a comment\n[[windows]]\ntimezone = "UTC"\nhours = "0-24"\ndays = "SAT-SUN"\n'
        '[renewal]\nrenew_before = "720h"\n[subject]\ncommon_name = "{ip}"\n'
    )
    c = a.replace("'30d'", "'31d'")
    digest_a, digest_b, digest_c = (load(tmp_path, text).digest for text in (a, b, c))
    assert digest_a == digest_b
    assert digest_a != digest_c


# --- matching -----------------------------------------------------------------------------------------------
def phone(
    mac: str = "00:1A:E8:12:34:56", ips: tuple[str, ...] = ("10.1.2.3",), model: str | None = "OpenStage 60"
) -> DeviceIdentity:
    return DeviceIdentity.create(mac=mac, ips=ips, model=model)


def matcher(tmp_path: Path, match: str) -> Policy:
    return load(tmp_path, MINIMAL + "[match]\n" + match)


def test_device_types_are_case_insensitive_globs(tmp_path: Path) -> None:
    policy = matcher(tmp_path, "device_types = ['openstage 6*', 'OpenScape*']\n")
    assert policy.matches(phone(model="OpenStage 60"))
    assert policy.matches(phone(model="OPENSCAPE Desk Phone IP 55G"))
    assert not policy.matches(phone(model="OpenStage 40"))
    assert not policy.matches(phone(model=None))


def test_mac_prefixes(tmp_path: Path) -> None:
    policy = matcher(tmp_path, "mac_prefixes = ['00:1a:e8', '00:1A:E9:FF']\n")
    assert policy.matches(phone(mac="00-1a-e8-00-00-01"))
    assert policy.matches(phone(mac="00:1A:E9:FF:00:01"))
    assert not policy.matches(phone(mac="00:1A:E9:00:00:01"))


def test_networks_any_address_any_version(tmp_path: Path) -> None:
    policy = matcher(tmp_path, "networks = ['10.1.0.0/16', '2001:db8::/32']\n")
    assert policy.matches(phone(ips=("192.168.1.1", "10.1.200.1")))
    assert policy.matches(phone(ips=("2001:db8::5",)))
    assert not policy.matches(phone(ips=("10.2.0.1", "2001:db9::1")))
    assert not policy.matches(phone(ips=()))


def test_criteria_are_anded(tmp_path: Path) -> None:
    policy = matcher(tmp_path, "device_types = ['OpenStage*']\nnetworks = ['10.1.0.0/16']\n")
    assert policy.matches(phone())
    assert not policy.matches(phone(model="OpenScape 55"))
    assert not policy.matches(phone(ips=("10.9.0.1",)))
    assert not policy.is_catch_all


# --- renewal helpers ----------------------------------------------------------------------------------------
def test_renew_at_with_fraction_and_with_renew_before(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=300)
    assert load(tmp_path, MINIMAL).renewal.renew_at(start, end) == start + timedelta(days=200)
    before = load(tmp_path, MINIMAL + "[renewal]\nrenew_before = '30d'\n")
    assert before.renewal.renew_at(start, end) == end - timedelta(days=30)
