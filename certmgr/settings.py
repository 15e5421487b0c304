"""Typed settings for every certmgr process.

Values come from (highest first): constructor arguments, ``CERTMGR_*`` environment variables, the TOML file named
by ``CERTMGR_CONFIG`` (keys without the prefix, e.g. ``data_dir = "/srv/certmgr"``), then the defaults below.
No module-level settings object exists: factories take a :class:`Settings`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from certmgr.errors import ConfigError, StorageError
from certmgr.fsutil import atomic_write, ensure_private_dir

PASSPHRASE_FILE_NAME = "ca-passphrase"  # noqa: S105 (a file name)
MASTER_KEY_FILE_NAME = "master-key"
# The report kinds and formats of certmgr.reports (kept in step by tests/integration/test_reports_scheduled.py).
ExportKind = Literal["inventory", "expiry", "deployments", "audit", "compliance"]
ExportFormat = Literal["csv", "json", "pdf"]


class Settings(BaseSettings):
    """All settings of certmgr. Environment prefix ``CERTMGR_``."""

    model_config = SettingsConfigDict(env_prefix="CERTMGR_", extra="forbid", validate_default=True)

    # --- storage ------------------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("var"), description="Data directory: database, CA keys, secrets.")
    sqlite_busy_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="SQLite: how long a writer waits for another's lock."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite at <data_dir>/certmgr.db."
    )
    policy_dir: Path = Field(default=Path("policies"), description="Folder of policy TOML files.")
    ca_config_dir: Path = Field(default=Path("ca"), description="Folder of the declarative CA definitions.")

    # --- secrets ------------------------------------------------------------------------------------------
    ca_passphrase: SecretStr | None = Field(default=None, description="Passphrase of the CA keys.")
    ca_passphrase_file: Path | None = Field(default=None, description="File holding the CA passphrase.")
    master_key: SecretStr | None = Field(
        default=None, description="Master secret for encrypting issued private keys at rest."
    )
    master_key_file: Path | None = Field(default=None, description="File holding the master secret.")
    pkcs12_passwords: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Named PKCS#12 password secrets referenced by policies (password_secret = NAME).",
    )

    # --- listeners ----------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    wpi_host: str = Field(default="0.0.0.0", description="Bind address of the phone-facing listeners.")  # noqa: S104
    wpi_port: int = Field(default=18443, ge=0, le=65535)
    wpi_poll_port: int = Field(default=18080, ge=0, le=65535)
    wpi_public_addr: str | None = Field(
        default=None,
        description="Address phones are told to call back (dls_ip_addr); default: local address.",
    )
    wpi_tls_cert: Path | None = Field(default=None, description="PEM certificate (+chain) of the WPI listener.")
    wpi_tls_key: Path | None = Field(default=None, description="PEM private key of the WPI listener.")

    # --- phone behaviour ----------------------------------------------------------------------------------
    contact_gap_seconds: int = Field(default=300, ge=0, description="Minimum gap between two contact-me.")
    contact_me_port: int = Field(default=8085, ge=1, le=65535)
    wbm_port: int = Field(default=443, ge=1, le=65535, description="Port of the phones' WBM (TLS probe).")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="NAT/proxy addresses accepted instead of the phone's own address."
    )
    callback_timeout_seconds: int = Field(default=60, ge=1, description="Wait for solicited after contact-me.")
    deploy_concurrency: int = Field(default=50, ge=1, description="Phones in interaction at once, globally.")
    retry_base_seconds: int = Field(default=300, ge=1)
    retry_max_seconds: int = Field(default=86400, ge=1)
    max_attempts: int = Field(default=10, ge=1)
    poll_pending_status: int = Field(default=202, ge=200, le=299)
    poll_idle_status: int = Field(default=200, ge=200, le=299)

    # --- deployment pipeline ------------------------------------------------------------------------------
    dispatch_tick_seconds: float = Field(default=1.0, gt=0, le=60, description="Dispatcher tick interval.")
    contact_me_timeout_seconds: float = Field(default=5.0, gt=0, le=60, description="HTTP timeout of contact-me.")
    interaction_timeout_seconds: int = Field(
        default=60, ge=1, description="An interaction idle this long is dropped (the phone may open a new one)."
    )
    busy_callback_seconds: int = Field(
        default=3600, ge=1, description="How long a phone told send-solicited (busy) may call back with solicited."
    )
    probe_tries: int = Field(default=5, ge=1, le=20, description="TLS probes of the WBM until it serves the cert.")
    probe_interval_seconds: float = Field(default=1.0, ge=0, le=10)
    probe_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    reconcile_issue_batch: int = Field(default=20, ge=1, description="Certificates issued per dispatcher tick.")
    issuance_workers: int = Field(
        default=0, ge=0, le=64, description="Processes generating phone keys (0 = one per core, 1 = in-process)."
    )
    reconcile_scan_batch: int = Field(default=500, ge=1, description="Devices checked per dispatcher tick.")
    wpi_max_body: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024, description="Cap on a WPI POST body.")
    # Bounds on what the phone-facing listeners hold for peers that are not a known phone's address (anyone on the
    # phone network can reach them): see docs/threat-model.md.
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Deadline to receive a request's headers and body (every listener)."
    )
    keep_alive_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="An idle kept-alive connection is closed after this (every listener; the Guide asks 10 s of the "
        "phone-facing ones).",
    )
    wpi_untrusted_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Idle expiry of an interaction from an address no phone is known at."
    )
    wpi_max_open_per_peer: int = Field(
        default=4, ge=1, le=1000, description="Open interactions per address that is not a known phone's."
    )
    wpi_max_untrusted: int = Field(
        default=1000, ge=1, le=100_000, description="Open interactions from addresses that are not a known phone's."
    )
    wpi_max_buffered_per_peer: int = Field(
        default=256 * 1024, ge=64 * 1024, description="Bytes of unfinished (fragmented) messages per such address."
    )
    wpi_max_buffered: int = Field(
        default=8 * 1024 * 1024, ge=1024 * 1024, description="Bytes of unfinished messages from all such addresses."
    )
    wpi_max_interaction_bytes: int = Field(
        default=1024 * 1024, ge=64 * 1024, description="Bytes one interaction may send before it is complete."
    )
    address_proof_interval_seconds: float = Field(
        default=60.0, ge=0, description="Least time between two proofs of a phone's claimed new address."
    )

    # --- service ------------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="certmgr's log level; INFO tells each phone's story, DEBUG everything."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one line per record; json: one JSON object per line (log shippers)."
    )
    scheduler_enabled: bool = True

    # --- notifications (certmgr.notify) -------------------------------------------------------------------
    webhook_urls: list[SecretStr] = Field(
        default_factory=list,
        description="Webhook URLs notifications are POSTed to as JSON (secret: such URLs often embed a token).",
    )
    smtp_host: str | None = Field(default=None, description="SMTP server for e-mail notifications; unset = none.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = Field(default=True, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_username: str | None = Field(default=None, description="SMTP login; unset = no authentication.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    smtp_from: str = Field(default="certmgr@localhost", description="Sender address of notification e-mails.")
    smtp_to: list[str] = Field(default_factory=list, description="Recipients of notification e-mails.")
    notify_expiry_days: int = Field(
        default=14, ge=1, description="Warn about certificates expiring within this many days without a successor."
    )

    # --- scheduler, renewal and fleet safety (certmgr.scheduling, certmgr.renewal.service) ------------------
    node_id: str | None = Field(
        default=None,
        description="Name of this node in deployment leases and audit events; default for `certmgr serve`: "
        "<hostname>-<d>-<n>, d a digest of the data dir's path, n the lowest slot free in the data dir (stable "
        "across restarts, distinct for every node of a host).",
    )
    dispatch_role: Literal["wpi", "scheduler"] = Field(
        default="wpi",
        description="Which serve role runs the deployment dispatcher (contact-me): next to the phone listeners "
        "(wpi, default) or in the scheduler process (scheduler). --role all runs it in any case.",
    )
    renewal_interval_seconds: float = Field(default=60.0, gt=0, description="Renewal reconcile job interval.")
    renewal_scan_batch: int = Field(default=2000, ge=1, description="Certificates read per keyset batch.")
    renewal_max_per_run: int = Field(
        default=500, ge=1, description="Certificates issued per renewal run at most (the per-tick limit)."
    )
    renewal_max_per_hour: int = Field(
        default=2000,
        ge=1,
        description="Renewals per clock hour (planned spread and issued); expired or deadline-bound ones exceed it.",
    )
    renewal_horizon_hours: int = Field(
        default=72, ge=1, description="Look-ahead over which a mass expiry is spread (planner.spread)."
    )
    probe_sweep_interval_seconds: float = Field(default=3600.0, gt=0, description="TLS probe sweep job interval.")
    probe_sweep_batch: int = Field(default=200, ge=1, description="Phones probed per sweep run.")
    probe_sweep_min_age_hours: float = Field(
        default=24.0, ge=0, description="A phone verified or probed more recently than this is not probed again."
    )
    probe_sweep_concurrency: int = Field(default=20, ge=1, le=200, description="Probes in flight at once.")
    notify_interval_seconds: float = Field(default=3600.0, gt=0, description="Expiry notification job interval.")
    ca_watch_days: int = Field(default=90, ge=1, description="Warn when an active CA certificate expires this soon.")
    checkpoint_interval_seconds: float = Field(default=3600.0, gt=0, description="Audit checkpoint job interval.")
    misfire_grace_seconds: int = Field(
        default=3600, ge=1, description="A job run delayed this much (stalled loop, suspend) still runs, once."
    )
    rollback_after_verify_failures: int = Field(
        default=3,
        ge=1,
        description="Verification failures of an accepted certificate before the previous one is redeployed.",
    )
    stuck_timeout_seconds: int = Field(
        default=900, ge=60, description="A deployment verifying this long without progress (and no lease) is retried."
    )

    # --- revocation and scheduled exports (certmgr.issuance.revocation, certmgr.reports.scheduled) -------
    crl_validity_hours: int = Field(
        default=168, ge=1, le=24 * 366, description="CRL lifetime: nextUpdate = thisUpdate + this (default 7 days)."
    )
    crl_refresh_before_hours: int = Field(
        default=48,
        ge=0,
        le=24 * 365,
        description="Re-sign the CRL when its nextUpdate is this close (capped at half the CRL lifetime).",
    )
    export_dir: Path | None = Field(
        default=None, description="Folder of the scheduled report exports; default <data_dir>/exports."
    )
    export_kinds: list[ExportKind] = Field(
        default_factory=lambda: list[ExportKind](["inventory", "expiry", "compliance"]),
        description="Reports written by the scheduled export job (job id report-export).",
    )
    export_formats: list[ExportFormat] = Field(
        default_factory=lambda: list[ExportFormat](["csv"]), description="Formats of each scheduled report."
    )
    export_every: Literal["daily", "weekly"] = Field(
        default="daily", description="One export folder per UTC day (YYYY-MM-DD) or ISO week (YYYY-Www)."
    )
    export_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often the report-export job looks for a period not exported yet."
    )
    crl_refresh_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often the crl-refresh job re-signs the CRL if it is near nextUpdate."
    )

    # --- API listener TLS and the web console (certmgr.console) ------------------------------------------------
    api_tls: Literal["off", "auto", "files"] = Field(
        default="off",
        description="HTTPS on the API listener: off (plain HTTP, only on a loopback api_host), auto (a certificate "
        "issued from certmgr's CA into <data_dir>/api/), files (api_tls_cert + api_tls_key).",
    )
    api_tls_cert: Path | None = Field(default=None, description="PEM certificate (+chain) of the API listener.")
    api_tls_key: Path | None = Field(default=None, description="PEM private key of the API listener.")
    api_public_name: str | None = Field(
        default=None, description="DNS name the API listener's auto certificate is issued for (besides its address)."
    )
    console_enabled: bool = Field(default=True, description="Serve the web console at /ui/ on the API listener.")
    console_idle_minutes: int = Field(
        default=30, ge=1, le=24 * 60, description="A console session unused this long ends (log in again)."
    )
    console_session_hours: int = Field(
        default=12, ge=1, le=7 * 24, description="A console session ends this long after its login, used or not."
    )
    console_login_attempts: int = Field(
        default=10, ge=1, le=10_000, description="Failed console logins per source address within the window."
    )
    console_login_window_seconds: int = Field(
        default=300, ge=1, le=86_400, description="Window of console_login_attempts; further attempts get 429."
    )

    # --- report presentation (certmgr.reports) ------------------------------------------------------------
    report_timezone: str = Field(
        default="UTC",
        description="IANA time zone of the times in PDF reports (CSV/JSON keep ISO 8601 UTC), e.g. Europe/Berlin.",
    )
    report_fonts: list[Path] = Field(
        default_factory=list,
        description="TrueType fonts for PDF reports, tried per character in this order; default: DejaVu Sans, "
        "then Droid Sans Fallback (CJK), from the usual system font folders.",
    )

    @field_validator("report_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"report_timezone: unknown time zone {v!r} (use an IANA name, e.g. Europe/Berlin)"
            ) from None
        return v

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case(cls, v: object, info: ValidationInfo) -> object:
        if not isinstance(v, str):
            return v
        return v.upper() if info.field_name == "log_level" else v.lower()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CERTMGR_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ConfigError(f"CERTMGR_CONFIG names {config_file}, which is not a readable file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    # --- derived values -----------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'certmgr.db').resolve()}"

    @property
    def ca_dir(self) -> Path:
        """Where generated CA key material lives (inside the data dir, never in git)."""
        return self.data_dir / "ca"


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment (and ``CERTMGR_CONFIG``), turning errors into ConfigError.

    Raises:
        ConfigError: if a value is invalid or the config file is unreadable or malformed.
    """
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except Exception as exc:  # pydantic ValidationError, TOML decode errors
        first = str(exc).strip().splitlines()
        raise ConfigError(f"invalid settings: {' '.join(first[:3])}") from exc


