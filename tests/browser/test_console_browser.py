"""The console in a real browser (headless Chromium under Selenium) against a real ``certmgr serve`` with simulated
phones: every page for every role with no console error, no CSP violation and no serious or critical axe-core
violation; search and filters; renew a phone and watch it reach verified; a bulk retry; a viewer's POST and a POST
without the CSRF token refused with 403; the whole console by keyboard alone.

The tests of this module share one service and one browser and run in order (one xdist group).
"""

from __future__ import annotations

import re

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select
from sqlmodel import col, select

from certmgr.console.security import CSP
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, DeploymentState, DeviceStatus
from tests.browser.conftest import Browser, cli_token
from tests.e2e.conftest import E2E, wait_until

pytestmark = [pytest.mark.xdist_group("console-browser"), pytest.mark.timeout(300)]

CONVERGE_S = 120.0
HEALTHY = 4


@pytest.fixture(scope="module")
def tokens(browser_world: E2E) -> dict[str, str]:
    """One token per role, made with the CLI as docs/console.md says."""
    return {role: cli_token(browser_world, role, f"{role}-web") for role in ("viewer", "operator", "admin")}


@pytest.fixture(scope="module")
def converged(browser_world: E2E) -> E2E:
    """The four healthy phones verified, the two failing ones' deployments failed for good."""

    def done() -> bool:
        devices = browser_world.devices()
        deployments = browser_world.deployments()
        healthy = [p.config.mac for p in browser_world.phones[:HEALTHY]]
        failing = [p.config.mac for p in browser_world.phones[HEALTHY:]]
        return all(m in devices and devices[m].status is DeviceStatus.VERIFIED for m in healthy) and all(
            deployments.get(m) and deployments[m][-1].state is DeploymentState.FAILED for m in failing
        )

    wait_until(done, CONVERGE_S, what="four phones verified and two failed")
    return browser_world


def _pages(world: E2E, role: str) -> list[tuple[str, str, str]]:
    """(screenshot name, path, heading) of every page the role may see."""
    healthy = world.phones[0].config.mac
    pages = [
        ("overview", "/ui/", "Overview"),
        ("phones", "/ui/phones", "Phones"),
        ("phone", f"/ui/phones/{healthy}", f"Phone {healthy}"),
        ("deployments", "/ui/deployments", "Deployments"),
        ("jobs", "/ui/jobs", "Bulk jobs"),
        ("audit", "/ui/audit", "Audit log"),
        ("reports", "/ui/reports", "Reports"),
        ("ca", "/ui/ca", "Certificate authority"),
    ]
    if role != "viewer":
        pages.append(("bulk", "/ui/bulk?action=retry&status=failed", "Bulk action: retry"))
    if role == "admin":
        pages.append(("tokens", "/ui/tokens", "API tokens"))
    return pages


def _heading(browser: Browser) -> str:
    return browser.driver.find_element(By.TAG_NAME, "h1").text


def test_every_page_for_every_role_is_clean_and_accessible(
    browser: Browser, converged: E2E, tokens: dict[str, str]
) -> None:
    browser.open("/ui/login")
    assert _heading(browser) == "Log in"
    assert browser.axe() == []
    assert browser.problems() == []
    browser.screenshot("login")
    for role in ("viewer", "operator", "admin"):
        browser.login(tokens[role])
        for name, path, heading in _pages(converged, role):
            browser.open(path)
            assert _heading(browser) == heading, (role, path)
            assert browser.problems() == [], (role, path)
            assert browser.axe() == [], (role, path)
            actions = "main form[method=post] button, main a.button"
            buttons = [b.text for b in browser.driver.find_elements(By.CSS_SELECTOR, actions)]
            if role == "viewer":
                assert [b for b in buttons if b not in ("Verify the chain now",)] == [], (path, buttons)
            if role == "admin":
                browser.screenshot(name)
    browser.open("/ui/phones?status=bogus")  # a malformed filter: the page, with a clear message
    assert "bogus" in browser.driver.find_element(By.CSS_SELECTOR, ".notice.warn").text
    scheme = "prefers-color-scheme"
    browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": scheme, "value": "dark"}]})
    try:  # the dark theme passes the same checks (colour contrast included)
        for name, path, _heading_text in _pages(converged, "admin")[:3]:
            browser.open(path)
            assert browser.driver.execute_script(f"return matchMedia('({scheme}: dark)').matches")
            assert browser.axe() == [], ("dark", path)
            assert browser.problems() == []
            if name == "overview":
                browser.screenshot("overview-dark")
    finally:
        browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_search_and_filters(browser: Browser, converged: E2E, tokens: dict[str, str]) -> None:
    browser.login(tokens["viewer"], "/ui/phones")
    target = converged.phones[2].config.mac
    search = browser.driver.find_element(By.ID, "q")
    search.send_keys(target.replace(":", "")[:12])  # live search (htmx), no button pressed

    def one_row(_: object) -> bool:
        rows = browser.driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        return len(rows) == 1 and target in rows[0].text

    browser.wait().until(one_row)
    browser.wait().until(lambda d: "q=" in d.current_url)  # the query lives in the URL
    browser.open("/ui/phones")
    Select(browser.driver.find_element(By.ID, "status")).select_by_value("failed")
    browser.driver.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    browser.wait().until(ec.url_contains("status=failed"))
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert sorted(r.text.split()[0] for r in rows) == sorted(p.config.mac for p in converged.phones[HEALTHY:])
    browser.driver.back()  # the back button works: the unfiltered list again
    browser.wait().until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 6)
    assert browser.problems() == []


