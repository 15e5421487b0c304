"""The WPI listener's own TLS certificate: configured files, or one issued from certmgr's CA into the data dir
(:func:`certmgr.issuance.listener_tls.ensure_listener_tls`, the code path the API listener shares)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from certmgr.issuance.listener_tls import (
    LISTENER_CERT_RENEW_BEFORE,
    LISTENER_CERT_VALIDITY,
    ListenerTLS,
    ensure_listener_tls,
)

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

WPI_TLS_DIR = "wpi"
WPI_CERT_FILE = "wpi-server.pem"
WPI_KEY_FILE = "wpi-server.key"
WPI_CERT_VALIDITY = LISTENER_CERT_VALIDITY
WPI_CERT_RENEW_BEFORE = LISTENER_CERT_RENEW_BEFORE


def ensure_wpi_tls(runtime: Runtime) -> tuple[Path, Path]:
    """The WPI listener's certificate and key files: the configured ones, or a certificate issued from
    certmgr's own CA into ``<data_dir>/wpi/`` (key 0600) on first start and again shortly before it expires.

    Raises:
        ConfigError: if only one of ``wpi_tls_cert`` / ``wpi_tls_key`` is set or a file is missing.
        CAError: if the CA cannot issue. StorageError: if the files cannot be written.
    """
    settings = runtime.settings
    return ensure_listener_tls(
        runtime,
        ListenerTLS(
            what="WPI",
            cert_setting="wpi_tls_cert",
            key_setting="wpi_tls_key",
            cert_file=settings.wpi_tls_cert,
            key_file=settings.wpi_tls_key,
            folder=settings.data_dir / WPI_TLS_DIR,
            cert_name=WPI_CERT_FILE,
            key_name=WPI_KEY_FILE,
            common_name="certmgr WPI",
            dns_names=("certmgr-wpi",),
            addresses=(settings.wpi_public_addr, settings.wpi_host),
        ),
    )


__all__ = ["ensure_wpi_tls"]
