"""One home for each rule: the paths that used to decide the same thing each in their own way now agree.

Each test pins a divergence that existed before the restructuring (the issue "One home for each rule"):

* the friendly name of a deployed PKCS#12 equals the one ``certmgr issue`` writes, for a template that uses the
  phone's host name (the deployment path built its own identity without host name and firmware);
* a policy removed from ``policies/`` gives the same answer on every path (fallback to matching; before, the
  operator actions raised, the reconciler raised, deployment fell back with a partial identity);
* every change of a deployment's state releases its lease and stamps ``finished_at`` when final (only one of six
  hand-written state changes did both);
* a rollback stays a rollback however long its transcript grows (it was read from the first transcript entry,
  and the transcript keeps only the newest 200).
"""

from __future__ import annotations

import ast
import base64
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from fastapi.testclient import TestClient
from sqlmodel import col, select

from certmgr import operations
from certmgr.api.app import create_app
from certmgr.audit.tokens import Role, create_token
from certmgr.clock import ManualClock
from certmgr.db.deployments import MAX_TRANSCRIPT, add_transcript
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, CheckReply, Deployment, DeploymentState, Device, IssueReason
from certmgr.deploy import admission, queue, verification
from certmgr.deploy.effects import apply_effects
from certmgr.deploy.reconcile import Reconciler
from certmgr.deploy.rollback import is_rollback, rollback_failed
from certmgr.inventory.enrollment import record_report, resolve_claim
from certmgr.inventory.phones import PolicySource, identity_of, policy_for
from certmgr.issuance.service import issue_to_files
from certmgr.pki.crl import RevocationReason
from certmgr.renewal.service import reconcile_renewals
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from certmgr.wpi.effects import WriteRejected
from certmgr.wpi.jobs import Serve
from certmgr.wpi.messages import Reason
from tests.conftest import REPO
from tests.integration.renewal_support import mark_verified

MAC = "00:1A:E8:00:00:01"
IP = "10.1.2.3"
HOST = "desk-1.example.net"
SPECIAL_MAC = "00:1A:E9:00:00:07"
SPECIAL_IP = "10.1.2.7"


