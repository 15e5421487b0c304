"""Loading a policy directory: the shipped default, order, selection and every directory-level error."""

from __future__ import annotations

import re
import shutil
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from certmgr.errors import InputError, PolicyError, PolicySetError
from certmgr.identity import DeviceIdentity
from certmgr.pki.types import KeyType, Pkcs12Profile
from certmgr.policy import PolicySet, load_policies, load_policy_file, parse_policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies"
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
MINIMAL = 'name = "{name}"\n[subject]\ncommon_name = "{{ip}}"\n'


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def messages(directory: Path, known_secrets: set[str] | None = None) -> list[str]:
    with pytest.raises(PolicySetError) as info:
        load_policies(directory, known_secrets)
    assert all(isinstance(e, PolicyError) for e in info.value.errors)
    return [e.message for e in info.value.errors]


# --- the shipped default ------------------------------------------------------------------------------------
def test_shipped_default_loads_with_the_documented_values() -> None:
    policies = load_policies(SHIPPED, known_secrets=set())
    assert policies.names == ("default",)
    policy = policies.get("default")
    assert policy.source == "default.toml"
    assert policy.is_catch_all
    assert policy.enrollment == "auto"
    assert policy.key_type is KeyType.RSA_2048
    assert policy.validity == timedelta(days=397)
    assert policy.renewal.renew_before == timedelta(days=30)
    assert policy.renewal.jitter == timedelta(hours=6)
    assert policy.subject.common_name == "{ip}"
    assert policy.subject.organization == "certmgr"
    assert policy.san.ip is True
    assert policy.pkcs12.profiles == (Pkcs12Profile.PLAIN,)
    assert policy.windows == ()


def test_every_key_of_the_shipped_default_is_commented() -> None:
    lines = (SHIPPED / "default.toml").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\w+\s*=", line):
            assert lines[number - 1].startswith("#"), f"line {number + 1} has no comment: {line}"


def test_commented_examples_in_the_shipped_default_are_valid() -> None:
    text = (SHIPPED / "default.toml").read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^# ((?:\[\[windows\]\]|\w+ = ).*)$", r"\1", text)
    uncommented = uncommented.replace('profiles = ["plain"]', 'profiles = ["plain", "legacy"]')
    uncommented = uncommented.replace('password_item = "..."', 'password_item = "wbm-p12-password"')
    uncommented = uncommented.replace("dns = []\n", "")
    policy = parse_policy(tomllib.loads(uncommented), "default.toml", known_secrets={"phones-p12"})
    assert policy.pkcs12.password_secret == "phones-p12"
    assert policy.subject.country == "DE"
    assert len(policy.windows) == 1
    assert policy.san.dns == ("{mac_hex}.phones.example.net", "{hostname}")


