"""Webhooks against a real HTTP server on 127.0.0.1 (http.server in a thread, free port)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from certmgr.notify import Notification, WebhookNotifier

NOTE = Notification("deployment-failed", "deployment failed", "phone 00:1A:E8:12:34:56 rejected", {"mac": "x"})


@dataclass
class Hook:
    """What the test server received and how it answers: ``fail_first`` requests get ``fail_status``."""

    url: str = ""
    fail_first: int = 0
    fail_status: int = 503
    received: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(hook: Hook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.lock:
                hook.paths.append(self.path)
                hook.received.append(json.loads(body))
                failing = len(hook.received) <= hook.fail_first
            self.send_response(hook.fail_status if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/TOKEN-abc"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)


async def _no_wait(_: float) -> None:
    return None


def _notifier(urls: list[str], attempts: int = 4) -> WebhookNotifier:
    return WebhookNotifier(urls, _client, attempts=attempts, sleep=_no_wait)


def test_webhook_delivered(hook: Hook) -> None:
    (result,) = asyncio.run(_notifier([hook.url]).send(NOTE))
    assert result.delivered
    assert result.attempts == 1
    assert result.status_code == 200
    assert hook.received == [NOTE.to_json()]
    assert hook.paths == ["/hooks/TOKEN-abc"]
    assert "TOKEN" not in result.target


def test_server_failing_twice_then_succeeding_is_retried(hook: Hook) -> None:
    hook.fail_first = 2
    (result,) = asyncio.run(_notifier([hook.url]).send(NOTE))
    assert result.delivered
    assert result.attempts == 3
    assert len(hook.received) == 3
    assert all(r == NOTE.to_json() for r in hook.received)


def test_rate_limited_then_succeeding(hook: Hook) -> None:
    hook.fail_first, hook.fail_status = 1, 429
    (result,) = asyncio.run(_notifier([hook.url]).send(NOTE))
    assert (result.delivered, result.attempts) == (True, 2)


def test_rejected_request_is_not_retried(hook: Hook) -> None:
    hook.fail_first, hook.fail_status = 100, 400
    (result,) = asyncio.run(_notifier([hook.url]).send(NOTE))
    assert not result.delivered
    assert result.attempts == 1
    assert result.status_code == 400
    assert len(hook.received) == 1


def test_server_always_failing_gives_up_after_the_bound(hook: Hook) -> None:
    hook.fail_first = 100
    (result,) = asyncio.run(_notifier([hook.url], attempts=3).send(NOTE))
    assert not result.delivered
    assert result.attempts == 3
    assert len(hook.received) == 3


def test_connection_refused_is_retried_and_reported(hook: Hook) -> None:
    # A bound but not listening socket: connections are refused, and the port stays ours during the test.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/hooks/SECRET-xyz"
        dead_result, live_result = asyncio.run(_notifier([dead, hook.url], attempts=2).send(NOTE))
    assert not dead_result.delivered
    assert dead_result.attempts == 2
    assert dead_result.error is not None
    assert "ConnectError" in dead_result.error
    assert "SECRET" not in dead_result.error
    assert "SECRET" not in dead_result.target
    assert live_result.delivered  # one dead URL does not stop the others
