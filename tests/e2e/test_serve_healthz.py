"""``certmgr serve`` as a real process: it announces its listener, answers /healthz and /readyz, stops on SIGTERM."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.integration.test_cli_support import CERTMGR, cli_env

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    api_port = _free_port()
    data_dir = tmp_path / "var"
    env = cli_env(
        data_dir,
        CERTMGR_API_HOST="127.0.0.1",
        CERTMGR_API_PORT=str(api_port),
        CERTMGR_WPI_HOST="127.0.0.1",
        CERTMGR_WPI_PORT=str(_free_port()),
        CERTMGR_WPI_POLL_PORT=str(_free_port()),
        CERTMGR_SCHEDULER_ENABLED="false",
    )
    proc = subprocess.Popen([str(CERTMGR), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True).start()
    try:
        yield Served(proc, lines, errors), api_port, data_dir
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
