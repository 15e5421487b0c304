"""KeyPool: keys generated in worker processes come back usable, of the asked type, in order, and distinct."""

from __future__ import annotations

import pytest

from certmgr.errors import IssuanceError
from certmgr.identity import DeviceIdentity
from certmgr.issuance.service import build_certificate
from certmgr.pki.keypool import KeyPool
from certmgr.pki.keys import key_type_of, public_keys_match
from certmgr.pki.types import KeyType
from certmgr.policy import load_policies
from certmgr.runtime import open_runtime
from certmgr.settings import Settings
from tests.conftest import REPO


def test_pool_generates_keys_of_each_type_in_order() -> None:
    pool = KeyPool(workers=2)
    try:
        wanted = [KeyType.EC_P256, KeyType.RSA_2048, KeyType.EC_P384, KeyType.EC_P256]
        keys = pool.generate(wanted)
    finally:
        pool.close()
    assert [key_type_of(k) for k in keys] == wanted
    numbers = {k.private_numbers().private_value for k in keys if key_type_of(k) is KeyType.EC_P256}  # type: ignore[union-attr]
    assert len(numbers) == 2  # two distinct P-256 keys


def test_single_worker_generates_in_process() -> None:
    pool = KeyPool(workers=1)
    assert [key_type_of(k) for k in pool.generate([KeyType.EC_P256])] == [KeyType.EC_P256]
    assert pool._executor is None
    pool.close()


def test_pre_generated_key_is_used_and_must_match_the_policy(settings: Settings) -> None:
    runtime = open_runtime(settings, create_ca=True)
    try:
        policy = load_policies(REPO / "policies").get("default")
        identity = DeviceIdentity.create(mac="00:1A:E8:00:00:09", ips=["10.0.0.9"])
        pool = KeyPool(workers=1)
        (key,) = pool.generate([policy.key_type])
        built = build_certificate(identity, policy, runtime.issuer(), runtime.clock.now(), key=key)
        assert built.key is key
        assert public_keys_match(key, built.cert)
        (wrong,) = pool.generate([KeyType.EC_P256])
        with pytest.raises(IssuanceError, match="policy wants rsa-2048"):
            build_certificate(identity, policy, runtime.issuer(), runtime.clock.now(), key=wrong)
    finally:
        runtime.close()


def _public(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_read_ahead_makes_the_next_batch_and_never_hands_a_key_out_twice() -> None:
    pool = KeyPool(workers=2, read_ahead=3)
    try:
        handed: list[bytes] = []
        for _ in range(3):
            batch = pool.generate([KeyType.EC_P256, KeyType.EC_P256, KeyType.EC_P384])
            assert [key_type_of(k) for k in batch] == [KeyType.EC_P256, KeyType.EC_P256, KeyType.EC_P384]
            handed.extend(_public(k) for k in batch)
            assert pool.stocked(KeyType.EC_P256) == 2  # as many as this batch took, per type
            assert pool.stocked(KeyType.EC_P384) == 1
        single = pool.generate([KeyType.EC_P256])  # a single key comes from the stock when there is one
        handed.extend(_public(k) for k in single)
        assert pool.stocked(KeyType.EC_P256) == 1
        assert len(set(handed)) == len(handed) == 10, "a key was handed out twice"
    finally:
        pool.close()
    assert pool.stocked(KeyType.EC_P256) == 0
