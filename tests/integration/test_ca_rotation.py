"""CA rotation is live: a CA created or imported on any node is picked up by every running node, without a restart.

The database's CA table is the source of truth (the issuing CA's chain and its encrypted key); a node's runtime
reloads the issuing CA when another becomes active. Before, the service kept signing with the CA it cached at
start: every "renewed" certificate named the old CA again, the ``ca-rotation`` trigger fired again on the next run,
and each phone got another old-CA certificate on every run, for ever. The chain packaged into a PKCS#12 came from
the current issuer instead of the CA that signed the leaf, and reading it decrypted the CA key.

Runs on SQLite and on PostgreSQL; "nodes" are separate runtimes with separate data dirs on one database.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlmodel import col, select

from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, Device, IssueReason
from certmgr.deploy import admission, queue
from certmgr.deploy.reconcile import Reconciler
from certmgr.errors import CAExistsError
from certmgr.operations.ca import initialise_ca
from certmgr.pki.ca import load_ca_definition
from certmgr.pki.keys import fingerprint_sha256
from certmgr.renewal.service import reconcile_renewals
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from certmgr.wpi.jobs import Serve
from certmgr.wpi.messages import Reason
from tests.conftest import REPO
from tests.integration.renewal_support import enroll_verified, mac_of, verify_all_queued, write_policy

PHONES = 3


@pytest.fixture
def node(settings: Settings, clock: ManualClock, tmp_path: Path, db_url: str) -> Iterator[Callable[..., Runtime]]:
    """``node(name, **settings)``: a runtime with its own data dir on the shared database ``db_url``."""
    policies = write_policy(tmp_path / "policies")
    opened: list[Runtime] = []

    def make(name: str, **update: object) -> Runtime:
        rt = open_runtime(
            settings.model_copy(
                update={
                    "data_dir": tmp_path / name,
                    "policy_dir": policies,
                    "database_url": db_url,
                    "node_id": name,
                    **update,
                }
            ),
            clock,
            create_ca=True,
        )
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


def _rotate(rt: Runtime, force: bool = True) -> str:
    """What ``certmgr ca init --force`` does, on node ``rt``; returns the new issuing CA's fingerprint."""
    passphrase = rt.passphrase().get_secret_value().encode()
    info = initialise_ca(rt, load_ca_definition(REPO / "ca" / "ca.toml"), passphrase, actor="cli", force=force)
    return info.issuing_fingerprint_sha256


def _certificates(rt: Runtime) -> list[Certificate]:
    with session_scope(rt.engine) as s:
        return list(s.exec(select(Certificate).order_by(col(Certificate.id))).all())


def _renew_until_quiet(rt: Runtime, clock: ManualClock, hours: int = 48) -> Counter[str]:
    """Run the renewal reconcile hour by hour (rotation is spread like scheduled renewals), verifying what it
    queues, until a whole day passes without issuance."""
    reasons: Counter[str] = Counter()
    quiet = 0
    for _ in range(hours):
        report = reconcile_renewals(rt, clock.now())
        reasons.update(report.reasons)
        verify_all_queued(rt)
        quiet = 0 if report.issued else quiet + 1
        if quiet >= 24:
            break
        clock.advance(timedelta(hours=1))
    return reasons


def test_rotation_on_another_node_is_picked_up_and_reissues_each_certificate_once(
    node: Callable[..., Runtime], clock: ManualClock
) -> None:
    service = node("service", renewal_max_per_hour=2)
    enroll_verified(service, range(PHONES))
    old_ca = fingerprint_sha256(service.issuer().cert)  # cached by the running service
    cli = node("cli")
    assert fingerprint_sha256(cli.issuer().cert) == old_ca  # a node without CA files issues with the shared CA
    new_ca = _rotate(cli)
    assert new_ca != old_ca
    assert fingerprint_sha256(service.issuer().cert) == new_ca  # picked up without a restart
    reasons = _renew_until_quiet(service, clock)
    assert reasons == {IssueReason.CA_ROTATION.value: PHONES}
    rotated = [c for c in _certificates(service) if c.reason is IssueReason.CA_ROTATION]
    assert {c.issuer_fingerprint for c in rotated} == {new_ca}
    assert Counter(c.device_id for c in rotated) == Counter({d: 1 for d in {c.device_id for c in rotated}})
    with session_scope(service.engine) as s:
        current = s.exec(
            select(Certificate).join(Device, col(Device.current_certificate_id) == col(Certificate.id))
        ).all()
    assert {c.issuer_fingerprint for c in current} == {new_ca}
    # Spread like scheduled renewals: never more than the hourly budget within an hour.
    per_hour = Counter(c.created_at.replace(minute=0, second=0, microsecond=0) for c in rotated)
    assert max(per_hour.values()) <= 2


def test_a_node_does_not_create_its_own_ca_when_the_database_has_one(node: Callable[..., Runtime]) -> None:
    first = node("first")
    second = node("second")  # empty data dir, create_ca=True: must adopt the database's CA
    assert not second.ca_store.exists()
    assert fingerprint_sha256(second.issuer().cert) == fingerprint_sha256(first.issuer().cert)
    with pytest.raises(CAExistsError):
        _rotate(second, force=False)  # replacing the active CA needs force, even from a node without files


def test_a_certificate_of_the_old_ca_travels_with_the_old_chain(
    node: Callable[..., Runtime], clock: ManualClock
) -> None:
    service = node("service", callback_timeout_seconds=60)
    enroll_verified(service, range(1))
    old_ca = service.issuer().cert
    # A new certificate of the old CA is queued, then the CA is rotated before it is delivered.
    with session_scope(service.engine) as s:
        device = s.exec(select(Device)).one()
        device.ip = "10.99.0.1"
        device.contact_me_uri = "http://10.99.0.1:8085/contact_dls.html/ContactDLS"
        s.add(device)
    assert Reconciler(service).run(clock.now()) == 1
    _rotate(node("cli"))
    tasks = queue.claim_due(service, clock.now())
    queue.contact_result(service, tasks[0].deployment_id, clock.now(), error=None)
    served = admission.admit(
        service, mac=mac_of(0), peer="10.99.0.1", reason=Reason.SOLICITED, now=clock.now(), busy_until=None
    ).admission
    assert isinstance(served, Serve)
    p12 = pkcs12.load_pkcs12(base64.b64decode(served.job.write_items[-1].value or ""), None)
    assert p12.cert is not None
    assert p12.cert.certificate.issuer == old_ca.subject
    assert [c.certificate for c in p12.additional_certs] == [old_ca]


def test_packaging_reads_the_chain_without_the_ca_key(
    node: Callable[..., Runtime], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = node("service", callback_timeout_seconds=60)
    enroll_verified(service, range(1))
    with session_scope(service.engine) as s:
        device = s.exec(select(Device)).one()
        device.ip = "10.99.0.2"
        device.contact_me_uri = "http://10.99.0.2:8085/contact_dls.html/ContactDLS"
        s.add(device)
    assert Reconciler(service).run(clock.now()) == 1  # issuing signs: that needs the CA key

    def no_ca_key(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the CA key was decrypted to package a certificate")

    monkeypatch.setattr(Runtime, "issuer", no_ca_key)
    monkeypatch.setattr("certmgr.pki.store.load_private_key_pem", no_ca_key)
    tasks = queue.claim_due(service, clock.now())
    queue.contact_result(service, tasks[0].deployment_id, clock.now(), error=None)
    served = admission.admit(
        service, mac=mac_of(0), peer="10.99.0.2", reason=Reason.SOLICITED, now=clock.now(), busy_until=None
    ).admission
    assert isinstance(served, Serve)
