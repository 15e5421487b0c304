"""Webhook channel over an in-memory transport: success, retries with backoff, giving up, no secrets shown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from certmgr.notify import ChannelResult, Notification, WebhookNotifier

NOTE = Notification("test", "hello", "text", {"n": 1})
URL = "https://hooks.example.com/services/T0/B0/TOKEN123"


class Script:
    """Answers requests with a scripted sequence of statuses (or exceptions); records what it got."""

    def __init__(self, *steps: int | Exception, headers: dict[str, str] | None = None) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        self.headers = headers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, headers=self.headers)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def notifier(script: Script, sleeps: Sleeps, urls: list[str] | None = None, attempts: int = 4) -> WebhookNotifier:
    factory: Callable[[], httpx.AsyncClient] = lambda: httpx.AsyncClient(transport=httpx.MockTransport(script))  # noqa: E731
    return WebhookNotifier(urls or [URL], factory, attempts=attempts, backoff_base=1.0, backoff_max=5.0, sleep=sleeps)


def send(n: WebhookNotifier) -> list[ChannelResult]:
    return asyncio.run(n.send(NOTE))


def test_delivered_on_2xx_with_the_json_document() -> None:
    script, sleeps = Script(204), Sleeps()
    (result,) = send(notifier(script, sleeps))
    assert result == ChannelResult("webhook", "https://hooks.example.com/…", True, 1, None, 204)
    request = script.requests[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == NOTE.to_json()
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301])
def test_client_errors_give_up_at_once(status: int) -> None:
    script, sleeps = Script(status), Sleeps()
    (result,) = send(notifier(script, sleeps))
    assert not result.delivered
    assert result.attempts == 1
    assert result.status_code == status
    assert result.error == f"HTTP {status}"
    assert sleeps.delays == []


def test_server_errors_are_retried_with_exponential_backoff_then_given_up() -> None:
    script, sleeps = Script(503), Sleeps()
    (result,) = send(notifier(script, sleeps))
    assert not result.delivered
    assert result.attempts == 4
    assert len(script.requests) == 4
    assert sleeps.delays == [1.0, 2.0, 4.0]


def test_backoff_is_capped() -> None:
    script, sleeps = Script(500), Sleeps()
    send(notifier(script, sleeps, attempts=6))
    assert sleeps.delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_429_is_retried_honouring_retry_after() -> None:
    script, sleeps = Script(429, 429, 200, headers={"Retry-After": "3"}), Sleeps()
    (result,) = send(notifier(script, sleeps))
    assert result.delivered
    assert result.attempts == 3
    assert sleeps.delays == [3.0, 3.0]


def test_retry_after_is_capped_and_dates_fall_back_to_backoff() -> None:
    script, sleeps = Script(429, 200, headers={"Retry-After": "3600"}), Sleeps()
    send(notifier(script, sleeps))
    assert sleeps.delays == [5.0]
    script, sleeps = Script(503, 200, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}), Sleeps()
    send(notifier(script, sleeps))
    assert sleeps.delays == [1.0]


def test_connection_errors_are_retried() -> None:
    script, sleeps = Script(httpx.ConnectError("connection refused"), 200), Sleeps()
    (result,) = send(notifier(script, sleeps))
    assert result.delivered
    assert result.attempts == 2


def test_transport_errors_never_show_the_url_token() -> None:
    script, sleeps = Script(httpx.ConnectTimeout(f"timed out talking to {URL}")), Sleeps()
    (result,) = send(notifier(script, sleeps, attempts=2))
    assert not result.delivered
    assert result.error is not None
    assert "ConnectTimeout" in result.error
    assert "TOKEN123" not in result.error
    assert "TOKEN123" not in result.target


def test_every_url_gets_its_own_result_in_order() -> None:
    def route(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.host == "ok.example" else 404)

    sleeps = Sleeps()
    n = WebhookNotifier(
        ["https://ok.example/a", "https://bad.example/b"],
        lambda: httpx.AsyncClient(transport=httpx.MockTransport(route)),
        sleep=sleeps,
    )
    results = asyncio.run(n.send(NOTE))
    assert [(r.target, r.delivered) for r in results] == [
        ("https://ok.example/…", True),
        ("https://bad.example/…", False),
    ]
    assert n.targets == ["https://ok.example/…", "https://bad.example/…"]


def test_no_urls_no_results_and_invalid_arguments() -> None:
    assert asyncio.run(WebhookNotifier([]).send(NOTE)) == []
    with pytest.raises(ValueError, match="attempts"):
        WebhookNotifier([URL], attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        WebhookNotifier([URL], backoff_base=-1)


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/TOKEN", "http://[::1/TOKEN"])
def test_bad_urls_are_given_up_at_once(url: str) -> None:
    sleeps = Sleeps()
    (result,) = asyncio.run(WebhookNotifier([url], sleep=sleeps).send(NOTE))
    assert not result.delivered
    assert result.attempts == 1
    assert result.error is not None
    assert "TOKEN" not in result.error
    assert sleeps.delays == []
