"""A phone's address move held for want of proof (issue "hostile phone network") is shown where an operator looks:
``certmgr status``, the API (``pending_ip``, ``awaiting_approval``, the ``awaiting_approval`` filter) and the
console (the "awaiting approval" filter and count, the badge, the phone page's notice and its approve button, bulk
approve) — and approving it from the console moves the phone (SQLite and PostgreSQL)."""

# ruff: noqa: F811 - the shared fixtures are imported and named as parameters

from __future__ import annotations

import io
import re

from fastapi.testclient import TestClient
from rich.console import Console
from sqlmodel import col, select

from certmgr.cli.status import fleet_status, render
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, Device
from certmgr.inventory.enrollment import AddressClaim, resolve_claim
from certmgr.operations.devices import decommission_device
from certmgr.runtime import Runtime
from tests.integration.console_support import (
    ORIGIN,
    csrf,
    login,
    ui,  # noqa: F401 - fixture
)
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    auth,
    ca_template,
    fleet,
    rt,
    tokens,
)

OK_MAC = "00:1A:E8:00:00:01"  # the fleet's verified phone at 10.0.0.1, with a current certificate
CLAIMED = "10.0.0.99"


def _hold_move(rt: Runtime, ip: str = CLAIMED) -> None:
    """A start-up for the verified phone from another address whose TLS probe showed no proof: the move is held."""
    claim = AddressClaim(OK_MAC, ip, f"http://{ip}:8085/contact_dls.html/ContactDLS")
    with session_scope(rt.engine) as s:
        done = resolve_claim(
            s, claim, served_sha256=None, probe_error="connection refused", now=rt.clock.now(), policies=rt.policies
        )
    assert done == "held"


def _device(rt: Runtime) -> Device:
    with session_scope(rt.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == OK_MAC)).one()
        s.expunge(device)
        return device


