"""One simulated OpenStage / OpenScape Desk Phone, over real loopback sockets (asyncio).

The phone behaves as wpi-protocol.md describes it:

* **contact-me server** on ``<ip>:8085`` (plain HTTP, §3.3): ``POST /contact_dls.html/ContactDLS`` with the form
  ``ContactMe=true[&dls_ip_addr=…&dls_ip_port=…]`` — or ``GET`` with the same query string — is answered
  ``204 No Content`` with ``Server: DlsClient``; then the phone calls the service with ``solicited``. A
  contact-me inside the contact gap (§3.4) is answered 204 as well but ignored and counted (open question 16:
  the real HTTP answer is unknown; 204 keeps a probing service unaware, which is the stricter test).
* **WBM server** on ``<ip>:443``: one TLS listener whose ClientHello (servername) callback hands every new
  handshake the SSLContext of the certificate that is current at that moment, so a newly installed certificate
  is served to every new connection without ever closing the listener. (``StreamWriter.start_tls`` on the
  server side is broken in Python 3.11, hence the callback.) It serves a tiny HTML page (browser and TLS probe both
  work) and also takes the contact-me trigger over HTTPS (Pentagrid, §3.3). The factory certificate is a
  self-signed EC P-256 certificate, CN ``OpenStage Default``, made at start (EC for speed: a fleet of
  thousands boots in seconds; RSA-2048 is available through :attr:`PhoneConfig.factory_key_type`).
* **HTTPS client** (httpx, the phone is always the client): a fresh ``AsyncClient`` — and therefore a fresh
  cookie jar — per interaction, bound to the phone's own address (``local_address``) so the TCP peer the
  service sees *is* the phone (D10). Default Mode: any server certificate is accepted. Every message carries a
  fresh nonce (32 upper-case hex digits) and ``maxItems="-1"`` (``1`` with the ``max-items-1`` fault);
  ``reply-to`` messages also ``fragment="final"`` unless fragmented (§5.3).

Interactions are serialised per phone, bounded to :attr:`PhoneConfig.max_round_trips` round trips, each HTTP
request by :attr:`PhoneConfig.request_timeout` and the whole interaction by
:attr:`PhoneConfig.interaction_timeout`. Private keys and passwords never appear in stats, logs or errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import html
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certmgr.clock import Clock, SystemClock
from certmgr.errors import CertmgrError, InputError, ProtocolError
from certmgr.identity import normalize_mac
from certmgr.pki.keys import PrivateKey, generate_private_key
from certmgr.pki.pkcs12 import open_pkcs12
from certmgr.pki.types import KeyType
from certmgr.simulator.faults import BUSY_CALL_SECONDS, MAX_SLOW_SECONDS, NO_FAULTS, FaultSet, uses_legacy_pbe
from certmgr.wpi.certjudge import format_certificate_info
from certmgr.wpi.codec import encode_workpoint, parse_dls
from certmgr.wpi.contactme import CONTACT_ME_PATH, parse_contact_me
from certmgr.wpi.messages import (
    ITEM_CONTACT_ME_URI,
    ITEM_DEVICE_TYPE,
    ITEM_E164,
    ITEM_MAC,
    ITEM_SEND_SOLICITED,
    ITEM_SOFTWARE_VERSION,
    ITEM_WBM_CERTIFICATE,
    ITEM_WBM_CERTIFICATE_INFO,
    Action,
    DLSMessage,
    Fragment,
    Item,
    Reason,
    ReplyStatus,
    WorkpointMessage,
    is_sensitive_item_name,
)

log = logging.getLogger(__name__)

DEFAULT_DLS_URL = "https://127.0.0.1:18443/DeploymentService/LoginService"
FACTORY_CN = "OpenStage Default"
#: The restart password the Guide documents for a factory reset ([G p.51]).
FACTORY_RESET_PASSWORD = "124816"  # noqa: S105 - a publicly documented protocol value, not a secret
#: Keep this many interaction records per phone.
MAX_HISTORY = 100
#: At most this many interactions may wait for the phone at once; more contact-mes are dropped.
MAX_QUEUED_INTERACTIONS = 4

_MAX_REQUEST_LINE = 4096
_MAX_HEADERS = 50
_MAX_REQUEST_BODY = 64 * 1024
_UNPARSEABLE_INFO = "WBM certificate installed -- details not available (simulated firmware quirk)"
_READ_ONLY_ITEMS = frozenset(
    {
        ITEM_MAC,
        ITEM_DEVICE_TYPE,
        "related-device-type",
        "software-type",
        "related-software-type",
        ITEM_SOFTWARE_VERSION,
        ITEM_CONTACT_ME_URI,
        "ipaddress",
        "part-number",
        ITEM_WBM_CERTIFICATE_INFO,
    }
)


_CallbackFactory = Callable[[], Coroutine[Any, Any, None]]


class SimulatorError(CertmgrError):
    """The simulator cannot run a phone (address in use, not a loopback address …)."""


def _is_password_item(name: str) -> bool:
    """Items a ``WriteItems`` may use to deliver the PKCS#12 password (D7 ``password_item``): any name with a
    ``password``/``passwd``/``pwd`` token that is not one of the phone's own account passwords."""
    lowered = name.lower()
    if lowered in ("user-pwd", "admin-pwd", "user-pwd-unicode", "restart-password"):
        return False
    return any(tok in ("password", "passwd", "pwd") for tok in lowered.replace("_", "-").split("-"))


