"""The composite notifier: channels from settings, per-channel results, a broken channel does not stop others."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from certmgr.errors import ConfigError
from certmgr.notify import ChannelResult, Notification, Notifier, SmtpNotifier, WebhookNotifier, send_test
from certmgr.settings import Settings

NOTE = Notification("test", "s", "t")


class Fixed:
    name = "webhook"

    def __init__(self, results: list[ChannelResult]) -> None:
        self.results = results
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> list[ChannelResult]:
        self.sent.append(notification)
        return self.results


class Broken:
    name = "smtp"

    async def send(self, notification: Notification) -> list[ChannelResult]:
        raise RuntimeError("bug with secret details")


def test_sends_to_every_channel_and_reports_each() -> None:
    ok = ChannelResult("webhook", "https://a/…", True, 1)
    fixed = Fixed([ok])
    results = asyncio.run(Notifier([fixed, Broken()]).send(NOTE))
    assert fixed.sent == [NOTE]
    assert results[0] == ok
    assert results[1].channel == "smtp"
    assert not results[1].delivered
    assert results[1].error == "internal error: RuntimeError"


def test_channels_from_settings(settings: Settings) -> None:
    assert Notifier.from_settings(settings).channels == ()
    configured = settings.model_copy(
        update={
            "webhook_urls": [SecretStr("https://hooks.example.com/x"), SecretStr(" ")],
            "smtp_host": "mail.example.com",
            "smtp_to": ["pki@example.com"],
        }
    )
    channels = Notifier.from_settings(configured).channels
    assert [type(c) for c in channels] == [WebhookNotifier, SmtpNotifier]
    assert channels[0].targets == ["https://hooks.example.com/…"]  # type: ignore[attr-defined]


def test_smtp_settings_are_checked(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="smtp_to"):
        Notifier.from_settings(settings.model_copy(update={"smtp_host": "mail.example.com"}))
    with pytest.raises(ConfigError, match="smtp_username"):
        Notifier.from_settings(
            settings.model_copy(
                update={"smtp_host": "m", "smtp_to": ["a@b"], "smtp_password": SecretStr("pw-not-shown")}
            )
        )


def test_send_test_without_channels_is_a_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="no notification channel"):
        asyncio.run(send_test(settings))


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("CERTMGR_WEBHOOK_URLS", '["https://hooks.example.com/T/SECRET"]')
    monkeypatch.setenv("CERTMGR_SMTP_TO", '["pki@example.com"]')
    monkeypatch.setenv("CERTMGR_SMTP_PASSWORD", "pw-from-env")
    monkeypatch.setenv("CERTMGR_NOTIFY_EXPIRY_DAYS", "21")
    loaded = Settings(data_dir=settings.data_dir)
    assert [u.get_secret_value() for u in loaded.webhook_urls] == ["https://hooks.example.com/T/SECRET"]
    assert loaded.smtp_to == ["pki@example.com"]
    assert loaded.notify_expiry_days == 21
    assert loaded.smtp_port == 587
    assert loaded.smtp_starttls is True
    assert "SECRET" not in repr(loaded)
    assert "pw-from-env" not in repr(loaded)
