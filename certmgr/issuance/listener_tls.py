"""A listener's own TLS certificate — the phone-facing WPI listener's and the API listener's: the configured files,
or a certificate issued from certmgr's active CA into a folder of the data dir, renewed shortly before it expires.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from certmgr.errors import ConfigError
from certmgr.fsutil import atomic_write, ensure_private_dir
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.types import KeyType

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.tls")

LISTENER_CERT_VALIDITY = timedelta(days=397)
LISTENER_CERT_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class ListenerTLS:
    """What a listener's certificate is: the setting names of its configured files (for messages), the files
    (``None`` = not configured), where an issued one lives, its common name, DNS names and candidate addresses
    (host names and the unspecified address are skipped; 127.0.0.1 if none is left)."""

    what: str
    cert_setting: str
    key_setting: str
    cert_file: Path | None
    key_file: Path | None
    folder: Path
    cert_name: str
    key_name: str
    common_name: str
    dns_names: tuple[str, ...]
    addresses: Sequence[str | None]


def _ips(candidates: Sequence[str | None]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for candidate in candidates:
        if candidate:
            try:
                addr = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if not addr.is_unspecified and addr not in ips:
                ips.append(addr)
    return ips or [ipaddress.ip_address("127.0.0.1")]


def ensure_listener_tls(runtime: Runtime, spec: ListenerTLS) -> tuple[Path, Path]:
    """The listener's certificate and key files: the configured ones, or a certificate issued from certmgr's own
    CA into ``spec.folder`` (key 0600) on first start and again shortly before it expires.

    Raises:
        ConfigError: if only one of the two files is configured or a configured file is missing.
        CAError: if the CA cannot issue. StorageError: if the files cannot be written.
    """
    if spec.cert_file or spec.key_file:
        if not (spec.cert_file and spec.key_file):
            raise ConfigError(f"set both {spec.cert_setting} and {spec.key_setting}, or neither")
        for path in (spec.cert_file, spec.key_file):
            if not path.is_file():
                raise ConfigError(f"{spec.what} TLS file {path} does not exist")
        return spec.cert_file, spec.key_file
    cert_path, key_path = spec.folder / spec.cert_name, spec.folder / spec.key_name
    now = runtime.clock.now()
    if cert_path.is_file() and key_path.is_file():
        try:
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if current.not_valid_after_utc - LISTENER_CERT_RENEW_BEFORE > now:
                return cert_path, key_path
        except (OSError, ValueError):
            log.warning("%s TLS certificate %s unreadable; issuing a new one", spec.what, cert_path)
    ensure_private_dir(spec.folder)
    issuer = runtime.issuer()
    leaf = LeafSpec(
        subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, spec.common_name)]),
        dns_names=spec.dns_names,
        ip_addresses=tuple(_ips(spec.addresses)),
        validity=LISTENER_CERT_VALIDITY,
        clip_to_ca=True,
    )
    key, cert = issue_key_and_leaf(leaf, KeyType.RSA_2048, issuer, now)
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *issuer.chain))
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, chain_pem, mode=0o600)
    log.info("issued the %s listener certificate %s", spec.what, cert_path)
    return cert_path, key_path


__all__ = ["LISTENER_CERT_RENEW_BEFORE", "LISTENER_CERT_VALIDITY", "ListenerTLS", "ensure_listener_tls"]
