"""Console login and its guards: sessions (hashed, idle 30 min, absolute 12 h, ended by revoking the token or
logging out), the cookie's attributes, CSRF and same-origin checks on every POST, roles, failed-login audit and
throttling, security headers, and bad input answered without a 5xx.

Each guard is tested so that removing its check fails the test (tried by hand, see the commit message)."""

# ruff: noqa: F811 - the shared fixtures are imported and named as parameters

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlmodel import col, select

from certmgr.clock import ManualClock
from certmgr.console.security import CSP
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, ConsoleSession, Device, Enrollment
from certmgr.runtime import Runtime
from tests.integration.console_support import ORIGIN, csrf, login, new_client, ui
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    auth,
    ca_template,
    fleet,
    rt,
    tokens,
)

__all__ = ["ui"]

PAGES = ["/ui/", "/ui/phones", "/ui/deployments", "/ui/jobs", "/ui/audit", "/ui/reports", "/ui/ca"]


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with session_scope(rt.engine) as s:
        rows = list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.seq))))
        s.expunge_all()
        return rows


def test_root_redirects_and_login_remembers_the_page(ui: TestClient, tokens: dict[str, str]) -> None:
    assert ui.get("/").headers["location"] == "/ui/"
    answer = ui.get("/ui/phones?q=00:1A&sort=mac")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fphones%3Fq%3D00%3A1A%26sort%3Dmac"
    page = ui.get(answer.headers["location"])
    assert 'value="/ui/phones?q=00:1A&amp;sort=mac"' in page.text
    assert login(ui, tokens["viewer"], "/ui/phones?q=00:1A&sort=mac") == "/ui/phones?q=00:1A&sort=mac"
    assert ui.get("/ui/phones?q=00:1A&sort=mac").status_code == 200


def test_htmx_requests_of_an_ended_session_are_sent_to_the_login(ui: TestClient, tokens: dict[str, str]) -> None:
    answer = ui.get("/ui/phones/00:1A:E8:00:00:01/progress", headers={"HX-Request": "true"})
    assert answer.status_code == 204
    assert answer.headers["hx-redirect"].startswith("/ui/login?next=")


def test_login_never_redirects_off_the_console(rt: Runtime, tokens: dict[str, str]) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/api/v1/tokens", "/ui\\..", "ui/", "/ui/\x01"):
        assert login(new_client(rt), tokens["viewer"], target) == "/ui/", target


