"""Webhook channel: POST the notification as JSON to each configured URL, with bounded retries.

Outcome per response:

* ``2xx`` — delivered.
* ``429`` and ``5xx`` — retried (``Retry-After`` in seconds is honoured, capped at ``backoff_max``).
* any other status (``3xx`` — redirects are not followed —, ``4xx``) — given up at once: retrying a rejected
  request cannot help.
* transport errors (connection refused, DNS, timeouts) — retried; a malformed URL or unsupported scheme is
  given up at once.

At most ``attempts`` requests per URL, with exponential backoff ``backoff_base * 2**(n-1)`` capped at
``backoff_max`` between them. URLs are never logged or reported in full (they often embed a token).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import httpx

from certmgr.notify.model import ChannelResult, Notification, redact_url

log = logging.getLogger(__name__)

ClientFactory = Callable[[], httpx.AsyncClient]
Sleep = Callable[[float], Awaitable[None]]


def default_client(timeout: float = 10.0) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` with a timeout, no redirects followed."""
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)


class WebhookNotifier:
    """Send notifications to webhook URLs (see the module docstring for retries).

    ``client_factory`` makes the HTTP client (one per :meth:`send`; tests pass one with a mock transport or
    ``trust_env=False``); ``sleep`` waits between attempts (tests pass a fake to stay fast).

    Raises:
        ValueError: (on construction) if ``attempts`` is less than 1 or a backoff is negative.
    """

    name = "webhook"

    def __init__(
        self,
        urls: Sequence[str],
        client_factory: ClientFactory | None = None,
        *,
        attempts: int = 4,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff must not be negative")
        self._urls = tuple(urls)
        self._client_factory = client_factory or default_client
        self._attempts = attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep

    @property
    def targets(self) -> list[str]:
        """The configured URLs, redacted."""
        return [redact_url(url) for url in self._urls]

    async def send(self, notification: Notification) -> list[ChannelResult]:
        """POST ``notification`` to every URL concurrently; one result per URL, in configuration order.

        Never raises for delivery failures; they are reported in the results.
        """
        if not self._urls:
            return []
        payload = notification.to_json()
        async with self._client_factory() as client:
            return list(await asyncio.gather(*(self._post(client, url, payload) for url in self._urls)))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self._backoff_max)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return float(min(self._backoff_base * 2 ** (attempt - 1), self._backoff_max))

    async def _post(self, client: httpx.AsyncClient, url: str, payload: dict[str, object]) -> ChannelResult:
        target = redact_url(url)
        error = "not attempted"
        status: int | None = None
        for attempt in range(1, self._attempts + 1):
            retry_after: str | None = None
            try:
                response = await client.post(url, json=payload, headers={"User-Agent": "certmgr-notify"})
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:  # a bad URL: retrying cannot help
                return ChannelResult("webhook", target, False, attempt, _transport_error(exc, url))
            except httpx.TransportError as exc:
                status, error = None, _transport_error(exc, url)
            except httpx.HTTPError as exc:  # anything else httpx refuses: retrying cannot help
                return ChannelResult("webhook", target, False, attempt, _transport_error(exc, url))
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return ChannelResult("webhook", target, True, attempt, None, status)
                error = f"HTTP {status}"
                if status != 429 and not 500 <= status < 600:
                    log.warning("webhook %s rejected the notification: %s", target, error)
                    return ChannelResult("webhook", target, False, attempt, error, status)
                retry_after = response.headers.get("Retry-After")
            if attempt < self._attempts:
                log.info("webhook %s attempt %d failed (%s); retrying", target, attempt, error)
                await self._sleep(self._delay(attempt, retry_after))
        log.warning("webhook %s: giving up after %d attempts: %s", target, self._attempts, error)
        return ChannelResult("webhook", target, False, self._attempts, error, status)


def _transport_error(exc: Exception, url: str) -> str:
    """A one-line reason without the URL (which may carry a token)."""
    text = str(exc).replace(url, redact_url(url)) or "no detail"
    return f"{type(exc).__name__}: {text}".splitlines()[0]
