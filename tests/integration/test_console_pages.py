"""The console's pages and actions against a seeded fleet (SQLite and PostgreSQL): overview figures, search,
filters, sort and keyset pages, a phone's proof and timeline (transcripts redacted), actions through the operator
use cases audited as ``console:<name>``, bulk jobs, audit verification, signed report bundles, CA and tokens."""

# ruff: noqa: F811 - the shared fixtures are imported and named as parameters

from __future__ import annotations

import io
import json
import re
import zipfile
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import col, select

from certmgr.console.fleet import parse_filter, search_terms
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    ApiToken,
    AuditEvent,
    Certificate,
    CertificateStatus,
    ConsoleJob,
    ConsoleSession,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    IssueReason,
)
from certmgr.pki.types import KeyType
from certmgr.reports import verify_export
from certmgr.runtime import Runtime
from tests.conftest import T0
from tests.integration.console_support import ORIGIN, csrf, login, new_client, ui
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    ca_template,
    fleet,
    rt,
    tokens,
)

__all__ = ["ui"]


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with session_scope(rt.engine) as s:
        rows = list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.seq))))
        s.expunge_all()
        return rows


def _macs(html: str) -> list[str]:
    return re.findall(r'<a href="/ui/phones/([0-9A-F:]{17})"><code>', html)


def _seed(rt: Runtime, count: int, start: int = 0x100) -> list[str]:
    """``count`` approved phones with active certificates expiring 1..count days from T0 (and IPs 10.9.x.y)."""
    macs = []
    with session_scope(rt.engine) as s:
        for i in range(count):
            n = start + i
            mac = ":".join(f"{(0x001AE8000000 + n) >> (8 * k) & 0xFF:02X}" for k in range(5, -1, -1))
            device = Device(
                mac=mac,
                e164=f"49891{n:05d}",
                ip=f"10.9.{n // 250}.{n % 250 + 1}",
                hostname=f"desk-{n}.example.net",
                device_type="OpenStage 40",
                software_version="V3 R5.2",
                policy_name="default",
                enrollment=Enrollment.APPROVED,
                status=DeviceStatus.VERIFIED,
                last_seen_at=T0 - timedelta(minutes=n),
                created_at=T0,
                updated_at=T0,
            )
            s.add(device)
            s.flush()
            assert device.id is not None
            cert = Certificate(
                device_id=device.id,
                serial=f"c{n:x}",
                subject=f"CN={mac}",
                sans=[f"IP:{device.ip}"],
                key_type=KeyType.RSA_2048,
                not_before=T0 - timedelta(days=300),
                not_after=T0 + timedelta(days=1 + i),
                fingerprint_sha256=f"{n:064x}",
                cert_pem="-",
                key_blob=b"sealed",
                issuer_fingerprint="f" * 64,
                policy_name="default",
                status=CertificateStatus.ACTIVE,
                reason=IssueReason.ENROLLMENT,
                created_at=T0,
            )
            s.add(cert)
            s.flush()
            device.current_certificate_id = cert.id
            s.add(device)
            macs.append(mac)
    return macs


# --- filters (pure) -------------------------------------------------------------------------------------------
def test_search_terms() -> None:
    terms = search_terms("001ae8")
    assert terms is not None
    assert terms.mac == "00:1A:E8"
    assert terms.e164 == "001ae8" or terms.e164 is None
    assert search_terms("10.9.")
    assert search_terms("desk-1")
    assert search_terms("+4989")
    assert search_terms("<script>") is None
    flt, problems = parse_filter({"q": "'; drop table device;--"})
    assert flt.q == ""
    assert problems