def _write_policies(folder: Path, *, friendly: str = "WBM {mac}", special: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.toml"):
        old.unlink()
    text = (REPO / "policies" / "default.toml").read_text()
    text = text.replace('type = "rsa-2048"', 'type = "ec-p256"').replace(
        'friendly_name = "WBM {mac}"', f'friendly_name = "{friendly}"'
    )
    (folder / "default.toml").write_text(text)
    if special:
        (folder / "10-special.toml").write_text(
            text.replace('name = "default"', 'name = "special"')
            .replace('type = "ec-p256"', 'type = "ec-p384"')
            .replace("# [match] is deliberately absent", '[match]\nmac_prefixes = ["00:1A:E9"]\n#')
        )
    return folder


def _open(settings: Settings, clock: ManualClock, policy_dir: Path, **update: object) -> Runtime:
    return open_runtime(
        settings.model_copy(update={"policy_dir": policy_dir, "callback_timeout_seconds": 60, **update}),
        clock,
        create_ca=True,
    )


def _report(rt: Runtime, mac: str = MAC, ip: str = IP) -> None:
    items: dict[str, str | None] = {
        "contact-me-uri": f"http://{ip}:8085/contact_dls.html/ContactDLS",
        "device-type": "OpenStage 60",
        "software-version": "V3 R5.21.0",
        "e164": "4989",
    }
    with session_scope(rt.engine) as s:
        record_report(s, mac=mac, items=items, reason="start-up", peer=ip, now=rt.clock.now(), policies=rt.policies)


def _device(rt: Runtime, mac: str = MAC) -> Device:
    with session_scope(rt.engine) as s:
        return s.exec(select(Device).where(col(Device.mac) == mac)).one()


def _newest_deployment(rt: Runtime, mac: str = MAC) -> Deployment:
    device = _device(rt, mac)
    with session_scope(rt.engine) as s:
        dep = s.exec(
            select(Deployment).where(col(Deployment.device_id) == device.id).order_by(col(Deployment.id).desc())
        ).first()
        assert dep is not None
        return dep


def _serve_write_job(rt: Runtime, mac: str = MAC, ip: str = IP) -> Serve:
    """Contact-me for the queued deployment, then the phone's solicited call: the write job D10 admits."""
    tasks = queue.claim_due(rt, rt.clock.now())
    assert [t.mac for t in tasks] == [mac]
    queue.contact_result(rt, tasks[0].deployment_id, rt.clock.now(), error=None)
    served = admission.admit(
        rt, mac=mac, peer=ip, reason=Reason.SOLICITED, now=rt.clock.now(), busy_until=None
    ).admission
    assert isinstance(served, Serve)
    return served


def _friendly_name(p12: bytes) -> bytes | None:
    loaded = pkcs12.load_pkcs12(p12, None)
    assert loaded.cert is not None
    return loaded.cert.friendly_name


# --- who is this phone: the friendly name -----------------------------------------------------------------
def test_deployed_container_is_named_like_the_cli_names_it(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    rt = _open(settings, clock, _write_policies(tmp_path / "policies", friendly="WBM {hostname}"))
    try:
        operations.register_device(rt, mac=MAC, ip=IP, e164=None, model=None, dns_names=[], hostname=HOST, actor="test")
        _report(rt)
        assert Reconciler(rt).run(clock.now()) == 1
        served = _serve_write_job(rt)
        item = served.job.write_items[-1]
        deployed = _friendly_name(base64.b64decode(item.value or ""))
        result = issue_to_files(
            rt, mac=MAC, ips=[IP], dns_names=[], hostname=HOST, out_dir=tmp_path / "out", actor="cli"
        )
        p12_file = next(p for p in result.files if p.endswith(".p12"))
        cli = _friendly_name(Path(p12_file).read_bytes())
    finally:
        rt.close()
    assert cli == f"WBM {HOST}".encode()
    assert deployed == cli


def test_identity_carries_every_template_variable(settings: Settings, clock: ManualClock, tmp_path: Path) -> None:
    rt = _open(settings, clock, _write_policies(tmp_path / "policies"))
    try:
        operations.register_device(
            rt, mac=MAC, ip=IP, e164="4989", model="OpenStage 60", dns_names=["a.example.net"], hostname=HOST,
            actor="test",
        )  # fmt: skip
        _report(rt)
        identity = identity_of(_device(rt))
    finally:
        rt.close()
    assert (identity.mac, str(identity.ips[0]), identity.hostname) == (MAC, IP, HOST)
    assert (identity.e164, identity.model, identity.firmware) == ("4989", "OpenStage 60", "V3 R5.21.0")
    assert identity.dns_names == ("a.example.net",)


# --- which policy applies: a removed policy -------------------------------------------------------------------
@pytest.fixture
def removed_policy(settings: Settings, clock: ManualClock, tmp_path: Path) -> Iterator[Callable[[], Runtime]]:
    """A phone enrolled and verified under policy ``special``; the factory removes ``10-special.toml`` and opens a
    fresh runtime (as a restart after the operator deleted the file would)."""
    policy_dir = _write_policies(tmp_path / "policies", special=True)
    rt = _open(settings, clock, policy_dir)
    _report(rt, SPECIAL_MAC, SPECIAL_IP)
    Reconciler(rt).run(clock.now())
    mark_verified(rt, _newest_deployment(rt, SPECIAL_MAC).id or 0)
    assert _device(rt, SPECIAL_MAC).policy_name == "special"
    rt.close()
    opened: list[Runtime] = []

    def reopen() -> Runtime:
        (policy_dir / "10-special.toml").unlink()
        fresh = _open(settings, clock, policy_dir)
        opened.append(fresh)
        return fresh

    yield reopen
    for each in opened:
        each.close()


def test_removed_policy_falls_back_to_matching_on_every_path(
    removed_policy: Callable[[], Runtime], clock: ManualClock
) -> None:
    rt = removed_policy()
    device = _device(rt, SPECIAL_MAC)
    choice = policy_for(rt.policies, device.policy_name, identity_of(device))
    assert (choice.policy.name, choice.source) == ("default", PolicySource.REPLACED)
    assert "no longer exists" in choice.reason
    # The operator's renew: issues under the policy that applies now (it raised before).
    assert device.current_certificate_id is not None
    renewed = operations.renew_certificate(rt, device.current_certificate_id, "token:test")
    with session_scope(rt.engine) as s:
        cert = s.get(Certificate, renewed.certificate_id)
        assert cert is not None
        assert cert.policy_name == "default"
    # Deployment: the write job is packaged under the same policy (default's profiles), no error.
    served = _serve_write_job(rt, SPECIAL_MAC, SPECIAL_IP)
    assert served.job.deployment_id == renewed.deployment_id


def test_removed_policy_api_answers_the_same(removed_policy: Callable[[], Runtime]) -> None:
    rt = removed_policy()
    with session_scope(rt.engine) as s:
        _info, token = create_token(s, name="viewer", role=Role.VIEWER, actor="test", now=rt.clock.now())
    device = _device(rt, SPECIAL_MAC)
    with TestClient(create_app(rt)) as client:
        response = client.get(f"/api/v1/devices/{device.id}/policy", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["policy"]["name"], body["assigned"], body["source"]) == ("default", "special", "replaced")
    assert body["reason"] == policy_for(rt.policies, device.policy_name, identity_of(device)).reason


def test_removed_policy_renewal_reissues_under_the_matching_policy(
    removed_policy: Callable[[], Runtime], clock: ManualClock
) -> None:
    rt = removed_policy()
    report = reconcile_renewals(rt, clock.now())
    assert report.issued == [SPECIAL_MAC]
    assert report.reasons == {IssueReason.POLICY_CHANGE.value: 1}
    with session_scope(rt.engine) as s:
        newest = s.exec(select(Certificate).order_by(col(Certificate.id).desc())).first()
        assert newest is not None
        assert newest.policy_name == "default"


def test_removed_policy_reconcile_issues_under_the_matching_policy(
    removed_policy: Callable[[], Runtime], clock: ManualClock
) -> None:
    rt = removed_policy()
    device = _device(rt, SPECIAL_MAC)
    with session_scope(rt.engine) as s:
        current = s.get(Certificate, device.current_certificate_id)
        assert current is not None
        uri: dict[str, str | None] = {"contact-me-uri": "http://10.1.2.99:8085/contact_dls.html/ContactDLS"}
        claim = record_report(
            s, mac=SPECIAL_MAC, items=uri, reason="start-up", peer="10.1.2.99", now=clock.now(), policies=rt.policies
        ).claim
        assert claim is not None
        # The new address serves the phone's certificate (proof of possession): the phone moves there.
        moved = resolve_claim(
            s, claim, served_sha256=current.fingerprint_sha256, probe_error=None, now=clock.now(), policies=rt.policies
        )
        assert moved == "moved"
    assert Reconciler(rt).run(clock.now()) == 1  # a new address: the reconciler issues (it raised before)
    with session_scope(rt.engine) as s:
        newest = s.exec(select(Certificate).order_by(col(Certificate.id).desc())).first()
        assert newest is not None
        assert (newest.policy_name, newest.reason) == ("default", IssueReason.IP_CHANGE)


# --- move(): every state change releases the lease, final ones stamp finished_at --------------------------------
def _leased(rt: Runtime, dep_id: int) -> None:
    """Another node holds a lease on the deployment (e.g. it was waiting for the phone's callback)."""
    with session_scope(rt.engine) as s:
        dep = s.get(Deployment, dep_id)
        assert dep is not None
        dep.lease_owner, dep.lease_until = "other-node", rt.clock.now() + timedelta(hours=1)
        s.add(dep)


def _supersede_by_address_change(rt: Runtime) -> None:
    with session_scope(rt.engine) as s:
        items: dict[str, str | None] = {"contact-me-uri": "http://10.1.2.4:8085/contact_dls.html/ContactDLS"}
        claim = record_report(
            s, mac=MAC, items=items, reason="start-up", peer="10.1.2.4", now=rt.clock.now(), policies=rt.policies
        ).claim
        assert claim is not None
        assert resolve_claim(s, claim, served_sha256=None, probe_error=None, now=rt.clock.now(), policies=rt.policies)


def _supersede_by_renewal(rt: Runtime) -> None:
    cert_id = _newest_deployment(rt).certificate_id
    operations.renew_certificate(rt, cert_id, "token:test")


def _cancel_by_operator(rt: Runtime) -> None:
    operations.cancel_deployment(rt, _newest_deployment(rt).id or 0, "token:test")


def _cancel_by_revocation(rt: Runtime) -> None:
    operations.revoke_certificate(rt, _newest_deployment(rt).certificate_id, RevocationReason.KEY_COMPROMISE, "t")


def _cancel_by_decommission(rt: Runtime) -> None:
    operations.decommission_device(rt, _device(rt).id or 0, "token:test")


def _fail_every_profile_refused(rt: Runtime) -> None:
    served = _serve_write_job(rt)
    job = served.job
    apply_effects(
        rt,
        effects=[WriteRejected(job.deployment_id, "phone answered WriteItems with failed", None)],
        deployment_id=job.deployment_id,
        authorised=True,
        peer=IP,
        now=rt.clock.now(),
        transcript=[],
    )


def _fail_after_last_attempt(rt: Runtime) -> None:
    dep_id = _newest_deployment(rt).id or 0
    with session_scope(rt.engine) as s:
        dep = s.get(Deployment, dep_id)
        assert dep is not None
        dep.attempts = rt.settings.max_attempts
        s.add(dep)
    verification_failure(rt, dep_id)


def verification_failure(rt: Runtime, dep_id: int) -> None:
    """An accepted write whose probe sees another certificate (drift) — via the verification stage."""
    with session_scope(rt.engine) as s:
        dep = s.get(Deployment, dep_id)
        assert dep is not None
        dep.state, dep.written_at, dep.check_reply = DeploymentState.VERIFYING, rt.clock.now(), CheckReply.PASSED
        s.add(dep)
    _leased(rt, dep_id)
    verification.finish_verification(rt, dep_id, seen_sha256="00" * 32, probe_error=None, now=rt.clock.now())


PATHS: dict[str, tuple[Callable[[Runtime], None], DeploymentState]] = {
    "superseded by an address change": (_supersede_by_address_change, DeploymentState.SUPERSEDED),
    "superseded by a new certificate": (_supersede_by_renewal, DeploymentState.SUPERSEDED),
    "cancelled by the operator": (_cancel_by_operator, DeploymentState.CANCELLED),
    "cancelled by a revocation": (_cancel_by_revocation, DeploymentState.CANCELLED),
    "cancelled by decommissioning": (_cancel_by_decommission, DeploymentState.CANCELLED),
    "failed: every profile refused": (_fail_every_profile_refused, DeploymentState.FAILED),
    "failed: attempts used up": (_fail_after_last_attempt, DeploymentState.FAILED),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_final_state_change_releases_the_lease_and_stamps_finished(
    settings: Settings, clock: ManualClock, tmp_path: Path, path: str
) -> None:
    run, final = PATHS[path]
    rt = _open(settings, clock, _write_policies(tmp_path / "policies", friendly="WBM {mac}"), max_attempts=2)
    try:
        _report(rt)
        Reconciler(rt).run(clock.now())
        dep_id = _newest_deployment(rt).id or 0
        _leased(rt, dep_id)
        clock.advance(timedelta(minutes=7))
        run(rt)
        with session_scope(rt.engine) as s:
            dep = s.get(Deployment, dep_id)
            assert dep is not None
    finally:
        rt.close()
    assert dep.state is final
    assert (dep.lease_owner, dep.lease_until) == (None, None)
    assert dep.finished_at == clock.now()
    assert dep.updated_at == clock.now()


def test_only_move_assigns_a_deployment_state() -> None:
    """No module but :mod:`certmgr.db.deployments` assigns ``.state`` (the six hand-written copies are gone)."""
    root = REPO / "certmgr"
    offenders = []
    for path in root.rglob("*.py"):
        if path == root / "db" / "deployments.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "state":
                    offenders.append(f"{path.relative_to(REPO)}:{target.lineno}")
    assert offenders == []


# --- rollback is a column ------------------------------------------------------------------------------------------
def test_a_long_rollback_is_still_a_rollback(settings: Settings, clock: ManualClock, tmp_path: Path) -> None:
    rt = _open(
        settings, clock, _write_policies(tmp_path / "policies"), max_attempts=1, rollback_after_verify_failures=1
    )
    try:
        _report(rt)
        Reconciler(rt).run(clock.now())
        mark_verified(rt, _newest_deployment(rt).id or 0)  # the phone serves certificate 1
        first_cert = _device(rt).current_certificate_id
        operations.renew_certificate(rt, first_cert or 0, "token:test")
        verification_failure(rt, _newest_deployment(rt).id or 0)  # certificate 2 accepted, then not served
        clock.advance(timedelta(minutes=1))
        results = rollback_failed(rt, clock.now())
        assert [r.rollback_deployment_id is not None for r in results] == [True]
        back_id = results[0].rollback_deployment_id or 0
        with session_scope(rt.engine) as s:
            back = s.get(Deployment, back_id)
            assert back is not None
            assert back.certificate_id == first_cert
            add_transcript(back, [{"dir": "poll", "n": n} for n in range(MAX_TRANSCRIPT + 50)])
            s.add(back)
        with session_scope(rt.engine) as s:
            back = s.get(Deployment, back_id)
            assert back is not None
            assert back.transcript[0].get("dir") != "rollback"  # the rollback entry scrolled out of the transcript
            assert is_rollback(back)
        verification_failure(rt, back_id)  # the rollback itself fails after acceptance
        clock.advance(timedelta(minutes=1))
        assert rollback_failed(rt, clock.now()) == []  # a rollback is never rolled back
    finally:
        rt.close()
