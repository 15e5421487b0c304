"""Browser test fixtures: one real ``certmgr serve --role all`` with a few simulated phones (the e2e harness of
``tests/e2e/conftest.py``) and one headless Chromium driven by Selenium, both shared by a test module.

* Chromium and chromedriver are Debian's (``.ci/ensure-deps`` installs them); Selenium Manager is never asked to
  download anything: both paths are given.
* chromedriver runs in its own session (process group) and Chromium with a fresh ``--user-data-dir``; teardown
  quits the driver, kills what is left of that process group and of the processes naming that profile
  directory, and checks that none is left.
* Every wait is bounded: :class:`~selenium.webdriver.support.wait.WebDriverWait` for the browser, the e2e
  harness's ``wait_until`` (a deadline, never a fixed sleep) for the database.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from tests.e2e.conftest import E2E, make_e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE = Path(__file__).resolve().parent / "vendor" / "axe-4.14.1.min.js"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WIDTH, HEIGHT = 1280, 900
WAIT_S = 20.0
#: Set to a folder (e.g. ``docs/img``) to keep the screenshots the tests take (``console-<page>.png``).
SCREENSHOTS_ENV = "CERTMGR_CONSOLE_SCREENSHOTS"
MAX_SHOT_HEIGHT = 1500


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (our unique profile directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class Browser:
    """A headless Chromium under Selenium, with the helpers the tests use."""

    driver: WebDriver
    base: str
    profile: str
    shots: Path
    service: Service
    seen_logs: list[dict[str, Any]] = field(default_factory=list)

    def wait(self, timeout: float = WAIT_S) -> WebDriverWait[WebDriver]:
        return WebDriverWait(self.driver, timeout)

    def open(self, path: str) -> None:
        """Load ``path`` and wait until the document is complete."""
        self.driver.get(self.base + path)
        self.wait().until(lambda d: d.execute_script("return document.readyState") == "complete")

    def login(self, token: str, path: str = "/ui/") -> None:
        """Log in through the form (as a person would) and land on ``path``."""
        self.driver.delete_all_cookies()
        self.open(path)
        self.wait().until(ec.presence_of_element_located((By.ID, "token")))
        self.driver.find_element(By.ID, "token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        self.wait().until(lambda d: "/ui/login" not in d.current_url)

    def logs(self) -> list[dict[str, Any]]:
        """Browser console entries since the last call."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[attr-defined] # Chrome only
        self.seen_logs += entries
        return entries

    def problems(self) -> list[str]:
        """Console errors and CSP violations since the last call."""
        return [
            e["message"]
            for e in self.logs()
            if e["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in e["message"]
        ]

    def axe(self) -> list[dict[str, Any]]:
        """axe-core's serious and critical violations on the current page (the script is injected by the test
        driver, not loaded by the page, so the page's CSP still forbids every inline script)."""
        self.driver.execute_script(AXE.read_text(encoding="utf-8"))
        result: list[dict[str, Any]] = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']})"
            ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))))"
            ".catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));"
        )
        return [v for v in result if v["impact"] in ("serious", "critical")]

    def screenshot(self, name: str) -> Path:
        """A PNG of the whole page (up to :data:`MAX_SHOT_HEIGHT` px) as ``console-<name>.png``."""
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        self.driver.set_window_size(WIDTH, min(max(height, HEIGHT), MAX_SHOT_HEIGHT))
        path = self.shots / f"console-{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(WIDTH, HEIGHT)
        return path

    def fetch(self, method: str, path: str, body: dict[str, str] | None = None) -> dict[str, Any]:
        """``fetch`` from the page itself (same origin, the session cookie attached, as a form would send):
        status and headers."""
        script = (
            "const [method, url, body, done] = arguments;"
            "const opts = {method, credentials: 'same-origin', redirect: 'manual'};"
            "if (body) { opts.body = new URLSearchParams(body); }"
            "fetch(url, opts).then(r => done({status: r.status,"
            " csp: r.headers.get('content-security-policy'), nosniff: r.headers.get('x-content-type-options'),"
            " referrer: r.headers.get('referrer-policy')}))"
            ".catch(e => done({status: -1, error: String(e)}));"
        )
        answer: dict[str, Any] = self.driver.execute_async_script(script, method, path, body)
        return answer

    def close(self) -> None:
        with contextlib.suppress(WebDriverException):
            self.driver.quit()
        process = self.service.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                process.wait(10)
        for pid in _pids_naming(self.profile):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_browser(base: str, shots: Path) -> Browser:
    """A fresh headless Chromium (see the module docstring)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are not installed: run `bash .ci/ensure-deps` (make test does)")
    profile = tempfile.mkdtemp(prefix="certmgr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--lang=en-US"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return Browser(driver, base, profile, shots, service)


def cli_token(world: E2E, role: str, name: str) -> str:
    """A token made with ``certmgr token create`` (the command ``make run`` prints), its value from stdout."""
    out = world.cli("token", "create", "--role", role, "--name", name).stdout
    match = re.search(r"\b(cmt_[A-Za-z0-9_-]{20,})\b", out)
    assert match is not None, out
    return match.group(1)


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$CERTMGR_CONSOLE_SCREENSHOTS`` if set (to update docs/img), else a temp dir."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("shots")


@pytest.fixture(scope="module")
def browser_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """``certmgr serve --role all`` (API + console, WPI, dispatcher) and six phones: four healthy, two whose
    every write fails (so deployments fail for good after three attempts)."""
    world = make_e2e(tmp_path_factory.mktemp("console"), 6, profiles=["plain"])
    world.service.role = "all"
    try:
        world.service.start()
        world.add_phones(["", "", "", "", "failed-write", "failed-write"])
        world.start_phones(world.phones)
        yield world
    finally:
        world.close()
        shutil.rmtree(world.tmp / "var" / "tmp", ignore_errors=True)


@pytest.fixture(scope="module")
def browser(browser_world: E2E, shots_dir: Path) -> Iterator[Browser]:
    """One headless Chromium for the module; nothing of it is left running afterwards."""
    started = start_browser(browser_world.api_url, shots_dir)
    try:
        yield started
    finally:
        started.close()
        left = _pids_naming(started.profile)
        shutil.rmtree(started.profile, ignore_errors=True)
        assert left == [], f"chromium processes left behind: {left}"
