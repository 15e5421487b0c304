"""The one detector of leaked secrets in what certmgr emits: logs, transcripts, audit events, API responses,
report files. Holds no tests; used by the e2e and integration tests.

What counts as a secret: a known password; a PEM block of a private key (or of anything, where no PEM belongs);
base64 (standard or URL alphabet, on one line or wrapped), hex or escaped bytes of ASN.1 DER — a SEQUENCE with a
long-form length that fits the data — that is a PKCS#12 (:func:`pkcs12.load_pkcs12` opens it), a private key or
DER of unknown kind; and, where no binary data belongs, any base64 run of 160+ characters. Where public PKI
objects are expected (API responses: certificate PEMs, the CRL, the audit public key), DER that parses as an
X.509 certificate, a CRL or a public key is allowed — and only that.

Binary bodies are opened first: a zip's members, a PDF's Flate streams, raw DER.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)(?:-----END \1-----|\Z)", re.S)
_B64_RUN = re.compile(r"[A-Za-z0-9+/]+(?:\r?\n[A-Za-z0-9+/]+)*={0,2}")  # one line, or wrapped (PEM style)
MIN_RUN = 64
_B64URL_RUN = re.compile(r"[A-Za-z0-9_-]{64,}={0,2}")
_HEX_RUN = re.compile(
    r"(?:30|%30|\\x30)(?:82|81|83|%8[123]|\\x8[123])(?:[0-9a-fA-F]{2}|%[0-9a-fA-F]{2}|\\x[0-9a-fA-F]{2}){60,}"
)
_ESCAPED_DER = re.compile(r"(?:\\x30\\x8[123]|b['\"]0\\x8[123]|\\u0030\\u008[123])")
_JSON_ESCAPES = (("\\n", "\n"), ("\\r", "\r"), ("\\/", "/"), ("\\u002b", "+"), ("\\u002B", "+"), ("\\u003d", "="))
_PUBLIC_PEM = frozenset({"CERTIFICATE", "X509 CRL", "PUBLIC KEY", "TRUSTED CERTIFICATE"})
_PUBLIC_KINDS = frozenset({"certificate", "CRL", "public key"})
GENERIC_RUN = 160


def der_length_fits(raw: bytes) -> bool:
    """True if ``raw`` starts like DER of a key, a PKCS#12 or a certificate: a SEQUENCE with a long-form length
    (1..3 length bytes) of at least 40 that the data holds."""
    if len(raw) < 44 or raw[0] != 0x30 or raw[1] not in (0x81, 0x82, 0x83):
        return False
    count = raw[1] & 0x7F
    length = int.from_bytes(raw[2 : 2 + count], "big")
    return length >= 40 and 2 + count + length <= len(raw) + 2  # tolerate a base64 run cut short by padding


def classify_der(raw: bytes, passwords: Iterable[bytes] = ()) -> str:
    """What DER ``raw`` is: ``PKCS#12``, ``private key``, ``encrypted private key``, ``certificate``, ``CRL``,
    ``public key`` or ``unknown DER``."""
    for password in (None, b"", *passwords):
        try:
            pkcs12.load_pkcs12(raw, password)
            return "PKCS#12"
        except (ValueError, TypeError):
            continue
    try:
        serialization.load_der_private_key(raw, None)
        return "private key"
    except TypeError:
        return "encrypted private key"  # "password was not given but private key is encrypted"
    except (ValueError, UnsupportedAlgorithm):
        pass
    for kind, load in (
        ("certificate", x509.load_der_x509_certificate),
        ("CRL", x509.load_der_x509_crl),
        ("public key", serialization.load_der_public_key),
    ):
        try:
            load(raw)
            return kind
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    return "unknown DER"


def _b64(run: str, urlsafe: bool = False) -> bytes | None:
    compact = re.sub(r"\\r|\\n|\s", "", run)
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None


def _hex(run: str) -> bytes | None:
    digits = re.sub(r"%|\\x", "", run)
    try:
        return bytes.fromhex(digits[: len(digits) // 2 * 2])
    except ValueError:
        return None


def _texts(data: str | bytes) -> Iterator[tuple[str, str]]:
    """(where, text) of everything in ``data``: zip members and PDF streams opened, JSON escapes undone."""
    if isinstance(data, str):
        yield "text", data
        return
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as bundle:
            for name in bundle.namelist():
                for where, text in _texts(bundle.read(name)):
                    yield f"{name}: {where}", text
        return
    if data[:5] == b"%PDF-":
        for n, match in enumerate(re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S)):
            try:  # a decompressor object tolerates a stream whose last byte the regex took for a line end
                yield f"PDF stream {n}", zlib.decompressobj().decompress(match.group(1)).decode("latin-1")
            except zlib.error:
                yield f"PDF stream {n}", match.group(1).decode("latin-1")
    yield "body", data.decode("latin-1")


def leaked_secrets(
    data: str | bytes, password: str | None = None, *, passwords: Iterable[str] = (), public_pki: bool = False
) -> list[str]:
    """What in ``data`` looks like a secret (see the module docstring); short descriptions, never the secret.

    ``public_pki``: certificates, CRLs and public keys are expected here (API responses, report manifests).
    """
    secrets = [p for p in (password, *passwords) if p]
    raw_passwords = [p.encode() for p in secrets]
    found: list[str] = []
    if isinstance(data, bytes) and der_length_fits(data):
        kind = classify_der(data, raw_passwords)
        if not (public_pki and kind in _PUBLIC_KINDS):
            found.append(f"a body of {kind} ({len(data)} bytes)")
    for where, text in _texts(data):
        found += [f"{where}: {item}" for item in _scan(text, secrets, raw_passwords, public_pki)]
    return found


def _scan(text: str, secrets: list[str], raw_passwords: list[bytes], public_pki: bool) -> list[str]:
    found: list[str] = []
    for secret in secrets:
        if secret in text:
            found.append("a password")
    for old, new in _JSON_ESCAPES:
        text = text.replace(old, new)
    rest = text
    for match in _PEM.finditer(text):
        label = match.group(1)
        body = _b64(re.sub(r"^[A-Za-z-]+:.*$", "", match.group(2), flags=re.M))
        kind = classify_der(body, raw_passwords) if body else "undecodable PEM"
        if public_pki and label in _PUBLIC_PEM and kind in _PUBLIC_KINDS:
            rest = rest.replace(match.group(0), " ")
            continue
        found.append(f"a PEM block ({label}: {kind}) at offset {match.start()}")
        rest = rest.replace(match.group(0), " ")
    for match in _ESCAPED_DER.finditer(rest):
        found.append(f"escaped DER bytes at offset {match.start()}")
    for pattern, decode in ((_B64_RUN, _b64), (_B64URL_RUN, lambda r: _b64(r, urlsafe=True)), (_HEX_RUN, _hex)):
        for match in pattern.finditer(rest):
            run = match.group()
            if len(run) < MIN_RUN:
                continue
            raw = decode(run)
            if raw is not None and der_length_fits(raw):
                kind = classify_der(raw, raw_passwords)
                if not (public_pki and kind in _PUBLIC_KINDS):
                    found.append(f"{kind} as a {len(run)}-character run at offset {match.start()}")
            elif pattern is _B64_RUN and len(re.sub(r"\\r|\\n|\s", "", run)) >= GENERIC_RUN:
                found.append(f"a base64 run of {len(run)} characters at offset {match.start()}")
    return found


__all__ = ["GENERIC_RUN", "classify_der", "der_length_fits", "leaked_secrets"]
