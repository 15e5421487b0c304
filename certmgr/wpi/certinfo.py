"""The phone's ``wbm-server-certificate-info`` value: what it says and its lenient parsing (D6). Pure.

The verdict (does the info identify the deployed certificate?) is :mod:`certmgr.wpi.certjudge`.

The real format of the value is unknown ([G p.61] is one of the gaps in §2). :func:`parse_certificate_info`
therefore does not depend on any layout: it finds *known keys* (many spellings: ``Serial Number``, ``serial``,
``SHA-256 Fingerprint``, ``Fingerprint (SHA1)``, ``notAfter``, ``Valid To``, ``Expires``, ``Issued To``, JSON
style ``"serial": "…"`` …) followed by ``:`` or ``=``, anywhere at a token boundary, in any order. A key's
value runs up to the next key (or, in multi-line text, to the next ``Something:`` line that is not a known
key), so values may themselves contain ``,``, ``;``, ``=`` or ``:`` (distinguished names, times,
fingerprints). The separators between pairs can be newlines, ``;``, ``,``, ``|`` or blanks.

Values are then read generously: serials in hex with or without colons, ``0x…``, ``4096 (0x1000)`` or decimal
(a digits-only serial is ambiguous, so both readings are kept as candidates); fingerprints as 40/64 hex digits
with or without separators; times in ISO 8601, ``2027-01-02 15:04:05``, OpenSSL's ``Jan  2 15:04:05 2027
GMT``, Java's ``Sat Jan 02 15:04:05 UTC 2027``, ``2 Jan 2027``, German ``02.01.2027 15:04``, ASN.1
``20270102150405Z`` / ``270102150405Z``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING

from certmgr.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from cryptography import x509


class InfoVerdict(StrEnum):
    """Outcome of comparing the phone's certificate info with the deployed certificate (D6)."""

    VERIFIED = "verified"  # the info identifies the deployed certificate
    MISMATCH = "mismatch"  # the info identifies a different certificate (D6 "verification failure")
    UNDECIDED = "undecided"  # nothing identifying; leave it to the TLS probe of port 443


class TimeAccuracy(StrEnum):
    """How precisely a parsed time is known."""

    EXACT = "exact"  # date, time and zone (or UTC marker)
    NO_ZONE = "no-zone"  # date and time without a zone; stored as if UTC, may be off by the phone's offset
    DATE = "date"  # a date only; stored as midnight UTC


@dataclass(frozen=True)
class CertInfo:
    """What could be extracted from a certificate-info value; every field is optional.

    ``serials`` holds the candidate readings of the serial number (two for a digits-only value that may be
    decimal or hex). Fingerprints are lower-case hex without separators. Times are aware UTC datetimes.
    """

    serials: tuple[int, ...] = ()
    sha1: str | None = None
    sha256: str | None = None
    subject: str | None = None
    issuer: str | None = None
    not_before: datetime | None = None
    not_before_accuracy: TimeAccuracy | None = None
    not_after: datetime | None = None
    not_after_accuracy: TimeAccuracy | None = None

    @property
    def serial(self) -> int | None:
        """The serial number if it was read unambiguously, else ``None``."""
        return self.serials[0] if len(self.serials) == 1 else None

    @property
    def is_empty(self) -> bool:
        """True if nothing at all was recognised."""
        return self == CertInfo()


def normalise_fingerprint(value: str, lengths: Iterable[int], what: str) -> str:
    hex_digits = re.sub(r"[\s:-]", "", value).lower()
    if not re.fullmatch(r"[0-9a-f]+", hex_digits) or len(hex_digits) not in set(lengths):
        raise InputError(f"{what} is not a hex fingerprint of the right length")
    return hex_digits


@dataclass(frozen=True)
class ExpectedCert:
    """The certificate certmgr deployed, as far as the verdict needs it.

    Fingerprints may be given with or without colons, in any case; they are stored lower-case without
    separators. ``not_after`` must be timezone-aware; it is stored in UTC.

    Raises:
        InputError: (on construction) for a malformed fingerprint or a naive ``not_after``.
    """

    serial: int
    sha256: str
    sha1: str
    subject: str
    not_after: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", normalise_fingerprint(self.sha256, (64,), "sha256"))
        object.__setattr__(self, "sha1", normalise_fingerprint(self.sha1, (40,), "sha1"))
        if self.not_after.tzinfo is None:
            raise InputError("not_after must be timezone-aware")
        object.__setattr__(self, "not_after", self.not_after.astimezone(UTC))

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> ExpectedCert:
        """Take serial, fingerprints, subject (RFC 4514) and notAfter from a ``cryptography`` certificate.

        Raises:
            InputError: never in practice (the values come from a valid certificate).
        """
        from cryptography.hazmat.primitives import hashes

        return cls(
            serial=cert.serial_number,
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
            sha1=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - an identifier, not a signature
            subject=cert.subject.rfc4514_string(),
            not_after=cert.not_valid_after_utc,
        )


