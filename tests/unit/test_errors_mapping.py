"""The one mapping of certmgr errors to CLI exit codes and HTTP status codes."""

from __future__ import annotations

import inspect

import pytest

from certmgr import errors as e
from certmgr.api.errors import error_body, status_for
from certmgr.cli.exitcodes import FAILURE, exit_code_for


def _all_error_classes() -> list[type[e.CertmgrError]]:
    return [
        cls
        for _, cls in inspect.getmembers(e, inspect.isclass)
        if issubclass(cls, e.CertmgrError) and cls is not e.CertmgrError
    ]


def _instance(cls: type[e.CertmgrError]) -> e.CertmgrError:
    if cls is e.PolicyError:
        return e.PolicyError("p.toml", "key.type", "bad")
    if cls is e.PolicySetError:
        return e.PolicySetError([e.PolicyError("p.toml", "key.type", "bad")])
    return cls("something went wrong")


EXPECTED_EXIT: dict[type[e.CertmgrError], int] = {
    e.ConfigError: 3,
    e.PolicyError: 3,
    e.PolicySetError: 3,
    e.InputError: 4,
    e.CAError: 5,
    e.CANotInitialisedError: 5,
    e.CAPassphraseError: 5,
    e.CACorruptError: 5,
    e.CAExistsError: 9,
    e.IssuanceError: 5,
    e.KeyStoreError: 5,
    e.StorageError: 6,
    e.DatabaseError: 7,
    e.SchemaTooNewError: 7,
    e.SchemaOutdatedError: 7,
    e.NotFoundError: 8,
    e.ConflictError: 9,
    e.AuthenticationError: 10,
    e.PermissionDeniedError: 10,
    e.ProtocolError: 11,
    e.DeploymentError: 11,
}

EXPECTED_HTTP: dict[type[e.CertmgrError], int] = {
    e.ConfigError: 503,
    e.PolicyError: 422,
    e.PolicySetError: 422,
    e.InputError: 422,
    e.StorageError: 503,
    e.CAError: 503,
    e.CANotInitialisedError: 503,
    e.CAPassphraseError: 503,
    e.CACorruptError: 503,
    e.CAExistsError: 409,
    e.IssuanceError: 422,
    e.DatabaseError: 503,
    e.SchemaTooNewError: 503,
    e.SchemaOutdatedError: 503,
    e.NotFoundError: 404,
    e.ConflictError: 409,
    e.AuthenticationError: 401,
    e.PermissionDeniedError: 403,
    e.ProtocolError: 400,
    e.DeploymentError: 502,
    e.KeyStoreError: 503,
}


def test_every_error_class_has_an_expected_exit_code() -> None:
    assert set(_all_error_classes()) == set(EXPECTED_EXIT)


@pytest.mark.parametrize("cls", list(EXPECTED_EXIT), ids=[c.__name__ for c in EXPECTED_EXIT])
def test_exit_code(cls: type[e.CertmgrError]) -> None:
    code = exit_code_for(_instance(cls))
    assert code == EXPECTED_EXIT[cls]
    assert code != FAILURE


def test_base_error_falls_back_to_failure_and_500() -> None:
    assert exit_code_for(e.CertmgrError("x")) == FAILURE
    assert status_for(e.CertmgrError("x")) == 500


@pytest.mark.parametrize("cls", list(EXPECTED_HTTP), ids=[c.__name__ for c in EXPECTED_HTTP])
def test_http_status(cls: type[e.CertmgrError]) -> None:
    assert status_for(_instance(cls)) == EXPECTED_HTTP[cls]


def test_error_body_is_type_and_message_only() -> None:
    err = e.PolicyError("10-lab.toml", "validity.duration", "must be a duration")
    assert error_body(err) == {"error": "PolicyError", "detail": "10-lab.toml: validity.duration: must be a duration"}
    assert err.fields == {"file": "10-lab.toml", "key": "validity.duration", "reason": "must be a duration"}


def test_policy_set_error_joins_each_problem() -> None:
    err = e.PolicySetError([e.PolicyError("a.toml", "k", "r1"), e.PolicyError("b.toml", "", "r2")])
    assert err.message == "a.toml: k: r1; b.toml: r2"
    assert err.fields["count"] == 2
