"""CAStore: initialise, load, errors, file modes, offline root, enterprise imports."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certmgr.errors import (
    CACorruptError,
    CAExistsError,
    CANotInitialisedError,
    CAPassphraseError,
    InputError,
)
from certmgr.pki.ca import CADefinition, CAHierarchyDefinition, build_issuing, build_root
from certmgr.pki.keys import (
    ENCRYPTED_KEY_PEM_HEADER,
    PLAINTEXT_KEY_PEM_HEADERS,
    PrivateKey,
    fingerprint_sha256,
    generate_private_key,
    public_keys_match,
)
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.store import ALL_FILES, CAStore, Issuer
from certmgr.pki.types import KeyType

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
PASSPHRASE = b"correct horse battery staple"
SPEC = LeafSpec(
    subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phone")]),
    dns_names=("phone.example.net",),
    ip_addresses=(),
    validity=timedelta(days=30),
)


def _level(cn: str, path_length: int, days: int = 3650) -> CADefinition:
    return CADefinition(cn, "Test Org", None, "DE", KeyType.EC_P256, timedelta(days=days), path_length)


DEFN = CAHierarchyDefinition(root=_level("certmgr Root", 1), issuing=_level("certmgr Issuing", 0, 1825))


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    return CAStore(tmp_path / "ca")


@pytest.fixture
def initialised(store: CAStore) -> CAStore:
    store.initialise(DEFN, PASSPHRASE, NOW)
    return store


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class Enterprise:
    """An enterprise PKI built in the test: root -> intermediate -> issuing CA, plus an unrelated leaf."""

    def __init__(self) -> None:
        upper = CAHierarchyDefinition(root=_level("Corp Root", 2), issuing=_level("Corp Intermediate", 1))
        lower = CAHierarchyDefinition(root=_level("unused", 2), issuing=_level("Corp Phone Issuing", 0, 1825))
        self.root_key, self.root = build_root(upper, NOW)
        self.intermediate_key, self.intermediate = build_issuing(upper, self.root_key, self.root, NOW)
        self.issuing_key, self.issuing = build_issuing(lower, self.intermediate_key, self.intermediate, NOW)


@pytest.fixture(scope="module")
def enterprise() -> Enterprise:
    return Enterprise()


# --- initialise and load ------------------------------------------------------------------------------------
def test_initialise_and_load_round_trip(store: CAStore) -> None:
    assert not store.exists()
    info = store.initialise(DEFN, PASSPHRASE, NOW)
    assert store.exists()
    assert info.issuing_subject == "CN=certmgr Issuing,O=Test Org,C=DE"
    assert info.root_subject == "CN=certmgr Root,O=Test Org,C=DE"
    assert info.root_key_present

    public = store.load_public()
    assert public == info
    assert public.issuing_fingerprint_sha256 == fingerprint_sha256(public.issuing_cert)
    assert public.root_cert is not None
    assert public.root_fingerprint_sha256 == fingerprint_sha256(public.root_cert)
    assert public.not_before == public.issuing_cert.not_valid_before_utc
    assert public.not_after == NOW + timedelta(days=1825)

    issuer = store.load_issuer(PASSPHRASE)
    assert issuer.cert == public.issuing_cert
    assert issuer.chain == (public.issuing_cert,)
    assert issuer.root == public.root_cert
    _, leaf = issue_key_and_leaf(SPEC, KeyType.EC_P256, issuer, NOW)
    leaf.verify_directly_issued_by(issuer.cert)


def test_files_modes_and_encrypted_keys(initialised: CAStore) -> None:
    for name in ALL_FILES:
        path = initialised.ca_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    for name in ("root.key", "issuing.key"):
        data = (initialised.ca_dir / name).read_bytes()
        assert data.startswith(ENCRYPTED_KEY_PEM_HEADER)
        assert not any(header in data for header in PLAINTEXT_KEY_PEM_HEADERS)
    chain = x509.load_pem_x509_certificates((initialised.ca_dir / "chain.pem").read_bytes())
    info = initialised.load_public()
    assert chain == [info.issuing_cert, info.root_cert]
    assert sorted(p.name for p in initialised.ca_dir.iterdir()) == sorted(ALL_FILES)  # no temp files left


def test_wrong_passphrase(initialised: CAStore) -> None:
    with pytest.raises(CAPassphraseError) as info:
        initialised.load_issuer(b"not the passphrase")
    assert str(info.value) == "cannot decrypt the CA key: wrong passphrase"
    assert "not the passphrase" not in str(info.value)
    with pytest.raises(CAPassphraseError):
        initialised.load_root_key(b"not the passphrase")


def test_not_initialised(store: CAStore) -> None:
    with pytest.raises(CANotInitialisedError):
        store.load_public()
    with pytest.raises(CANotInitialisedError):
        store.load_issuer(PASSPHRASE)
    store.ca_dir.mkdir(parents=True)
    with pytest.raises(CANotInitialisedError):
        store.load_issuer(PASSPHRASE)


@pytest.mark.parametrize("name", ["issuing.pem", "issuing.key", "chain.pem"])
def test_missing_required_file_is_corrupt(initialised: CAStore, name: str) -> None:
    (initialised.ca_dir / name).unlink()
    with pytest.raises(CACorruptError, match=name):
        initialised.load_issuer(PASSPHRASE)


@pytest.mark.parametrize("name", ["issuing.pem", "issuing.key", "chain.pem"])
def test_garbage_file_is_corrupt(initialised: CAStore, name: str) -> None:
    (initialised.ca_dir / name).write_bytes(b"garbage\n")
    with pytest.raises(CACorruptError):
        initialised.load_issuer(PASSPHRASE)


def test_mismatched_issuing_key_is_corrupt(initialised: CAStore) -> None:
    root_key = (initialised.ca_dir / "root.key").read_bytes()
    (initialised.ca_dir / "issuing.key").write_bytes(root_key)
    with pytest.raises(CACorruptError, match="does not belong"):
        initialised.load_issuer(PASSPHRASE)


def test_chain_not_starting_with_issuing_is_corrupt(initialised: CAStore) -> None:
    (initialised.ca_dir / "chain.pem").write_bytes((initialised.ca_dir / "root.pem").read_bytes())
    with pytest.raises(CACorruptError, match=r"chain\.pem"):
        initialised.load_public()


def test_root_pem_disagreeing_with_chain_is_corrupt(initialised: CAStore, tmp_path: Path) -> None:
    other = CAStore(tmp_path / "other")
    other.initialise(DEFN, PASSPHRASE, NOW)
    (initialised.ca_dir / "root.pem").write_bytes((other.ca_dir / "root.pem").read_bytes())
    with pytest.raises(CACorruptError, match=r"root\.pem"):
        initialised.load_public()
    (initialised.ca_dir / "root.pem").unlink()
    with pytest.raises(CACorruptError, match=r"root\.pem is missing"):
        initialised.load_public()


def test_refuse_overwrite_without_force(initialised: CAStore) -> None:
    before = initialised.load_public()
    with pytest.raises(CAExistsError):
        initialised.initialise(DEFN, PASSPHRASE, NOW)
    assert initialised.load_public() == before
    after = initialised.initialise(DEFN, b"new passphrase", NOW, force=True)
    assert after.issuing_fingerprint_sha256 != before.issuing_fingerprint_sha256
    initialised.load_issuer(b"new passphrase")


def test_partial_ca_counts_as_existing(store: CAStore) -> None:
    store.ca_dir.mkdir(parents=True)
    (store.ca_dir / "root.key").write_bytes(b"x")
    assert store.exists()
    with pytest.raises(CAExistsError):
        store.initialise(DEFN, PASSPHRASE, NOW)
    with pytest.raises(CACorruptError):
        store.load_issuer(PASSPHRASE)


def test_empty_passphrase_refused(store: CAStore) -> None:
    with pytest.raises(InputError):
        store.initialise(DEFN, b"", NOW)
    assert not store.exists()


def test_issuance_with_offline_root(initialised: CAStore) -> None:
    (initialised.ca_dir / "root.key").unlink()
    issuer = initialised.load_issuer(PASSPHRASE)
    _, leaf = issue_key_and_leaf(SPEC, KeyType.RSA_2048, issuer, NOW + timedelta(days=1))
    leaf.verify_directly_issued_by(issuer.cert)
    assert not initialised.load_public().root_key_present
    with pytest.raises(CACorruptError, match="offline"):
        initialised.load_root_key(PASSPHRASE)
    # Even without root.pem (only issuing.pem, issuing.key, chain.pem are needed).
    (initialised.ca_dir / "root.pem").unlink()
    assert initialised.load_issuer(PASSPHRASE).cert == issuer.cert


def test_load_root_key(initialised: CAStore) -> None:
    key = initialised.load_root_key(PASSPHRASE)
    root = initialised.load_public().root_cert
    assert root is not None
    assert public_keys_match(key, root)


# --- imports ------------------------------------------------------------------------------------------------
def _assert_imported(store: CAStore, ent: Enterprise, with_root: bool) -> Issuer:
    issuer = store.load_issuer(PASSPHRASE)
    assert issuer.cert == ent.issuing
    assert issuer.chain == (ent.issuing, ent.intermediate)
    assert issuer.root == (ent.root if with_root else None)
    info = store.load_public()
    assert info.root_cert == issuer.root
    assert not info.root_key_present
    assert not (store.ca_dir / "root.key").exists()
    assert (store.ca_dir / "root.pem").exists() is with_root
    key_file = (store.ca_dir / "issuing.key").read_bytes()
    assert key_file.startswith(ENCRYPTED_KEY_PEM_HEADER)
    _, leaf = issue_key_and_leaf(SPEC, KeyType.RSA_2048, issuer, NOW)
    leaf.verify_directly_issued_by(ent.issuing)
    return issuer


@pytest.mark.parametrize("with_root", [True, False])
def test_import_key_and_chain(store: CAStore, enterprise: Enterprise, with_root: bool) -> None:
    certs = (enterprise.issuing, enterprise.intermediate, *((enterprise.root,) if with_root else ()))
    info = store.import_key_and_chain(
        _key_pem(enterprise.issuing_key, b"ent-key-pw"), b"ent-key-pw", _pem(*certs), PASSPHRASE
    )
    assert info.issuing_cert == enterprise.issuing
    _assert_imported(store, enterprise, with_root)


def test_import_unencrypted_key(store: CAStore, enterprise: Enterprise) -> None:
    store.import_key_and_chain(
        _key_pem(enterprise.issuing_key), None, _pem(enterprise.issuing, enterprise.intermediate), PASSPHRASE
    )
    _assert_imported(store, enterprise, with_root=False)


def test_import_mismatched_key(store: CAStore, enterprise: Enterprise) -> None:
    other = generate_private_key(KeyType.EC_P256)
    with pytest.raises(InputError, match="does not match"):
        store.import_key_and_chain(_key_pem(other), None, _pem(enterprise.issuing), PASSPHRASE)
    assert not store.exists()


def test_import_wrong_order(store: CAStore, enterprise: Enterprise) -> None:
    chain = _pem(enterprise.issuing, enterprise.root, enterprise.intermediate)
    with pytest.raises(InputError, match="out of order"):
        store.import_key_and_chain(_key_pem(enterprise.issuing_key), None, chain, PASSPHRASE)


def test_import_non_ca_certificate(store: CAStore, enterprise: Enterprise) -> None:
    issuer = Issuer(cert=enterprise.issuing, key=enterprise.issuing_key, chain=(enterprise.issuing,), root=None)
    leaf_key, leaf = issue_key_and_leaf(SPEC, KeyType.EC_P256, issuer, NOW)
    with pytest.raises(InputError, match="keyCertSign"):
        store.import_key_and_chain(_key_pem(leaf_key), None, _pem(leaf, enterprise.issuing), PASSPHRASE)


def test_import_self_signed_root_as_issuing_refused(store: CAStore, enterprise: Enterprise) -> None:
    with pytest.raises(InputError, match="self-signed"):
        store.import_key_and_chain(_key_pem(enterprise.root_key), None, _pem(enterprise.root), PASSPHRASE)


def test_import_wrong_key_password_and_bad_chain(store: CAStore, enterprise: Enterprise) -> None:
    key_pem = _key_pem(enterprise.issuing_key, b"right")
    with pytest.raises(InputError, match="wrong password"):
        store.import_key_and_chain(key_pem, b"wrong", _pem(enterprise.issuing), PASSPHRASE)
    with pytest.raises(InputError, match="PEM certificates"):
        store.import_key_and_chain(key_pem, b"right", b"no certificates", PASSPHRASE)
    assert not store.exists()


@pytest.mark.parametrize("with_root", [True, False])
def test_import_pkcs12_any_order(store: CAStore, enterprise: Enterprise, with_root: bool) -> None:
    # Deliberately root first: PKCS#12 does not order its certificates; the import must.
    extra = [enterprise.root, enterprise.intermediate] if with_root else [enterprise.intermediate]
    encryption = serialization.BestAvailableEncryption(b"p12pw")
    data = pkcs12.serialize_key_and_certificates(b"ca", enterprise.issuing_key, enterprise.issuing, extra, encryption)
    store.import_pkcs12(data, b"p12pw", PASSPHRASE)
    _assert_imported(store, enterprise, with_root)


def test_import_pkcs12_wrong_password_and_missing_key(store: CAStore, enterprise: Enterprise) -> None:
    # (A PKCS#12 with a mismatched key cannot be built with cryptography; the shared check is covered by
    # test_import_mismatched_key.)
    encryption = serialization.BestAvailableEncryption(b"p12pw")
    data = pkcs12.serialize_key_and_certificates(b"ca", enterprise.issuing_key, enterprise.issuing, None, encryption)
    with pytest.raises(InputError, match="wrong password"):
        store.import_pkcs12(data, b"nope", PASSPHRASE)
    with pytest.raises(InputError, match="wrong password or not a PKCS#12"):
        store.import_pkcs12(b"garbage", None, PASSPHRASE)
    cert_only = pkcs12.serialize_key_and_certificates(b"ca", None, enterprise.issuing, None, encryption)
    with pytest.raises(InputError, match="private key and certificate"):
        store.import_pkcs12(cert_only, b"p12pw", PASSPHRASE)
    assert not store.exists()


def test_import_over_existing_ca_needs_force_and_removes_old_root(initialised: CAStore, enterprise: Enterprise) -> None:
    key_pem, chain = _key_pem(enterprise.issuing_key), _pem(enterprise.issuing, enterprise.intermediate)
    with pytest.raises(CAExistsError):
        initialised.import_key_and_chain(key_pem, None, chain, PASSPHRASE)
    initialised.import_key_and_chain(key_pem, None, chain, PASSPHRASE, force=True)
    _assert_imported(initialised, enterprise, with_root=False)
