"""Loading policy files from a directory into a :class:`~certmgr.policy.model.PolicySet`.

Rules of a policy directory:

* Every ``*.toml`` file directly in it is one policy (hidden files and sub-directories are ignored).
* Selection order is the file name, sorted by code point, with ``default.toml`` **last**; the first policy
  whose ``[match]`` fits a phone is that phone's policy. Prefix file names with numbers to order them
  (``10-lab.toml``, ``20-openstage-60.toml``).
* ``default.toml`` must exist and must match every phone (no ``[match]`` criteria), so every phone always has
  a policy and :meth:`PolicySet.select` never fails for a loaded set.
* Any other policy must have at least one ``[match]`` criterion: one matching every phone would make
  ``default.toml`` and all later files unreachable. Subtler shadowing (criteria that happen to cover a later
  policy) is not detected.
* Policy names are unique across the directory.

Every problem in every file is collected and reported together as one
:class:`~certmgr.errors.PolicySetError`, so an operator fixes a broken directory in one pass.
"""

from __future__ import annotations

import tomllib
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from certmgr.errors import PolicyError, PolicySetError
from certmgr.policy.model import DEFAULT_POLICY_FILE, Policy, PolicySet, parse_policy


def load_policy_file(path: Path, known_secrets: AbstractSet[str] | None = None) -> Policy:
    """Load and validate one policy file. Errors name the file by its name (``path.name``).

    ``known_secrets`` are the names of the PKCS#12 password secrets configured in settings; when given, a
    ``pkcs12.password_secret`` not among them is an error.

    Raises:
        PolicySetError: one :class:`~certmgr.errors.PolicyError` per problem: unreadable file, invalid UTF-8,
            TOML syntax, schema and the rules between keys.
    """
    return parse_policy(_read_toml(path), source=path.name, known_secrets=known_secrets)


def load_policies(directory: Path, known_secrets: AbstractSet[str] | None = None) -> PolicySet:
    """Load every ``*.toml`` in ``directory`` in selection order (see the module docstring).

    Raises:
        PolicySetError: listing every problem found: a missing or empty directory, a missing ``default.toml``
            or one that does not match every phone, any invalid file, duplicate names, and catch-all policies
            other than ``default.toml``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicySetError([PolicyError(str(directory), "", "policy directory does not exist")])
    files = sorted(
        (p for p in directory.glob("*.toml") if p.is_file() and not p.name.startswith(".")),
        key=lambda p: (p.name == DEFAULT_POLICY_FILE, p.name),
    )
    if not files:
        raise PolicySetError([PolicyError(str(directory), "", "policy directory holds no *.toml policy file")])

    errors: list[PolicyError] = []
    policies: list[Policy] = []
    for path in files:
        try:
            policies.append(load_policy_file(path, known_secrets))
        except PolicySetError as exc:
            errors.extend(exc.errors)

    if files[-1].name != DEFAULT_POLICY_FILE:
        errors.append(
            PolicyError(
                str(directory / DEFAULT_POLICY_FILE),
                "",
                "missing: every policy directory needs a default.toml that matches every phone",
            )
        )
    first_file: dict[str, str] = {}
    for policy in policies:
        if policy.name in first_file:
            errors.append(
                PolicyError(
                    policy.source,
                    "name",
                    f"duplicate policy name {policy.name!r}, already used by {first_file[policy.name]}",
                )
            )
        else:
            first_file[policy.name] = policy.source
        if policy.source == DEFAULT_POLICY_FILE and not policy.is_catch_all:
            errors.append(
                PolicyError(
                    policy.source,
                    "match",
                    "default.toml is the fallback for every phone and must not have [match] criteria; put "
                    "narrower rules in their own policy file",
                )
            )
        elif policy.source != DEFAULT_POLICY_FILE and policy.is_catch_all:
            errors.append(
                PolicyError(
                    policy.source,
                    "match",
                    "has no criteria, so it matches every phone and default.toml and every later policy "
                    "could never be selected; add device_types, mac_prefixes or networks, or edit "
                    "default.toml",
                )
            )
    if errors:
        raise PolicySetError(errors)
    return PolicySet(tuple(policies))


def _read_toml(path: Path) -> dict[str, Any]:
    """Read and parse a TOML file.

    Raises:
        PolicySetError: with a single error for an unreadable file, invalid UTF-8 or a TOML syntax error.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicySetError([PolicyError(path.name, "", f"cannot read the file: {exc.strerror}")]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start})"
    except tomllib.TOMLDecodeError as exc:
        reason = f"TOML syntax error: {exc}"
    raise PolicySetError([PolicyError(path.name, "", reason)])
