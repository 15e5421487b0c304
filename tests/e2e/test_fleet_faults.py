"""Acceptance: ``certmgr serve`` (real uvicorn listeners over real TLS, a subprocess) against 50 simulated phones
covering every fault of :mod:`certmgr.simulator.faults`, under a policy whose first PKCS#12 profile is
``legacy`` (with a configured password secret) and whose second is ``plain``.

Each phone must end in ``verified`` or in the failure state its fault calls for; every verified phone must
serve (TLS-probed here, independently of certmgr) the certificate the database names as its current one; no
transcript, audit event or service log may contain the PKCS#12 password or a PKCS#12/key blob; and no
deployment may be left in an unfinished state.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from certmgr.db.models import (
    CertificateStatus,
    CheckInfo,
    CheckProbe,
    CheckReply,
    Deployment,
    DeploymentState,
    DeviceStatus,
)
from certmgr.pki.types import Pkcs12Profile
from certmgr.simulator.phone import SimPhone
from tests.e2e.conftest import (
    E2E,
    FAST_SETTINGS,
    leaked_secrets,
    served_sha256,
    sha256_of,
    transcripts_and_events_text,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: (fault spec, how many phones) — 50 phones, every fault kind, a few combinations, the rest healthy.
FLEET: list[tuple[str, int]] = [
    ("", 10),
    ("offline", 3),
    ("busy-first-write", 4),
    ("failed-write", 3),
    ("reject-legacy", 5),
    ("wrong-info", 3),
    ("unparseable-info", 4),
    ("slow=1", 3),
    ("fragments", 4),
    ("max-items-1", 3),
    ("ip-change", 3),
    ("factory-reset", 3),
    ("busy-first-write,fragments", 1),
    ("reject-legacy,max-items-1", 1),
]
MAX_ATTEMPTS = int(str(FAST_SETTINGS["max_attempts"]))
CONVERGE_TIMEOUT_S = 150.0
FINAL = {DeploymentState.VERIFIED, DeploymentState.FAILED, DeploymentState.SUPERSEDED}


def _latest(world: E2E, phone: SimPhone) -> Deployment | None:
    deps = world.deployments().get(phone.config.mac)
    return deps[-1] if deps else None


def _snapshot(world: E2E, phones: list[SimPhone]) -> dict[str, list[tuple[object, ...]]]:
    """Every deployment of ``phones`` as (id, certificate, state, attempts, finished_at), per MAC."""
    deployments = world.deployments()
    return {
        p.config.mac: [(d.id, d.certificate_id, d.state, d.attempts, d.finished_at) for d in deployments[p.config.mac]]
        for p in phones
    }


def _converged(world: E2E) -> bool:
    """Every phone has a deployment, none is unfinished, phones that move or reset have done so and are idle."""
    deployments = world.deployments()
    devices = world.devices()
    for phone in world.phones:
        deps = deployments.get(phone.config.mac)
        if not deps or any(d.state not in FINAL for d in deps):
            return False
        if phone.faults.ip_change and phone.ip != phone.config.alt_ip:
            return False
        if phone.faults.ip_change and devices[phone.config.mac].ip != phone.ip:
            return False
        if not phone.faults.offline and not phone.idle:
            return False
    return True


def test_fifty_phones_every_fault(e2e_factory: Callable[..., E2E]) -> None:
    # At DEBUG: the log (every library included) must hold no key, password or PKCS#12 at any level.
    # 51 addresses: the 50 phones, and a sentinel that joins once they have converged.
    world = e2e_factory(51, profiles=["legacy", "plain"], settings={"log_level": "DEBUG"})
    world.service.start()
    specs = [spec for spec, n in FLEET for _ in range(n)]
    assert len(specs) == 50
    phones = world.add_phones(specs)
    started = time.monotonic()
    world.start_phones(phones)
    wait_until(lambda: _converged(world), CONVERGE_TIMEOUT_S, 0.5, "every deployment final")
    elapsed = time.monotonic() - started
    # Stable: nothing new happens to the 50 (no reconcile loop re-issuing or retrying forever) while a sentinel
    # phone joins and is served — which takes the dispatcher many rounds of reconcile, claims and checks.
    before = _snapshot(world, phones)
    (sentinel,) = world.add_phones([""])
    world.start_phones([sentinel])
    wait_until(
        lambda: (dep := _latest(world, sentinel)) is not None and dep.state is DeploymentState.VERIFIED,
        60.0,
        0.25,
        "the sentinel phone verified",
    )
    assert _snapshot(world, phones) == before
    assert _converged(world)

    deployments = world.deployments()
    devices = world.devices()
    certs = world.certificates()
    outcome: Counter[str] = Counter()
    for phone in phones:
        mac, faults = phone.config.mac, phone.faults
        deps = deployments[mac]
        last = deps[-1]
        device = devices[mac]
        stats = phone.stats
        label = f"{mac} [{faults.to_spec() or 'plain'}]"
        outcome[f"{faults.to_spec() or 'plain'} -> {last.state.value}"] += 1
        assert all(d.state in FINAL for d in deps), label
        assert all(d.attempts <= MAX_ATTEMPTS for d in deps), label

        if faults.offline:
            # Never reached: contact-me refused on every attempt, then failed for good.
            assert last.state is DeploymentState.FAILED, label
            assert last.attempts == MAX_ATTEMPTS, label
            assert last.last_error is not None, label
            assert "unreachable" in last.last_error, label
            assert last.check_reply is None, label
            assert device.status is DeviceStatus.FAILED, label
            continue
        if faults.failed_write:
            # Every write refused at message level: each profile tried once, then no profile is left.
            assert last.state is DeploymentState.FAILED, label
            assert last.check_reply is CheckReply.FAILED, label
            assert stats.writes_accepted == 0, label
            assert stats.writes_rejected == 2, label  # legacy, then plain
            assert stats.factory_cert, label
            assert served_sha256(phone.ip, world.wbm_port) == sha256_of(phone.factory_certificate), label
            continue
        if faults.wrong_info:
            # The info names another certificate: D6 "verification failure" → drift → written again, until
            # max_attempts; the phone is flagged as drifting and the deployment fails.
            assert last.state is DeploymentState.FAILED, label
            assert last.check_info is CheckInfo.MISMATCH, label
            assert last.attempts == MAX_ATTEMPTS, label
            assert device.drift, label
            assert device.status is DeviceStatus.FAILED, label
            assert stats.writes_accepted == MAX_ATTEMPTS, label
            continue

        # Everyone else ends verified, and serves exactly the certificate the database calls current.
        assert last.state is DeploymentState.VERIFIED, f"{label}: {last.state} {last.last_error}"
        assert last.check_reply is CheckReply.PASSED, label
        assert device.status is DeviceStatus.VERIFIED, label
        assert device.current_certificate_id == last.certificate_id, label
        current = certs[last.certificate_id]
        assert current.status is CertificateStatus.ACTIVE, label
        assert f"IP:{phone.ip}" in current.sans, label
        served = served_sha256(phone.ip, world.wbm_port)
        if faults.factory_reset and served != current.fingerprint_sha256:
            # Known gap (see docs): the post-write probe passed before the phone reset; nothing re-probes a
            # verified phone until the probe sweep exists, so the database still says verified.
            assert served == sha256_of(phone.factory_certificate), label
            outcome["factory-reset: reset after the probe, drift not seen (needs the probe sweep)"] += 1
            continue
        assert served == current.fingerprint_sha256, label
        assert stats.current_cert_sha256 == current.fingerprint_sha256, label

        if faults.unparseable_info:
            assert last.check_info is CheckInfo.UNDECIDED, label  # D6: undecided by the info …
            assert last.check_probe is CheckProbe.PASSED, label  # … decided by the TLS probe
        else:
            assert last.check_info is CheckInfo.VERIFIED, label
        if faults.reject_legacy:
            assert last.profile_used is Pkcs12Profile.PLAIN, label
        if faults.busy_first_write:
            assert stats.busy_replies == 1, label
            assert stats.writes_accepted >= 1, label
        if faults.max_items_1:
            assert "maxItems" not in (stats.last_error or ""), label
        if faults.ip_change:
            # Moved: a second certificate for the new address, verified on it; the first one superseded.
            assert phone.ip == phone.config.alt_ip, label
            assert device.ip == phone.ip, label
            assert len({d.certificate_id for d in deps}) >= 2, label
            first = certs[deps[0].certificate_id]
            assert f"IP:{phone.config.ip}" in first.sans, label
            assert first.status is CertificateStatus.SUPERSEDED, label
            continue
        if faults.factory_reset:
            # The reset happened while the first write was being probed: drift seen, written a second time.
            assert stats.writes_accepted == 2, label
            outcome["factory-reset: drift caught by the post-write probe, rewritten"] += 1
            continue
        if not faults.reject_legacy:
            # One accepted write per healthy phone: never written twice.
            assert stats.writes_accepted == 1, label

    # At least some reject-legacy phones really were offered legacy first and fell back to plain.
    rejected = [p for p in phones if p.faults.reject_legacy and p.stats.writes_rejected >= 1]
    assert rejected, "no reject-legacy phone was ever offered the legacy profile"
    assert any(p.stats.writes_accepted == 1 for p in rejected)
    # Plain phones took the first profile, legacy, with the configured password.
    assert any(deps[-1].profile_used is Pkcs12Profile.LEGACY for deps in deployments.values())

    # Nothing secret in any transcript, audit event or the service log.
    assert leaked_secrets(transcripts_and_events_text(world)) == []
    assert leaked_secrets(world.service.log()) == []
    assert " DEBUG " in world.service.log()  # the scan above read a log written at DEBUG
    assert "Traceback" not in world.service.log()
    assert [line for line in world.service.log().splitlines() if " ERROR " in line] == []
    print(f"\n50 phones converged in {elapsed:.1f}s")
    for line, n in sorted(outcome.items()):
        print(f"  {n:3d}  {line}")