def _read_secret_file(path: Path, what: str) -> SecretStr:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return SecretStr(value)


def _resolve_secret(
    value: SecretStr | None, file: Path | None, default_file: Path, what: str, generate: bool
) -> tuple[SecretStr, str | None]:
    """Return the secret and, when it was just generated, a message saying where it was written."""
    if value is not None and value.get_secret_value():
        return value, None
    if file is not None:
        return _read_secret_file(file, what), None
    if default_file.exists():
        return _read_secret_file(default_file, what), None
    if not generate:
        raise ConfigError(f"no {what} configured (set CERTMGR_{what.upper().replace(' ', '_')} or its _FILE variant)")
    secret = secrets.token_urlsafe(32)
    atomic_write(default_file, (secret + "\n").encode(), mode=0o600)
    return SecretStr(secret), f"generated a new {what} into {default_file} (mode 0600); keep a backup of it"


def ca_passphrase(settings: Settings, *, generate: bool = False) -> tuple[SecretStr, str | None]:
    """The CA passphrase: configured value, configured file, or ``<data_dir>/ca-passphrase``.

    With ``generate=True`` and nothing configured, a new random passphrase is written to the data dir.

    Raises:
        ConfigError: if none is configured (and ``generate`` is false) or the file cannot be read.
        StorageError: if a generated passphrase cannot be written.
    """
    ensure_private_dir(settings.data_dir)
    return _resolve_secret(
        settings.ca_passphrase,
        settings.ca_passphrase_file,
        settings.data_dir / PASSPHRASE_FILE_NAME,
        "ca passphrase",
        generate,
    )


def master_key(settings: Settings, *, generate: bool = False) -> tuple[SecretStr, str | None]:
    """The master secret that encrypts issued private keys at rest (same rules as :func:`ca_passphrase`).

    Raises:
        ConfigError: if none is configured (and ``generate`` is false) or the file cannot be read.
        StorageError: if a generated secret cannot be written.
    """
    ensure_private_dir(settings.data_dir)
    return _resolve_secret(
        settings.master_key,
        settings.master_key_file,
        settings.data_dir / MASTER_KEY_FILE_NAME,
        "master key",
        generate,
    )


__all__ = ["Settings", "StorageError", "ca_passphrase", "load_settings", "master_key"]
