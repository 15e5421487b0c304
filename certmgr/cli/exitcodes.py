"""The one mapping from certmgr errors to CLI exit codes."""

from __future__ import annotations

from certmgr import errors as e

OK = 0
FAILURE = 1
USAGE = 2

# Most specific first: the first matching class wins.
_EXIT_CODES: tuple[tuple[type[e.CertmgrError], int], ...] = (
    (e.PolicySetError, 3),
    (e.PolicyError, 3),
    (e.ConfigError, 3),
    (e.InputError, 4),
    (e.CAPassphraseError, 5),
    (e.CAExistsError, 9),
    (e.CAError, 5),
    (e.IssuanceError, 5),
    (e.KeyStoreError, 5),
    (e.StorageError, 6),
    (e.SchemaTooNewError, 7),
    (e.DatabaseError, 7),
    (e.NotFoundError, 8),
    (e.ConflictError, 9),
    (e.AuthenticationError, 10),
    (e.PermissionDeniedError, 10),
    (e.ProtocolError, 11),
    (e.DeploymentError, 11),
)


def exit_code_for(error: e.CertmgrError) -> int:
    """The exit code for ``error``: 3 config/policy, 4 bad input, 5 CA/issuance, 6 storage, 7 database,
    8 not found, 9 conflict/exists, 10 access, 11 phone/protocol, 1 anything else."""
    for cls, code in _EXIT_CODES:
        if isinstance(error, cls):
            return code
    return FAILURE
