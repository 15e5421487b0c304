"""Assembles a running certmgr from settings: data dir, secrets, database, policies, CA and key vault.

This is the composition root shared by the CLI and the service; nothing here is a module-level global.
Start-up validates everything it can before it writes anything, so a bad policy or CA definition never leaves
a half-initialised data dir behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import SecretStr
from sqlmodel import Session, col, select

from certmgr.audit.log import append_event
from certmgr.clock import Clock, SystemClock
from certmgr.db.engine import create_db_engine, session_scope
from certmgr.db.migrate import check_schema, upgrade
from certmgr.db.models import CARecord, CARole
from certmgr.errors import CACorruptError, CANotInitialisedError, ConfigError, SchemaOutdatedError
from certmgr.fsutil import claim_slot, ensure_private_dir
from certmgr.pki.ca import load_ca_definition
from certmgr.pki.keypool import KeyPool
from certmgr.pki.keys import PrivateKey, fingerprint_sha256
from certmgr.pki.keystore import KeyVault
from certmgr.pki.store import CAInfo, CAStore, Issuer, issuer_from_pem, split_chain
from certmgr.pki.types import KeyType
from certmgr.policy import PolicySet, load_policies
from certmgr.settings import Settings, ca_passphrase, master_key

if TYPE_CHECKING:
    from cryptography import x509
    from sqlalchemy.engine import Engine

CA_DEFINITION_FILE = "ca.toml"
#: Folder of the data dir holding the node slot locks (see :func:`open_runtime`).
NODE_DIR = "nodes"
log = logging.getLogger("certmgr.ca")


@dataclass
class Runtime:
    """Everything a certmgr command or service needs, built once per process."""

    settings: Settings
    clock: Clock
    engine: Engine
    policies: PolicySet
    ca_store: CAStore
    vault: KeyVault
    notices: list[str] = field(default_factory=list)
    _passphrase: SecretStr | None = None
    _issuer: Issuer | None = None
    _issuer_fp: str | None = None
    _issuer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _node_slot: int | None = None
    _key_pool: KeyPool | None = None

    def issuer(self) -> Issuer:
        """The issuing CA that signs now: the active issuing CA recorded in the database (the source of truth
        shared by every node), decrypted once per CA and reloaded as soon as another CA becomes active — a
        ``certmgr ca init --force`` or ``ca import`` on any node is picked up by the next certificate issued here,
        without a restart. A database without the CA's material (before migration 0002 filled it) falls back to
        the CA files of the data dir.

        Raises:
            CANotInitialisedError: if no CA exists yet.
            CAPassphraseError: if the passphrase does not decrypt the key.
            CACorruptError: if the CA material is missing or inconsistent.
        """
        with session_scope(self.engine) as session:
            row = active_issuing_record(session)
            fingerprint = row.fingerprint_sha256 if row is not None else None
            if self._issuer is not None and self._issuer_fp == fingerprint:
                return self._issuer
        # Another CA is active (or none is loaded yet). Threads that see the change together load (and tell) it
        # once; the record is read again under the lock, so a thread whose first read predates a rotation that
        # another thread has already loaded does not load the old CA back.
        with self._issuer_lock, session_scope(self.engine) as session:
            row = active_issuing_record(session)
            fingerprint = row.fingerprint_sha256 if row is not None else None
            if self._issuer is not None and self._issuer_fp == fingerprint:
                return self._issuer
            material = (row.chain_pem, row.key_pem) if row is not None else (None, None)
            return self._load_issuer(fingerprint, *material)

    def _load_issuer(self, fingerprint: str | None, chain_pem: str | None, key_pem: str | None) -> Issuer:
        """Decrypt and keep the issuing CA the database names (``issuer``'s slow path, under its lock).

        Raises:
            CANotInitialisedError, CAPassphraseError, CACorruptError: as :meth:`issuer`.
        """
        secret = self.passphrase().get_secret_value().encode()
        if chain_pem and key_pem:
            issuer = issuer_from_pem(chain_pem.encode(), key_pem.encode(), secret)
        elif self.ca_store.exists():
            issuer = self.ca_store.load_issuer(secret)
        else:
            raise CANotInitialisedError(
                f"no CA in {self.ca_store.ca_dir}: run `certmgr ca init` (or `certmgr ca import`)"
            )
        if fingerprint is not None and fingerprint_sha256(issuer.cert) != fingerprint:
            raise CACorruptError("the CA files do not hold the issuing CA the database names as active")
        if self._issuer is not None:
            log.info(
                "CA rotation: issuing with %s (sha256 %s) from now on",
                issuer.cert.subject.rfc4514_string(),
                fingerprint_sha256(issuer.cert)[:16],
                extra={"ca": fingerprint_sha256(issuer.cert)},
            )
        self._issuer, self._issuer_fp = issuer, fingerprint
        return issuer

    def ca_info(self) -> CAInfo:
        """Public facts of the active CA (no passphrase, nothing decrypted): from the database, or the CA files.

        Raises:
            CANotInitialisedError: if no CA exists yet. CACorruptError: if its material is inconsistent.
        """
        with session_scope(self.engine) as session:
            row = active_issuing_record(session)
            chain_pem = row.chain_pem if row is not None else None
        if chain_pem:
            chain, root = split_chain(chain_pem.encode())
            return CAInfo.from_certs(chain, root, root_key_present=False)
        return self.ca_store.load_public()

    def passphrase(self) -> SecretStr:
        """The CA passphrase (configured, or the generated file in the data dir).

        Raises:
            ConfigError: if none is configured.
        """
        if self._passphrase is None:
            self._passphrase, _ = ca_passphrase(self.settings, generate=False)
        return self._passphrase

    def pkcs12_password(self, secret_name: str | None) -> bytes | None:
        """The PKCS#12 password named by a policy's ``password_secret``.

        Raises:
            ConfigError: if the policy names a secret that is not configured.
        """
        if secret_name is None:
            return None
        secret = self.settings.pkcs12_passwords.get(secret_name)
        if secret is None or not secret.get_secret_value():
            raise ConfigError(f"PKCS#12 password secret {secret_name!r} is not configured")
        return secret.get_secret_value().encode()

    def session(self) -> Session:
        """A new database session (caller closes it); prefer :func:`certmgr.db.engine.session_scope`."""
        return Session(self.engine, expire_on_commit=False)

    def generate_keys(self, key_types: Sequence[KeyType]) -> list[PrivateKey]:
        """New private keys, one per entry, generated on every core (setting ``issuance_workers``)."""
        if self._key_pool is None:
            # Read ahead by one reconcile batch: the next batch's keys are made while this one is signed.
            self._key_pool = KeyPool(
                self.settings.issuance_workers or None, read_ahead=self.settings.reconcile_issue_batch
            )
        return self._key_pool.generate(key_types)

    def close(self) -> None:
        if self._key_pool is not None:
            self._key_pool.close()
        if self._node_slot is not None:
            os.close(self._node_slot)
            self._node_slot = None
        self.engine.dispose()


def open_runtime(
    settings: Settings,
    clock: Clock | None = None,
    *,
    create_ca: bool = False,
    migrate: bool = True,
    node: bool = False,
) -> Runtime:
    """Validate the configuration and open the runtime.

    With ``create_ca`` (first start of the service), a missing CA is created from ``ca/ca.toml`` and missing
    secrets (CA passphrase, master key) are generated into 0600 files in the data dir; each such step is
    reported in ``Runtime.notices``. With ``migrate``, the database is upgraded to the code's head revision. With
    ``node`` (``certmgr serve``), a process without a configured ``node_id`` takes the name
    :func:`default_node_name`: stable across restarts (a restarted node reclaims its own leases at once), unique
    among the processes sharing the data dir and among the nodes of one host with their own data dirs.

    Raises:
        StorageError: unwritable data dir. PolicySetError: invalid policies. ConfigError: bad settings or
        missing secrets. CAError: bad CA definition or files. DatabaseError / SchemaTooNewError: database
        unusable or newer than the code.
    """
    clock = clock or SystemClock()
    ensure_private_dir(settings.data_dir)
    node_slot: int | None = None
    if node and not settings.node_id:
        n, node_slot = claim_slot(settings.data_dir / NODE_DIR, "node")
        settings = settings.model_copy(update={"node_id": default_node_name(settings.data_dir, n)})
    # 1. Everything that can be validated without writing comes first.
    policies = load_policies(settings.policy_dir, known_secrets=set(settings.pkcs12_passwords))
    store = CAStore(settings.ca_dir)
    ca_missing = not store.exists()
    definition = None
    if create_ca and ca_missing:
        definition = load_ca_definition(settings.ca_config_dir / CA_DEFINITION_FILE)
    notices: list[str] = []
    url = settings.effective_database_url
    engine = create_db_engine(url, busy_timeout_ms=int(settings.sqlite_busy_timeout_seconds * 1000))
    try:
        if migrate:
            try:
                check_schema(url)
            except SchemaOutdatedError:
                upgrade(url)
        else:
            check_schema(url)
        # 2. Secrets: generated only on a first start (no CA yet), never silently replaced. Without create_ca
        #    the passphrase is resolved lazily, when the CA key is first needed.
        passphrase: SecretStr | None = None
        if definition is not None:
            passphrase, note = ca_passphrase(settings, generate=True)
            if note:
                notices.append(note)
        mkey, note = master_key(settings, generate=create_ca or migrate)
        if note:
            notices.append(note)
        runtime = Runtime(
            settings=settings,
            clock=clock,
            engine=engine,
            policies=policies,
            ca_store=store,
            vault=KeyVault(mkey.get_secret_value().encode()),
            notices=notices,
            _passphrase=passphrase,
            _node_slot=node_slot,
        )
        # 3. The CA, created last so that a failure above leaves no key material behind — and only if the
        #    database holds none either (another node created or imported it: that one is used).
        if definition is not None and passphrase is not None and not _database_has_ca(engine):
            info = store.initialise(definition, passphrase.get_secret_value().encode(), clock.now())
            notices.append(f"created a new CA in {store.ca_dir}: {info.issuing_subject}")
        if store.exists():
            adopt_ca_files(runtime)
        return runtime
    except BaseException:
        engine.dispose()
        if node_slot is not None:
            os.close(node_slot)
        raise


def default_node_name(data_dir: Path, slot: int) -> str:
    """The name of a ``certmgr serve`` process without ``node_id``: ``<hostname>-<dir>-<slot>``, ``<dir>`` six hex
    digits of the SHA-256 of the data dir's absolute path and ``slot`` the lowest slot of the data dir no running
    process holds. A starting node takes back what is leased to its own name, so two live processes must never
    share one: the slot separates the processes of one data dir, ``<dir>`` the nodes of one host that each have
    their own data dir (with ``<hostname>-<slot>`` alone, both were ``<hostname>-0``)."""
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]
    return f"{socket.gethostname()[:80]}-{tag}-{slot}"


def _database_has_ca(engine: Engine) -> bool:
    with session_scope(engine) as session:
        row = active_issuing_record(session)
        return row is not None and bool(row.key_pem)


def active_issuing_record(session: Session) -> CARecord | None:
    """The active issuing CA of the database (the newest, should several be marked active)."""
    return session.exec(
        select(CARecord)
        .where(col(CARecord.active).is_(True), col(CARecord.role) == CARole.ISSUING.value)
        .order_by(col(CARecord.id).desc())
    ).first()


def adopt_ca_files(runtime: Runtime) -> None:
    """At start-up: make sure the database knows the CA of the data dir's files, without overriding the database.

    * No active issuing CA recorded yet (first start, or a database from before migration 0002): the files' CA is
      recorded as the active one (:func:`record_ca`).
    * The files hold the active CA: its chain and encrypted key are copied into its record if missing.
    * The files hold another CA (the CA was rotated on another node): the database wins; a notice says so.

    Raises:
        CAError: if the CA files are inconsistent. DatabaseError: if the database cannot be reached.
    """
    store = runtime.ca_store
    info = store.load_public()
    with session_scope(runtime.engine) as session:
        row = active_issuing_record(session)
        if row is not None and row.fingerprint_sha256 != info.issuing_fingerprint_sha256:
            runtime.notices.append(
                f"the CA files in {store.ca_dir} are not the active CA ({row.subject}); issuing with the database's"
            )
            return
        if row is not None and row.key_pem:
            return
    record_ca(runtime, info, actor="system")


def record_ca(runtime: Runtime, info: CAInfo, *, actor: str, imported: bool = False) -> None:
    """Make ``info`` (the CA just written to the data dir's files) the active CA of the database: insert unknown
    certificates, mark the others inactive, and store the issuing CA's chain and encrypted key (copied from the
    files, never decrypted). Every node sharing the database issues with it from then on
    (:meth:`Runtime.issuer`).

    Raises:
        CAError: if the CA files are unreadable. DatabaseError: if the database cannot be reached.
    """
    chain_pem, key_pem = runtime.ca_store.stored_material()
    certs: list[tuple[CARole, x509.Certificate]] = [(CARole.ISSUING, info.issuing_cert)]
    if info.root_cert is not None:
        certs.append((CARole.ROOT, info.root_cert))
    now = runtime.clock.now()
    with session_scope(runtime.engine) as session:
        current = {fingerprint_sha256(cert) for _, cert in certs}
        for row in session.exec(select(CARecord).where(col(CARecord.active).is_(True))):
            if row.fingerprint_sha256 not in current:
                row.active = False
                session.add(row)
        for role, cert in certs:
            fp = fingerprint_sha256(cert)
            material = (chain_pem.decode(), key_pem.decode()) if role is CARole.ISSUING else (None, None)
            known = session.exec(select(CARecord).where(col(CARecord.fingerprint_sha256) == fp)).first()
            if known is not None:
                known.active = True
                if role is CARole.ISSUING:
                    known.chain_pem, known.key_pem = material
                session.add(known)
                continue
            session.add(
                CARecord(
                    role=role,
                    subject=cert.subject.rfc4514_string(),
                    serial=format(cert.serial_number, "x"),
                    fingerprint_sha256=fp,
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    cert_pem=cert.public_bytes(Encoding.PEM).decode(),
                    imported=imported,
                    active=True,
                    chain_pem=material[0],
                    key_pem=material[1],
                    created_at=now,
                )
            )
            append_event(
                session,
                at=now,
                actor=actor,
                action="ca.imported" if imported else "ca.registered",
                subject_type="ca",
                subject_id=fp,
                details={"role": role.value, "subject": cert.subject.rfc4514_string()},
            )