# --- key recognition --------------------------------------------------------------------------------------
_S = r"[\s_-]*"  # optional separator inside a key: "Serial Number", "serial_number", "serialNumber"
_FP = r"(?:fingerprint|thumbprint|finger\s*print|hash|digest)"
_KEY_PATTERNS: list[tuple[str, str]] = [
    ("sha256", rf"sha{_S}256(?:{_S}{_FP})?|{_FP}{_S}\(?{_S}sha{_S}256{_S}\)?"),
    ("sha1", rf"sha{_S}1(?:{_S}{_FP})?|{_FP}{_S}\(?{_S}sha{_S}1{_S}\)?"),
    ("ignore", rf"md5(?:{_S}{_FP})?|{_FP}{_S}\(?{_S}md5{_S}\)?"),
    ("fingerprint", rf"(?:certificate{_S})?{_FP}s?"),
    ("serial", rf"(?:certificate{_S})?serial(?:{_S}(?:number|num|no\.?|nr\.?|\#))?"),
    ("subject", rf"subject(?:{_S}(?:dn|name))?|issued{_S}to|owner"),
    ("issuer", rf"issuer(?:{_S}(?:dn|name))?|issued{_S}by"),
    (
        "not_before",
        rf"not{_S}(?:valid{_S})?before|valid{_S}(?:from|since)|validity{_S}(?:start|from)|"
        rf"start{_S}date|issued{_S}on|begins?",
    ),
    (
        "not_after",
        rf"not{_S}(?:valid{_S})?after|valid{_S}(?:to|until|till|thru|through)|validity{_S}(?:end|to)|"
        rf"expir(?:es|y|ation)(?:{_S}(?:date|on))?|end{_S}date|until|expires{_S}on",
    ),
    (
        "ignore",
        rf"version|signature(?:{_S}algorithm)?|public{_S}key(?:{_S}(?:algorithm|info|size))?|"
        rf"key{_S}(?:size|length|type|usage|algorithm)|algorithm|validity|certificate|type|status",
    ),
]
_GROUPS = [f"k{i}" for i in range(len(_KEY_PATTERNS))]
_KEY_RE = re.compile(
    r"(?<![^\s;,|{(\"'])"  # at the start or after a separator
    + "(?:"
    + "|".join(f"(?P<{g}>{pattern})" for g, (_, pattern) in zip(_GROUPS, _KEY_PATTERNS, strict=True))
    + r")[\"']?[ \t]*(?P<sep>[:=])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Hit:
    field: str
    key: str
    start: int
    value_start: int
    sep: str


def _hits(text: str) -> list[_Hit]:
    hits: list[_Hit] = []
    for m in _KEY_RE.finditer(text):
        name = next(g for g in _GROUPS if m.group(g) is not None)
        field = _KEY_PATTERNS[_GROUPS.index(name)][0]
        hits.append(_Hit(field, m.group(name), m.start(), m.end(), m.group("sep")))
    return hits


def _in_dn(text: str, hit: _Hit, previous: _Hit | None) -> bool:
    """``serialNumber=…`` right after ``,``/``+``/``/`` inside a subject/issuer value is a DN attribute."""
    if previous is None or previous.field not in ("subject", "issuer") or hit.sep != "=":
        return False
    if hit.key.lower() != "serialnumber":
        return False
    before = text[previous.value_start : hit.start].rstrip()
    return "\n" not in before and before.endswith((",", "+", "/"))


def _indent(text: str, pos: int) -> int:
    line_start = text.rfind("\n", 0, pos) + 1
    line = text[line_start:]
    return len(line) - len(line.lstrip(" \t"))


def _value(text: str, hit: _Hit, end: int) -> str:
    """The value of ``hit``: up to ``end`` (the next known key), but in multi-line text only the first
    non-blank line plus the lines below it that are indented deeper than the key's own line (so
    ``Serial Number:`` followed by an indented hex line works, and ``Validity`` or ``Subject Public Key Info:``
    at the key's level ends the value)."""
    region = text[hit.value_start : end]
    lines = region.split("\n")
    key_indent = _indent(text, hit.start)
    kept: list[str] = []
    for line in lines:
        if not kept:
            if line.strip():
                kept.append(line)
            continue
        if not line.strip():
            break
        if len(line) - len(line.lstrip(" \t")) <= key_indent:
            break
        kept.append(line)
    value = " ".join(part.strip() for part in kept)
    return value.strip().strip(";,|{}\"'").strip()


def _pairs(text: str) -> list[tuple[str, str]]:
    hits: list[_Hit] = []
    for hit in _hits(text):
        previous = hits[-1] if hits else None
        if hit.field == "serial" and _in_dn(text, hit, previous):
            continue
        hits.append(hit)
    pairs: list[tuple[str, str]] = []
    for i, hit in enumerate(hits):
        end = hits[i + 1].start if i + 1 < len(hits) else len(text)
        pairs.append((hit.field, _value(text, hit, end)))
    return pairs


# --- value parsers ----------------------------------------------------------------------------------------
def _parse_serial(value: str) -> tuple[int, ...]:
    text = value.strip()
    if m := re.search(r"\b0x([0-9a-f]{1,64})\b", text, re.I):
        return (int(m.group(1), 16),)
    if m := re.match(r"([0-9a-f]{1,2}(?:[:-][0-9a-f]{1,2})+)(?![0-9a-f])", text, re.I):
        return (int(re.sub(r"[:-]", "", m.group(1)), 16),)
    if m := re.fullmatch(r"([0-9a-f]{2}(?: [0-9a-f]{2}){3,})", text, re.I):
        return (int(m.group(1).replace(" ", ""), 16),)
    if m := re.match(r"([0-9a-f]{1,64})(?![0-9a-z])", text, re.I):
        token = m.group(1)
        if re.fullmatch(r"[0-9]+", token):
            readings = [int(token, 10), int(token, 16)]
            return tuple(dict.fromkeys(readings))
        return (int(token, 16),)
    return ()


def _parse_fingerprint(value: str) -> str | None:
    m = re.search(r"[0-9a-f]{2}(?:[:\s-]?[0-9a-f]{2})+", value, re.I)
    if m is None:
        return None
    digits = re.sub(r"[:\s-]", "", m.group(0)).lower()
    return digits if len(digits) in (40, 64) else None


MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MONTHS = {m.lower(): i for i, m in enumerate(MONTH_NAMES, start=1)}
_MON = r"(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_TIME = r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,]\d+)?)?"
_ZONE = r"(?P<zone>Z|UTC|GMT|[+-]\d{2}:?\d{2}|[A-Z]{2,5}(?:[+-]\d{1,2})?)"
_DATE_PATTERNS = [
    # ISO 8601 and "2027-01-02 15:04:05 UTC"
    re.compile(rf"(?P<y>\d{{4}})-(?P<m>\d{{2}})-(?P<d>\d{{2}})(?:[T ]{_TIME})?(?:[ \t]*{_ZONE})?"),
    # OpenSSL "Jan  2 15:04:05 2027 GMT" and Java "Sat Jan 02 15:04:05 UTC 2027"
    re.compile(
        rf"{_MON}\s+(?P<d>\d{{1,2}}),?\s+{_TIME}\s+(?:(?P<zone1>[A-Z]{{2,5}}|[+-]\d{{4}})\s+)?(?P<y>\d{{4}})"
        rf"(?:[ \t]+{_ZONE})?",
        re.I,
    ),
    # "2 Jan 2027 15:04:05 GMT", "02-Jan-2027"
    re.compile(rf"(?P<d>\d{{1,2}})[\s-]+{_MON}[\s-]+(?P<y>\d{{4}})(?:,?\s+{_TIME})?(?:[ \t]*{_ZONE})?", re.I),
    # "January 2, 2027", "Jan 2 2027 3:04 PM"
    re.compile(
        rf"{_MON}\s+(?P<d>\d{{1,2}}),?\s+(?P<y>\d{{4}})(?:,?\s+{_TIME}(?:\s*(?P<ampm>AM|PM))?)?"
        rf"(?:[ \t]*{_ZONE})?",
        re.I,
    ),
    # German "02.01.2027", "02.01.2027 15:04:05"
    re.compile(rf"(?P<d>\d{{1,2}})\.(?P<m>\d{{1,2}})\.(?P<y>\d{{4}})(?:,?\s+{_TIME})?(?:[ \t]*{_ZONE})?"),
    # ASN.1 GeneralizedTime / UTCTime
    re.compile(r"(?<!\d)(?P<gt>\d{14}|\d{12})Z(?![0-9A-Za-z])"),
]


def _zone_offset(zone: str | None) -> timedelta | None:
    """Offset for an explicit zone; ``None`` for no zone or a named zone other than UTC/GMT/Z."""
    if zone is None:
        return None
    z = zone.upper()
    if z in ("Z", "UTC", "GMT"):
        return timedelta(0)
    if m := re.fullmatch(r"([+-])(\d{2}):?(\d{2})", z):
        delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        return -delta if m.group(1) == "-" else delta
    return None


def _parse_time(value: str) -> tuple[datetime, TimeAccuracy] | None:
    best: tuple[int, re.Match[str]] | None = None
    for pattern in _DATE_PATTERNS:
        m = pattern.search(value)
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), m)
    if best is None:
        return None
    g = best[1].groupdict()
    try:
        if g.get("gt"):
            raw = g["gt"]
            if len(raw) == 12:  # UTCTime: YY >= 50 is 19YY (RFC 5280 §4.1.2.5.1)
                year = int(raw[:2])
                raw = f"{1900 + year if year >= 50 else 2000 + year}{raw[2:]}"
            parsed = datetime.strptime(raw, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            return parsed, TimeAccuracy.EXACT
        month = _MONTHS[g["mon"][:3].lower()] if g.get("mon") else int(g["m"])
        day = date(int(g["y"]), month, int(g["d"]))
        if g.get("H") is None:
            return datetime(day.year, day.month, day.day, tzinfo=UTC), TimeAccuracy.DATE
        hour = int(g["H"])
        if g.get("ampm"):
            hour = hour % 12 + (12 if g["ampm"].upper() == "PM" else 0)
        # Wall-clock fields first (tagged UTC for now); the real offset is applied below.
        wall = datetime(day.year, day.month, day.day, hour, int(g["M"]), int(g.get("S") or 0), tzinfo=UTC)
    except (ValueError, KeyError):
        return None
    offset = _zone_offset(g.get("zone") or g.get("zone1"))
    if offset is None:
        return wall, TimeAccuracy.NO_ZONE
    return wall.replace(tzinfo=timezone(offset)).astimezone(UTC), TimeAccuracy.EXACT


def _clean_dn(value: str) -> str | None:
    text = value.strip()
    return text or None


def parse_certificate_info(raw: str) -> CertInfo:
    """Extract serial, fingerprints, subject, issuer and validity from a certificate-info value (D6).

    Never fails on content: whatever is not recognised is ignored, and an unrecognisable value gives an empty
    :class:`CertInfo`. The first usable occurrence of each field wins (a chain listing starts with the leaf).

    Raises:
        InputError: if ``raw`` is not a string.
    """
    if not isinstance(raw, str):
        raise InputError("certificate info must be a string")
    text = raw.replace("\r\n", "\n").replace("\r", "\n")[:65536]
    found: dict[str, object] = {}
    for field, value in _pairs(text):
        if field == "ignore" or not value:
            continue
        if field == "serial" and "serials" not in found:
            serials = _parse_serial(value)
            if serials:
                found["serials"] = serials
        elif field in ("sha1", "sha256", "fingerprint"):
            fp = _parse_fingerprint(value)
            if fp is None:
                continue
            kind = {40: "sha1", 64: "sha256"}[len(fp)]
            if field in ("sha1", "sha256") and field != kind:
                continue  # labelled SHA-1 but 64 digits (or vice versa): do not guess
            found.setdefault(kind, fp)
        elif field in ("subject", "issuer") and field not in found:
            dn = _clean_dn(value)
            if dn:
                found[field] = dn
        elif field in ("not_before", "not_after") and field not in found:
            parsed = _parse_time(value)
            if parsed is not None:
                found[field], found[field + "_accuracy"] = parsed
    return CertInfo(**found)  # type: ignore[arg-type]
