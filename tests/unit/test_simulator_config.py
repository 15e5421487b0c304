"""Pure parts of the simulator: phone config, addresses, MACs, fault plans, info text, nonces."""

from __future__ import annotations

import re

import pytest

from certmgr.clock import ManualClock
from certmgr.errors import InputError
from certmgr.pki.types import KeyType
from certmgr.simulator.faults import FaultSet
from certmgr.simulator.fleet import FaultPlan, FaultRule, Fleet, fleet_addresses, fleet_mac, parse_fault_every
from certmgr.simulator.phone import (
    PhoneConfig,
    PhoneStats,
    SimPhone,
    SimulatorError,
    _is_password_item,
    alternate_ip,
    certificate_info_text,
    new_nonce,
    self_signed,
)
from certmgr.wpi.certinfo import ExpectedCert, InfoVerdict, parse_certificate_info
from certmgr.wpi.certjudge import judge_certificate_info
from tests.conftest import T0


def test_phone_config_normalises_and_hides_passwords() -> None:
    cfg = PhoneConfig(mac="001ae8000001", ip="127.0.10.1", e164="123", pkcs12_passwords=(b"secret-pw",))
    assert cfg.mac == "00:1A:E8:00:00:01"
    assert "secret-pw" not in repr(cfg)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip": "10.0.0.1"}, "loopback"),
        ({"ip": "::1"}, "loopback"),
        ({"ip": "nope"}, "not an IP"),
        ({"alt_ip": "192.168.1.1"}, "loopback"),
        ({"wbm_port": 0}, "wbm_port"),
        ({"dls_url": "http://127.0.0.1:18443/x"}, "https"),
        ({"contact_gap": -1.0}, "contact_gap"),
        ({"request_timeout": 0.0}, "request_timeout"),
        ({"max_round_trips": 0}, "max_round_trips"),
    ],
)
def test_phone_config_rejects(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"mac": "00:1A:E8:00:00:01", "ip": "127.0.10.1", "e164": "1"}
    base.update(kwargs)
    with pytest.raises(InputError, match=message):
        PhoneConfig(**base)  # type: ignore[arg-type]


def test_alternate_ip() -> None:
    assert alternate_ip("127.0.10.1") == "127.128.10.1"
    assert alternate_ip("127.128.10.1") == "127.0.10.1"
    with pytest.raises(InputError):
        alternate_ip("10.0.0.1")


def test_fleet_addresses_skip_0_and_255() -> None:
    assert fleet_addresses("127.0.10.253", 5) == [
        "127.0.10.253",
        "127.0.10.254",
        "127.0.11.1",
        "127.0.11.2",
        "127.0.11.3",
    ]
    assert fleet_addresses("127.0.10.0", 1) == ["127.0.10.1"]
    assert len(set(fleet_addresses("127.0.10.1", 1000))) == 1000
    for bad in ("10.0.0.1", "x"):
        with pytest.raises(InputError):
            fleet_addresses(bad, 1)
    with pytest.raises(InputError, match="count"):
        fleet_addresses("127.0.0.1", 0)
    with pytest.raises(InputError, match="past"):
        fleet_addresses("127.255.255.250", 10)


def test_fleet_mac() -> None:
    assert fleet_mac(1) == "00:1A:E8:00:00:01"
    assert fleet_mac(0xABCDEF) == "00:1A:E8:AB:CD:EF"
    with pytest.raises(InputError):
        fleet_mac(0)


def test_fault_plan() -> None:
    plan = FaultPlan.from_specs(["slow=1"], ["2:offline", "3:wrong-info"])
    assert plan.for_phone(1) == FaultSet(slow=1.0)
    assert plan.for_phone(2) == FaultSet(slow=1.0, offline=True)
    assert plan.for_phone(6) == FaultSet(slow=1.0, offline=True, wrong_info=True)
    assert parse_fault_every(" 10:busy-first-write") == FaultRule(10, FaultSet(busy_first_write=True))
    for bad in ("busy-first-write", "x:offline", "0:offline"):
        with pytest.raises(InputError):
            parse_fault_every(bad)


def test_fleet_configs_without_binding() -> None:
    fleet = Fleet(3, base_ip="127.0.20.1", plan=FaultPlan.from_specs(every=["3:ip-change"]), e164_start=100)
    assert [p.config.e164 for p in fleet.phones] == ["100", "101", "102"]
    assert fleet.phones[2].config.alt_ip == "127.128.20.3"
    assert [s["factory_cert"] for s in fleet.stats()] == [True, True, True]


def test_certificate_info_text_verifies() -> None:
    identity = self_signed("OpenStage Default", KeyType.EC_P256, ManualClock(T0))
    text = certificate_info_text(identity.cert)
    verdict = judge_certificate_info(parse_certificate_info(text), ExpectedCert.from_certificate(identity.cert))
    assert verdict is InfoVerdict.VERIFIED
    assert identity.cert.not_valid_before_utc < T0


def test_nonce_format() -> None:
    nonces = {new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(re.fullmatch(r"[0-9A-F]{32}", n) for n in nonces)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wbm-server-certificate-password", True),
        ("pkcs12-password", True),
        ("wbm_pwd", True),
        ("user-pwd", False),
        ("admin-pwd", False),
        ("restart-password", False),
        ("e164", False),
    ],
)
def test_password_items(name: str, expected: bool) -> None:
    assert _is_password_item(name) is expected


def test_stats_are_json_ready_and_secret_free() -> None:
    stats = PhoneStats(mac="00:1A:E8:00:00:01", ip="127.0.0.1", faults="")
    assert set(stats.as_dict()) == {
        "mac",
        "ip",
        "faults",
        "contact_me_received",
        "contact_me_ignored_gap",
        "interactions",
        "writes_accepted",
        "writes_rejected",
        "busy_replies",
        "current_cert_sha256",
        "factory_cert",
        "last_error",
    }


def test_unstarted_phone() -> None:
    phone = SimPhone(PhoneConfig(mac="00:1A:E8:00:00:01", ip="127.0.10.1", e164="1"))
    with pytest.raises(SimulatorError):
        _ = phone.served_certificate
    assert phone.contact_me_uri == "http://127.0.10.1:8085/contact_dls.html/ContactDLS"