def _loopback_ipv4(value: str, what: str) -> str:
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise InputError(f"{what} {value[:40]!r} is not an IP address") from None
    if not isinstance(addr, ipaddress.IPv4Address) or not addr.is_loopback:
        raise InputError(f"{what} {value[:40]!r} is not an IPv4 loopback address (127.0.0.0/8)")
    return str(addr)


def alternate_ip(ip: str) -> str:
    """The address an ``ip-change`` phone moves to: the second octet with its top bit flipped
    (``127.0.10.1`` → ``127.128.10.1``), which stays in 127.0.0.0/8 and off the usual fleet ranges.

    Raises:
        InputError: if ``ip`` is not an IPv4 loopback address.
    """
    octets = [int(o) for o in _loopback_ipv4(ip, "ip").split(".")]
    octets[1] ^= 0x80
    return ".".join(str(o) for o in octets)


@dataclass(frozen=True)
class PhoneConfig:
    """Everything that defines one simulated phone.

    ``pkcs12_passwords`` are the PKCS#12 passwords the phone knows out of band (D7); a password delivered in
    the same ``WriteItems`` is tried first. ``contact_gap`` is in seconds (a real phone: 300, tests: 0).
    ``alt_ip`` is where an ``ip-change`` phone moves to (default :func:`alternate_ip`). ``loopback_only`` makes
    the phone refuse to call any service outside 127.0.0.0/8 (a contact-me naming another ``dls_ip_addr`` is
    then ignored and recorded as ``last_error``).

    Two timing knobs model slow but healthy firmware (tests use them to stop the service at a precise protocol
    step): ``callback_delay`` — seconds between answering a contact-me and calling the service with
    ``solicited``; ``switch_delay`` — seconds during which the WBM keeps serving the previous certificate after
    accepting a new one (the web server restarts later, open question 4; the certificate info already
    describes the new one).

    Raises:
        InputError: (on construction) for a bad MAC, a non-loopback ``ip``/``alt_ip``, ports outside
            1..65535, a non-HTTPS ``dls_url``, or a negative gap or timeout.
    """

    mac: str
    ip: str
    e164: str
    device_type: str = "OpenStage 60"
    software_version: str = "V3 R5.21.0"
    contact_port: int = 8085
    wbm_port: int = 443
    dls_url: str = DEFAULT_DLS_URL
    faults: FaultSet = NO_FAULTS
    pkcs12_passwords: tuple[bytes, ...] = field(default=(), repr=False)
    contact_gap: float = 300.0
    request_timeout: float = 10.0
    interaction_timeout: float = 120.0
    server_timeout: float = 10.0
    max_round_trips: int = 50
    restart_delay: float = 0.2
    alt_ip: str | None = None
    factory_key_type: KeyType = KeyType.EC_P256
    loopback_only: bool = True
    callback_delay: float = 0.0
    switch_delay: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        object.__setattr__(self, "ip", _loopback_ipv4(self.ip, "ip"))
        if self.alt_ip is not None:
            object.__setattr__(self, "alt_ip", _loopback_ipv4(self.alt_ip, "alt_ip"))
        for name in ("contact_port", "wbm_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise InputError(f"{name} must be in 1..65535")
        parts = urlsplit(self.dls_url)
        if parts.scheme != "https" or not parts.hostname:
            raise InputError("dls_url must be an https:// URL with a host")
        for name in ("contact_gap", "request_timeout", "interaction_timeout", "server_timeout", "restart_delay"):
            value = getattr(self, name)
            if value < 0 or (name.endswith("timeout") and value == 0):
                raise InputError(f"{name} must not be negative (timeouts must be positive)")
        for name in ("callback_delay", "switch_delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= MAX_SLOW_SECONDS:
                raise InputError(f"{name} must be between 0 and {MAX_SLOW_SECONDS:g} seconds")
        if not 1 <= self.max_round_trips <= 1000:
            raise InputError("max_round_trips must be in 1..1000")
        if any(not isinstance(p, bytes) for p in self.pkcs12_passwords):
            raise InputError("pkcs12_passwords must be bytes")


@dataclass
class PhoneStats:
    """Counters of one phone; :meth:`as_dict` is what the fleet writes as JSON (no secrets)."""

    mac: str
    ip: str
    faults: str
    contact_me_received: int = 0
    contact_me_ignored_gap: int = 0
    interactions: int = 0
    writes_accepted: int = 0
    writes_rejected: int = 0
    busy_replies: int = 0
    current_cert_sha256: str = ""
    factory_cert: bool = True
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "mac": self.mac,
            "ip": self.ip,
            "faults": self.faults,
            "contact_me_received": self.contact_me_received,
            "contact_me_ignored_gap": self.contact_me_ignored_gap,
            "interactions": self.interactions,
            "writes_accepted": self.writes_accepted,
            "writes_rejected": self.writes_rejected,
            "busy_replies": self.busy_replies,
            "current_cert_sha256": self.current_cert_sha256,
            "factory_cert": self.factory_cert,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class InteractionRecord:
    """What happened in one interaction: the opening reason, the service URL, the actions received in order,
    the error that ended it (if any) and whether a certificate was installed."""

    reason: str
    url: str
    actions: tuple[str, ...]
    error: str | None
    certificate_installed: bool


@dataclass
class _Outcome:
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    certificate_installed: bool = False
    send_solicited: bool = False
    restart: bool = False
    factory_restart: bool = False


class _InteractionEnd(Exception):
    """Ends an interaction early with a reason (never contains secrets)."""


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class _Identity:
    """A certificate the WBM may serve, with the SSLContext that serves it."""

    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    context: ssl.SSLContext
    factory: bool

    @property
    def sha256(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


def new_nonce() -> str:
    """A fresh nonce: 32 upper-case hex digits, like the Guide's examples (§4.4)."""
    return secrets.token_hex(16).upper()


@functools.lru_cache(maxsize=1)
def _client_ssl_context() -> ssl.SSLContext:
    """Default Mode: the phone accepts any server certificate and presents none (§3.7)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(key: PrivateKey, cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> ssl.SSLContext:
    """A TLS server context serving ``cert`` (+ ``chain``) with ``key``.

    The ``ssl`` module only loads keys from files, so the key lives for a moment in a private temporary
    directory (mode 0700) that is removed before this function returns.

    Raises:
        InputError: if the key does not belong to the certificate or OpenSSL refuses the pair.
    """
    key_pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert_pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if key_pub != cert_pub:
        raise InputError("the private key does not belong to the certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pem_chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *chain))
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.TemporaryDirectory(prefix="certmgr-sim-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(pem_chain)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem_key)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise InputError(f"OpenSSL refuses the certificate/key pair ({exc.reason or 'error'})") from None
    return ctx


def self_signed(common_name: str, key_type: KeyType, clock: Clock, *, days: int = 3650) -> _Identity:
    """A self-signed server certificate (the phone's factory certificate or a decoy for ``wrong-info``).

    Raises:
        InputError: never for valid arguments (from :func:`server_context`).
    """
    key = generate_private_key(key_type)
    now = clock.now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Unify Software and Solutions (simulated)"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _Identity(cert=cert, chain=(), context=server_context(key, cert, ()), factory=True)


def certificate_info_text(cert: x509.Certificate) -> str:
    """The ``wbm-server-certificate-info`` value the simulator reports for ``cert`` (certinfo's format).

    Raises:
        InputError: never for a valid certificate.
    """
    return format_certificate_info(
        serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha1=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - an identifier, not a signature
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


# --- tiny HTTP/1.1 server side ------------------------------------------------------------------------------
async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """One HTTP/1.1 request (Content-Length bodies only); ``None`` if the peer sent nothing."""
    line = await reader.readline()
    if not line:
        return None
    if len(line) > _MAX_REQUEST_LINE or not line.endswith(b"\n"):
        raise ProtocolError("request line too long")
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError("malformed request line")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        if len(raw) > _MAX_REQUEST_LINE or b":" not in raw:
            raise ProtocolError("malformed header")
        name, value = raw.decode("latin-1").split(":", 1)
        headers[name.strip().lower()] = value.strip()
    else:
        raise ProtocolError("too many headers")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ProtocolError("chunked bodies are not supported")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > _MAX_REQUEST_BODY:
        raise ProtocolError("bad Content-Length")
    body = await reader.readexactly(int(length_text)) if int(length_text) else b""
    return _Request(method=parts[0].upper(), target=parts[1], headers=headers, body=body)


def _response(status: int, reason: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class SimPhone:
    """A simulated phone. Create, ``await start()``, ``await stop()``; see the module docstring.

    Everything runs on the event loop that calls :meth:`start`; one loop can run many phones.
    """

    def __init__(self, config: PhoneConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.faults = config.faults
        self._clock: Clock = clock or SystemClock()
        self._ip = config.ip
        self.stats = PhoneStats(mac=config.mac, ip=config.ip, faults=config.faults.to_spec())
        self.history: list[InteractionRecord] = []
        self._factory: _Identity | None = None
        self._identity: _Identity | None = None
        self._installing: _Identity | None = None  # accepted, not yet served (``switch_delay``)
        self._decoy: x509.Certificate | None = None
        self._items: dict[str, str] = {}
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._queued = 0
        self._running = False
        self._last_contact: float | None = None
        self._in_call_until = 0.0
        self._solicited_url: str | None = None
        self._busy_used = False
        self._ip_changed = False
        self._factory_reset_done = False

    # --- public API ---------------------------------------------------------------------------------------
    @property
    def ip(self) -> str:
        """The phone's current address (changes with the ``ip-change`` fault)."""
        return self._ip

    @property
    def contact_me_uri(self) -> str:
        """``http://<ip>:<contact port>/contact_dls.html/ContactDLS`` as the phone reports it."""
        return f"http://{self._ip}:{self.config.contact_port}{CONTACT_ME_PATH}"

    @property
    def served_certificate(self) -> x509.Certificate:
        """The certificate the WBM serves to new connections.

        Raises:
            SimulatorError: before :meth:`start`.
        """
        if self._identity is None:
            raise SimulatorError("the phone has not been started")
        return self._identity.cert

    @property
    def factory_certificate(self) -> x509.Certificate:
        """The phone's factory certificate.

        Raises:
            SimulatorError: before :meth:`start`.
        """
        if self._factory is None:
            raise SimulatorError("the phone has not been started")
        return self._factory.cert

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._running

    async def start(self, *, send_startup: bool = True, wait_startup: bool = False) -> None:
        """Make the factory certificate, bind the contact-me and WBM servers, and send ``start-up``.

        An ``offline`` phone binds nothing and never calls. With ``wait_startup`` the start-up interaction
        is awaited (bounded by the interaction timeout), otherwise it runs in the background.

        Raises:
            SimulatorError: if the phone is already running or an address/port cannot be bound.
        """
        if self._running:
            raise SimulatorError("the phone is already running")
        if self._factory is None:
            self._factory = self_signed(FACTORY_CN, self.config.factory_key_type, self._clock)
        if self._identity is None:
            self._set_identity(self._factory)
        self._reset_items()
        self._running = True
        if self.faults.offline:
            return
        try:
            await self._start_servers()
        except SimulatorError:
            self._running = False
            raise
        if send_startup:
            if wait_startup:
                await self._interact(Reason.START_UP, self.config.dls_url)
            else:
                self._spawn(self._interact(Reason.START_UP, self.config.dls_url))

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the servers and every background task; bounded by ``timeout`` seconds. Idempotent.

        Raises:
            SimulatorError: never (kept for the ``Raises:`` convention).
        """
        self._running = False
        await self._stop_servers(timeout)
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self._tasks.clear()

    async def interact(self, reason: Reason = Reason.START_UP, url: str | None = None) -> InteractionRecord | None:
        """Run one phone-initiated interaction now (``start-up``, ``local-changes`` …) and return its record.

        Raises:
            SimulatorError: if the phone is not running.
        """
        if not self._running:
            raise SimulatorError("the phone is not running")
        await self._interact(reason, url or self.config.dls_url)
        return self.history[-1] if self.history else None

    @property
    def idle(self) -> bool:
        """True when no interaction, call-back, reboot or IP change is running or scheduled."""
        return all(t.done() for t in self._tasks) and not self._lock.locked()

    async def wait_until(self, predicate: Callable[[SimPhone], bool], timeout: float, poll: float = 0.02) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds have passed; returns the last value.

        Raises:
            SimulatorError: never (kept for the ``Raises:`` convention).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(int(timeout / max(poll, 0.001)) + 2):
            if predicate(self):
                return True
            if loop.time() >= deadline:
                break
            await asyncio.sleep(poll)
        return predicate(self)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until :attr:`idle` (bounded by ``timeout``).

        Raises:
            SimulatorError: never (kept for the ``Raises:`` convention).
        """
        return await self.wait_until(lambda p: p.idle, timeout)

    # --- identity / items ---------------------------------------------------------------------------------
    def _set_identity(self, identity: _Identity) -> None:
        self._identity = identity
        self._installing = None
        self.stats.current_cert_sha256 = identity.sha256
        self.stats.factory_cert = identity.factory

    def _reset_items(self) -> None:
        base = {
            ITEM_DEVICE_TYPE: self.config.device_type,
            "related-device-type": self.config.device_type,
            "software-type": "Siemens SIP",
            "related-software-type": "Siemens SIP",
            ITEM_SOFTWARE_VERSION: self.config.software_version,
            ITEM_CONTACT_ME_URI: self.contact_me_uri,
            ITEM_MAC: self.config.mac,
            ITEM_E164: self.config.e164,
            "ipaddress": self._ip,
            "part-number": "Unknown",
        }
        for name, value in base.items():
            self._items[name] = value
        self._items[ITEM_CONTACT_ME_URI] = self.contact_me_uri
        self._items["ipaddress"] = self._ip

    def _basic_items(self, reason: Reason) -> tuple[Item, ...]:
        names = (
            ITEM_DEVICE_TYPE,
            "related-device-type",
            "software-type",
            "related-software-type",
            ITEM_SOFTWARE_VERSION,
            ITEM_CONTACT_ME_URI,
            ITEM_MAC,
            ITEM_E164,
        )
        items = [Item(n, self._items.get(n)) for n in names]
        changed = "true" if reason is Reason.LOCAL_CHANGES else "false"
        items.append(Item("configuration-changed-flag", changed))
        if reason is Reason.LOCAL_CHANGES:
            items.append(Item("ipaddress", self._ip))
        return tuple(items)

    def _info_text(self) -> str:
        assert self._identity is not None
        current = self._installing or self._identity
        if self.faults.unparseable_info:
            return _UNPARSEABLE_INFO
        if self.faults.wrong_info:
            if self._decoy is None:
                self._decoy = self_signed("OpenStage Decoy", KeyType.EC_P256, self._clock).cert
            return certificate_info_text(self._decoy)
        return certificate_info_text(current.cert)

    # --- servers --------------------------------------------------------------------------------------------
    async def _start_servers(self) -> None:
        try:
            contact = await asyncio.start_server(
                self._on_contact_connection, self._ip, self.config.contact_port, reuse_address=True
            )
            self._servers.append(contact)
            wbm = await asyncio.start_server(
                self._on_wbm_connection,
                self._ip,
                self.config.wbm_port,
                reuse_address=True,
                ssl=self._wbm_listener_context(),
                ssl_handshake_timeout=self.config.server_timeout,
            )
            self._servers.append(wbm)
        except OSError as exc:
            await self._stop_servers(2.0)
            raise SimulatorError(f"cannot bind {self._ip}: {exc.strerror or exc}", ip=self._ip) from None

    def _wbm_listener_context(self) -> ssl.SSLContext:
        """The listener's context holds no certificate of its own: :meth:`_pick_wbm_context` runs for every
        ClientHello (OpenSSL calls the servername callback with or without SNI) and swaps in the current one."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.sni_callback = self._pick_wbm_context
        return ctx

    async def _stop_servers(self, timeout: float) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for writer in list(self._connections):
            writer.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout)

    async def _on_contact_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_connection(reader, writer, wbm=False)

    async def _on_wbm_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_connection(reader, writer, wbm=True)

    def _pick_wbm_context(self, ssl_object: ssl.SSLObject, _server_name: str | None, _base: ssl.SSLContext) -> None:
        """ClientHello callback of the WBM listener: every handshake gets the certificate current right now."""
        if self._identity is not None:
            ssl_object.context = self._identity.context

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, wbm: bool) -> None:
        self._connections.add(writer)
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), self.config.server_timeout)
            except (ProtocolError, ValueError, asyncio.IncompleteReadError):
                writer.write(_response(400, "Bad Request", {"Content-Type": "text/plain"}, b"bad request\n"))
                await asyncio.wait_for(writer.drain(), self.config.server_timeout)
                return
            if request is None:
                return
            data, callback = await self._route(request, wbm=wbm)
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.config.server_timeout)
            if callback is not None:
                self._spawn(callback())
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _route(self, request: _Request, *, wbm: bool) -> tuple[bytes, _CallbackFactory | None]:
        path, _, query = request.target.partition("?")
        if path == CONTACT_ME_PATH:
            if request.method == "POST":
                payload: bytes | str = request.body
            elif request.method == "GET":
                payload = query
            else:
                return _response(405, "Method Not Allowed", {"Allow": "GET, POST"}), None
            try:
                form = parse_contact_me(payload)
            except ProtocolError:
                return _response(400, "Bad Request", {"Content-Type": "text/plain"}, b"bad contact-me\n"), None
            callback = self._on_contact_me(form.contact_me, form.dls_ip_addr, form.dls_ip_port)
            if self.faults.slow:
                await asyncio.sleep(self.faults.slow)
            headers = {"Server": "DlsClient", "Content-Type": "text/html"}
            return _response(204, "No Content", headers), callback
        if wbm and request.method in ("GET", "HEAD"):
            dt, mac = html.escape(self.config.device_type), self.config.mac
            page = (
                f"<!DOCTYPE html><html><head><title>{dt}</title></head><body>"
                f"<h1>{dt}</h1><p>Web Based Management (simulated)</p><p>MAC {mac}</p></body></html>\n"
            )
            body = page.encode("utf-8")
            data = _response(200, "OK", {"Content-Type": "text/html; charset=utf-8", "Server": "WebServer"}, body)
            if request.method == "HEAD":
                data = data[: len(data) - len(body)]
            return data, None
        return _response(404, "Not Found", {"Content-Type": "text/plain"}, b"not found\n"), None

    def _on_contact_me(
        self, contact_me: bool, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int | None
    ) -> _CallbackFactory | None:
        """Count the contact-me and decide whether to call; returns what makes the call-back, if any."""
        if not contact_me:
            return None
        self.stats.contact_me_received += 1
        now = asyncio.get_running_loop().time()
        if self._last_contact is not None and now - self._last_contact < self.config.contact_gap:
            self.stats.contact_me_ignored_gap += 1
            return None
        self._last_contact = now
        try:
            url = self._callback_url(addr, port)
        except InputError as exc:
            self.stats.last_error = exc.message
            return None
        if self.config.callback_delay > 0:
            return functools.partial(self._late_callback, url)
        return functools.partial(self._interact, Reason.SOLICITED, url)

    async def _late_callback(self, url: str) -> None:
        await asyncio.sleep(self.config.callback_delay)
        await self._interact(Reason.SOLICITED, url)

    def _callback_url(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int | None) -> str:
        parts = urlsplit(self.config.dls_url)
        if addr is None:
            host, default_port = parts.hostname or "", parts.port or 18443
        else:
            host, default_port = str(addr), parts.port or 18443
        if self.config.loopback_only:
            try:
                target = ipaddress.ip_address(host)
            except ValueError:
                target = None
            if target is None or not target.is_loopback:
                raise InputError(f"refusing to call a service outside loopback ({host[:40]})")
        netloc = f"[{host}]" if ":" in host else host
        return urlunsplit(("https", f"{netloc}:{port or default_port}", parts.path or "/", "", ""))

    # --- tasks --------------------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if not self._running:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.stats.last_error = f"internal error: {type(exc).__name__}"
            log.error("phone %s: background task failed: %s", self.config.mac, type(exc).__name__)

    # --- interactions -------------------------------------------------------------------------------------
    async def _interact(self, reason: Reason, url: str) -> None:
        if self._queued >= MAX_QUEUED_INTERACTIONS:
            self.stats.last_error = "too many queued interactions; request dropped"
            return
        self._queued += 1
        waiting = True
        try:
            async with self._lock:
                self._queued -= 1
                waiting = False
                if not self._running:
                    return
                outcome = await self._interaction(reason, url)
        finally:
            if waiting:
                self._queued -= 1
        self._after(outcome, url)

    async def _interaction(self, reason: Reason, url: str) -> _Outcome:
        outcome = _Outcome()
        self.stats.interactions += 1
        try:
            await asyncio.wait_for(self._run_interaction(reason, url, outcome), self.config.interaction_timeout)
        except TimeoutError:
            outcome.error = "interaction timed out"
        except _InteractionEnd as exc:
            outcome.error = str(exc)
        if outcome.error:
            self.stats.last_error = outcome.error
        self.history.append(
            InteractionRecord(
                reason=reason.value,
                url=url,
                actions=tuple(outcome.actions),
                error=outcome.error,
                certificate_installed=outcome.certificate_installed,
            )
        )
        del self.history[:-MAX_HISTORY]
        return outcome

    def _after(self, outcome: _Outcome, url: str) -> None:
        """Follow-ups once an interaction is over: reboot, fault reactions, the solicited call-back."""
        if outcome.restart:
            self._solicited_url = None  # a restart forgets a pending send-solicited (§5.4)
            self._spawn(self._reboot(factory=outcome.factory_restart))
            return
        if outcome.certificate_installed and self.faults.ip_change and not self._ip_changed:
            self._ip_changed = True
            self._spawn(self._change_ip())
            return
        if outcome.certificate_installed and self.faults.factory_reset and not self._factory_reset_done:
            self._factory_reset_done = True
            self._solicited_url = None
            self._spawn(self._reboot(factory=True))
            return
        if outcome.send_solicited and self._solicited_url is None:
            self._solicited_url = url
            self._spawn(self._solicited_callback())

    async def _solicited_callback(self) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._in_call_until - loop.time()) + 0.01
        await asyncio.sleep(delay)
        url, self._solicited_url = self._solicited_url, None
        if url is not None:
            await self._interact(Reason.SOLICITED, url)

    async def _reboot(self, *, factory: bool) -> None:
        await self._stop_servers(self.config.server_timeout)
        await asyncio.sleep(self.config.restart_delay)
        if not self._running:
            return
        if factory:
            assert self._factory is not None
            self._set_identity(self._factory)
            self._items.clear()
        self._reset_items()
        self._last_contact = None
        await self._start_servers()
        await self._interact(Reason.START_UP, self.config.dls_url)

    async def _change_ip(self) -> None:
        await self._stop_servers(self.config.server_timeout)
        new_ip = self.config.alt_ip or alternate_ip(self.config.ip)
        self._ip = new_ip if self._ip != new_ip else self.config.ip
        self.stats.ip = self._ip
        self._reset_items()
        if not self._running:
            return
        await self._start_servers()
        await self._interact(Reason.LOCAL_CHANGES, self.config.dls_url)

    def _message(
        self,
        reason: Reason,
        items: tuple[Item, ...],
        *,
        action: Action | None = None,
        status: ReplyStatus | None = None,
        fragment: Fragment | None = None,
    ) -> WorkpointMessage:
        return WorkpointMessage(
            nonce=new_nonce(),
            reason=reason,
            items=items,
            max_items=1 if self.faults.max_items_1 else -1,
            fragment=fragment,
            reply_action=action,
            reply_status=status,
        )

    def _replies(self, action: Action, status: ReplyStatus, items: tuple[Item, ...]) -> list[WorkpointMessage]:
        if not self.faults.fragments:
            return [self._message(Reason.REPLY_TO, items, action=action, status=status, fragment=Fragment.FINAL)]
        half = (len(items) + 1) // 2
        return [
            self._message(Reason.REPLY_TO, items[:half], action=action, status=status, fragment=Fragment.NEXT),
            self._message(Reason.REPLY_TO, items[half:], action=action, status=status, fragment=Fragment.FINAL),
        ]

    async def _post(self, client: httpx.AsyncClient, url: str, msg: WorkpointMessage) -> DLSMessage:
        try:
            response = await client.post(url, content=encode_workpoint(msg))
        except httpx.HTTPError as exc:
            raise _InteractionEnd(f"HTTP error talking to the service: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise _InteractionEnd(f"service answered HTTP {response.status_code}")
        try:
            return parse_dls(response.content)
        except ProtocolError as exc:
            await self._phone_cleanup(client, url, "invalid XML from the service")
            raise _InteractionEnd(f"invalid DLSMessage: {exc.message}") from None

    async def _phone_cleanup(self, client: httpx.AsyncClient, url: str, reason: str) -> None:
        """The phone ends the interaction itself (§3.6: e.g. after invalid XML); best effort."""
        msg = self._message(Reason.CLEAN_UP, (Item("cleanup-reason", reason),))
        with contextlib.suppress(httpx.HTTPError):
            await client.post(url, content=encode_workpoint(msg))

    async def _run_interaction(self, reason: Reason, url: str, outcome: _Outcome) -> None:
        transport = httpx.AsyncHTTPTransport(verify=_client_ssl_context(), local_address=self._ip, retries=0)
        headers = {"Content-Type": "text/xml; charset=UTF-8", "User-Agent": "OpenStage-Simulator (certmgr)"}
        async with httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(self.config.request_timeout), headers=headers
        ) as client:
            msg = self._message(reason, self._basic_items(reason))
            pending: list[WorkpointMessage] = []
            for round_trip in range(self.config.max_round_trips):
                if round_trip and self.faults.slow:
                    await asyncio.sleep(self.faults.slow)
                dls = await self._post(client, url, msg)
                action = dls.action
                outcome.actions.append(action.value)
                if dls.nonce != msg.nonce:
                    await self._phone_cleanup(client, url, "nonce mismatch")
                    raise _InteractionEnd("the service did not repeat the nonce (D2)")
                if self.faults.max_items_1 and len(dls.items) > 1:
                    self.stats.last_error = f"service sent {len(dls.items)} items despite maxItems=1"
                if action is Action.CLEAN_UP:
                    flag = dls.item(ITEM_SEND_SOLICITED)
                    outcome.send_solicited = flag is not None and (flag.value or "").strip().lower() == "true"
                    return
                if action is Action.RESTART:
                    outcome.restart = True
                    kind = dls.item("restart-type")
                    password = dls.item("restart-password")
                    outcome.factory_restart = (
                        kind is not None
                        and (kind.value or "").lower() == "factoryreset"
                        and password is not None
                        and password.value == FACTORY_RESET_PASSWORD
                    )
                    return
                if action is Action.GET_NEXT_FRAGMENT:
                    if pending:
                        msg = pending.pop(0)
                    else:
                        msg = self._message(
                            Reason.REPLY_TO, (), action=Action.GET_NEXT_FRAGMENT, status=ReplyStatus.FAILED
                        )
                    continue
                replies = await self._handle(dls, outcome)
                msg, pending = replies[0], replies[1:]
            raise _InteractionEnd(f"more than {self.config.max_round_trips} round trips")

    async def _handle(self, dls: DLSMessage, outcome: _Outcome) -> list[WorkpointMessage]:
        action = dls.action
        if action is Action.WRITE_ITEMS:
            status, items = await self._write_items(dls, outcome)
            return self._replies(Action.WRITE_ITEMS, status, items)
        if action is Action.READ_ITEMS:
            return self._replies(Action.READ_ITEMS, ReplyStatus.ACCEPTED, self._read_items(dls))
        if action is Action.READ_ALL_ITEMS:
            items = tuple(
                Item(name, value)
                for name, value in self._items.items()
                if "certificate" not in name and not is_sensitive_item_name(name)
            )
            return self._replies(Action.READ_ALL_ITEMS, ReplyStatus.ACCEPTED, items)
        # FileDeployment, SoftwareDeployment and unknown actions are not supported by the simulator.
        reply_action = action if isinstance(action, Action) else None
        msg = self._message(
            Reason.REPLY_TO, (), action=reply_action, status=ReplyStatus.FAILED, fragment=Fragment.FINAL
        )
        return [msg]

    def _read_items(self, dls: DLSMessage) -> tuple[Item, ...]:
        out: list[Item] = []
        for requested in dls.items:
            name = requested.name
            if name == ITEM_WBM_CERTIFICATE_INFO:
                out.append(Item(name, self._info_text()))
            elif "certificate" in name or is_sensitive_item_name(name):
                out.append(Item(name, status="failed"))  # certificates and secrets are never read back
            elif name in self._items:
                out.append(Item(name, self._items[name], index=requested.index))
            else:
                out.append(Item(name, status="unknown item"))
        return tuple(out)

    async def _write_items(self, dls: DLSMessage, outcome: _Outcome) -> tuple[ReplyStatus, tuple[Item, ...]]:
        loop = asyncio.get_running_loop()
        if self.faults.busy_first_write and not self._busy_used:
            self._busy_used = True
            self._in_call_until = loop.time() + BUSY_CALL_SECONDS
            self.stats.busy_replies += 1
            return ReplyStatus.BUSY, ()
        if self.faults.failed_write:
            self.stats.writes_rejected += 1
            return ReplyStatus.FAILED, ()
        delivered = [it.value.encode("utf-8") for it in dls.items if _is_password_item(it.name) and it.value]
        failed: list[Item] = []
        for it in dls.items:
            if it.name == ITEM_WBM_CERTIFICATE:
                # Opening the PKCS#12 and loading the key take CPU time: keep the loop (and the fleet) responsive.
                result = await asyncio.to_thread(self._open_certificate, it.value or "", delivered)
                if isinstance(result, _Identity):
                    if self.config.switch_delay > 0:
                        self._installing = result
                        self._spawn(self._switch_later(result))
                    else:
                        self._set_identity(result)
                    outcome.certificate_installed = True
                else:
                    self.stats.last_error = result
                    failed.append(Item(it.name, status="failed"))
            elif _is_password_item(it.name):
                continue  # used above, never stored
            elif it.name in _READ_ONLY_ITEMS:
                failed.append(Item(it.name, status="read only"))
            elif "certificate" in it.name or it.name in ("goto-secure-mode", "secure-mode-data"):
                failed.append(Item(it.name, status="unknown item"))  # the simulator knows only the WBM cert
            else:
                self._items[it.name] = it.value or ""
        if failed:
            self.stats.writes_rejected += 1
        else:
            self.stats.writes_accepted += 1
        # Item problems keep the message-level status "accepted", like the Guide's error examples (§4.2).
        return ReplyStatus.ACCEPTED, tuple(failed)

    async def _switch_later(self, identity: _Identity) -> None:
        """``switch_delay``: the web server picks up the accepted certificate a while later."""
        await asyncio.sleep(self.config.switch_delay)
        if self._installing is identity:
            self._set_identity(identity)

    def _open_certificate(self, value: str, delivered: list[bytes]) -> _Identity | str:
        """Open the base64 PKCS#12 and build its server context; returns it or an error text (no secrets).
        Runs in a worker thread: touches no mutable phone state."""
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            return "wbm-server-certificate is not base64"
        if not data:
            return "wbm-server-certificate is empty"
        if self.faults.reject_legacy:
            try:
                if uses_legacy_pbe(data):
                    return "PKCS#12 uses PBES1 SHA-1 (legacy) encryption: refused"
            except InputError:
                return "wbm-server-certificate is not a PKCS#12"
        candidates: list[bytes | None] = [*delivered, None, *self.config.pkcs12_passwords]
        opened = None
        for password in candidates:
            try:
                opened = open_pkcs12(data, password)
                break
            except InputError:
                continue
        if opened is None:
            return "cannot open the PKCS#12 (no known password fits or not a PKCS#12)"
        key, cert, others = opened
        try:
            context = server_context(key, cert, tuple(others))
        except InputError as exc:
            return exc.message
        return _Identity(cert=cert, chain=tuple(others), context=context, factory=False)
