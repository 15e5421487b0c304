"""Faults a simulated phone can be told to show, and the spec strings that name them. Pure, no I/O.

A fault spec is a comma-separated list of fault names; ``slow`` takes a value in seconds. Whitespace around
tokens is ignored, names are case-insensitive, an empty spec (or ``none``) means a healthy phone::

    busy-first-write,slow=2.0
    offline
    fragments, max-items-1, wrong-info

The faults (all per phone, all combinable, though ``offline`` makes the others moot):

``offline``
    Nothing listens (no contact-me server, no WBM server) and the phone never calls the service.
``busy-first-write``
    The first ``WriteItems`` is answered ``reply-to action=WriteItems status=busy`` (the phone is "in a call").
    If the service then answers ``CleanUp`` with ``send-solicited=true``, the phone calls back with
    ``solicited`` once the call is over, about :data:`BUSY_CALL_SECONDS` later (§5.4). Later writes are normal.
``failed-write``
    Every ``WriteItems`` fails as a whole: ``status=failed`` at message level (§4.2, "rejected or not
    supported"); nothing is stored.
``reject-legacy``
    A PKCS#12 that uses PBES1 ``pbeWithSHAAnd3-KeyTripleDES-CBC`` (the D7 ``legacy`` profile) is refused with
    ``status="failed"`` on the ``wbm-server-certificate`` item while the message stays ``accepted`` — the
    shape of the Guide's error examples ([G p.78], [G p.81]). Detected from the algorithm OIDs in the
    container (:func:`pkcs12_algorithm_oids`), not guessed.
``wrong-info``
    ``wbm-server-certificate-info`` describes a different certificate (a freshly made one the phone never
    serves), so a D6 check must report a mismatch; the WBM port still serves the right certificate.
``unparseable-info``
    ``wbm-server-certificate-info`` is text without any recognisable field, so D6 must stay undecided and
    fall back to the TLS probe.
``slow=SECONDS``
    Waits ``SECONDS`` before each message it sends in an interaction (every ``reply-to``) and before the
    204 answer to a contact-me.
``fragments``
    Splits every ``reply-to`` into two fragments: the first with ``fragment="next"``, the rest (after the
    service's ``GetNextFragment``) with ``fragment="final"`` (§5.3).
``max-items-1``
    Announces ``maxItems="1"`` instead of ``-1`` (the service must not send more than one item per message).
    The phone does not enforce it; it records a violation in its ``last_error``.
``ip-change``
    After the first interaction in which it accepted a certificate ends, the phone moves to another loopback
    address (stops its servers, rebinds them there) and sends ``local-changes`` from the new address with the
    new ``contact-me-uri``.
``factory-reset``
    After the first interaction in which it accepted a certificate ends, the phone reverts to its factory
    certificate and sends ``start-up``.

Any other failure to install a certificate (wrong or missing password, not a PKCS#12, key and certificate not
matching) is reported like ``reject-legacy``: item-level ``failed``, message-level ``accepted``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from enum import StrEnum

from certmgr.errors import InputError

#: Seconds a ``busy-first-write`` phone stays "in the call" before it honours ``send-solicited``.
BUSY_CALL_SECONDS = 0.5
#: Largest accepted ``slow`` delay: a fault that stalls longer than a request timeout is an outage instead.
MAX_SLOW_SECONDS = 120.0
#: Longest accepted spec string.
MAX_SPEC_LENGTH = 512

#: ``pbeWithSHAAnd3-KeyTripleDES-CBC`` (RFC 7292 appendix C) — the PBES1 scheme of the ``legacy`` profile.
OID_PBE_SHA1_3DES = "1.2.840.113549.1.12.1.3"
#: ``pbeWithSHAAnd40BitRC2-CBC`` — what ``openssl pkcs12 -legacy`` uses for certificate bags; also legacy.
OID_PBE_SHA1_RC2_40 = "1.2.840.113549.1.12.1.6"
#: The PBES1 schemes ``reject-legacy`` refuses.
LEGACY_PBE_OIDS = frozenset({OID_PBE_SHA1_3DES, OID_PBE_SHA1_RC2_40})


class Fault(StrEnum):
    """Names of the faults (see the module docstring)."""

    OFFLINE = "offline"
    BUSY_FIRST_WRITE = "busy-first-write"
    FAILED_WRITE = "failed-write"
    REJECT_LEGACY = "reject-legacy"
    WRONG_INFO = "wrong-info"
    UNPARSEABLE_INFO = "unparseable-info"
    SLOW = "slow"
    FRAGMENTS = "fragments"
    MAX_ITEMS_1 = "max-items-1"
    IP_CHANGE = "ip-change"
    FACTORY_RESET = "factory-reset"


@dataclass(frozen=True)
class FaultSet:
    """The faults of one phone. ``slow`` is a delay in seconds (0 = not slow).

    Raises:
        InputError: (on construction) if ``slow`` is negative, not finite or above :data:`MAX_SLOW_SECONDS`.
    """

    offline: bool = False
    busy_first_write: bool = False
    failed_write: bool = False
    reject_legacy: bool = False
    wrong_info: bool = False
    unparseable_info: bool = False
    slow: float = 0.0
    fragments: bool = False
    max_items_1: bool = False
    ip_change: bool = False
    factory_reset: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.slow) or not 0.0 <= self.slow <= MAX_SLOW_SECONDS:
            raise InputError(f"slow must be between 0 and {MAX_SLOW_SECONDS:g} seconds")

    @property
    def names(self) -> tuple[str, ...]:
        """The active faults as spec tokens, in declaration order (``slow=2`` with its value)."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            token = f.name.replace("_", "-")
            if f.name == "slow":
                if value > 0:
                    out.append(f"slow={value:g}")
            elif value:
                out.append(token)
        return tuple(out)

    def to_spec(self) -> str:
        """The canonical spec string; :func:`parse_fault_spec` reads it back to an equal :class:`FaultSet`."""
        return ",".join(self.names)

    def merge(self, other: FaultSet) -> FaultSet:
        """The union of two fault sets (``slow``: the larger delay)."""
        values: dict[str, bool | float] = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = max(a, b) if f.name == "slow" else bool(a or b)
        return FaultSet(**values)  # type: ignore[arg-type]


