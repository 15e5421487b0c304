"""E-mail channel: one plain-text message to all recipients through an SMTP server, via :mod:`smtplib`.

``smtplib`` is blocking, so each delivery runs in a worker thread (:func:`asyncio.to_thread`). With
``starttls`` the connection is upgraded before login and the server certificate is verified (default
:class:`ssl.SSLContext`, or the one given). Login happens only if a username is configured.

Retries: connection errors, disconnects and ``4xx`` replies (temporary failures) are retried up to
``attempts`` times with exponential backoff; ``5xx`` replies (including a failed login or refused recipients)
and an untrusted server certificate give up at once. The password never appears in logs, results or exceptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from email.message import EmailMessage
from email.utils import format_datetime

from pydantic import SecretStr

from certmgr.clock import Clock, SystemClock
from certmgr.notify.model import ChannelResult, Notification

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class _Permanent(Exception):
    """A delivery failure retrying cannot fix (carries the one-line reason)."""


class SmtpNotifier:
    """Send notifications as e-mail.

    ``clock`` stamps the ``Date`` header (the system clock by default); ``sleep`` waits between attempts.

    Raises:
        ValueError: (on construction) if there is no recipient, ``attempts`` is less than 1 or ``port`` is out
            of range.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        starttls: bool,
        username: str | None,
        password: SecretStr | None,
        sender: str,
        recipients: Sequence[str],
        *,
        clock: Clock | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
        backoff_base: float = 2.0,
        backoff_max: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not recipients:
            raise ValueError("an SMTP notifier needs at least one recipient")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid SMTP port {port}")
        self._host = host
        self._port = port
        self._starttls = starttls
        self._username = username
        self._password = password
        self._sender = sender
        self._recipients = tuple(recipients)
        self._clock: Clock = clock or SystemClock()
        self._timeout = timeout
        self._attempts = attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._ssl_context = ssl_context
        self._sleep = sleep

    @property
    def target(self) -> str:
        """``host:port`` of the server (no credentials)."""
        return f"{self._host}:{self._port}"

    def build_message(self, notification: Notification) -> EmailMessage:
        """The e-mail for ``notification``: subject prefixed ``[certmgr]``, the text, then the data as JSON."""
        message = EmailMessage()
        message["Subject"] = f"[certmgr] {notification.subject}"
        message["From"] = self._sender
        message["To"] = ", ".join(self._recipients)
        message["Date"] = format_datetime(self._clock.now())
        domain = self._sender.rpartition("@")[2] or "certmgr"
        message["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
        message["X-Certmgr-Kind"] = notification.kind
        body = notification.text.rstrip() + "\n"
        if notification.data:
            details = json.dumps(notification.to_json()["data"], indent=2, sort_keys=True, ensure_ascii=False)
            body += "\n-- details --\n" + details + "\n"
        message.set_content(body)
        return message

    async def send(self, notification: Notification) -> list[ChannelResult]:
        """Deliver ``notification`` to all recipients in one message; one result for the server.

        Never raises for delivery failures; they are reported in the result.
        """
        message = self.build_message(notification)
        error = "not attempted"
        for attempt in range(1, self._attempts + 1):
            try:
                await asyncio.to_thread(self._deliver, message)
            except _Permanent as exc:
                log.warning("e-mail via %s failed: %s", self.target, exc)
                return [ChannelResult("smtp", self.target, False, attempt, str(exc))]
            except (smtplib.SMTPException, OSError) as exc:
                error = self._reason(exc)
            else:
                return [ChannelResult("smtp", self.target, True, attempt)]
            if attempt < self._attempts:
                log.info("e-mail via %s attempt %d failed (%s); retrying", self.target, attempt, error)
                await self._sleep(min(self._backoff_base * 2 ** (attempt - 1), self._backoff_max))
        log.warning("e-mail via %s: giving up after %d attempts: %s", self.target, self._attempts, error)
        return [ChannelResult("smtp", self.target, False, self._attempts, error)]

    def _deliver(self, message: EmailMessage) -> None:
        """Blocking delivery (runs in a worker thread).

        Raises:
            _Permanent: for a ``5xx`` reply, refused recipients, a failed login or an untrusted server certificate.
            smtplib.SMTPException: for temporary failures (``4xx``, disconnects).
            OSError: for connection failures and timeouts.
        """
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls(context=self._ssl_context or ssl.create_default_context())
                if self._username:
                    password = self._password.get_secret_value() if self._password else ""
                    smtp.login(self._username, password)
                refused = smtp.send_message(message, from_addr=self._sender, to_addrs=list(self._recipients))
                if refused:
                    log.warning("e-mail via %s: some recipients refused: %s", self.target, sorted(refused))
        except ssl.SSLCertVerificationError as exc:
            raise _Permanent(f"the SMTP server's certificate is not trusted: {exc.verify_message}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise _Permanent(f"all recipients refused: {sorted(exc.recipients)}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise _Permanent(self._reason(exc)) from None
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise _Permanent(self._reason(exc)) from None
            raise

    def _reason(self, exc: BaseException) -> str:
        """A one-line reason with any occurrence of the password removed."""
        if isinstance(exc, smtplib.SMTPResponseException):
            detail = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc)
            text = f"{type(exc).__name__}: {exc.smtp_code} {detail}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        secret = self._password.get_secret_value() if self._password else ""
        if secret:
            text = text.replace(secret, "[redacted]")
        return " ".join(text.split())
