"""Shared fixtures of the API, audit, report and token tests (imported by those modules; holds no tests).

* ``ca_template`` (session): a CA created once, copied into each test's data dir (RSA-4096 keys are slow).
* ``rt``: an opened :class:`Runtime` on the parametrised database (SQLite and PostgreSQL), with a manual clock.
* ``tokens``: one token per role, by role name.
* ``client``: a TestClient on ``create_app(rt)``; ``auth(token)`` builds the header.
* ``fleet``: a few devices with certificates and deployments in interesting states.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient

from certmgr.api.app import create_app
from certmgr.audit.tokens import Role, create_token
from certmgr.clock import Clock, ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    CheckProbe,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    IssueReason,
)
from certmgr.pki.types import KeyType
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from tests.conftest import REPO, T0

PASSPHRASE = "test-passphrase-not-secret"
MASTER = "test-master-key-not-secret-0123456789abcdef"


def make_settings(data_dir: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=db_url,
        policy_dir=REPO / "policies",
        ca_config_dir=REPO / "ca",
        ca_passphrase=PASSPHRASE,
        master_key=MASTER,
    )


def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Point the CLI (which reads CERTMGR_* variables) at ``settings``."""
    monkeypatch.setenv("CERTMGR_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CERTMGR_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("CERTMGR_POLICY_DIR", str(settings.policy_dir))
    monkeypatch.setenv("CERTMGR_CA_CONFIG_DIR", str(settings.ca_config_dir))
    monkeypatch.setenv("CERTMGR_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("CERTMGR_MASTER_KEY", MASTER)


def cli_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``certmgr ARGV`` in-process (the CLI's own ``main``): (exit code, stdout, stderr)."""
    from certmgr.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding a freshly created CA (created once per test session)."""
    data_dir = tmp_path_factory.mktemp("ca-template") / "var"
    settings = make_settings(data_dir, f"sqlite:///{data_dir.parent / 'template.db'}")
    runtime = open_runtime(settings, ManualClock(T0), create_ca=True)
    runtime.close()
    return data_dir / "ca"


@pytest.fixture
def rt(
    db_url: str, tmp_path: Path, ca_template: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Runtime]:
    """An opened runtime on ``db_url`` with a CA and a manual clock; the CLI environment points at it too."""
    import os

    for name in list(os.environ):
        if name.startswith("CERTMGR_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    shutil.copytree(ca_template, data_dir / "ca")
    settings = make_settings(data_dir, db_url)
    cli_env(monkeypatch, settings)
    runtime = open_runtime(settings, clock)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def tokens(rt: Runtime) -> dict[str, str]:
    """A token per role: {"viewer": "cmt_…", "operator": …, "admin": …}."""
    values: dict[str, str] = {}
    with session_scope(rt.engine) as session:
        for role in Role:
            _, values[role.value] = create_token(
                session, name=f"{role.value}-1", role=role, actor="test", now=rt.clock.now()
            )
    return values


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt), raise_server_exceptions=True) as c:
        yield c


@dataclass(frozen=True)
class Fleet:
    """Ids of the seeded objects."""

    devices: dict[str, int]
    certificates: dict[str, int]
    deployments: dict[str, int]


def _cert(device_id: int, serial: str, pem: str, not_after_days: int, status: CertificateStatus) -> Certificate:
    return Certificate(
        device_id=device_id,
        serial=serial,
        subject=f"CN={serial}",
        sans=["IP:10.0.0.1"],
        key_type=KeyType.RSA_2048,
        not_before=T0 - timedelta(days=10),
        not_after=T0 + timedelta(days=not_after_days),
        fingerprint_sha256=serial.rjust(64, "0"),
        cert_pem=pem,
        key_blob=b"sealed-key-never-exposed",
        issuer_fingerprint="f" * 64,
        policy_name="default",
        status=status,
        reason=IssueReason.ENROLLMENT,
        created_at=T0,
    )


@pytest.fixture
def fleet(rt: Runtime) -> Fleet:
    """Four phones: ``ok`` (verified, 200 days), ``soon`` (verified, 5 days), ``expired`` (-3 days, failed),
    ``new`` (no certificate); deployments ``verified`` (ok) and ``failed`` (expired, with a transcript)."""
    pem = rt.ca_store.load_public().issuing_cert.public_bytes(Encoding.PEM).decode()
    specs = {
        "ok": ("00:1A:E8:00:00:01", "+4989100001", "10.0.0.1", "OpenStage 60", "V3 R5.1", DeviceStatus.VERIFIED),
        "soon": ("00:1A:E8:00:00:02", "+4989100002", "10.0.0.2", "OpenStage 40", "V3 R5.1", DeviceStatus.VERIFIED),
        "expired": ("00:1A:E8:00:00:03", "+4989100003", "10.0.1.3", "OpenStage 60", "V3 R4.0", DeviceStatus.FAILED),
        "new": ("00:1A:E8:00:00:04", None, "10.0.1.4", "OpenScape 55", "V1 R2", DeviceStatus.NEW),
    }
    days = {"ok": 200, "soon": 5, "expired": -3}
    devices: dict[str, int] = {}
    certs: dict[str, int] = {}
    deployments: dict[str, int] = {}
    with session_scope(rt.engine) as s:
        for key, (mac, e164, ip, model, fw, status) in specs.items():
            d = Device(
                mac=mac,
                e164=e164,
                ip=ip,
                device_type=model,
                software_version=fw,
                policy_name="default",
                enrollment=Enrollment.APPROVED,
                status=status,
                last_seen_at=T0 - timedelta(hours=1),
                last_verified_at=T0 - timedelta(days=1) if status is DeviceStatus.VERIFIED else None,
                created_at=T0,
                updated_at=T0,
            )
            s.add(d)
            s.flush()
            assert d.id is not None
            devices[key] = d.id
            if key in days:
                c = _cert(d.id, f"a{len(certs) + 1:x}0", pem, days[key], CertificateStatus.ACTIVE)
                s.add(c)
                s.flush()
                assert c.id is not None
                certs[key] = c.id
                d.current_certificate_id = c.id
                s.add(d)
        s.flush()
        for key, state in (("ok", DeploymentState.VERIFIED), ("expired", DeploymentState.FAILED)):
            dep = Deployment(
                device_id=devices[key],
                certificate_id=certs[key],
                state=state,
                attempts=1 if state is DeploymentState.VERIFIED else 3,
                check_probe=CheckProbe.PASSED if state is DeploymentState.VERIFIED else CheckProbe.UNREACHABLE,
                last_error=None if state is DeploymentState.VERIFIED else "phone unreachable",
                transcript=[{"step": "contact-me", "status": 204}, {"step": "write", "password": "[redacted]"}],
                created_at=T0,
                updated_at=T0,
            )
            s.add(dep)
            s.flush()
            assert dep.id is not None
            deployments[key] = dep.id
    return Fleet(devices, certs, deployments)
