"""E-mail channel without a server: the message, argument checks, and password scrubbing."""

from __future__ import annotations

import smtplib

import pytest
from pydantic import SecretStr

from certmgr.clock import ManualClock
from certmgr.notify import Notification, SmtpNotifier
from tests.conftest import T0

NOTE = Notification("deployment-failed", "3 deployments failed", "Three phones rejected the certificate.", {"n": 3})


def make(**kwargs: object) -> SmtpNotifier:
    args: dict[str, object] = {
        "host": "mail.example.com",
        "port": 587,
        "starttls": True,
        "username": "certmgr",
        "password": SecretStr("hunter2-secret"),
        "sender": "certmgr@example.com",
        "recipients": ["pki@example.com", "noc@example.com"],
        "clock": ManualClock(T0),
    }
    args.update(kwargs)
    return SmtpNotifier(**args)  # type: ignore[arg-type]


def test_message_headers_and_body() -> None:
    message = make().build_message(NOTE)
    assert message["Subject"] == "[certmgr] 3 deployments failed"
    assert message["From"] == "certmgr@example.com"
    assert message["To"] == "pki@example.com, noc@example.com"
    assert message["Date"] == "Thu, 26 Nov 2026 09:00:00 +0000"
    assert message["X-Certmgr-Kind"] == "deployment-failed"
    assert message["Message-ID"].endswith("@example.com>")
    body = message.get_content()
    assert body.startswith("Three phones rejected the certificate.\n")
    assert '"n": 3' in body
    assert "hunter2" not in message.as_string()


def test_target_shows_no_credentials() -> None:
    assert make().target == "mail.example.com:587"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"recipients": []}, "recipient"), ({"attempts": 0}, "attempts"), ({"port": 0}, "port")],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_reasons_never_contain_the_password() -> None:
    notifier = make()
    reason = notifier._reason(smtplib.SMTPAuthenticationError(535, b"bad credentials hunter2-secret"))
    assert "hunter2-secret" not in reason
    assert "535" in reason
    assert "[redacted]" in reason
