"""Packaging a phone certificate as PKCS#12 (D7, D8): the one place that decides which chain goes into the
container and what its friendly name is. ``certmgr issue``, the deployment pipeline and the API all package
through here.

* **Chain**: the chain of the CA that *signed the leaf* (looked up by the leaf's issuer fingerprint in the CA
  table), never the CA that happens to be active now — after a CA rotation, a certificate of the old CA still
  travels with the old chain. The root is included only if the policy says ``include_root``. Reading the chain
  needs no passphrase and decrypts nothing.
* **Friendly name**: the policy's ``pkcs12.friendly_name`` template rendered for the phone's identity
  (:func:`certmgr.inventory.phones.identity_of` gives every path the same identity).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from sqlmodel import Session, col, select

from certmgr.db.models import CARecord, CARole
from certmgr.errors import CACorruptError
from certmgr.identity import DeviceIdentity
from certmgr.pki.keys import PrivateKey
from certmgr.pki.pkcs12 import build_pkcs12
from certmgr.pki.store import split_chain
from certmgr.pki.types import Pkcs12Profile
from certmgr.policy import Policy
from certmgr.policy.templates import render_friendly_name


def bundle_chain(
    chain: Sequence[x509.Certificate], root: x509.Certificate | None, policy: Policy
) -> tuple[x509.Certificate, ...]:
    """The certificates that travel with the leaf: the issuing chain, plus the root only if the policy says so."""
    if policy.pkcs12.include_root and root is not None:
        return (*chain, root)
    return tuple(chain)


def package(
    key: PrivateKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    root: x509.Certificate | None,
    *,
    policy: Policy,
    identity: DeviceIdentity,
    profile: Pkcs12Profile,
    password: bytes | None,
) -> bytes:
    """Key + certificate + :func:`bundle_chain` as PKCS#12 in ``profile``, named for ``identity``.

    Raises:
        InputError: if ``profile`` needs a password and none is given.
    """
    return build_pkcs12(
        key, cert, bundle_chain(chain, root, policy), profile, password, render_friendly_name(policy, identity)
    )


def signing_chain(
    session: Session, issuer_fingerprint: str
) -> tuple[tuple[x509.Certificate, ...], x509.Certificate | None]:
    """``(chain without root, root or None)`` of the CA whose issuing certificate has SHA-256
    ``issuer_fingerprint`` (a leaf's ``Certificate.issuer_fingerprint``), from the CA table.

    Raises:
        CACorruptError: if the CA table does not know that CA (or holds no chain for it).
    """
    row = session.exec(
        select(CARecord).where(
            col(CARecord.fingerprint_sha256) == issuer_fingerprint, col(CARecord.role) == CARole.ISSUING.value
        )
    ).first()
    if row is None:
        raise CACorruptError(f"the CA {issuer_fingerprint[:16]}… that signed this certificate is not recorded")
    if row.chain_pem:
        return split_chain(row.chain_pem.encode())
    return (x509.load_pem_x509_certificate(row.cert_pem.encode()),), None


__all__ = ["bundle_chain", "package", "signing_chain"]
