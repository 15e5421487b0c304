"""Verification: did the phone take the certificate? The phone's reply to the write, the certificate info it
reports (D6) and a TLS probe of its WBM are combined (:func:`~certmgr.deploy.verdict.combine`) into one
verdict, which this stage acts on.

* **verified** — deployment verified, certificate active, the phone's previous active one superseded, the
  device's current certificate / ``last_verified_at`` / status set, the PKCS#12 profile remembered (D7).
* **drift** — the phone reports or serves another certificate: flagged (audited), written again.
* **undecided** — nothing contradicts the write, nothing proves it: re-verified later, never written again.

Drift and undecided are counted in ``verify_failures`` with the kind in ``verify_failure`` (typed columns the
rollback stage reads; the transcript is for people).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import add_transcript, move
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    CheckProbe,
    DeploymentState,
    DeviceStatus,
    ProfileMemory,
    VerifyFailure,
)
from certmgr.deploy.queue import retry_or_fail
from certmgr.deploy.records import ACTOR, deployment_event, load_deployment
from certmgr.deploy.verdict import Verdict, combine
from certmgr.pki.types import Pkcs12Profile

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState


@dataclass(frozen=True)
class ProbeTarget:
    """Where to probe and what to expect."""

    deployment_id: int
    host: str
    expected_sha256: str


def probe_target(runtime: Runtime, deployment_id: int) -> ProbeTarget | None:
    """The phone address and expected fingerprint of a deployment in ``verifying`` (``None`` otherwise).

    Raises:
        InputError: unknown deployment. DatabaseError: if the database cannot be reached.
    """
    with session_scope(runtime.engine) as session:
        dep, device = load_deployment(session, deployment_id)
        if dep.state is not S.VERIFYING or device.ip is None:
            return None
        cert_row = session.get(Certificate, dep.certificate_id)
        assert cert_row is not None
        return ProbeTarget(deployment_id, device.ip, cert_row.fingerprint_sha256)


def finish_verification(
    runtime: Runtime, deployment_id: int, *, seen_sha256: str | None, probe_error: str | None, now: datetime
) -> Verdict | None:
    """Record the probe, combine reply + info + probe and act on the verdict (module docstring). ``None``, with
    nothing recorded, if the deployment stopped verifying while the probe ran (superseded by a new address or
    certificate, cancelled by an operator): the probe's answer is about a certificate nobody waits for any more.

    Raises:
        InputError: unknown deployment. DatabaseError: if the database cannot be reached.
    """
    with session_scope(runtime.engine) as session:
        dep, device = load_deployment(session, deployment_id)
        if dep.state is not S.VERIFYING:
            return None
        cert_row = session.get(Certificate, dep.certificate_id)
        assert cert_row is not None
        events: list[NewEvent] = []
        if seen_sha256 is None:
            dep.check_probe = CheckProbe.UNREACHABLE
        elif seen_sha256 == cert_row.fingerprint_sha256:
            dep.check_probe = CheckProbe.PASSED
        else:
            dep.check_probe = CheckProbe.FAILED
        verdict = combine(dep.check_reply, dep.check_info, dep.check_probe)
        checks = {
            "check_reply": dep.check_reply.value if dep.check_reply else None,
            "check_info": dep.check_info.value if dep.check_info else None,
            "check_probe": dep.check_probe.value,
        }
        add_transcript(
            dep,
            [
                {
                    "at": now.isoformat(),
                    "dir": "probe",
                    "result": dep.check_probe.value,
                    "verdict": verdict.value,
                    "error": probe_error,
                }
            ],
        )
        if verdict is Verdict.VERIFIED:
            move(dep, S.VERIFIED, now)
            dep.verified_at = now
            dep.last_error = None
            for old in session.exec(
                select(Certificate).where(
                    col(Certificate.device_id) == device.id,
                    col(Certificate.status) == CertificateStatus.ACTIVE.value,
                    col(Certificate.id) != cert_row.id,
                )
            ):
                old.status = CertificateStatus.SUPERSEDED
                session.add(old)
                events.append(NewEvent(ACTOR, "certificate.superseded", "certificate", old.serial, {"mac": device.mac}))
            cert_row.status = CertificateStatus.ACTIVE
            session.add(cert_row)
            device.current_certificate_id = cert_row.id
            device.last_verified_at = now
            device.status = DeviceStatus.VERIFIED
            device.drift = False
            if device.device_type and device.software_version and dep.profile_used is not None:
                remember_profile(session, device.device_type, device.software_version, dep.profile_used, now)
            events.append(deployment_event("deployment.verified", dep, device.mac, serial=cert_row.serial, **checks))
        elif verdict is Verdict.DRIFT:
            dep.verify_failures += 1
            dep.verify_failure = VerifyFailure.DRIFT
            device.drift = True
            device.status = DeviceStatus.DRIFT
            events.append(NewEvent(ACTOR, "device.drift", "device", device.mac, {"deployment": dep.id, **checks}))
            dep.written_at = dep.write_sent_at = None  # the phone does not hold it: write again
            dep.check_reply = None
            retry_or_fail(runtime, dep, device, now, "phone reports or serves another certificate", events)
        else:
            dep.verify_failures += 1
            dep.verify_failure = VerifyFailure.UNDECIDED
            events.append(deployment_event("deployment.undecided", dep, device.mac, error=probe_error, **checks))
            retry_or_fail(runtime, dep, device, now, "verification undecided (info and probe inconclusive)", events)
        device.updated_at = now
        session.add(dep)
        session.add(device)
        append_events(session, now, events)
        return verdict


def remember_profile(session: Session, device_type: str, version: str, profile: Pkcs12Profile, now: datetime) -> None:
    """Remember that ``profile`` worked for ``device_type`` / ``version`` (D7). One statement (insert, or update on
    conflict): phones of one model verified at the same moment on several connections must not collide."""
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    values = {"device_type": device_type, "software_version": version, "profile": profile, "updated_at": now}
    statement = dialect_insert(ProfileMemory).values(**values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["device_type", "software_version"],
            set_={"profile": statement.excluded.profile, "updated_at": statement.excluded.updated_at},
        )
    )


__all__ = ["ProbeTarget", "finish_verification", "probe_target", "remember_profile"]