def test_status_counts_and_lists_a_held_move(rt: Runtime, fleet: Fleet) -> None:
    with session_scope(rt.engine) as s:
        before = fleet_status(rt, s, rt.clock.now())
    _hold_move(rt)
    with session_scope(rt.engine) as s:
        status = fleet_status(rt, s, rt.clock.now())
    assert status.pending_approval == before.pending_approval + 1
    assert [(m.mac, m.ip, m.pending_ip) for m in status.held_moves] == [(OK_MAC, "10.0.0.1", CLAIMED)]
    out = io.StringIO()
    render(status, Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert "Address moves held for approval" in text
    assert re.search(rf"{OK_MAC}\s*│\s*10\.0\.0\.1\s*│\s*{re.escape(CLAIMED)}", text), text


def test_the_api_shows_a_held_move_and_filters_on_it(
    ui: TestClient, rt: Runtime, fleet: Fleet, tokens: dict[str, str]
) -> None:
    headers = auth(tokens["viewer"])
    device_id = fleet.devices["ok"]
    assert ui.get(f"/api/v1/devices/{device_id}", headers=headers).json()["device"]["awaiting_approval"] is False
    _hold_move(rt)
    shown = ui.get(f"/api/v1/devices/{device_id}", headers=headers).json()["device"]
    assert (shown["ip"], shown["pending_ip"], shown["awaiting_approval"]) == ("10.0.0.1", CLAIMED, True)
    assert shown["pending_since"] is not None
    waiting = ui.get("/api/v1/devices", params={"awaiting_approval": "true"}, headers=headers).json()["items"]
    assert [d["mac"] for d in waiting] == [OK_MAC]
    others = ui.get("/api/v1/devices", params={"awaiting_approval": "false"}, headers=headers).json()["items"]
    assert OK_MAC not in [d["mac"] for d in others]
    assert len(others) == len(fleet.devices) - 1


def test_the_console_shows_a_held_move_and_approving_it_moves_the_phone(
    ui: TestClient, rt: Runtime, fleet: Fleet, tokens: dict[str, str]
) -> None:
    _hold_move(rt)
    login(ui, tokens["operator"])
    overview = ui.get("/ui/").text
    assert re.search(r'awaiting approval</a></th><td class="num">1</td>', overview), overview
    listed = ui.get("/ui/phones", params={"pending": "1"}).text
    assert re.findall(r'<a href="/ui/phones/([0-9A-F:]{17})"><code>', listed) == [OK_MAC]
    assert f"move to {CLAIMED} held" in listed
    page = ui.get(f"/ui/phones/{OK_MAC}").text
    assert 'id="held-move"' in page
    assert f"<code>{CLAIMED}</code>" in page
    assert f"Approve the move to {CLAIMED}" in page

    # Bulk approve leaves held moves alone: each is looked at on its own page (a wave of claims is what an
    # attacker would send).
    preview = ui.get("/ui/bulk", params={"action": "approve", "pending": "1"})
    assert "<strong>1</strong> phone matching" in preview.text
    form = {"csrf": csrf(preview.text), "action": "approve", "pending": "1", "expected": "1"}
    started = ui.post("/ui/bulk", data=form, headers=ORIGIN)
    assert started.status_code == 303, started.text
    job_id = int(started.headers["location"].rsplit("/", 1)[1])
    assert ui.app.state.console_jobs.wait(job_id, 60)  # type: ignore[attr-defined]
    assert f"a move to {CLAIMED} is held: approve it on the phone" in ui.get(f"/ui/jobs/{job_id}").text
    assert _device(rt).pending_ip == CLAIMED

    # The phone page's approve names the address it showed; a claim made since (another address) is not approved.
    token = csrf(page)
    _hold_move(rt, "10.0.0.77")
    refused = ui.post(f"/ui/phones/{OK_MAC}/approve", data={"csrf": token, "move_to": CLAIMED}, headers=ORIGIN)
    assert refused.status_code == 409, refused.text
    assert (_device(rt).ip, _device(rt).pending_ip) == ("10.0.0.1", "10.0.0.77")
    page = ui.get(f"/ui/phones/{OK_MAC}").text
    answer = ui.post(f"/ui/phones/{OK_MAC}/approve", data={"csrf": csrf(page), "move_to": "10.0.0.77"}, headers=ORIGIN)
    assert answer.status_code == 303, answer.text
    assert (_device(rt).ip, _device(rt).pending_ip) == ("10.0.0.77", None)
    with session_scope(rt.engine) as s:
        approved = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "device.move-approved")).all()
        assert [(e.subject_id, e.actor) for e in approved] == [(OK_MAC, "console:operator-1")]
    assert 'id="held-move"' not in ui.get(f"/ui/phones/{OK_MAC}").text


def test_the_api_approves_a_held_move_only_by_its_address(
    ui: TestClient, rt: Runtime, fleet: Fleet, tokens: dict[str, str]
) -> None:
    _hold_move(rt)
    headers = auth(tokens["operator"])
    url = f"/api/v1/devices/{fleet.devices['ok']}/approve"
    assert ui.post(url, headers=headers).status_code == 409  # the held address not named
    assert ui.post(url, params={"move_to": "10.0.0.98"}, headers=headers).status_code == 409
    assert (_device(rt).ip, _device(rt).pending_ip) == ("10.0.0.1", CLAIMED)
    moved = ui.post(url, params={"move_to": CLAIMED}, headers=headers)
    assert moved.status_code == 200, moved.text
    # Approved again (a second click): the phone is there, nothing to do. A move no longer held: refused.
    assert ui.post(url, params={"move_to": CLAIMED}, headers=headers).status_code == 200
    gone = ui.post(url, params={"move_to": "10.0.0.98"}, headers=headers)
    assert gone.status_code == 409, gone.text
    assert "no move to 10.0.0.98 is held" in gone.text
    assert (moved.json()["ip"], moved.json()["pending_ip"], moved.json()["awaiting_approval"]) == (CLAIMED, None, False)


def test_decommissioning_ends_a_held_move(rt: Runtime, fleet: Fleet) -> None:
    _hold_move(rt)
    decommission_device(rt, fleet.devices["ok"], "token:admin-1")
    device = _device(rt)
    assert (device.ip, device.pending_ip, device.pending_since) == ("10.0.0.1", None, None)
    with session_scope(rt.engine) as s:
        assert fleet_status(rt, s, rt.clock.now()).held_moves == []