def test_the_session_cookie(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    page = ui.get("/ui/login")
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce is not None
    answer = ui.post(
        "/ui/login", data={"token": tokens["admin"], "login_nonce": nonce.group(1), "next": "/ui/"}, headers=ORIGIN
    )
    cookies = answer.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("__Host-certmgr_session="))
    attributes = {part.strip().lower() for part in session.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
    assert not any(a.startswith("domain") for a in attributes)
    value = session.split(";")[0].split("=", 1)[1]
    assert tokens["admin"] not in " ".join(cookies)
    with session_scope(rt.engine) as s:
        stored = s.exec(select(ConsoleSession)).one()
        assert stored.id_hash == hashlib.sha256(value.encode()).hexdigest()
        assert value not in (stored.id_hash, stored.client, stored.role)
    for url in [*PAGES, "/ui/tokens", "/ui/phones/00:00:00:00:00:01"]:
        assert tokens["admin"] not in ui.get(url).text


def test_plain_http_on_loopback_uses_the_unprefixed_cookie(rt: Runtime, tokens: dict[str, str]) -> None:
    """Over plain HTTP (loopback only) the ``__Host-`` prefix cannot be used: the login form's cookie and the
    session cookie are ``certmgr_login`` and ``certmgr_session``, with the same attributes. (Cookies are sent by
    hand: a client's jar keeps ``Secure`` cookies off plain HTTP, browsers allow them on loopback.)"""
    with TestClient(new_client(rt).app, base_url="http://127.0.0.1:8000", follow_redirects=False) as plain:
        page = plain.get("/ui/login")
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("certmgr_login=")
        assert "Secure" in cookie
        nonce = cookie.split(";")[0].split("=", 1)[1]
        plain.cookies.clear()
        answer = plain.post(
            "/ui/login",
            data={"token": tokens["operator"], "login_nonce": nonce, "next": "/ui/phones"},
            headers={
                "Origin": "http://127.0.0.1:8000",
                "Sec-Fetch-Site": "same-origin",
                "Cookie": f"certmgr_login={nonce}",
            },
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/phones"
        set_cookies = answer.headers.get_list("set-cookie")
        session = next(c for c in set_cookies if c.startswith("certmgr_session="))
        assert not any(c.startswith("__Host-") for c in set_cookies)
        attributes = {part.strip().lower() for part in session.split(";")[1:]}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
        value = session.split(";")[0].split("=", 1)[1]
        plain.cookies.clear()
        assert plain.get("/ui/phones", headers={"Cookie": f"certmgr_session={value}"}).status_code == 200
        refused = plain.get("/ui/phones", headers={"Cookie": f"__Host-certmgr_session={value}"})
        assert refused.status_code == 303  # the HTTPS name is not read over plain HTTP: back to the login


def test_idle_and_absolute_expiry_use_the_injected_clock(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], clock: ManualClock
) -> None:
    login(ui, tokens["viewer"])
    clock.advance(timedelta(minutes=29))
    assert ui.get("/ui/").status_code == 200
    clock.advance(timedelta(minutes=29))
    assert ui.get("/ui/").status_code == 200  # used 29 min ago: still alive
    clock.advance(timedelta(minutes=31))
    answer = ui.get("/ui/phones")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fphones"
    with session_scope(rt.engine) as s:
        assert s.exec(select(ConsoleSession)).all() == []  # an ended session's row is gone

    login(ui, tokens["viewer"])
    for _ in range(35):  # used every 20 minutes: only the absolute limit ends it
        clock.advance(timedelta(minutes=20))
        assert ui.get("/ui/").status_code == 200
    clock.advance(timedelta(minutes=20))  # 12 h after the login
    assert ui.get("/ui/").status_code == 303


def test_revoking_the_token_ends_its_sessions(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet
) -> None:
    login(ui, tokens["operator"])
    assert ui.get("/ui/").status_code == 200
    api = new_client(rt)
    listed = api.get("/api/v1/tokens", headers=auth(tokens["admin"])).json()["items"]
    operator_id = next(t["id"] for t in listed if t["name"] == "operator-1")
    assert api.post(f"/api/v1/tokens/{operator_id}/revoke", headers=auth(tokens["admin"])).status_code == 200
    assert ui.get("/ui/").status_code == 303


def test_logout_ends_the_session(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    login(ui, tokens["viewer"])
    page = ui.get("/ui/")
    cookie = ui.cookies.get("__Host-certmgr_session")
    assert cookie
    answer = ui.post("/ui/logout", data={"csrf": csrf(page.text)}, headers=ORIGIN)
    assert answer.status_code == 303
    assert ui.get("/ui/").status_code == 303
    replay = new_client(rt)
    replay.cookies.set("__Host-certmgr_session", cookie)
    assert replay.get("/ui/").status_code == 303
    assert _events(rt, "console.logout")[-1].actor == "console:viewer-1"


def test_viewer_sees_no_action_and_gets_403_when_posting_one(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet
) -> None:
    login(ui, tokens["viewer"])
    page = ui.get("/ui/phones/00:1A:E8:00:00:01")
    assert page.status_code == 200
    for label in ("Renew now", "Retry deployment", "Decommission", "Revoke", "Approve"):
        assert label not in page.text
    assert "Renew all matching" not in ui.get("/ui/phones").text
    token = csrf(page.text)
    before = len(_events(rt, "auth.denied"))
    for url in (
        "/ui/phones/00:1A:E8:00:00:01/renew",
        "/ui/phones/00:1A:E8:00:00:04/approve",
        f"/ui/deployments/{fleet.deployments['expired']}/retry",
        "/ui/bulk",
    ):
        answer = ui.post(url, data={"csrf": token, "action": "renew"}, headers=ORIGIN)
        assert answer.status_code == 403, url
    assert ui.get("/ui/tokens").status_code == 403
    assert ui.get("/ui/bulk?action=renew").status_code == 403
    denied = _events(rt, "auth.denied")[before:]
    assert len(denied) == 6
    assert {e.actor for e in denied} == {"console:viewer-1"}
    assert all(e.details["via"] == "console" for e in denied)


def _make_pending(rt: Runtime, mac: str) -> None:
    with session_scope(rt.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == mac)).one()
        device.enrollment = Enrollment.PENDING
        s.add(device)


def test_a_post_needs_the_sessions_csrf_token_and_the_same_origin(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet
) -> None:
    _make_pending(rt, "00:1A:E8:00:00:04")
    login(ui, tokens["operator"])
    token = csrf(ui.get("/ui/").text)
    url = "/ui/phones/00:1A:E8:00:00:04/approve"
    assert ui.post(url, headers=ORIGIN).status_code == 403  # no token
    assert ui.post(url, data={"csrf": "0" * 64}, headers=ORIGIN).status_code == 403  # wrong token
    other = new_client(rt)
    login(other, tokens["operator"])
    assert other.post(url, data={"csrf": token}, headers=ORIGIN).status_code == 403  # another session's token
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert ui.post(url, data={"csrf": token}, headers=cross).status_code == 403
    assert ui.post(url, data={"csrf": token}, headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
    assert ui.post(url, data={"csrf": token}, headers={"Origin": "null"}).status_code == 403
    assert ui.post(url, data={"csrf": token}, headers={"Origin": "https://testserver.evil"}).status_code == 403
    assert _events(rt, "device.approved") == []  # nothing above changed anything
    assert ui.post(url, data={"csrf": token}, headers=ORIGIN).status_code == 303
    assert [e.actor for e in _events(rt, "device.approved")] == ["console:operator-1"]


def test_the_login_form_is_guarded_too(ui: TestClient, tokens: dict[str, str]) -> None:
    ui.get("/ui/login")
    answer = ui.post("/ui/login", data={"token": tokens["admin"], "next": "/ui/"}, headers=ORIGIN)
    assert answer.status_code == 403  # no login nonce: a cross-site login (login CSRF) is refused
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', ui.get("/ui/login").text)
    assert nonce is not None
    cross = {"Origin": "https://evil.example"}
    answer = ui.post("/ui/login", data={"token": tokens["admin"], "login_nonce": nonce.group(1)}, headers=cross)
    assert answer.status_code == 403


def _nonce(html: str) -> str:
    match = re.search(r'name="login_nonce" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_failed_logins_are_audited_and_throttled_per_address(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], clock: ManualClock
) -> None:
    limit = rt.settings.console_login_attempts
    html = ui.get("/ui/login").text
    for i in range(limit):
        form = {"login_nonce": _nonce(html), "next": "/ui/", "token": f"cmt_{'x' * 30}{i}"}
        answer = ui.post("/ui/login", data=form, headers=ORIGIN)
        assert answer.status_code == 401
        assert "not valid" in answer.text
        html = answer.text
    failed = _events(rt, "auth.failed")
    assert len(failed) == limit
    assert all(e.details["via"] == "console" and e.details["client"] == "testclient" for e in failed)
    assert all("cmt_" not in str(e.details) for e in failed)  # never the token value
    form = {"login_nonce": _nonce(html), "next": "/ui/", "token": tokens["admin"]}
    answer = ui.post("/ui/login", data=form, headers=ORIGIN)
    assert answer.status_code == 429  # even the right token waits: the address is throttled
    assert int(answer.headers["retry-after"]) > 0
    assert len(_events(rt, "auth.failed")) == limit  # throttled attempts are not checked
    assert _events(rt, "console.login-throttled")
    clock.advance(timedelta(seconds=rt.settings.console_login_window_seconds + 1))
    form["login_nonce"] = _nonce(answer.text)
    assert ui.post("/ui/login", data=form, headers=ORIGIN).status_code == 303


def test_security_headers_and_no_inline_script_or_style(ui: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    login(ui, tokens["admin"])
    for url in [*PAGES, "/ui/tokens", "/ui/phones/00:1A:E8:00:00:01", "/ui/login", "/ui/nothing-here"]:
        answer = ui.get(url)
        assert answer.headers["content-security-policy"] == CSP, url
        assert CSP == (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; frame-ancestors 'none'"
        )
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
        assert answer.headers["cache-control"] == "no-store"
        html = answer.text
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None, url
        assert re.search(r"<style\b", html) is None, url
        assert re.search(r"\sstyle=", html) is None, url
        assert re.search(r"\son[a-z]+=", html) is None, url
        assert "https://" not in re.sub(r'href="[^"]*"', "", html).split("<body", 1)[0] or url
    static = ui.get("/ui/static/console.css")
    assert static.status_code == 200
    assert static.headers["x-content-type-options"] == "nosniff"
    assert ui.get("/api/v1/ca/chain.pem").headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in ui.get("/healthz").headers  # the API's own pages (/docs) keep theirs


def test_bad_input_gets_a_page_never_a_5xx(ui: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    login(ui, tokens["admin"])
    assert ui.get("/ui/phones?" + "q=" + "a" * 5000).status_code == 414
    for mac in ("00:00:00:00:00:99", "not-a-mac", "%00", "1" * 300):
        answer = ui.get(f"/ui/phones/{mac}")
        assert answer.status_code == 404
        assert "Not found" in answer.text
    for url in ("/ui/deployments/999999", "/ui/deployments/abc", "/ui/jobs/0", "/ui/jobs/99999999999",
                "/ui/reports/nothing.csv.zip", "/ui/reports/inventory.doc.zip"):  # fmt: skip
        assert ui.get(url).status_code == 404, url
    answer = ui.get("/ui/phones?status=bogus&expiring=soon&sort=sideways&cursor=zz")
    assert answer.status_code == 200
    for message in ("bogus", "expiring within: a whole number", "sort: one of", "page link is not valid"):
        assert message in answer.text
    assert ui.get("/ui/audit?since=yesterday&before=x").status_code == 200
    big = {"csrf": csrf(ui.get("/ui/").text), "blob": "x" * 70_000}
    assert ui.post("/ui/audit/verify", data=big, headers=ORIGIN).status_code == 413
