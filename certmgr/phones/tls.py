"""The WPI listener's own TLS certificate: configured files, or one issued from certmgr's CA into the data dir."""

from __future__ import annotations

import ipaddress
import logging
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

log = logging.getLogger("certmgr.phones")

WPI_TLS_DIR = "wpi"
WPI_CERT_FILE = "wpi-server.pem"
WPI_KEY_FILE = "wpi-server.key"
WPI_CERT_VALIDITY = timedelta(days=397)
WPI_CERT_RENEW_BEFORE = timedelta(days=30)


def ensure_wpi_tls(runtime: Runtime) -> tuple[Path, Path]:
    """The WPI listener's certificate and key files: the configured ones, or a certificate issued from
    certmgr's own CA into ``<data_dir>/wpi/`` (key 0600) on first start and again shortly before it expires.

    Raises:
        ConfigError: if only one of ``wpi_tls_cert`` / ``wpi_tls_key`` is set or a file is missing.
        CAError: if the CA cannot issue. StorageError: if the files cannot be written.
    """
    settings = runtime.settings
    if settings.wpi_tls_cert or settings.wpi_tls_key:
        if not (settings.wpi_tls_cert and settings.wpi_tls_key):
            raise ConfigError("set both wpi_tls_cert and wpi_tls_key, or neither")
        for path in (settings.wpi_tls_cert, settings.wpi_tls_key):
            if not path.is_file():
                raise ConfigError(f"WPI TLS file {path} does not exist")
        return settings.wpi_tls_cert, settings.wpi_tls_key
    folder = settings.data_dir / WPI_TLS_DIR
    cert_path, key_path = folder / WPI_CERT_FILE, folder / WPI_KEY_FILE
    now = runtime.clock.now()
    if cert_path.is_file() and key_path.is_file():
        try:
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if current.not_valid_after_utc - WPI_CERT_RENEW_BEFORE > now:
                return cert_path, key_path
        except (OSError, ValueError):
            log.warning("WPI TLS certificate %s unreadable; issuing a new one", cert_path)
    ensure_private_dir(folder)
    issuer = runtime.issuer()
    ips = []
    for candidate in (settings.wpi_public_addr, settings.wpi_host):
        if candidate:
            try:
                addr = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if not addr.is_unspecified and addr not in ips:
                ips.append(addr)
    if not ips:
        ips.append(ipaddress.ip_address("127.0.0.1"))
    spec = LeafSpec(
        subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "certmgr WPI")]),
        dns_names=("certmgr-wpi",),
        ip_addresses=tuple(ips),
        validity=WPI_CERT_VALIDITY,
        clip_to_ca=True,
    )
    key, cert = issue_key_and_leaf(spec, KeyType.RSA_2048, issuer, now)
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *issuer.chain))
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, chain_pem, mode=0o600)
    log.info("issued the WPI listener certificate %s", cert_path)
    return cert_path, key_path


__all__ = ["ensure_wpi_tls"]
