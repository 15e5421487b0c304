"""``certmgr serve`` as a real process: it announces its listener, answers /healthz and /readyz, stops on SIGTERM;
what it prints for a newcomer (the console's URL, the command that creates a token) works as printed."""

from __future__ import annotations

import queue
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from certmgr.simulator.ports import free_port
from tests.integration.test_cli_support import CERTMGR, CLI_TIMEOUT_S, cli_env

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class Served:
    def __init__(self, proc: subprocess.Popen[str], stdout: queue.Queue[str | None], stderr: list[str]) -> None:
        self.proc = proc
        self.stdout = stdout
        self.stderr = stderr
        self.seen: list[str] = []
        self.wpi_port = 0
        self.poll_port = 0

    def wait_for(self, needle: str, timeout: float) -> str:
        """The first stdout line containing ``needle``; fails if the process ends or ``timeout`` passes."""
        while True:
            try:
                line = self.stdout.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no {needle!r} within {timeout}s; stdout: {self.seen}; stderr: {self.stderr}")
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(f"serve exited ({self.proc.returncode}) before {needle!r}; stderr: {''.join(self.stderr)}")
            self.seen.append(line)
            if needle in line:
                return line


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, int, Path]]:
    api_port, wpi_port, poll_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "var"
    env = cli_env(
        data_dir,
        CERTMGR_API_HOST="127.0.0.1",
        CERTMGR_API_PORT=str(api_port),
        CERTMGR_WPI_HOST="127.0.0.1",
        CERTMGR_WPI_PORT=str(wpi_port),
        CERTMGR_WPI_POLL_PORT=str(poll_port),
        CERTMGR_SCHEDULER_ENABLED="false",
    )
    proc = subprocess.Popen([str(CERTMGR), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True).start()
    server = Served(proc, lines, errors)
    server.wpi_port, server.poll_port = wpi_port, poll_port
    try:
        yield server, api_port, data_dir
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.mark.slow
def test_serve_answers_health_and_stops_on_sigterm(served: tuple[Served, int, Path]) -> None:
    server, api_port, data_dir = served
    line = server.wait_for("listening on", START_TIMEOUT_S)
    assert f"127.0.0.1:{api_port}" in line
    base = f"http://127.0.0.1:{api_port}"
    with httpx.Client(base_url=base, timeout=10) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert "Issuing CA" in body["ca"]
    # First start: the CA was created and the generated passphrase announced.
    assert (data_dir / "ca" / "issuing.key").is_file()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=STOP_TIMEOUT_S) == 0
    stderr = "".join(server.stderr)
    assert "Traceback" not in stderr
    assert str(data_dir / "ca-passphrase") in stderr


TOKEN_NOTE = "log in with an API token; create one (printed once) with: "


def _cookie(response: httpx.Response, name: str) -> tuple[str, set[str]]:
    """The value and the (lower-cased) attributes of the cookie ``name`` the response sets; fails if it sets none.
    Read from the headers: a client's cookie jar keeps ``Secure`` cookies away from plain HTTP."""
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = header.split(";")
        key, _, value = first.partition("=")
        if key.strip() == name:
            return value, {a.strip().lower() for a in attributes}
    pytest.fail(f"no cookie {name!r} in {response.headers.get_list('set-cookie')}")


@pytest.mark.slow
def test_the_console_is_served_on_the_api_listener_only(served: tuple[Served, int, Path]) -> None:
    """A newcomer's first minute, from what ``serve`` prints: the console URL and the token command, run as
    printed, log in (plain HTTP on loopback: the unprefixed session cookie) and show the overview. The phone
    network reaches the WPI and poll listeners; the console (and its login form) is not there."""
    server, api_port, data_dir = served
    server.wait_for("api listening on", START_TIMEOUT_S)
    console_line = server.wait_for("console at", START_TIMEOUT_S).strip()
    assert console_line == f"console at http://127.0.0.1:{api_port}/ui/"
    token_line = server.wait_for("token create", START_TIMEOUT_S).strip()
    assert token_line.startswith(TOKEN_NOTE), token_line
    command = shlex.split(token_line.removeprefix(TOKEN_NOTE))
    assert command == [str(CERTMGR), "token", "create", "--role", "admin", "--name", "admin"]
    created = subprocess.run(
        command, env=cli_env(data_dir), capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]

    console = console_line.removeprefix("console at ")
    origin = {"Origin": f"http://127.0.0.1:{api_port}", "Sec-Fetch-Site": "same-origin"}
    with httpx.Client(timeout=10, follow_redirects=False) as browser:
        first = browser.get(console)
        assert first.status_code in (302, 303, 307), first.status_code
        assert first.headers["location"].startswith("/ui/login")
        form = browser.get(f"{console}login")
        assert form.status_code == 200
        nonce, _ = _cookie(form, "certmgr_login")
        assert re.search(f'name="login_nonce" value="{re.escape(nonce)}"', form.text)
        browser.cookies.clear()
        answer = browser.post(
            f"{console}login",
            data={"token": token, "login_nonce": nonce, "next": "/ui/"},
            headers={**origin, "Cookie": f"certmgr_login={nonce}"},
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/"
        session, attributes = _cookie(answer, "certmgr_session")
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
        assert not any(h.startswith("__Host-") for h in answer.headers.get_list("set-cookie"))
        browser.cookies.clear()
        overview = browser.get(console, headers={"Cookie": f"certmgr_session={session}"})
        assert overview.status_code == 200
        assert "Phones by status" in overview.text
        assert "<h1>Overview</h1>" in overview.text

    with httpx.Client(timeout=10) as api:
        login = api.get(f"http://127.0.0.1:{api_port}/ui/login")
        assert login.status_code == 200  # the console is there, on the API port
        assert "<form" in login.text
    phone_side = [f"https://127.0.0.1:{server.wpi_port}", f"http://127.0.0.1:{server.poll_port}"]
    with httpx.Client(timeout=10, verify=False) as phone_net:  # noqa: S501 - only looking at what is served
        for base in phone_side:
            for method, path in (("GET", "/ui/login"), ("GET", "/ui/"), ("POST", "/ui/login"), ("GET", "/docs")):
                answer = phone_net.request(method, base + path, data={"token": "x"} if method == "POST" else None)
                assert answer.status_code < 500, (base, path, answer.status_code)
                assert "<form" not in answer.text, (base, path)
                assert "certmgr_session" not in answer.headers.get("set-cookie", ""), (base, path)
                assert "certmgr_login" not in answer.headers.get("set-cookie", ""), (base, path)
