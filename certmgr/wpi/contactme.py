"""contact-me: the form certmgr POSTs to a phone (§3.3, D4) and the phone's ``contact-me-uri``. Pure.

The HTTP client (httpx) lives in the adapter; this module only builds and parses bodies and URIs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from certmgr.errors import InputError, ProtocolError
from certmgr.identity import IPAddress, validate_dns_name

#: Content type of the contact-me request (§3.3, D4).
CONTACT_ME_CONTENT_TYPE = "application/x-www-form-urlencoded"
#: Default target port and path on the phone (§3.3).
CONTACT_ME_PORT = 8085
CONTACT_ME_PATH = "/contact_dls.html/ContactDLS"
#: The phone reports ``contact-me-uri`` as a string of at most 255 characters ([G p.35], §3.3).
MAX_CONTACT_ME_URI = 255
#: A contact-me form is three short fields; anything much longer is not one.
MAX_FORM_BODY = 1024


@dataclass(frozen=True)
class ContactMeRequest:
    """The fields of a contact-me form: ``ContactMe`` (``true`` → the service expects the phone to respond)
    and the optional callback target ``dls_ip_addr`` / ``dls_ip_port``."""

    contact_me: bool
    dls_ip_addr: IPAddress | None = None
    dls_ip_port: int | None = None


@dataclass(frozen=True)
class ContactMeTarget:
    """A validated ``contact-me-uri``: where to POST the contact-me form.

    ``host`` is an IP address literal (IPv6 without brackets) or a lower-case DNS name.
    """

    scheme: str
    host: str
    port: int
    path: str

    @property
    def ip(self) -> IPAddress | None:
        """The host as an IP address, or ``None`` if it is a DNS name (D9 takes the phone's IP from here)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def url(self) -> str:
        """The URL to POST to (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def _port(value: int | str, what: str) -> int:
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,5}", value.strip()):
            raise ProtocolError(f"{what} is not a port number")
        value = int(value.strip())
    if not 1 <= value <= 65535:
        raise ProtocolError(f"{what} out of range")
    return value


def _ip(value: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError as exc:
        raise ProtocolError(f"{what} is not an IP address") from exc


def build_contact_me(dls_ip_addr: str | IPAddress, dls_ip_port: int) -> bytes:
    """The contact-me body ``ContactMe=true&dls_ip_addr=…&dls_ip_port=…`` (D4: both fields always sent).

    Raises:
        ProtocolError: if ``dls_ip_addr`` is not an IP address or ``dls_ip_port`` not in 1..65535.
    """
    addr = dls_ip_addr if not isinstance(dls_ip_addr, str) else _ip(dls_ip_addr, "dls_ip_addr")
    port = _port(dls_ip_port, "dls_ip_port")
    return urlencode([("ContactMe", "true"), ("dls_ip_addr", str(addr)), ("dls_ip_port", str(port))]).encode("ascii")


def parse_contact_me(body: bytes | str) -> ContactMeRequest:
    """Parse a contact-me form body or query string (the simulator's side; Pentagrid shows phones also accept
    ``GET ?ContactMe=true&…``, §3.3).

    ``ContactMe`` is mandatory; it is true only for the (case-insensitive) value ``true``.

    Raises:
        ProtocolError: if the body is too long or not a form, a field is repeated, ``ContactMe`` is missing,
            or ``dls_ip_addr`` / ``dls_ip_port`` are invalid.
    """
    if len(body) > MAX_FORM_BODY:
        raise ProtocolError("contact-me body too long")
    try:
        raw = body.decode("ascii") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise ProtocolError("contact-me body is not ASCII") from exc
    if len(raw) > MAX_FORM_BODY:
        raise ProtocolError("contact-me body too long")
    try:
        pairs = parse_qsl(raw.lstrip("?"), keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=16)
    except ValueError as exc:
        raise ProtocolError("contact-me body is not a form") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise ProtocolError("contact-me field repeated")
        fields[key] = value
    if "ContactMe" not in fields:
        raise ProtocolError("contact-me body lacks ContactMe")
    addr = fields.get("dls_ip_addr")
    port = fields.get("dls_ip_port")
    return ContactMeRequest(
        contact_me=fields["ContactMe"].strip().lower() == "true",
        dls_ip_addr=_ip(addr, "dls_ip_addr") if addr else None,
        dls_ip_port=_port(port, "dls_ip_port") if port else None,
    )


def parse_contact_me_uri(uri: str) -> ContactMeTarget:
    """Validate a phone's ``contact-me-uri`` (e.g. ``http://192.168.1.4:8085/contact_dls.html/ContactDLS``).

    Accepted: scheme ``http`` (what phones report) or ``https`` (the WBM variant, §3.3); a host that is an IP
    literal or a DNS name; an optional port (default: the scheme's); a path (default
    ``/contact_dls.html/ContactDLS``). Rejected, to keep certmgr from being steered elsewhere: user info,
    query, fragment, control characters, and URIs longer than 255 characters.

    Raises:
        ProtocolError: if the URI is not acceptable.
    """
    text = uri.strip()
    if not text or len(text) > MAX_CONTACT_ME_URI:
        raise ProtocolError("contact-me-uri empty or longer than 255 characters")
    if re.search(r"[\x00-\x20\x7f\\]", text):
        raise ProtocolError("contact-me-uri contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(text)
        port_value = parts.port
    except ValueError as exc:
        raise ProtocolError("contact-me-uri is not a URI") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ProtocolError("contact-me-uri scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ProtocolError("contact-me-uri must not contain user info")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ProtocolError("contact-me-uri must not contain a query or fragment")
    hostname = parts.hostname
    if not hostname:
        raise ProtocolError("contact-me-uri lacks a host")
    try:
        host = str(ipaddress.ip_address(hostname))
    except ValueError:
        if parts.netloc.startswith("["):
            raise ProtocolError("contact-me-uri has an invalid IPv6 literal") from None
        try:
            host = validate_dns_name(hostname)
        except InputError as exc:
            raise ProtocolError("contact-me-uri host is neither an IP address nor a DNS name") from exc
    default_port = 443 if scheme == "https" else 80
    port = default_port if port_value is None else _port(port_value, "contact-me-uri port")
    path = parts.path or CONTACT_ME_PATH
    return ContactMeTarget(scheme=scheme, host=host, port=port, path=path)
