"""The CA store: the CA's certificates and encrypted keys in the data directory.

Layout of ``ca_dir`` (all files mode 0600, written together with :func:`atomic_write_many`):

============  ==========================================================================================
root.pem      root certificate (optional: an imported enterprise CA may not come with its root)
root.key      root key, encrypted PKCS#8 (optional: the root may be kept offline)
issuing.pem   issuing CA certificate
issuing.key   issuing CA key, encrypted PKCS#8
chain.pem     issuing certificate, then any intermediates, then the root if it is known
============  ==========================================================================================

Issuing certificates needs only ``issuing.pem``, ``issuing.key`` and ``chain.pem``. Key bytes and passphrases
never appear in exception messages.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import pkcs12

from certmgr.errors import (
    CACorruptError,
    CAExistsError,
    CANotInitialisedError,
    CAPassphraseError,
    InputError,
    StorageError,
)
from certmgr.fsutil import atomic_write_many
from certmgr.pki.ca import CAHierarchyDefinition, Issuer, build_issuing, build_root
from certmgr.pki.keys import (
    PrivateKey,
    encrypt_private_key_pem,
    fingerprint_sha256,
    load_private_key_pem,
    public_keys_match,
)

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
ISSUING_CERT = "issuing.pem"
ISSUING_KEY = "issuing.key"
CHAIN = "chain.pem"
ALL_FILES = (ROOT_CERT, ROOT_KEY, ISSUING_CERT, ISSUING_KEY, CHAIN)

__all__ = ["ALL_FILES", "CAInfo", "CAStore", "Issuer", "issuer_from_pem", "split_chain"]


@dataclass(frozen=True)
class CAInfo:
    """Public facts about the CA; reading them needs no passphrase."""

    issuing_cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    root_cert: x509.Certificate | None
    issuing_subject: str
    issuing_fingerprint_sha256: str
    root_subject: str | None
    root_fingerprint_sha256: str | None
    not_before: datetime
    not_after: datetime
    root_key_present: bool

    @classmethod
    def from_certs(
        cls,
        chain: Sequence[x509.Certificate],
        root: x509.Certificate | None,
        root_key_present: bool,
    ) -> CAInfo:
        """Describe a CA from its chain (issuing first, without the root) and its root, if known."""
        issuing = chain[0]
        return cls(
            issuing_cert=issuing,
            chain=tuple(chain),
            root_cert=root,
            issuing_subject=issuing.subject.rfc4514_string(),
            issuing_fingerprint_sha256=fingerprint_sha256(issuing),
            root_subject=root.subject.rfc4514_string() if root is not None else None,
            root_fingerprint_sha256=fingerprint_sha256(root) if root is not None else None,
            not_before=issuing.not_valid_before_utc,
            not_after=issuing.not_valid_after_utc,
            root_key_present=root_key_present,
        )


class CAStore:
    """Reads and writes the CA files in ``ca_dir``."""

    def __init__(self, ca_dir: Path) -> None:
        self.ca_dir = ca_dir

    def exists(self) -> bool:
        """Whether any CA file is present (a partial CA counts: it must not be overwritten by accident)."""
        return any((self.ca_dir / name).exists() for name in ALL_FILES)

    def initialise(self, defn: CAHierarchyDefinition, passphrase: bytes, now: datetime, force: bool = False) -> CAInfo:
        """Create a new root and issuing CA from ``defn`` and store them, keys encrypted with ``passphrase``.

        Raises:
            CAExistsError: if a CA (or part of one) exists and ``force`` is false.
            InputError: if ``passphrase`` is empty.
            StorageError: if the files cannot be written (then none of them was replaced).
        """
        self._refuse_overwrite(force)
        if not passphrase:
            raise InputError("the CA passphrase must not be empty")
        root_key, root_cert = build_root(defn, now)
        issuing_key, issuing_cert = build_issuing(defn, root_key, root_cert, now)
        self._write(
            chain=(issuing_cert,),
            issuing_key=issuing_key,
            root=root_cert,
            root_key=root_key,
            passphrase=passphrase,
        )
        return CAInfo.from_certs((issuing_cert,), root_cert, root_key_present=True)

    def import_pkcs12(self, data: bytes, p12_password: bytes | None, passphrase: bytes, force: bool = False) -> CAInfo:
        """Import an existing (enterprise) issuing CA from a PKCS#12 file.

        The PKCS#12 holds the CA's key, its certificate and, optionally, the certificates above it (in any
        order).

        Raises:
            CAExistsError: if a CA exists and ``force`` is false.
            InputError: if the PKCS#12 cannot be opened with ``p12_password``, lacks the key or certificate,
                or the material fails the checks of :meth:`import_key_and_chain`.
            StorageError: if the files cannot be written.
        """
        self._refuse_overwrite(force)
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, p12_password)
        except ValueError:
            raise InputError("cannot open the PKCS#12: wrong password or not a PKCS#12 file") from None
        if key is None or cert is None:
            raise InputError("the PKCS#12 must contain the CA's private key and certificate")
        if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
            raise InputError(f"unsupported CA key algorithm {type(key).__name__}")
        certs = _order_chain(cert, extra)
        return self._import(key, certs, passphrase)

    def import_key_and_chain(
        self,
        key_pem: bytes,
        key_password: bytes | None,
        chain_pem: bytes,
        passphrase: bytes,
        force: bool = False,
    ) -> CAInfo:
        """Import an existing (enterprise) issuing CA from a PEM key and a PEM chain.

        ``chain_pem`` starts with the issuing CA's certificate, followed by each certificate that signed the
        previous one, up to the root; the root may be left out.

        Raises:
            CAExistsError: if a CA exists and ``force`` is false.
            InputError: if the key cannot be read with ``key_password``, the chain is empty, out of order or
                contains a non-CA certificate, the key does not match the first certificate, or that
                certificate may not sign certificates (keyCertSign) or is self-signed.
            StorageError: if the files cannot be written.
        """
        self._refuse_overwrite(force)
        try:
            key = load_private_key_pem(key_pem, key_password)
        except CAPassphraseError:
            raise InputError("cannot decrypt the imported CA key: wrong password") from None
        except CACorruptError as exc:
            raise InputError(f"the imported CA key is unusable: {exc.message}") from None
        try:
            certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            raise InputError("the chain is not a sequence of PEM certificates") from None
        return self._import(key, certs, passphrase)

    def load_issuer(self, passphrase: bytes) -> Issuer:
        """Load what is needed to issue certificates: ``issuing.pem``, ``issuing.key`` and ``chain.pem``.

        Raises:
            CANotInitialisedError: if there is no CA.
            CACorruptError: if a required file is missing or unreadable, or the key does not match.
            CAPassphraseError: if ``passphrase`` does not decrypt the issuing key.
        """
        chain_pem, key_pem = self.stored_material()
        return issuer_from_pem(chain_pem, key_pem, passphrase)

    def stored_material(self) -> tuple[bytes, bytes]:
        """``(chain.pem, issuing.key)`` as stored: the chain (issuing first, the root last if known) and the
        issuing key still encrypted with the CA passphrase. Nothing is decrypted; the database keeps a copy so
        that every node can issue with the CA (:func:`issuer_from_pem`).

        Raises:
            CANotInitialisedError: if there is no CA. CACorruptError: if a file is missing or inconsistent.
        """
        self._load_chain()  # the files agree with each other
        return self._read(CHAIN), self._read(ISSUING_KEY)

    def load_root_key(self, passphrase: bytes) -> PrivateKey:
        """Load the root key (for re-signing an issuing CA); the root may be offline.

        Raises:
            CANotInitialisedError: if there is no CA.
            CACorruptError: if ``root.key`` or ``root.pem`` is missing or does not match.
            CAPassphraseError: if ``passphrase`` does not decrypt the root key.
        """
        info = self.load_public()
        if info.root_cert is None or not info.root_key_present:
            raise CACorruptError("the root CA key is not in the data directory (offline root?)")
        key = load_private_key_pem(self._read(ROOT_KEY), passphrase)
        if not public_keys_match(key, info.root_cert):
            raise CACorruptError(f"{ROOT_KEY} does not belong to the certificate in {ROOT_CERT}")
        return key

    def load_public(self) -> CAInfo:
        """Read the CA's certificates without any passphrase and check that the files agree.

        Raises:
            CANotInitialisedError: if there is no CA.
            CACorruptError: if a required file is missing or unparseable, or ``root.pem`` disagrees with
                ``chain.pem``.
        """
        chain, root = self._load_chain()
        root_file = self.ca_dir / ROOT_CERT
        if root_file.exists():
            stored_root = _parse_one_cert(self._read(ROOT_CERT), ROOT_CERT)
            if root is None or stored_root != root:
                raise CACorruptError(f"{ROOT_CERT} is not the root at the end of {CHAIN}")
        elif root is not None:
            raise CACorruptError(f"{ROOT_CERT} is missing although {CHAIN} ends with a root")
        return CAInfo.from_certs(chain, root, root_key_present=(self.ca_dir / ROOT_KEY).exists())

    # --- internals ----------------------------------------------------------------------------------------
    def _refuse_overwrite(self, force: bool) -> None:
        if not force and self.exists():
            raise CAExistsError(f"a CA already exists in {self.ca_dir}; use force to replace it")

    def _import(self, key: PrivateKey, certs: Sequence[x509.Certificate], passphrase: bytes) -> CAInfo:
        if not passphrase:
            raise InputError("the CA passphrase must not be empty")
        chain, root = _check_import(key, certs)
        self._write(chain=chain, issuing_key=key, root=root, root_key=None, passphrase=passphrase)
        return CAInfo.from_certs(chain, root, root_key_present=False)

    def _write(
        self,
        *,
        chain: tuple[x509.Certificate, ...],
        issuing_key: PrivateKey,
        root: x509.Certificate | None,
        root_key: PrivateKey | None,
        passphrase: bytes,
    ) -> None:
        files: dict[Path, bytes] = {
            self.ca_dir / ISSUING_CERT: _pem(chain[0]),
            self.ca_dir / ISSUING_KEY: encrypt_private_key_pem(issuing_key, passphrase),
            self.ca_dir / CHAIN: b"".join(_pem(c) for c in (*chain, *((root,) if root else ()))),
        }
        if root is not None:
            files[self.ca_dir / ROOT_CERT] = _pem(root)
        if root_key is not None:
            files[self.ca_dir / ROOT_KEY] = encrypt_private_key_pem(root_key, passphrase)
        self.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_many(files)
        # Files of a replaced CA that the new one does not have (e.g. the old root.key when importing).
        for name in ALL_FILES:
            path = self.ca_dir / name
            if path not in files:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot remove stale {path}: {exc.strerror or exc}") from exc

    def _read(self, name: str) -> bytes:
        path = self.ca_dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not self.exists():
                raise CANotInitialisedError(f"no CA in {self.ca_dir}; initialise or import one first") from None
            raise CACorruptError(f"CA file {name} is missing in {self.ca_dir}") from None
        except OSError as exc:
            raise CACorruptError(f"cannot read CA file {path}: {exc.strerror or exc}") from None

    def _load_chain(self) -> tuple[tuple[x509.Certificate, ...], x509.Certificate | None]:
        """(chain without root, root or None) from ``issuing.pem`` and ``chain.pem``."""
        if not self.exists():
            raise CANotInitialisedError(f"no CA in {self.ca_dir}; initialise or import one first")
        issuing = _parse_one_cert(self._read(ISSUING_CERT), ISSUING_CERT)
        chain, root = split_chain(self._read(CHAIN), CHAIN)
        if chain[0] != issuing:
            raise CACorruptError(f"{CHAIN} does not start with the certificate in {ISSUING_CERT}")
        return chain, root


def split_chain(
    chain_pem: bytes, name: str = "CA chain"
) -> tuple[tuple[x509.Certificate, ...], x509.Certificate | None]:
    """``(chain without root, root or None)`` from a PEM chain: issuing first, intermediates, the root last if
    known (a self-signed last certificate is the root).

    Raises:
        CACorruptError: if ``chain_pem`` is not a non-empty sequence of PEM certificates.
    """
    try:
        full = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise CACorruptError(f"{name} is not a sequence of PEM certificates") from None
    if len(full) > 1 and _is_self_signed(full[-1]):
        return tuple(full[:-1]), full[-1]
    return tuple(full), None


def issuer_from_pem(chain_pem: bytes, key_pem: bytes, passphrase: bytes) -> Issuer:
    """The :class:`Issuer` from a stored chain and encrypted issuing key (see :meth:`CAStore.stored_material`).

    Raises:
        CACorruptError: if the chain is unreadable or the key does not belong to its first certificate.
        CAPassphraseError: if ``passphrase`` does not decrypt the key.
    """
    chain, root = split_chain(chain_pem)
    key = load_private_key_pem(key_pem, passphrase)
    if not public_keys_match(key, chain[0]):
        raise CACorruptError("the issuing CA key does not belong to the issuing CA certificate")
    return Issuer(cert=chain[0], key=key, chain=chain, root=root)


def _check_import(
    key: PrivateKey, certs: Sequence[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], x509.Certificate | None]:
    if not certs:
        raise InputError("the chain contains no certificate")
    issuing = certs[0]
    if not public_keys_match(key, issuing):
        raise InputError("the private key does not match the first certificate of the chain")
    if not _can_sign_certificates(issuing):
        raise InputError(
            "the first certificate is not a CA that may sign certificates (BasicConstraints CA:TRUE and "
            "KeyUsage keyCertSign are required)"
        )
    if _is_self_signed(issuing):
        raise InputError("the first certificate is self-signed; import an issuing CA below the root")
    for position, (child, parent) in enumerate(itertools.pairwise(certs), start=1):
        if not _is_ca(parent):
            raise InputError(f"certificate {position + 1} of the chain is not a CA certificate")
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise InputError(
                f"the chain is out of order: certificate {position} is not issued by certificate {position + 1}"
            ) from None
    if len(certs) > 1 and _is_self_signed(certs[-1]):
        return tuple(certs[:-1]), certs[-1]
    return tuple(certs), None


def _order_chain(leaf: x509.Certificate, others: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``leaf`` followed by its issuers found among ``others``; certificates that do not fit are ignored."""
    ordered = [leaf]
    remaining = list(others)
    while not _is_self_signed(ordered[-1]):
        parent = next((c for c in remaining if c.subject == ordered[-1].issuer and _signed_by(ordered[-1], c)), None)
        if parent is None:
            break
        ordered.append(parent)
        remaining.remove(parent)
    return ordered


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and _signed_by(cert, cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _can_sign_certificates(cert: x509.Certificate) -> bool:
    if not _is_ca(cert):
        return False
    try:
        return bool(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return False


def _parse_one_cert(data: bytes, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CACorruptError(f"{name} is not a PEM certificate") from None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
