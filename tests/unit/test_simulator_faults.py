"""Fault specs and the PKCS#12 algorithm detection behind ``reject-legacy``. Pure."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from certmgr.errors import InputError
from certmgr.pki.pkcs12 import build_pkcs12
from certmgr.pki.types import Pkcs12Profile
from certmgr.simulator.faults import (
    NO_FAULTS,
    OID_PBE_SHA1_3DES,
    Fault,
    FaultSet,
    parse_fault_spec,
    pkcs12_algorithm_oids,
    uses_legacy_pbe,
)

PBES2 = "1.2.840.113549.1.5.13"
AES256_CBC = "2.16.840.1.101.3.4.1.42"


@pytest.fixture(scope="module")
def p12s() -> dict[Pkcs12Profile, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return {p: build_pkcs12(key, cert, (), p, None if p is Pkcs12Profile.PLAIN else b"pw", b"n") for p in Pkcs12Profile}


def test_parse_combined_spec() -> None:
    faults = parse_fault_spec(" busy-first-write , SLOW = 2.5,fragments")
    assert faults == FaultSet(busy_first_write=True, slow=2.5, fragments=True)
    assert faults.to_spec() == "busy-first-write,slow=2.5,fragments"


def test_every_fault_name_parses() -> None:
    for fault in Fault:
        spec = "slow=1" if fault is Fault.SLOW else fault.value
        assert parse_fault_spec(spec).names == (spec,)


@pytest.mark.parametrize("spec", ["", "  ", "none", "NONE"])
def test_empty_spec(spec: str) -> None:
    assert parse_fault_spec(spec) == NO_FAULTS


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode", "unknown fault"),
        ("slow", "needs a value"),
        ("slow=abc", "not a number"),
        ("slow=-1", "between"),
        ("slow=inf", "between"),
        ("offline=1", "takes no value"),
        ("offline,offline", "twice"),
        ("a b", "invalid fault token"),
        ("x" * 600, "too long"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_fault_spec(spec)


def test_merge() -> None:
    a = FaultSet(offline=True, slow=1.0)
    b = FaultSet(wrong_info=True, slow=3.0)
    assert a.merge(b) == FaultSet(offline=True, wrong_info=True, slow=3.0)


@given(
    st.builds(
        FaultSet,
        offline=st.booleans(),
        busy_first_write=st.booleans(),
        failed_write=st.booleans(),
        reject_legacy=st.booleans(),
        wrong_info=st.booleans(),
        unparseable_info=st.booleans(),
        slow=st.sampled_from([0.0, 0.25, 1.0, 2.5, 120.0]),
        fragments=st.booleans(),
        max_items_1=st.booleans(),
        ip_change=st.booleans(),
        factory_reset=st.booleans(),
    )
)
def test_spec_round_trip(faults: FaultSet) -> None:
    assert parse_fault_spec(faults.to_spec()) == faults


def test_legacy_detected_from_oids(p12s: dict[Pkcs12Profile, bytes]) -> None:
    assert uses_legacy_pbe(p12s[Pkcs12Profile.LEGACY])
    assert OID_PBE_SHA1_3DES in pkcs12_algorithm_oids(p12s[Pkcs12Profile.LEGACY])
    assert not uses_legacy_pbe(p12s[Pkcs12Profile.MODERN])
    assert {PBES2, AES256_CBC} <= pkcs12_algorithm_oids(p12s[Pkcs12Profile.MODERN])
    assert not uses_legacy_pbe(p12s[Pkcs12Profile.PLAIN])
    assert "1.2.840.113549.1.7.1" in pkcs12_algorithm_oids(p12s[Pkcs12Profile.PLAIN])  # pkcs7-data


@pytest.mark.parametrize("data", [b"", b"\x30", b"not der at all", b"\x30\x84\xff\xff\xff\xff"])
def test_oids_of_garbage(data: bytes) -> None:
    with pytest.raises(InputError):
        pkcs12_algorithm_oids(data)


@given(st.binary(max_size=200))
def test_oids_never_crash(data: bytes) -> None:
    with contextlib.suppress(InputError):
        pkcs12_algorithm_oids(data)
