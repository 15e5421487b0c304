"""The composite :class:`Notifier`: every configured channel, each outcome reported; built from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Literal

from certmgr.clock import Clock
from certmgr.errors import ConfigError
from certmgr.notify.model import Channel, ChannelResult, Notification
from certmgr.notify.smtp import SmtpNotifier
from certmgr.notify.webhook import ClientFactory, WebhookNotifier
from certmgr.settings import Settings

log = logging.getLogger(__name__)


class Notifier:
    """Send a notification over every channel concurrently; a failing channel never stops the others."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.channels = tuple(channels)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock | None = None, client_factory: ClientFactory | None = None
    ) -> Notifier:
        """The channels ``settings`` configure: a webhook channel if ``webhook_urls`` is set, an e-mail channel
        if ``smtp_host`` is set. No channel at all is allowed (then :meth:`send` reports nothing).

        Raises:
            ConfigError: if ``smtp_host`` is set without ``smtp_to`` recipients, or ``smtp_password`` without
                ``smtp_username``.
        """
        channels: list[Channel] = []
        urls = [url.get_secret_value() for url in settings.webhook_urls if url.get_secret_value().strip()]
        if urls:
            channels.append(WebhookNotifier(urls, client_factory))
        if settings.smtp_host:
            if not settings.smtp_to:
                raise ConfigError("smtp_host is set but smtp_to names no recipient", key="smtp_to")
            if settings.smtp_password is not None and not settings.smtp_username:
                raise ConfigError("smtp_password is set without smtp_username", key="smtp_username")
            channels.append(
                SmtpNotifier(
                    settings.smtp_host,
                    settings.smtp_port,
                    settings.smtp_starttls,
                    settings.smtp_username,
                    settings.smtp_password,
                    settings.smtp_from,
                    settings.smtp_to,
                    clock=clock,
                )
            )
        return cls(channels)

    async def send(self, notification: Notification) -> list[ChannelResult]:
        """Send ``notification`` over every channel; the results of all channels, in channel order.

        A channel that raises (a bug, not a delivery failure) is reported as one undelivered result.
        """
        outcomes = await asyncio.gather(*(ch.send(notification) for ch in self.channels), return_exceptions=True)
        results: list[ChannelResult] = []
        for channel, outcome in zip(self.channels, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # cancellation, KeyboardInterrupt: not ours to swallow
                log.error("notification channel %s failed unexpectedly: %s", channel.name, type(outcome).__name__)
                kind: Literal["webhook", "smtp"] = "smtp" if channel.name == "smtp" else "webhook"
                results.append(ChannelResult(kind, channel.name, False, 0, f"internal error: {type(outcome).__name__}"))
            else:
                results.extend(outcome)
        return results


async def send_test(
    settings: Settings, *, clock: Clock | None = None, client_factory: ClientFactory | None = None
) -> list[ChannelResult]:
    """Send a ``test`` notification over every configured channel (for ``certmgr notify test``).

    Raises:
        ConfigError: if no channel is configured, or as :meth:`Notifier.from_settings`.
    """
    notifier = Notifier.from_settings(settings, clock=clock, client_factory=client_factory)
    if not notifier.channels:
        raise ConfigError("no notification channel configured: set webhook_urls and/or smtp_host and smtp_to")
    notification = Notification(
        kind="test",
        subject="certmgr test notification",
        text="This is a test notification from certmgr. If you can read it, this channel works.",
        data={"test": True},
    )
    return await notifier.send(notification)
