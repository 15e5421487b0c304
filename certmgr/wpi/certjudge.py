"""Judging a phone's ``wbm-server-certificate-info`` against the deployed certificate (D6), and the text
certmgr's phone simulator emits. Pure.

:func:`judge_certificate_info` answers **verified** (the serial number or a fingerprint matches, or subject and
notAfter both match), **mismatch** (the info identifies another certificate) or **undecided** (nothing
identifying could be read: the TLS probe decides).

:func:`format_certificate_info` defines the text certmgr's *phone simulator* emits. It is one of the formats the
parser (:mod:`certmgr.wpi.certinfo`) accepts, nothing more: production code must never rely on it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from certmgr.errors import InputError
from certmgr.wpi.certinfo import MONTH_NAMES, CertInfo, ExpectedCert, InfoVerdict, TimeAccuracy, normalise_fingerprint

# --- distinguished names ----------------------------------------------------------------------------------
_DN_ALIASES = {
    "commonname": "CN",
    "2.5.4.3": "CN",
    "organizationname": "O",
    "2.5.4.10": "O",
    "organizationalunitname": "OU",
    "2.5.4.11": "OU",
    "countryname": "C",
    "2.5.4.6": "C",
    "localityname": "L",
    "2.5.4.7": "L",
    "stateorprovincename": "ST",
    "s": "ST",
    "2.5.4.8": "ST",
    "emailaddress": "EMAIL",
    "e": "EMAIL",
    "1.2.840.113549.1.9.1": "EMAIL",
    "serialnumber": "SERIALNUMBER",
    "2.5.4.5": "SERIALNUMBER",
    "domaincomponent": "DC",
    "userid": "UID",
    "surname": "SN",
    "givenname": "GN",
    "streetaddress": "STREET",
}


def _split_unescaped(text: str, separators: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(
        r"\\([0-9a-fA-F]{2}|.)",
        lambda m: chr(int(m.group(1), 16)) if len(m.group(1)) == 2 else m.group(1),
        value,
    )


def dn_components(dn: str) -> frozenset[tuple[str, str]]:
    """A distinguished name as a set of ``(ATTR, value)`` pairs, comparable across notations.

    Handles RFC 4514 (``CN=a,O=b``), reversed order, OpenSSL's ``/C=DE/O=b/CN=a`` and ``C = DE, O = b``,
    attribute long names and OIDs; values are compared case-insensitively with whitespace collapsed. A value
    without any ``=`` is taken as a bare common name.
    """
    text = dn.strip()
    parts = _split_unescaped(text[1:], "/") if text.startswith("/") else _split_unescaped(text, ",;+")
    comps: list[list[str]] = []
    for part in parts:
        if "=" in part:
            attr, value = part.split("=", 1)
            key = attr.strip().lower()
            comps.append([_DN_ALIASES.get(key, key.upper()), value])
        elif comps:
            comps[-1][1] += "," + part  # "O=Example, Inc.": the comma was part of the value
        elif part.strip():
            comps.append(["CN", part])
    result: set[tuple[str, str]] = set()
    for attr, value in comps:
        clean = " ".join(_unescape(value.strip().strip('"')).split()).casefold()
        if clean:
            result.add((attr, clean))
    return frozenset(result)


def _subject_matches(info_subject: str, expected_subject: str) -> bool:
    got, want = dn_components(info_subject), dn_components(expected_subject)
    if not got or not want:
        return False
    if got == want:
        return True
    # The phone may show a shortened DN (e.g. only the CN): a subset that includes the CN still matches.
    smaller = got if len(got) < len(want) else want
    return (got <= want or want <= got) and any(attr == "CN" for attr, _ in smaller)


def _time_matches(got: datetime, accuracy: TimeAccuracy | None, want: datetime) -> bool:
    if accuracy is TimeAccuracy.DATE:
        # A date without zone may be the local date: allow the neighbouring days.
        return abs((got.date() - want.date()).days) <= 1
    delta = abs(got - want.replace(microsecond=0))
    if accuracy is TimeAccuracy.NO_ZONE:
        # Local time of an unknown zone: at most 14 h off, in whole quarter hours.
        return delta <= timedelta(hours=14) and delta % timedelta(minutes=15) == timedelta(0)
    return delta <= timedelta(seconds=1)


def judge_certificate_info(info: CertInfo, expected: ExpectedCert) -> InfoVerdict:
    """Decide whether ``info`` identifies ``expected`` (D6).

    Order of evidence, strongest first:

    1. Fingerprints: any present fingerprint that equals ours → VERIFIED; fingerprints present but none
       equal → MISMATCH. (A fingerprint covers the whole certificate, so it outranks the serial; D6 lists
       "serial or fingerprint" without ranking them.)
    2. Serial: a candidate equals ours → VERIFIED, otherwise MISMATCH.
    3. Subject and notAfter: both match → VERIFIED; either one present and different → MISMATCH (e.g. the
       phone still shows the vendor's default certificate); otherwise UNDECIDED.

    Raises:
        InputError: never for well-formed arguments (kept for the ``Raises:`` convention).
    """
    fingerprints = [fp for fp in (info.sha256, info.sha1) if fp is not None]
    if fingerprints:
        if info.sha256 == expected.sha256 or info.sha1 == expected.sha1:
            return InfoVerdict.VERIFIED
        return InfoVerdict.MISMATCH
    if info.serials:
        return InfoVerdict.VERIFIED if expected.serial in info.serials else InfoVerdict.MISMATCH
    subject_ok = None if info.subject is None else _subject_matches(info.subject, expected.subject)
    time_ok = (
        None if info.not_after is None else _time_matches(info.not_after, info.not_after_accuracy, expected.not_after)
    )
    if subject_ok is False or time_ok is False:
        return InfoVerdict.MISMATCH
    if subject_ok and time_ok:
        return InfoVerdict.VERIFIED
    return InfoVerdict.UNDECIDED


# --- the simulator's format -------------------------------------------------------------------------------


def _hex_pairs(value: str) -> str:
    digits = value.upper()
    if len(digits) % 2:
        digits = "0" + digits
    if len(digits) < 4:  # at least two octets, so that "10" is never read as decimal ten
        digits = digits.rjust(4, "0")
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def _openssl_time(moment: datetime) -> str:
    t = moment.astimezone(UTC)
    return f"{MONTH_NAMES[t.month - 1]} {t.day:>2} {t:%H:%M:%S} {t.year:04d} GMT"


def format_certificate_info(
    *,
    serial: int,
    subject: str,
    issuer: str,
    not_before: datetime,
    not_after: datetime,
    sha1: str,
    sha256: str,
) -> str:
    """The certificate-info text certmgr's phone simulator returns, one ``Key: value`` per line::

        Serial Number: 3A:F1:…
        Subject: CN=…
        Issuer: CN=…
        Valid From: Jan  2 15:04:05 2026 GMT
        Valid To: Jan  2 15:04:05 2027 GMT
        SHA-1 Fingerprint: AB:CD:…
        SHA-256 Fingerprint: 01:23:…

    This is *our* choice; the real phone format is unknown (§2, [G p.61]) and the parser does not depend on
    it.

    Raises:
        InputError: for a negative serial, a naive datetime, a malformed fingerprint, or a subject/issuer with
            a line break.
    """
    if serial < 0:
        raise InputError("serial must not be negative")
    if not_before.tzinfo is None or not_after.tzinfo is None:
        raise InputError("validity times must be timezone-aware")
    if any(ch in s for s in (subject, issuer) for ch in "\r\n"):
        raise InputError("subject and issuer must be single-line")
    sha1_hex = normalise_fingerprint(sha1, (40,), "sha1")
    sha256_hex = normalise_fingerprint(sha256, (64,), "sha256")
    lines = [
        f"Serial Number: {_hex_pairs(f'{serial:X}')}",
        f"Subject: {subject}",
        f"Issuer: {issuer}",
        f"Valid From: {_openssl_time(not_before)}",
        f"Valid To: {_openssl_time(not_after)}",
        f"SHA-1 Fingerprint: {_hex_pairs(sha1_hex)}",
        f"SHA-256 Fingerprint: {_hex_pairs(sha256_hex)}",
    ]
    return "\n".join(lines)
