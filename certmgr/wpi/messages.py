"""WPI (DLS protocol) message model: frozen dataclasses and enums, no I/O.

The two message types mirror the two XML documents of the protocol (wpi-protocol.md §4):

* :class:`WorkpointMessage` — phone → service, the body of the phone's HTTPS POST (§4.2);
* :class:`DLSMessage` — service → phone, the body of the HTTP response (§4.3).

Values the protocol may extend (reasons, actions) parse into an enum member when known and into
:class:`UnknownReason` / :class:`UnknownAction` otherwise, so nothing the phone sends is lost. Closed sets
(reply status, fragment) are plain enums; the codec rejects values outside them.

Secrets: item values may carry a PKCS#12 (with its private key) or a password. :class:`Item` therefore never
shows the value of a sensitive item, nor any long value, in its ``repr``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from certmgr.errors import InputError, ProtocolError
from certmgr.identity import normalize_mac

#: XML namespace of both message types (§4.1).
DLS_NAMESPACE = "http://www.siemens.com/DLS"
#: Namespace of ``xsi:schemaLocation`` in the Guide's examples.
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"

# Item names used by certmgr (§6.1, §6.2, §7).
ITEM_MAC = "mac-addr"
ITEM_E164 = "e164"
ITEM_CONTACT_ME_URI = "contact-me-uri"
ITEM_DEVICE_TYPE = "device-type"
ITEM_SOFTWARE_VERSION = "software-version"
ITEM_CLEANUP_REASON = "cleanup-reason"
ITEM_SEND_SOLICITED = "send-solicited"
ITEM_WBM_CERTIFICATE = "wbm-server-certificate"
ITEM_WBM_CERTIFICATE_INFO = "wbm-server-certificate-info"

#: Maximum size of one message on the wire (§3.2, §5.3: "at most 50 kB"); we read kB as 1000 bytes.
MAX_MESSAGE_SIZE = 50_000


class Reason(StrEnum):
    """``ReasonForContact`` values (§4.2)."""

    START_UP = "start-up"
    LOCAL_CHANGES = "local-changes"
    INVENTORY_CHANGES = "inventory-changes"
    STATUS = "status"
    SOLICITED = "solicited"
    REPLY_TO = "reply-to"
    CLEAN_UP = "clean-up"


class Action(StrEnum):
    """``Action`` values of a ``DLSMessage`` (§4.3)."""

    READ_ALL_ITEMS = "ReadAllItems"
    WRITE_ITEMS = "WriteItems"
    READ_ITEMS = "ReadItems"
    RESTART = "Restart"
    FILE_DEPLOYMENT = "FileDeployment"
    SOFTWARE_DEPLOYMENT = "SoftwareDeployment"
    CLEAN_UP = "CleanUp"
    GET_NEXT_FRAGMENT = "GetNextFragment"


class ReplyStatus(StrEnum):
    """``status`` attribute of ``ReasonForContact`` (§4.2)."""

    ACCEPTED = "accepted"
    FAILED = "failed"
    BUSY = "busy"


class Fragment(StrEnum):
    """``fragment`` attribute (§4.2, §5.3)."""

    NEXT = "next"
    FINAL = "final"


def _check_raw_token(raw: str, kind: str, known: type[StrEnum]) -> None:
    if not raw or raw != raw.strip():
        raise ProtocolError(f"unknown {kind} must be a non-empty token without surrounding whitespace")
    if raw in {m.value for m in known}:
        raise ProtocolError(f"{kind} {raw!r} is known; use the enum member")


@dataclass(frozen=True)
class UnknownReason:
    """A ``ReasonForContact`` this code does not know; ``raw`` is the text the phone sent (stripped).

    Raises:
        ProtocolError: (on construction) if ``raw`` is empty, padded with whitespace or a known reason.
    """

    raw: str

    def __post_init__(self) -> None:
        _check_raw_token(self.raw, "reason", Reason)

    @property
    def value(self) -> str:
        """The raw text, so that ``msg.reason.value`` works for known and unknown reasons alike."""
        return self.raw


@dataclass(frozen=True)
class UnknownAction:
    """An ``Action`` (or ``ReasonForContact action=…``) this code does not know, kept verbatim.

    Raises:
        ProtocolError: (on construction) if ``raw`` is empty, padded with whitespace or a known action.
    """

    raw: str

    def __post_init__(self) -> None:
        _check_raw_token(self.raw, "action", Action)

    @property
    def value(self) -> str:
        """The raw text, so that ``.value`` works for known and unknown actions alike."""
        return self.raw


AnyReason = Reason | UnknownReason
AnyAction = Action | UnknownAction


def parse_reason(text: str) -> AnyReason:
    """Map ``ReasonForContact`` text to a :class:`Reason`, or keep it as :class:`UnknownReason`.

    Raises:
        ProtocolError: if the text is empty.
    """
    token = text.strip()
    if not token:
        raise ProtocolError("empty ReasonForContact")
    try:
        return Reason(token)
    except ValueError:
        return UnknownReason(token)


def parse_action(text: str) -> AnyAction:
    """Map an action name to an :class:`Action`, or keep it as :class:`UnknownAction`.

    Raises:
        ProtocolError: if the text is empty.
    """
    token = text.strip()
    if not token:
        raise ProtocolError("empty action")
    try:
        return Action(token)
    except ValueError:
        return UnknownAction(token)


_SENSITIVE_TOKENS = frozenset(
    {"pwd", "password", "passwd", "passphrase", "secret", "pin", "tan", "key", "private", "pkcs12"}
)
_SENSITIVE_NAMES = frozenset(
    {"wbm-server-certificate", "dls-client-certificate", "secure-mode-data", "user-pwd", "admin-pwd"}
)


def is_sensitive_item_name(name: str) -> bool:
    """True for items that may carry a credential or a private key (passwords, PINs, PKCS#12 …).

    The test is by name only and errs on the side of caution: any ``-``/``_`` separated token such as ``pwd``,
    ``password``, ``pin``, ``tan``, ``key`` or ``secret`` marks the item as sensitive (§8 (c)).
    """
    lowered = name.lower()
    if lowered in _SENSITIVE_NAMES:
        return True
    return any(token in _SENSITIVE_TOKENS for token in re.split(r"[-_.\s]+", lowered))


@dataclass(frozen=True)
class Item:
    """One ``<Item>``: ``name``, text ``value`` (``None`` when empty), optional ``index`` and ``status``.

    XML cannot tell an empty element from an empty string, so ``value=""`` is stored as ``None`` and
    ``status=""`` as ``None``. The ``repr`` hides the value of sensitive items
    (:func:`is_sensitive_item_name`) and of values longer than 64 characters, so a stray log line never
    carries a key or a password.

    Raises:
        ProtocolError: (on construction) for an empty name or a negative index.
    """

    name: str
    value: str | None = field(default=None)
    index: int | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ProtocolError("item name must not be empty")
        if self.index is not None and self.index < 0:
            raise ProtocolError("item index must not be negative")
        if self.value == "":
            object.__setattr__(self, "value", None)
        if self.status == "":
            object.__setattr__(self, "status", None)

    def __repr__(self) -> str:
        if self.value is None:
            shown = "None"
        elif is_sensitive_item_name(self.name) or len(self.value) > 64:
            shown = f"<{len(self.value)} chars hidden>"
        else:
            shown = repr(self.value)
        return f"Item(name={self.name!r}, value={shown}, index={self.index!r}, status={self.status!r})"


@dataclass(frozen=True)
class WorkpointMessage:
    """A phone → service message (§4.2).

    ``max_items`` is the raw ``maxItems`` attribute (``-1`` = no limit, ``None`` = absent); use
    :attr:`item_limit` for the effective limit. ``fragment``, ``reply_action`` and ``reply_status`` are
    ``None`` when absent. The codec accepts ``maxItems`` and ``fragment`` on ``Message`` and on
    ``ReasonForContact`` (§4.2 note) and stores them here once. ``empty_item_list`` records an ``<ItemList/>``
    without items, as phones send it in an accepted ``WriteItems`` reply ([G p.47], [G p.60]); it means nothing
    to certmgr, but lets the codec reproduce the Guide's messages exactly.

    Raises:
        ProtocolError: (on construction) for an empty nonce, a ``max_items`` other than -1 or >= 1, or
            ``empty_item_list`` together with items.
    """

    nonce: str
    reason: AnyReason
    items: tuple[Item, ...] = ()
    max_items: int | None = None
    fragment: Fragment | None = None
    reply_action: AnyAction | None = None
    reply_status: ReplyStatus | None = None
    empty_item_list: bool = False

    def __post_init__(self) -> None:
        if not self.nonce.strip():
            raise ProtocolError("nonce must not be empty")
        if self.max_items is not None and self.max_items != -1 and self.max_items < 1:
            raise ProtocolError("maxItems must be -1 or a positive number")
        if self.empty_item_list and self.items:
            raise ProtocolError("an empty ItemList cannot hold items")

    def item(self, name: str) -> Item | None:
        """The first item called ``name``, or ``None``."""
        for it in self.items:
            if it.name == name:
                return it
        return None

    def value(self, name: str) -> str | None:
        """The value of the first item called ``name``, or ``None`` (absent or empty)."""
        it = self.item(name)
        return None if it is None else it.value

    @property
    def mac(self) -> str | None:
        """The normalised ``mac-addr`` (``00:1A:E8:12:34:56``), or ``None`` if absent or not a MAC."""
        raw = self.value(ITEM_MAC)
        if raw is None:
            return None
        try:
            return normalize_mac(raw.strip())
        except InputError:
            return None

    @property
    def item_limit(self) -> int | None:
        """How many items the phone accepts in one ``DLSMessage``; ``None`` means no limit (absent or -1)."""
        if self.max_items is None or self.max_items < 1:
            return None
        return self.max_items


@dataclass(frozen=True)
class DLSMessage:
    """A service → phone message (§4.3): one ``Action`` and optional items.

    Raises:
        ProtocolError: (on construction) for an empty nonce.
    """

    nonce: str
    action: AnyAction
    items: tuple[Item, ...] = ()

    def __post_init__(self) -> None:
        if not self.nonce.strip():
            raise ProtocolError("nonce must not be empty")

    def item(self, name: str) -> Item | None:
        """The first item called ``name``, or ``None``."""
        for it in self.items:
            if it.name == name:
                return it
        return None


def cleanup_message(nonce: str, *, reason: str | None = None, send_solicited: bool = False) -> DLSMessage:
    """A ``CleanUp`` answering the message with ``nonce`` (D2), optionally with ``cleanup-reason`` and
    ``send-solicited=true`` (§4.3, §5.4).

    Raises:
        ProtocolError: for an empty nonce.
    """
    items: list[Item] = []
    if reason:
        items.append(Item(ITEM_CLEANUP_REASON, reason))
    if send_solicited:
        items.append(Item(ITEM_SEND_SOLICITED, "true"))
    return DLSMessage(nonce=nonce, action=Action.CLEAN_UP, items=tuple(items))
