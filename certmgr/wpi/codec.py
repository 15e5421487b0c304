"""Bytes ↔ WPI messages. Pure: no I/O, no logging.

Parsing (:func:`parse_workpoint`, :func:`parse_dls`):

* ``defusedxml`` with DTDs, entity declarations and external references forbidden; the body is capped at
  ``max_body`` bytes (default :data:`MAX_BODY`, 64 KiB — the protocol's messages are at most 50 kB, §5.3)
  *before* the parser sees it.
* The root must be in the namespace ``http://www.siemens.com/DLS``. §4.1 notes that phones tolerate a
  ``DLSMessage`` without a namespace and that one Guide example ([G p.34]) uses
  ``http://mydomain/provisioning``; both are treated as errors here: every phone message in the Guide carries
  the Siemens namespace, and a strict check keeps documents of other XML dialects out of the state machine.
  (If a firmware turns out to omit the namespace, relax :func:`_check_tag` — nothing else depends on it.)
* Structure is checked strictly: unknown *elements* or stray text are errors, unknown *attributes* are ignored
  (``xsi:schemaLocation`` and whatever a firmware adds).
* ``nonce`` is mandatory and must not be blank (§4.4). ``maxItems`` and ``fragment`` are read from ``Message``
  and from ``ReasonForContact`` (§4.2 note); conflicting values in the two places are an error.
* Every failure raises :class:`~certmgr.errors.ProtocolError` with a short reason; the body is never echoed.
  That includes every decoding problem: an XML declaration naming an unknown encoding or a non-text codec
  (``encoding="rot13"``), bytes that do not decode, a declared encoding the bytes do not match.

Encoding (:func:`encode_dls`, :func:`encode_workpoint`) writes the Guide's layout byte-for-byte
deterministically: an UTF-8 XML declaration, the Siemens namespace plus ``xmlns:xsi`` and
``xsi:schemaLocation`` (§4.1), two-space indentation, ``\\n`` line ends. Text and attribute values are escaped
(``& < > "`` and the whitespace characters an XML parser would otherwise normalise), so every string that XML
1.0 can carry survives a round trip; characters XML 1.0 cannot carry raise :class:`ProtocolError`.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as DET

from certmgr.errors import ProtocolError
from certmgr.wpi.messages import (
    DLS_NAMESPACE,
    XSI_NAMESPACE,
    AnyAction,
    DLSMessage,
    Fragment,
    Item,
    ReplyStatus,
    WorkpointMessage,
    parse_action,
    parse_reason,
)

#: Default cap on a body handed to the parsers (64 KiB; protocol messages are <= 50 kB).
MAX_BODY = 64 * 1024

_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_NS = "{" + DLS_NAMESPACE + "}"
# Characters outside the XML 1.0 ``Char`` production cannot appear in a document at all.
_INVALID_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# --- parsing ----------------------------------------------------------------------------------------------
def _parse_root(body: bytes, max_body: int, root_name: str) -> Element:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ProtocolError("body must be bytes")
    size = len(body)
    if size > max_body:
        raise ProtocolError(f"body too large ({size} bytes, limit {max_body})", size=size, limit=max_body)
    data = bytes(body)
    if not data.strip():
        raise ProtocolError("empty body")
    try:
        root: Element = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden as exc:
        raise ProtocolError("DTD not allowed") from exc
    except defusedxml.EntitiesForbidden as exc:
        raise ProtocolError("entity declarations not allowed") from exc
    except defusedxml.ExternalReferenceForbidden as exc:
        raise ProtocolError("external references not allowed") from exc
    except defusedxml.DefusedXmlException as exc:
        raise ProtocolError("forbidden XML construct") from exc
    except ParseError as exc:
        # The position helps debugging and reveals nothing of the content.
        raise ProtocolError(f"malformed XML at line {exc.position[0]}, column {exc.position[1]}") from exc
    except LookupError as exc:
        # An XML declaration naming an encoding Python has no text codec for ("x-no-such-codec") or a
        # bytes-to-bytes codec ("rot13", "base64", "zip"): expat asks the codec registry, which raises this.
        raise ProtocolError("unknown or unsupported XML encoding") from exc
    except (ValueError, UnicodeError) as exc:
        raise ProtocolError("undecodable XML") from exc
    _check_tag(root, root_name)
    return root


def _check_tag(element: Element, name: str) -> None:
    tag = element.tag
    if tag == _NS + name:
        return
    if not isinstance(tag, str):  # pragma: no cover - comments/PIs are dropped by the parser
        raise ProtocolError(f"expected element {name}")
    local = tag.rsplit("}", 1)[-1]
    if local != name:
        raise ProtocolError(f"expected root element {name}")
    if not tag.startswith("{"):
        raise ProtocolError(f"element {name} lacks the namespace {DLS_NAMESPACE}")
    raise ProtocolError(f"element {name} is in the wrong namespace (expected {DLS_NAMESPACE})")


def _local(element: Element) -> str:
    tag = element.tag
    if tag.startswith(_NS):
        return tag[len(_NS) :]
    if tag.startswith("{"):
        raise ProtocolError("element in the wrong namespace (expected the DLS namespace)")
    raise ProtocolError(f"element lacks the namespace {DLS_NAMESPACE}")


def _no_text(element: Element, where: str) -> None:
    if element.text is not None and element.text.strip():
        raise ProtocolError(f"unexpected text in {where}")
    for child in element:
        if child.tail is not None and child.tail.strip():
            raise ProtocolError(f"unexpected text in {where}")


def _children(element: Element, where: str, allowed: set[str]) -> dict[str, list[Element]]:
    _no_text(element, where)
    found: dict[str, list[Element]] = {}
    for child in element:
        name = _local(child)
        if name not in allowed:
            raise ProtocolError(f"unexpected element in {where}")
        found.setdefault(name, []).append(child)
    return found


def _one(found: dict[str, list[Element]], name: str, where: str, *, required: bool) -> Element | None:
    elements = found.get(name, [])
    if len(elements) > 1:
        raise ProtocolError(f"more than one {name} in {where}")
    if not elements:
        if required:
            raise ProtocolError(f"missing {name} in {where}")
        return None
    return elements[0]


def _nonce(message: Element) -> str:
    nonce = message.get("nonce")
    if nonce is None:
        raise ProtocolError("missing nonce")
    if not nonce.strip():
        raise ProtocolError("empty nonce")
    return nonce


def _int_attr(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        raise ProtocolError(f"{what} is not an integer")
    return int(text)


def _parse_items(item_list: Element | None) -> tuple[Item, ...]:
    if item_list is None:
        return ()
    found = _children(item_list, "ItemList", {"Item"})
    items: list[Item] = []
    for element in found.get("Item", []):
        if len(element):
            raise ProtocolError("Item must not contain elements")
        name = element.get("name")
        if name is None or not name.strip():
            raise ProtocolError("Item without a name")
        index = _int_attr(element.get("index"), "Item index")
        if index is not None and index < 0:
            raise ProtocolError("Item index is negative")
        items.append(Item(name=name, value=element.text, index=index, status=element.get("status")))
    return tuple(items)


def _merge(first: str | None, second: str | None, what: str) -> str | None:
    if first is not None and second is not None and first.strip() != second.strip():
        raise ProtocolError(f"conflicting {what} on Message and ReasonForContact")
    return first if first is not None else second


def _message(
    body: bytes, max_body: int, root_name: str, head: str
) -> tuple[Element, str, Element, dict[str, list[Element]]]:
    """The envelope both directions share: ``<root><Message nonce=…><head/>[<ItemList/>]</Message></root>``.

    Returns the ``Message`` element, its nonce, the ``head`` element (``ReasonForContact`` or ``Action``, which
    holds text only) and the ``Message``'s children by name.

    Raises:
        ProtocolError: as :func:`_parse_root`, or if the envelope is not exactly that shape.
    """
    root = _parse_root(body, max_body, root_name)
    message = _one(_children(root, root_name, {"Message"}), "Message", root_name, required=True)
    assert message is not None
    nonce = _nonce(message)
    found = _children(message, "Message", {head, "ItemList"})
    head_el = _one(found, head, "Message", required=True)
    assert head_el is not None
    if len(head_el):
        raise ProtocolError(f"{head} must not contain elements")
    return message, nonce, head_el, found


def parse_workpoint(body: bytes, *, max_body: int = MAX_BODY) -> WorkpointMessage:
    """Parse a phone's ``WorkpointMessage`` (§4.2).

    Raises:
        ProtocolError: if the body is too large, not well-formed, not decodable in the encoding it declares
            (or declares an unknown or non-text encoding), uses a DTD or entities, is not in the DLS namespace,
            lacks a non-empty nonce or a ``ReasonForContact``, or has invalid attribute values.
    """
    message, nonce, rfc, found = _message(body, max_body, "WorkpointMessage", "ReasonForContact")
    reason = parse_reason(rfc.text or "")

    max_items = _int_attr(_merge(message.get("maxItems"), rfc.get("maxItems"), "maxItems"), "maxItems")
    if max_items is not None and max_items != -1 and max_items < 1:
        raise ProtocolError("maxItems must be -1 or a positive number")
    fragment_raw = _merge(message.get("fragment"), rfc.get("fragment"), "fragment")
    fragment: Fragment | None = None
    if fragment_raw is not None:
        try:
            fragment = Fragment(fragment_raw.strip())
        except ValueError as exc:
            raise ProtocolError("invalid fragment attribute") from exc

    action_raw = rfc.get("action")
    reply_action: AnyAction | None = parse_action(action_raw) if action_raw and action_raw.strip() else None
    status_raw = rfc.get("status")
    reply_status: ReplyStatus | None = None
    if status_raw is not None and status_raw.strip():
        try:
            reply_status = ReplyStatus(status_raw.strip())
        except ValueError as exc:
            raise ProtocolError("invalid status attribute on ReasonForContact") from exc

    item_list = _one(found, "ItemList", "Message", required=False)
    items = _parse_items(item_list)
    return WorkpointMessage(
        nonce=nonce,
        reason=reason,
        items=items,
        max_items=max_items,
        fragment=fragment,
        reply_action=reply_action,
        reply_status=reply_status,
        empty_item_list=item_list is not None and not items,
    )


def parse_dls(body: bytes, *, max_body: int = MAX_BODY) -> DLSMessage:
    """Parse a service's ``DLSMessage`` (§4.3) — the phone simulator's direction.

    Raises:
        ProtocolError: if the body is too large, not well-formed, not decodable in the encoding it declares
            (or declares an unknown or non-text encoding), uses a DTD or entities, is not in the DLS namespace,
            lacks a non-empty nonce or exactly one non-empty ``Action``.
    """
    _, nonce, action_el, found = _message(body, max_body, "DLSMessage", "Action")
    action = parse_action(action_el.text or "")
    return DLSMessage(
        nonce=nonce, action=action, items=_parse_items(_one(found, "ItemList", "Message", required=False))
    )


# --- encoding ---------------------------------------------------------------------------------------------
def _check_chars(value: str, what: str) -> None:
    if _INVALID_XML_CHAR.search(value):
        raise ProtocolError(f"{what} contains a character XML 1.0 cannot carry")


def _text(value: str, what: str) -> str:
    _check_chars(value, what)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _attr(value: str, what: str) -> str:
    _check_chars(value, what)
    escaped = (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )
    return f'"{escaped}"'


def _root_open(name: str) -> str:
    return f'<{name} xmlns="{DLS_NAMESPACE}" xmlns:xsi="{XSI_NAMESPACE}" xsi:schemaLocation="{DLS_NAMESPACE}">'


def _item_lines(items: tuple[Item, ...], indent: str) -> list[str]:
    if not items:
        return []
    lines = [f"{indent}<ItemList>"]
    for it in items:
        attrs = f"name={_attr(it.name, 'item name')}"
        if it.index is not None:
            attrs += f' index="{it.index}"'
        if it.status is not None:
            attrs += f" status={_attr(it.status, 'item status')}"
        # ``<Item name="x"></Item>`` for an empty value, as in the ReadItems example of [G p.60].
        value = "" if it.value is None else _text(it.value, "item value")
        lines.append(f"{indent}  <Item {attrs}>{value}</Item>")
    lines.append(f"{indent}</ItemList>")
    return lines


def _nonce_attr(nonce: str) -> str:
    if not nonce.strip():
        raise ProtocolError("nonce must not be empty")
    return _attr(nonce, "nonce")


def encode_dls(msg: DLSMessage) -> bytes:
    """Serialise a ``DLSMessage`` as UTF-8 XML in the Guide's layout (see the module docstring).

    The size limit of 50 kB (:data:`~certmgr.wpi.messages.MAX_MESSAGE_SIZE`) is *not* enforced here; the
    interaction state machine checks it before it sends items (D8).

    Raises:
        ProtocolError: if the nonce is empty or a string contains a character XML 1.0 cannot carry.
    """
    lines = [
        _XML_DECLARATION,
        _root_open("DLSMessage"),
        f"  <Message nonce={_nonce_attr(msg.nonce)}>",
        f"    <Action>{_text(msg.action.value, 'action')}</Action>",
        *_item_lines(msg.items, "    "),
        "  </Message>",
        "</DLSMessage>",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def encode_workpoint(msg: WorkpointMessage) -> bytes:
    """Serialise a ``WorkpointMessage`` (the phone simulator's direction) in the Guide's layout.

    ``maxItems`` and ``fragment`` go on ``Message``, ``status`` and ``action`` on ``ReasonForContact``, as in
    every Guide example ([G p.60], [G p.76]); ``empty_item_list`` writes ``<ItemList/>`` ([G p.60] step 5).

    Raises:
        ProtocolError: if the nonce is empty or a string contains a character XML 1.0 cannot carry.
    """
    message_attrs = f"nonce={_nonce_attr(msg.nonce)}"
    if msg.max_items is not None:
        message_attrs += f' maxItems="{msg.max_items}"'
    if msg.fragment is not None:
        message_attrs += f' fragment="{msg.fragment.value}"'
    rfc_attrs = ""
    if msg.reply_status is not None:
        rfc_attrs += f' status="{msg.reply_status.value}"'
    if msg.reply_action is not None:
        rfc_attrs += f" action={_attr(msg.reply_action.value, 'action')}"
    lines = [
        _XML_DECLARATION,
        _root_open("WorkpointMessage"),
        f"  <Message {message_attrs}>",
        f"    <ReasonForContact{rfc_attrs}>{_text(msg.reason.value, 'reason')}</ReasonForContact>",
        *(["    <ItemList/>"] if msg.empty_item_list else _item_lines(msg.items, "    ")),
        "  </Message>",
        "</WorkpointMessage>",
        "",
    ]
    return "\n".join(lines).encode("utf-8")