# --- overview -------------------------------------------------------------------------------------------------
def test_overview(ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet) -> None:
    with session_scope(rt.engine) as s:  # the ok phone's verified deployment had its TLS probe pass
        s.execute(update(Deployment).where(col(Deployment.id) == fleet.deployments["ok"]).values(verified_at=T0))
    login(ui, tokens["viewer"])
    page = ui.get("/ui/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r"<strong>1</strong> of 4 enrolled phones", html)  # only "ok" is proven
    for mac, why in (
        ("00:1A:E8:00:00:02", "verified without a TLS probe"),
        ("00:1A:E8:00:00:04", "no certmgr certificate deployed yet"),
    ):
        assert mac in html
        assert why in html
    assert '<svg class="chart" id="forecast"' in html
    assert '<title id="forecast-title">Certificates expiring per week, next 26 weeks</title>' in html
    assert '<desc id="forecast-desc">' in html
    assert re.search(r"Already expired: <a [^>]*>1 current certificate</a>", html)
    w1 = re.search(r"<td>W1</td><td><time[^>]*>[^<]*</time></td><td class=\"num\">(\d+)</td>", html)
    assert w1 is not None
    assert w1.group(1) == "1"  # "soon": 5 days
    assert "phone unreachable" in html  # recent failure
    assert "Renewals due in the next 7 days" in html
    assert "issuing" in html
    assert "root" in html


def test_expiry_forecast_buckets_match_the_dates(rt: Runtime) -> None:
    """The per-week SQL bucketing (one expression per dialect) agrees with Python on exact week boundaries."""
    from certmgr.console.overview import expiry_forecast

    _seed(rt, 200)  # certificates expiring exactly 1, 2, … 200 days after T0
    with session_scope(rt.engine) as s:
        s.execute(
            update(Certificate).where(col(Certificate.serial) == "c100").values(not_after=T0 - timedelta(hours=1))
        )
        expired, weeks = expiry_forecast(s, T0)
    days = [d for d in range(1, 201) if d != 1]  # c100 is the first phone's: expired now
    assert expired == 1
    assert [w.count for w in weeks] == [sum(1 for d in days if d // 7 == i) for i in range(26)]
    assert weeks[1].start == T0 + timedelta(weeks=1)


# --- phones ---------------------------------------------------------------------------------------------------
def test_search_filters_sort_and_keyset_pages(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    macs = _seed(rt, 120)
    login(ui, tokens["viewer"])
    first = ui.get("/ui/phones")
    assert _macs(first.text) == macs[:50]  # expiry: soonest first
    seen: list[str] = []
    url = "/ui/phones"
    for _ in range(5):
        html = ui.get(url).text
        seen += _macs(html)
        link = re.search(r'<a href="(/ui/phones\?[^"]*cursor=[^"]*)" rel="next">', html)
        if link is None:
            break
        url = link.group(1).replace("&amp;", "&")
    assert seen == macs  # every phone once, in order, over three pages

    assert _macs(ui.get("/ui/phones", params={"q": macs[7][:16]}).text) == [
        m for m in macs if m.startswith(macs[7][:16])
    ]
    assert _macs(ui.get("/ui/phones", params={"q": "001ae8000107"}).text) == [macs[7]]
    assert _macs(ui.get("/ui/phones", params={"q": "4989100263"}).text) == [macs[7]]
    assert _macs(ui.get("/ui/phones", params={"q": "10.9.1.14"}).text) == [macs[7]]
    assert _macs(ui.get("/ui/phones", params={"q": "DESK-263."}).text) == [macs[7]]
    assert _macs(ui.get("/ui/phones", params={"q": "10.9.1.1", "sort": "mac"}).text) == sorted(
        m for i, m in enumerate(macs) if f"10.9.{(0x100 + i) // 250}.{(0x100 + i) % 250 + 1}".startswith("10.9.1.1")
    )
    assert _macs(ui.get("/ui/phones", params={"q": "desk_"}).text) == []  # "_" is literal, never a wildcard
    assert _macs(ui.get("/ui/phones", params={"expiring": "3"}).text) == macs[:3]
    assert _macs(ui.get("/ui/phones", params={"sort": "recent"}).text)[:2] == macs[:2]
    assert _macs(ui.get("/ui/phones", params={"sort": "silent"}).text)[0] == macs[-1]
    assert _macs(ui.get("/ui/phones", params={"sort": "mac"}).text) == sorted(macs)[:50]
    with session_scope(rt.engine) as s:
        s.execute(update(Device).where(col(Device.mac) == macs[5]).values(drift=True))
        s.execute(update(Device).where(col(Device.mac) == macs[6]).values(enrollment=Enrollment.PENDING.value))
    assert _macs(ui.get("/ui/phones", params={"drift": "1"}).text) == [macs[5]]
    assert _macs(ui.get("/ui/phones", params={"pending": "1"}).text) == [macs[6]]
    assert _macs(ui.get("/ui/phones", params={"status": "failed"}).text) == []
    assert _macs(ui.get("/ui/phones", params={"model": "OpenStage 40", "expiring": "2"}).text) == macs[:2]
    days = ui.get("/ui/phones", params={"q": macs[0]}).text
    assert "1 days · critical" in days  # days left as a number and a word


def test_phone_page_proof_timeline_and_redaction(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet
) -> None:
    with session_scope(rt.engine) as s:
        dep = s.get(Deployment, fleet.deployments["ok"])
        assert dep is not None
        dep.written_at = T0 - timedelta(minutes=5)
        dep.verified_at = T0 - timedelta(minutes=4)
        dep.transcript = [
            {"at": "2026-11-26T08:55:00+00:00", "dir": "out", "action": "WriteItems", "pkcs12": "MIIK" + "A" * 300},
            {"at": "2026-11-26T08:55:01+00:00", "dir": "in", "items": [{"name": "x", "password": "hunter2"}]},
            {"note": "-----BEGIN PRIVATE KEY-----\nabc"},
        ]
        s.add(dep)
    login(ui, tokens["viewer"])
    html = ui.get("/ui/phones/00-1a-e8-00-00-01").text  # any MAC spelling
    assert "Phone <code>00:1A:E8:00:00:01</code>" in html
    assert "policy &#39;default&#39; is assigned to the phone" in html  # policy_for's reason
    assert "Issued" in html
    assert "Written" in html
    assert "Served" in html
    assert "TLS probe after the write" in html
    assert "matches issued" in html
    for secret in ("MIIK", "hunter2", "BEGIN PRIVATE KEY"):
        assert secret not in html
    assert html.count("[redacted]") == 2  # the PKCS#12 and the PEM; an item shows only its name and status
    assert "Timeline" in html


# --- actions --------------------------------------------------------------------------------------------------
def test_actions_go_through_the_operations_and_are_audited(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet
) -> None:
    login(ui, tokens["admin"])
    page = ui.get("/ui/phones/00:1A:E8:00:00:01")
    assert "Renew now" in page.text
    token = csrf(page.text)
    answer = ui.post("/ui/phones/00:1A:E8:00:00:01/renew", data={"csrf": token}, headers=ORIGIN)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/phones/00:1A:E8:00:00:01?done=renewed"
    issued = _events(rt, "certificate.issued")
    assert issued[-1].actor == "console:admin-1"
    with session_scope(rt.engine) as s:
        queued = s.exec(select(Deployment).where(col(Deployment.state) == DeploymentState.QUEUED.value)).all()
        assert [d.device_id for d in queued] == [fleet.devices["ok"]]
    assert "A new certificate was issued" in ui.get(answer.headers["location"]).text

    expired = ui.post(f"/ui/deployments/{fleet.deployments['expired']}/retry", data={"csrf": token}, headers=ORIGIN)
    assert expired.status_code == 409
    assert "renew instead" in expired.text
    with session_scope(rt.engine) as s:
        s.execute(
            update(Certificate)
            .where(col(Certificate.id) == fleet.certificates["expired"])
            .values(not_after=T0 + timedelta(days=30))
        )
    retry = ui.post(f"/ui/deployments/{fleet.deployments['expired']}/retry",
                    data={"csrf": token, "back": "/ui/deployments?state=failed"}, headers=ORIGIN)  # fmt: skip
    assert retry.status_code == 303
    assert retry.headers["location"] == "/ui/deployments?state=failed&done=retried"
    assert _events(rt, "deployment.retry-requested")[-1].actor == "console:admin-1"

    revoke = ui.post(f"/ui/certificates/{fleet.certificates['soon']}/revoke",
                     data={"csrf": token, "reason": "keyCompromise"}, headers=ORIGIN)  # fmt: skip
    assert revoke.status_code == 303
    assert _events(rt, "certificate.revoked")[-1].details["reason"] == "keyCompromise"
    bad = ui.post(f"/ui/certificates/{fleet.certificates['ok']}/revoke", data={"csrf": token, "reason": "x"},
                  headers=ORIGIN)  # fmt: skip
    assert bad.status_code == 422

    nope = ui.post("/ui/phones/00:1A:E8:00:00:02/decommission", data={"csrf": token}, headers=ORIGIN)
    assert nope.status_code == 422  # the confirmation box
    done = ui.post("/ui/phones/00:1A:E8:00:00:02/decommission", data={"csrf": token, "confirm": "yes"},
                   headers=ORIGIN)  # fmt: skip
    assert done.status_code == 303
    assert _events(rt, "device.decommissioned")[-1].actor == "console:admin-1"
    again = ui.post("/ui/phones/00:1A:E8:00:00:02/decommission", data={"csrf": token, "confirm": "yes"},
                    headers=ORIGIN)  # fmt: skip
    assert again.status_code == 409
    assert "already decommissioned" in again.text


def test_operator_cannot_do_admin_actions(ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet) -> None:
    login(ui, tokens["operator"])
    page = ui.get("/ui/phones/00:1A:E8:00:00:01")
    assert "Renew now" in page.text
    assert "Decommission" not in page.text
    token = csrf(page.text)
    assert ui.post("/ui/phones/00:1A:E8:00:00:01/decommission", data={"csrf": token, "confirm": "yes"},
                   headers=ORIGIN).status_code == 403  # fmt: skip
    assert ui.post(f"/ui/certificates/{fleet.certificates['ok']}/revoke", data={"csrf": token, "reason": "superseded"},
                   headers=ORIGIN).status_code == 403  # fmt: skip
    assert ui.post("/ui/tokens", data={"csrf": token, "name": "x", "role": "admin"}, headers=ORIGIN).status_code == 403


def test_deployments_page(ui: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    login(ui, tokens["operator"])
    html = ui.get("/ui/deployments").text  # failed first
    assert f"/ui/deployments/{fleet.deployments['expired']}" in html
    assert 'aria-current="page">failed <span class="count">1</span>' in html
    assert "Retry" in html
    detail = ui.get(f"/ui/deployments/{fleet.deployments['expired']}").text
    assert "phone unreachable" in detail
    assert "contact-me" in detail
    assert "[redacted]" in detail  # the fixture's transcript has a password entry: shown redacted
    assert ui.get("/ui/deployments?state=bogus").status_code == 200


# --- bulk -----------------------------------------------------------------------------------------------------
def test_bulk_preview_confirm_run_and_audit(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    macs = _seed(rt, 12)
    with session_scope(rt.engine) as s:
        s.execute(update(Device).where(col(Device.mac).in_(macs[:3])).values(enrollment=Enrollment.PENDING.value))
    login(ui, tokens["operator"])
    preview = ui.get("/ui/bulk", params={"action": "approve", "expiring": "5"})
    assert preview.status_code == 200
    assert "<strong>5</strong> phones" in preview.text
    assert _macs(preview.text) == []
    assert macs[0] in preview.text
    form = {"csrf": csrf(preview.text), "action": "approve", "expiring": "5", "expected": "5"}
    started = ui.post("/ui/bulk", data=form, headers=ORIGIN)
    assert started.status_code == 303
    job_id = int(started.headers["location"].rsplit("/", 1)[1])
    runner = ui.app.state.console_jobs  # type: ignore[attr-defined]
    assert runner.wait(job_id, 60)
    page = ui.get(f"/ui/jobs/{job_id}").text
    assert '<strong class="job-state">done</strong>' in page
    assert "5 of about 5 phones done" in page
    with session_scope(rt.engine) as s:
        job = s.get(ConsoleJob, job_id)
        assert job is not None
        assert (job.succeeded, job.skipped, job.failed) == (3, 2, 0)
    approved = _events(rt, "device.approved")
    assert sorted(str(e.subject_id) for e in approved) == sorted(macs[:3])
    assert {e.actor for e in approved} == {"console:operator-1"}
    assert [e.subject_id for e in _events(rt, "console.bulk-finished")] == [str(job_id)]

    renew = ui.post("/ui/bulk", data={**form, "action": "renew", "expiring": "1"}, headers=ORIGIN)
    job_id = int(renew.headers["location"].rsplit("/", 1)[1])
    assert runner.wait(job_id, 60)
    assert _events(rt, "certificate.issued")[-1].actor == "console:operator-1"
    assert "Bulk jobs" in ui.get("/ui/jobs").text


# --- audit ----------------------------------------------------------------------------------------------------
def test_audit_filters_and_verification(ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet) -> None:
    login(ui, tokens["viewer"])
    html = ui.get("/ui/audit", params={"action": "console.login"}).text
    assert "console:viewer-1" in html
    assert ui.get("/ui/audit", params={"actor": "nobody"}).text.count("No event matches") == 1
    assert ui.get("/ui/audit", params={"phone": "zz"}).status_code == 200
    result = ui.post("/ui/audit/verify", data={"csrf": csrf(html)}, headers=ORIGIN)
    assert "The chain is intact" in result.text
    assert _events(rt, "audit.verified")[-1].details["ok"] is True
    assert "intact" in ui.get("/ui/").text
    with session_scope(rt.engine) as s:  # tamper with an event
        event = s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).first()
        assert event is not None
        s.execute(update(AuditEvent).where(col(AuditEvent.id) == event.id).values(actor="mallory"))
        bad_seq = event.seq
    result = ui.post("/ui/audit/verify", data={"csrf": csrf(html)}, headers=ORIGIN)
    assert "does <strong>not</strong> verify" in result.text
    assert f"first bad event {bad_seq}" in result.text
    assert "mallory" in result.text


# --- reports, CA, tokens --------------------------------------------------------------------------------------
def test_report_bundles_carry_a_verifiable_manifest(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet, tmp_path: Path
) -> None:
    login(ui, tokens["viewer"])
    page = ui.get("/ui/reports").text
    links = re.findall(r'href="(/ui/reports/[a-z]+\.[a-z]+\.zip)"', page)
    assert len(links) == 15  # every kind in every format
    for link in ("/ui/reports/inventory.csv.zip", "/ui/reports/expiry.pdf.zip"):
        answer = ui.get(link)
        assert answer.status_code == 200
        name = link.rsplit("/", 1)[1].removesuffix(".zip")
        with zipfile.ZipFile(io.BytesIO(answer.content)) as bundle:
            assert sorted(bundle.namelist()) == [name, name + ".manifest.json"]
            bundle.extractall(tmp_path)
        manifest = json.loads((tmp_path / f"{name}.manifest.json").read_text())
        assert manifest["file"] == name
        assert verify_export(tmp_path / name).ok
    exported = _events(rt, "report.exported")
    assert [e.details["via"] for e in exported] == ["console", "console"]
    assert exported[0].actor == "console:viewer-1"


def test_ca_page(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    login(ui, tokens["viewer"])
    html = ui.get("/ui/ca").text
    info = rt.ca_info()
    assert info.issuing_fingerprint_sha256[:8] in html
    assert "Issuing CA" in html
    assert "Root CA" in html
    assert "/api/v1/ca/crl" in html


def test_tokens_create_shown_once_and_revoke(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    login(ui, tokens["admin"])
    html = ui.get("/ui/tokens").text
    assert "viewer-1" in html
    assert "operator-1" in html
    created = ui.post("/ui/tokens", data={"csrf": csrf(html), "name": "carol", "role": "operator"}, headers=ORIGIN)
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    value = re.search(r'id="value" class="token" readonly value="(cmt_[^"]+)"', created.text)
    assert value is not None
    assert value.group(1) not in ui.get("/ui/tokens").text  # shown once
    carol = new_client(rt)
    login(carol, value.group(1))
    assert carol.get("/ui/").status_code == 200
    with session_scope(rt.engine) as s:
        carol_id = s.exec(select(ApiToken).where(col(ApiToken.name) == "carol")).one().id
    revoked = ui.post(f"/ui/tokens/{carol_id}/revoke", data={"csrf": csrf(html)}, headers=ORIGIN)
    assert revoked.status_code == 303
    with session_scope(rt.engine) as s:  # ended at once, not only when next used
        assert s.exec(select(ConsoleSession).where(col(ConsoleSession.token_id) == carol_id)).all() == []
    assert carol.get("/ui/").status_code == 303
    assert _events(rt, "token.revoked")[-1].actor == "console:admin-1"
    dup = ui.post("/ui/tokens", data={"csrf": csrf(html), "name": "carol", "role": "viewer"}, headers=ORIGIN)
    assert dup.status_code == 409


def test_every_page_renders_for_every_role(rt: Runtime, tokens: dict[str, str], fleet: Fleet) -> None:
    for role in ("viewer", "operator", "admin"):
        ui = new_client(rt)
        login(ui, tokens[role])
        for url in ("/ui/", "/ui/phones", "/ui/phones/00:1A:E8:00:00:03", "/ui/deployments", "/ui/jobs", "/ui/audit",
                    "/ui/reports", "/ui/ca"):  # fmt: skip
            assert ui.get(url).status_code == 200, (role, url)
        assert ui.get("/ui/tokens").status_code == (200 if role == "admin" else 403)
        assert ("Tokens</a>" in ui.get("/ui/").text) is (role == "admin")