NO_FAULTS = FaultSet()

_TOKEN = re.compile(r"^(?P<name>[a-z0-9-]+)(?:\s*=\s*(?P<value>[^=,\s]+))?$")


def parse_fault_spec(spec: str) -> FaultSet:
    """Parse a spec such as ``"busy-first-write,slow=2.0"`` (see the module docstring).

    Raises:
        InputError: for an unknown fault, a repeated fault, a value on a fault that takes none, ``slow``
            without a valid number of seconds, or a spec longer than :data:`MAX_SPEC_LENGTH`.
    """
    if len(spec) > MAX_SPEC_LENGTH:
        raise InputError("fault spec too long")
    text = spec.strip().lower()
    if text in ("", "none"):
        return NO_FAULTS
    values: dict[str, bool | float] = {}
    for raw in text.split(","):
        token = raw.strip()
        m = _TOKEN.match(token)
        if m is None:
            raise InputError(f"invalid fault token {token[:40]!r}")
        name, value = m.group("name"), m.group("value")
        try:
            fault = Fault(name)
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise InputError(f"unknown fault {name[:40]!r} (known: {known})") from None
        key = fault.name.lower()
        if key in values:
            raise InputError(f"fault {name!r} given twice")
        if fault is Fault.SLOW:
            if value is None:
                raise InputError("slow needs a value in seconds, e.g. slow=2.0")
            try:
                seconds = float(value)
            except ValueError:
                raise InputError(f"slow={value[:20]!r} is not a number of seconds") from None
            values[key] = seconds
        else:
            if value is not None:
                raise InputError(f"fault {name!r} takes no value")
            values[key] = True
    return FaultSet(**values)  # type: ignore[arg-type]


# --- PKCS#12 algorithm detection (for reject-legacy) ----------------------------------------------------------
_MAX_DER_DEPTH = 24
_MAX_DER_NODES = 20_000


class _DerError(Exception):
    pass


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise _DerError
    tag = data[pos]
    if tag & 0x1F == 0x1F:  # high tag numbers do not occur in PKCS#12
        raise _DerError
    length = data[pos + 1]
    start = pos + 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or start + n > len(data):
            raise _DerError
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    end = start + length
    if end > len(data):
        raise _DerError
    return tag, start, end


def _decode_oid(body: bytes) -> str:
    if not body:
        raise _DerError
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if body[-1] & 0x80:
        raise _DerError
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def _walk(data: bytes, start: int, end: int, depth: int, out: set[str], budget: list[int]) -> None:
    """Collect OIDs from the DER elements in ``data[start:end]``; OCTET STRINGs that hold DER are entered too
    (PKCS#12 wraps its SafeContents in OCTET STRINGs)."""
    if depth > _MAX_DER_DEPTH:
        raise _DerError
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _DerError
        tag, c_start, c_end = _read_tlv(data, pos)
        if c_end > end:
            raise _DerError
        if tag == 0x06:
            out.add(_decode_oid(data[c_start:c_end]))
        elif tag & 0x20:  # constructed: SEQUENCE, SET, [n] EXPLICIT …
            _walk(data, c_start, c_end, depth + 1, out, budget)
        elif tag == 0x04 and c_end > c_start and data[c_start] in (0x30, 0x31):
            nested: set[str] = set()
            try:
                _walk(data, c_start, c_end, depth + 1, nested, budget)
            except _DerError:
                nested = set()  # an opaque octet string (salt, MAC, ciphertext) that happened to start like DER
            out |= nested
        pos = c_end


def pkcs12_algorithm_oids(data: bytes) -> frozenset[str]:
    """Every OBJECT IDENTIFIER visible in a PKCS#12 without decrypting it: content types, bag types, the PBE
    schemes of shrouded key bags and encrypted data, the MAC digest.

    Raises:
        InputError: if ``data`` is not a DER structure (not a PKCS#12 at all).
    """
    if not data or data[0] != 0x30:
        raise InputError("not a DER-encoded PKCS#12")
    oids: set[str] = set()
    try:
        _walk(data, 0, len(data), 0, oids, [_MAX_DER_NODES])
    except _DerError:
        raise InputError("not a DER-encoded PKCS#12") from None
    return frozenset(oids)


def uses_legacy_pbe(data: bytes) -> bool:
    """True if the PKCS#12 encrypts a bag with a PBES1 SHA-1 scheme (3DES or RC2-40).

    Raises:
        InputError: if ``data`` is not a DER structure.
    """
    return bool(pkcs12_algorithm_oids(data) & LEGACY_PBE_OIDS)