def test_readme_examples_are_valid_policies() -> None:
    readme = (SHIPPED / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        policy = parse_policy(tomllib.loads(block), "example.toml", known_secrets={"phones-p12"})
        assert not policy.is_catch_all


# --- a valid directory --------------------------------------------------------------------------------------
def test_order_is_file_name_with_default_last() -> None:
    policies = load_policies(FIXTURES / "valid", known_secrets={"phones-p12"})
    assert policies.names == ("lab", "openstage", "fallback")
    assert [p.source for p in policies] == ["10-lab.toml", "20-openstage.toml", "default.toml"]
    assert len(policies) == 3


def test_select_first_match_wins() -> None:
    policies = load_policies(FIXTURES / "valid")
    lab_openstage = DeviceIdentity.create(mac="00:1A:E8:00:00:01", ips=["10.99.1.1"], model="OpenStage 60")
    openstage = DeviceIdentity.create(mac="00:1A:E8:00:00:02", ips=["10.1.1.1"], model="OpenStage 40")
    other_vendor = DeviceIdentity.create(mac="00:11:22:00:00:03", ips=["10.1.1.2"], model="OpenStage 40")
    unknown = DeviceIdentity.create(mac="00:1A:E8:00:00:04")
    assert policies.select(lab_openstage).name == "lab"  # 10-lab.toml comes before 20-openstage.toml
    assert policies.select(openstage).name == "openstage"
    assert policies.select(other_vendor).name == "fallback"
    assert policies.select(unknown).name == "fallback"


def test_get_and_unknown_name() -> None:
    policies = load_policies(FIXTURES / "valid")
    assert policies.get("openstage").source == "20-openstage.toml"
    with pytest.raises(InputError, match=r"unknown policy 'nope'; known: lab, openstage, fallback"):
        policies.get("nope")


def test_set_digest_follows_content(tmp_path: Path) -> None:
    first = load_policies(FIXTURES / "valid")
    copy = shutil.copytree(FIXTURES / "valid", tmp_path / "copy")
    again = load_policies(copy)
    assert [p.digest for p in again] == [p.digest for p in first]
    assert again.digest == first.digest
    lab = copy / "10-lab.toml"
    lab.write_text(lab.read_text().replace('duration = "30d"', 'duration = "31d"'))
    changed = load_policies(copy)
    assert changed.get("lab").digest != first.get("lab").digest
    assert changed.get("openstage").digest == first.get("openstage").digest
    assert changed.digest != first.digest


def test_hidden_files_and_other_extensions_are_ignored(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        {
            "default.toml": MINIMAL.format(name="default"),
            ".10-draft.toml": "this is not toml",
            "notes.txt": "ignored",
            "20-x.toml.bak": "ignored",
        },
    )
    (directory / "sub").mkdir()
    (directory / "sub" / "10-nested.toml").write_text("ignored")
    assert load_policies(directory).names == ("default",)


def test_select_on_a_set_without_fallback_names_the_phone() -> None:
    policy = parse_policy(
        tomllib.loads(MINIMAL.format(name="only") + "[match]\nmac_prefixes = ['00:11:22']\n"), "only.toml"
    )
    phone = DeviceIdentity.create(mac="00:1A:E8:00:00:09", model="OpenStage 60")
    with pytest.raises(PolicyError, match=r"no policy matches the phone 00:1A:E8:00:00:09 \(model 'OpenStage 60'\)"):
        PolicySet((policy,)).select(phone)


# --- broken directories -------------------------------------------------------------------------------------
def test_every_problem_of_a_directory_is_reported() -> None:
    found = messages(FIXTURES / "broken", known_secrets={"phones-p12"})
    expected = [
        r"^05-syntax\.toml: TOML syntax error: .*\(at line 2, column \d+\)$",
        r"^10-schema\.toml: match\.networks\[0\]: invalid network '10\.0\.0\.1/8': .*host bits set$",
        r"^10-schema\.toml: validity\.duration: invalid duration 'ten days'",
        r"^10-schema\.toml: subject\.common_name: unknown template variable \{serial\}",
        r"^40-second\.toml: pkcs12\.password_secret: unknown secret 'not-configured'.*: phones-p12$",
        r"^20-catchall\.toml: match: has no criteria, so it matches every phone and default\.toml and",
        r"^default\.toml: match: default\.toml is the fallback for every phone and must not have \[match\]",
    ]
    for pattern in expected:
        assert any(re.search(pattern, m) for m in found), f"{pattern} not in {found}"
    assert len(found) == len(expected), found


def test_duplicate_names(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        {
            "10-a.toml": MINIMAL.format(name="same") + "[match]\nmac_prefixes = ['00:1A:E8']\n",
            "20-b.toml": MINIMAL.format(name="same") + "[match]\nmac_prefixes = ['00:1A:E9']\n",
            "default.toml": MINIMAL.format(name="same"),
        },
    )
    assert messages(directory) == [
        "20-b.toml: name: duplicate policy name 'same', already used by 10-a.toml",
        "default.toml: name: duplicate policy name 'same', already used by 10-a.toml",
    ]


def test_missing_directory(tmp_path: Path) -> None:
    assert messages(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: policy directory does not exist"]


def test_directory_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    assert messages(path) == [f"{path}: policy directory does not exist"]


def test_empty_directory(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "no policies"})
    assert messages(tmp_path) == [f"{tmp_path}: policy directory holds no *.toml policy file"]


def test_missing_default(tmp_path: Path) -> None:
    directory = write(tmp_path, {"10-a.toml": MINIMAL.format(name="a") + "[match]\nmac_prefixes = ['00:1A:E8']\n"})
    assert messages(directory) == [
        f"{directory / 'default.toml'}: missing: every policy directory needs a default.toml that matches every phone"
    ]


def test_invalid_default_is_reported_not_as_missing(tmp_path: Path) -> None:
    directory = write(tmp_path, {"default.toml": 'name = "default"\n'})
    assert messages(directory) == ["default.toml: subject: required key is missing"]


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_bytes(b'name = "caf\xe9"\n')
    assert messages(tmp_path) == ["default.toml: not UTF-8 text (byte 11)"]


def test_load_policy_file_reports_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicySetError) as info:
        load_policy_file(tmp_path / "absent.toml")
    assert [e.message for e in info.value.errors] == ["absent.toml: cannot read the file: No such file or directory"]
