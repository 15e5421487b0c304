"""The one error hierarchy of certmgr.

Every error certmgr raises on purpose is a :class:`CertmgrError`. Each carries a human message (one line, never
any secret) and structured fields. The mapping to HTTP status codes lives in ``certmgr/api/errors.py`` and the
mapping to CLI exit codes in ``certmgr/cli/exitcodes.py``; nowhere else.
"""

from __future__ import annotations

from typing import Any


class CertmgrError(Exception):
    """Base of every error certmgr raises on purpose."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields

    def __str__(self) -> str:
        return self.message


# --- configuration and input ------------------------------------------------------------------------------
class ConfigError(CertmgrError):
    """Settings are missing, contradictory or unusable."""


class InputError(CertmgrError):
    """A value supplied by a user (CLI argument, API field) is invalid: bad MAC, bad IP, bad duration …"""


class StorageError(CertmgrError):
    """The data directory or a file in it cannot be read or written."""


class PolicyError(CertmgrError):
    """A policy file is invalid. Fields: ``file``, ``key``, ``reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}", file=file, key=key, reason=reason)
        self.file = file
        self.key = key
        self.reason = reason


class PolicySetError(CertmgrError):
    """Several policy files are invalid; ``errors`` holds each :class:`PolicyError`."""

    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__("; ".join(e.message for e in errors), count=len(errors))
        self.errors = errors


# --- PKI --------------------------------------------------------------------------------------------------
class CAError(CertmgrError):
    """Something is wrong with the certificate authority."""


class CANotInitialisedError(CAError):
    """No CA exists yet in the data directory."""


class CAExistsError(CAError):
    """A CA already exists and ``--force`` was not given."""


class CAPassphraseError(CAError):
    """The CA key cannot be decrypted with the configured passphrase."""


class CACorruptError(CAError):
    """CA files are missing, unreadable or inconsistent."""


class IssuanceError(CertmgrError):
    """A certificate cannot be issued (e.g. validity beyond the issuing CA)."""


class KeyStoreError(CertmgrError):
    """An issued key cannot be stored or recovered (wrong master secret, corrupt blob)."""


# --- persistence ------------------------------------------------------------------------------------------
class DatabaseError(CertmgrError):
    """The database cannot be used."""


class SchemaTooNewError(DatabaseError):
    """The database is at a migration newer than this code knows."""


class SchemaOutdatedError(DatabaseError):
    """The database is behind the code's migrations; run ``certmgr db upgrade``."""


class NotFoundError(CertmgrError):
    """A requested object does not exist."""


class ConflictError(CertmgrError):
    """The request conflicts with the current state (duplicate, wrong state for the operation)."""


# --- access -----------------------------------------------------------------------------------------------
class AuthenticationError(CertmgrError):
    """No or bad credentials."""


class PermissionDeniedError(CertmgrError):
    """Valid credentials, but the role may not do this."""


# --- phones -----------------------------------------------------------------------------------------------
class ProtocolError(CertmgrError):
    """A WPI message is malformed, too large, forbidden (DTD/entities) or out of sequence."""


class DeploymentError(CertmgrError):
    """A deployment step failed (phone unreachable, rejected, verification failed)."""