def test_renew_a_phone_and_watch_it_reach_verified(browser: Browser, converged: E2E, tokens: dict[str, str]) -> None:
    phone = converged.phones[1].config.mac
    before = converged.devices()[phone].current_certificate_id
    browser.login(tokens["operator"], f"/ui/phones/{phone}")
    browser.driver.find_element(By.XPATH, "//button[normalize-space()='Renew now']").click()
    browser.wait().until(ec.url_contains("done=renewed"))
    notice = browser.driver.find_element(By.CSS_SELECTOR, ".notice.ok").text
    assert "new certificate was issued" in notice

    def verified(_: object) -> bool:  # the progress section refreshes itself (htmx) until the phone is verified
        section = browser.driver.find_element(By.ID, "progress")
        polling = section.get_attribute("hx-trigger") is not None  # only while a deployment is unfinished
        return not polling and "Status: verified" in section.text and "matches issued" in section.text

    browser.wait(90).until(verified)
    after = converged.devices()[phone]
    assert after.status is DeviceStatus.VERIFIED
    assert after.current_certificate_id != before
    with session_scope(converged.engine) as s:
        issued = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "certificate.issued")).all()
        assert any(e.actor == "console:operator-web" for e in issued)
    assert browser.problems() == []


def test_bulk_retry_of_the_failed_phones(browser: Browser, converged: E2E, tokens: dict[str, str]) -> None:
    browser.login(tokens["operator"], "/ui/phones?status=failed")
    browser.driver.find_element(By.LINK_TEXT, "Retry all matching…").click()
    browser.wait().until(ec.url_contains("/ui/bulk"))
    assert "2 phones" in browser.driver.find_element(By.CSS_SELECTOR, "p.big").text
    browser.screenshot("bulk")
    browser.driver.find_element(By.XPATH, "//button[starts-with(normalize-space(), 'Yes, retry')]").click()
    browser.wait().until(ec.url_matches(r"/ui/jobs/\d+$"))
    browser.wait(60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".job-state").text == "done"  # polled by htmx
    )
    text = browser.driver.find_element(By.ID, "job-progress").text
    assert "2 succeeded" in text
    browser.screenshot("job")
    failing = {p.config.mac for p in converged.phones[HEALTHY:]}
    with session_scope(converged.engine) as s:
        retried = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "deployment.retry-requested")).all()
        assert {e.details["mac"] for e in retried if e.actor == "console:operator-web"} == failing
    assert browser.problems() == []


def test_refused_posts_and_security_headers(browser: Browser, converged: E2E, tokens: dict[str, str]) -> None:
    phone = converged.phones[0].config.mac
    browser.login(tokens["viewer"], f"/ui/phones/{phone}")
    token = browser.driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    assert token
    assert browser.fetch("POST", f"/ui/phones/{phone}/renew", {"csrf": token})["status"] == 403  # viewer
    browser.logs()  # the refused fetches log resource errors: expected here, not counted
    browser.login(tokens["operator"], f"/ui/phones/{phone}")
    assert browser.fetch("POST", f"/ui/phones/{phone}/renew", {})["status"] == 403  # no CSRF token
    assert browser.fetch("POST", f"/ui/phones/{phone}/renew", {"csrf": "0" * 64})["status"] == 403
    browser.logs()
    page = browser.fetch("GET", "/ui/phones")
    assert page["status"] == 200
    assert page["csp"] == CSP
    assert page["nosniff"] == "nosniff"
    assert page["referrer"] == "same-origin"
    assert re.search(r"default-src 'self'", str(page["csp"]))
    with session_scope(converged.engine) as s:
        denied = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "auth.denied")).all()
        assert any(e.actor == "console:viewer-web" for e in denied)


def _tab_to(browser: Browser, matches: str, limit: int = 60) -> WebElement:
    """Press Tab until the focused element's text or name contains ``matches``; the element (bounded)."""
    body = browser.driver.switch_to.active_element
    for _ in range(limit):
        body.send_keys(Keys.TAB)
        body = browser.driver.switch_to.active_element
        label = " ".join(
            filter(None, [body.text, body.get_attribute("name"), body.get_attribute("value"), body.get_attribute("id")])
        )
        if matches in label:
            return body
    pytest.fail(f"{matches!r} not reached by keyboard within {limit} tabs")


def test_keyboard_only(browser: Browser, converged: E2E, tokens: dict[str, str]) -> None:
    """Log in, reach the phones, search, open a phone and renew it — Tab, typing and Enter only."""
    browser.driver.delete_all_cookies()
    browser.open("/ui/login")
    focused = browser.driver.switch_to.active_element
    assert focused.get_attribute("id") == "token"  # autofocus
    focused.send_keys(tokens["operator"], Keys.ENTER)
    browser.wait().until(ec.url_to_be(browser.base + "/ui/"))
    skip = _tab_to(browser, "Skip to content")
    skip.send_keys(Keys.ENTER)
    browser.wait().until(lambda d: d.switch_to.active_element.get_attribute("id") == "main")
    browser.open("/ui/")  # from the top of the page again: the main navigation comes first
    _tab_to(browser, "Phones").send_keys(Keys.ENTER)
    browser.wait().until(ec.url_contains("/ui/phones"))
    target = converged.phones[3].config.mac
    _tab_to(browser, "q").send_keys(target[:14])
    _tab_to(browser, "Apply").send_keys(Keys.ENTER)
    browser.wait().until(ec.url_contains("q="))
    _tab_to(browser, target).send_keys(Keys.ENTER)
    browser.wait().until(ec.url_contains(f"/ui/phones/{target}"))
    _tab_to(browser, "Renew now").send_keys(Keys.ENTER)
    browser.wait().until(ec.url_contains("done=renewed"))
    _tab_to(browser, "Log out").send_keys(Keys.ENTER)
    browser.wait().until(ec.url_contains("/ui/login"))
    assert browser.problems() == []
