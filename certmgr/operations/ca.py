"""Operator use cases on the CA: create certmgr's own two-level CA, or import an enterprise issuing CA.

Either one writes the CA files of this node's data dir (keys encrypted with the CA passphrase) and makes the new
CA the active one in the database (:func:`certmgr.runtime.record_ca`), which every running node picks up for the
next certificate it issues — a CA rotation needs no restart. The renewal reconcile then reissues every current
certificate once (trigger ``ca-rotation``), within the rate limits like scheduled renewals.

Replacing an existing CA — one in this node's files *or* one another node recorded in the database — needs
``force``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from certmgr.db.engine import session_scope
from certmgr.errors import CAExistsError, InputError
from certmgr.pki.ca import CAHierarchyDefinition
from certmgr.pki.store import CAInfo
from certmgr.runtime import active_issuing_record, record_ca

if TYPE_CHECKING:
    from certmgr.runtime import Runtime


def _refuse_replacing(runtime: Runtime, force: bool) -> None:
    if force:
        return
    with session_scope(runtime.engine) as session:
        row = active_issuing_record(session)
        if row is not None and row.key_pem:
            raise CAExistsError(f"a CA already exists (active: {row.subject}); use force to replace it")


def initialise_ca(
    runtime: Runtime, definition: CAHierarchyDefinition, passphrase: bytes, *, actor: str, force: bool = False
) -> CAInfo:
    """Create a new root and issuing CA from ``definition`` and make it the active CA.

    Raises:
        CAExistsError: a CA exists (files or database) and ``force`` is false. InputError: empty passphrase.
        StorageError: the files cannot be written. DatabaseError: the database cannot be reached.
    """
    _refuse_replacing(runtime, force)
    info = runtime.ca_store.initialise(definition, passphrase, runtime.clock.now(), force=force)
    record_ca(runtime, info, actor=actor)
    return info


def import_ca(
    runtime: Runtime,
    passphrase: bytes,
    *,
    actor: str,
    p12: bytes | None = None,
    key: bytes | None = None,
    chain: bytes | None = None,
    password: bytes | None = None,
    force: bool = False,
) -> CAInfo:
    """Import an issuing CA (a PKCS#12, or a PEM key and chain) and make it the active CA.

    Raises:
        CAExistsError: a CA exists (files or database) and ``force`` is false. InputError: unusable material.
        StorageError: the files cannot be written. DatabaseError: the database cannot be reached.
    """
    _refuse_replacing(runtime, force)
    if p12 is not None:
        info = runtime.ca_store.import_pkcs12(p12, password, passphrase, force=force)
    else:
        if key is None or chain is None:
            raise InputError("give a PKCS#12, or both a key and a chain")
        info = runtime.ca_store.import_key_and_chain(key, password, chain, passphrase, force=force)
    record_ca(runtime, info, actor=actor, imported=True)
    return info


__all__ = ["import_ca", "initialise_ca"]
