"""E-mail against a real SMTP server (aiosmtpd on 127.0.0.1, free port): plain, AUTH, STARTTLS, retries."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from certmgr.clock import ManualClock
from certmgr.notify import Notification, SmtpNotifier, send_test
from certmgr.settings import Settings
from certmgr.simulator.ports import free_port
from tests.conftest import T0
from tests.integration.test_notify_webhook import Hook, _handler

NOTE = Notification("ca-expiring", "issuing CA expires in 30 days", "Rotate the issuing CA.", {"days": 30})
PASSWORD = "s3cret-smtp-pw"


class Inbox:
    """aiosmtpd handler: stores messages; answers DATA with ``451`` for the first ``tempfail`` messages."""

    def __init__(self, tempfail: int = 0) -> None:
        self.tempfail = tempfail
        self.data_calls = 0
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_calls += 1
        if self.data_calls <= self.tempfail:
            return "451 4.3.0 try again later"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"certmgr" and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


def _start(make: Callable[[int], Controller]) -> Controller:
    """Start a controller on a free port; retry a few times if another process grabbed the port meanwhile."""
    last: Exception | None = None
    for _ in range(5):
        controller = make(free_port())
        try:
            controller.start()
        except (OSError, RuntimeError) as exc:
            last = exc
            continue
        return controller
    raise RuntimeError(f"could not start the SMTP test server: {last}")


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    controller = _start(lambda port: Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10))
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def _notifier(port: int, **kwargs: Any) -> SmtpNotifier:
    async def no_wait(_: float) -> None:
        return None

    args: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "username": None,
        "password": None,
        "sender": "certmgr@example.com",
        "recipients": ["pki@example.com", "noc@example.com"],
        "clock": ManualClock(T0),
        "timeout": 10.0,
        "sleep": no_wait,
    }
    args.update(kwargs)
    return SmtpNotifier(**args)


def test_email_delivered(inbox: tuple[Inbox, int]) -> None:
    handler, port = inbox
    (result,) = asyncio.run(_notifier(port).send(NOTE))
    assert result.delivered
    assert result.attempts == 1
    assert result.target == f"127.0.0.1:{port}"
    ((mail_from, rcpt_tos, message),) = handler.messages
    assert mail_from == "certmgr@example.com"
    assert rcpt_tos == ["pki@example.com", "noc@example.com"]
    assert message["Subject"] == "[certmgr] issuing CA expires in 30 days"
    assert message["From"] == "certmgr@example.com"
    assert message["To"] == "pki@example.com, noc@example.com"
    assert message["Date"] == "Thu, 26 Nov 2026 09:00:00 +0000"
    assert message["X-Certmgr-Kind"] == "ca-expiring"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"Rotate the issuing CA." in body
    assert b'"days": 30' in body


def test_temporary_failure_is_retried(inbox: tuple[Inbox, int]) -> None:
    handler, port = inbox
    handler.tempfail = 2
    (result,) = asyncio.run(_notifier(port).send(NOTE))
    assert result.delivered
    assert result.attempts == 3
    assert handler.data_calls == 3
    assert len(handler.messages) == 1


def test_temporary_failures_give_up_after_the_bound(inbox: tuple[Inbox, int]) -> None:
    handler, port = inbox
    handler.tempfail = 100
    (result,) = asyncio.run(_notifier(port, attempts=2).send(NOTE))
    assert not result.delivered
    assert result.attempts == 2
    assert result.error is not None
    assert "451" in result.error


def test_connection_refused_is_reported() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        (result,) = asyncio.run(_notifier(port, attempts=2, password=SecretStr(PASSWORD), username="u").send(NOTE))
    assert not result.delivered
    assert result.attempts == 2
    assert result.error is not None
    assert PASSWORD not in result.error


@pytest.fixture
def auth_inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    controller = _start(
        lambda port: Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            ready_timeout=10,
            authenticator=_authenticator,
            auth_require_tls=False,
            auth_required=True,
        )
    )
    try:
        yield handler, controller.port
    finally:
        controller.stop()


AUTH_WITHOUT_TLS = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@AUTH_WITHOUT_TLS
def test_login_then_delivery(auth_inbox: tuple[Inbox, int]) -> None:
    handler, port = auth_inbox
    (result,) = asyncio.run(_notifier(port, username="certmgr", password=SecretStr(PASSWORD)).send(NOTE))
    assert result.delivered
    assert len(handler.messages) == 1


@AUTH_WITHOUT_TLS
def test_bad_login_gives_up_at_once_without_showing_the_password(
    auth_inbox: tuple[Inbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    handler, port = auth_inbox
    wrong = "wrong-pw-do-not-log"
    (result,) = asyncio.run(_notifier(port, username="certmgr", password=SecretStr(wrong)).send(NOTE))
    assert not result.delivered
    assert result.attempts == 1
    assert result.error is not None
    assert "535" in result.error
    assert wrong not in result.error
    assert wrong not in caplog.text
    assert handler.messages == []


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2100, 1, 1, tzinfo=UTC))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_starttls_with_login(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    handler = Inbox()
    controller = _start(
        lambda port: Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            ready_timeout=10,
            tls_context=server_tls,
            require_starttls=True,
            authenticator=_authenticator,
            auth_required=True,
        )
    )
    try:
        trusting = ssl.create_default_context(cafile=str(cert_path))
        notifier = _notifier(
            controller.port, starttls=True, username="certmgr", password=SecretStr(PASSWORD), ssl_context=trusting
        )
        (result,) = asyncio.run(notifier.send(NOTE))
        assert result.delivered, result.error
        assert len(handler.messages) == 1
        # Without trusting the server's certificate, STARTTLS fails verification: nothing is sent.
        untrusting = _notifier(
            controller.port, starttls=True, username="certmgr", password=SecretStr(PASSWORD), attempts=1
        )
        (failed,) = asyncio.run(untrusting.send(NOTE))
        assert not failed.delivered
        assert failed.error is not None
        assert failed.attempts == 1
        assert "not trusted" in failed.error
        assert len(handler.messages) == 1
    finally:
        controller.stop()


def test_send_test_over_every_configured_channel(inbox: tuple[Inbox, int], settings: Settings) -> None:
    handler, port = inbox
    state = Hook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        configured = settings.model_copy(
            update={
                "webhook_urls": [SecretStr(f"http://127.0.0.1:{server.server_address[1]}/hook/T")],
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "smtp_starttls": False,
                "smtp_to": ["pki@example.com"],
            }
        )
        results = asyncio.run(
            send_test(
                configured,
                clock=ManualClock(T0),
                client_factory=lambda: httpx.AsyncClient(timeout=10.0, trust_env=False),
            )
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert [(r.channel, r.delivered) for r in results] == [("webhook", True), ("smtp", True)]
    assert state.received[0]["kind"] == "test"
    assert handler.messages[0][2]["X-Certmgr-Kind"] == "test"
