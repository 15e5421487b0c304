"""Codec tests: the Guide's XML examples (``tests/fixtures/wpi/guide-*.xml``, copied from the protocol document)
parse to the messages they show and the encoder reproduces them; the Guide's byte layout; round-trip properties;
hostile input."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.errors import ProtocolError
from certmgr.wpi.codec import MAX_BODY, encode_dls, encode_workpoint, parse_dls, parse_workpoint
from certmgr.wpi.messages import (
    Action,
    DLSMessage,
    Fragment,
    Item,
    Reason,
    ReplyStatus,
    UnknownAction,
    UnknownReason,
    WorkpointMessage,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wpi"

HEAD = (
    b'<WorkpointMessage xmlns="http://www.siemens.com/DLS" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.siemens.com/DLS">'
)

# --- the Guide's examples and what they must parse to -------------------------------------------------------
GUIDE_WORKPOINT: dict[str, WorkpointMessage] = {
    "guide-p033-start-up": WorkpointMessage(
        nonce="ab15234de14f15a667c6f8d",
        reason=Reason.START_UP,
        items=(
            Item("device-type", "OpenStage 60"),
            Item("related-device-type", "OpenStage 60"),
            Item("software-type", "Siemens SIP"),
            Item("related-software-type", "Siemens SIP"),
            Item("contact-me-uri", "http://192.168.3.33:8085/contact_dls.html/ContactDLS"),
            Item("mac-addr", "00:01:E3:00:A9:F3"),
            Item("configuration-changed-flag", "false"),
            Item("e164", "49897223290"),
            Item("user-pwd-unicode", None, status="failed"),
        ),
    ),
    "guide-p076-busy": WorkpointMessage(
        nonce="957AE6C2E40C0E916B7CD5636480F171",
        reason=Reason.REPLY_TO,
        max_items=-1,
        fragment=Fragment.FINAL,
        reply_action=Action.WRITE_ITEMS,
        reply_status=ReplyStatus.BUSY,
    ),
    "guide-p060-step5-reply-accepted": WorkpointMessage(
        nonce="43C308AE8D03F14392F565075A9922FB",
        reason=Reason.REPLY_TO,
        max_items=-1,
        fragment=Fragment.FINAL,
        reply_action=Action.WRITE_ITEMS,
        reply_status=ReplyStatus.ACCEPTED,
        empty_item_list=True,
    ),
    "guide-p061-step7-info-reply-shape": WorkpointMessage(
        nonce="5E1F0A7C3B2D4E6F8091A2B3C4D5E6F7",
        reason=Reason.REPLY_TO,
        items=(Item("wbm-server-certificate-info", "…format unknown…"),),
        max_items=-1,
        fragment=Fragment.FINAL,
        reply_action=Action.READ_ITEMS,
        reply_status=ReplyStatus.ACCEPTED,
    ),
}

GUIDE_DLS: dict[str, DLSMessage] = {
    "guide-p034-read-all-items": DLSMessage("ab15234de14f15a667c6f8d", Action.READ_ALL_ITEMS),
    "guide-p041-clean-up": DLSMessage("9A6439F4E323CDB19283E40459828B56", Action.CLEAN_UP),
    "guide-p070-get-next-fragment": DLSMessage("B0151B36FE9CEEA0F667FF3A208AC994", Action.GET_NEXT_FRAGMENT),
    "guide-p060-step4-write-items": DLSMessage(
        "BB0DBC18D7B8A34BA3DB8295BD5B29D3",
        Action.WRITE_ITEMS,
        (Item("wbm-server-certificate", "[PKCS#12 data, base64 encoded]"),),
    ),
    "guide-p060-step6-read-items": DLSMessage(
        "43C308AE8D03F14392F565075A9922FB", Action.READ_ITEMS, (Item("wbm-server-certificate-info"),)
    ),
    "guide-p064-secure-mode-write-items": DLSMessage(
        "58D4EE11C844865CAF0E9AA11ED2856F",
        Action.WRITE_ITEMS,
        (
            Item("goto-secure-mode", "nopin"),
            Item("dls-client-certificate", "…"),
            Item("dls-server-ca", "-----BEGIN CERTIFICATE-----…", index=0),
            Item("dls-server-ca", "…", index=1),
            Item("dls-secure-port", "18444"),
        ),
    ),
}


def _canonical(xml: bytes) -> str:
    """Canonical XML (C14N 2.0: attributes sorted, empty elements expanded, comments and the XML declaration
    dropped, whitespace-only text between elements removed) — what a namespace-aware reader sees."""
    return ET.canonicalize(xml.decode("utf-8"), strip_text=True)


@pytest.mark.parametrize("name", sorted(GUIDE_WORKPOINT))
def test_guide_workpoint_examples_parse(name: str) -> None:
    assert parse_workpoint((FIXTURES / f"{name}.xml").read_bytes()) == GUIDE_WORKPOINT[name]


@pytest.mark.parametrize("name", sorted(GUIDE_DLS))
def test_guide_dls_examples_parse(name: str) -> None:
    assert parse_dls((FIXTURES / f"{name}.xml").read_bytes()) == GUIDE_DLS[name]


@pytest.mark.parametrize("name", sorted(GUIDE_DLS))
def test_encode_dls_reproduces_the_guide_example(name: str) -> None:
    """The message the Guide shows, encoded by certmgr, is the Guide's XML (compared canonicalised) — the
    reference is the protocol document's example, never certmgr's own earlier output."""
    guide = (FIXTURES / f"{name}.xml").read_bytes()
    data = encode_dls(GUIDE_DLS[name])
    assert _canonical(data) == _canonical(guide)
    assert parse_dls(data) == GUIDE_DLS[name]


@pytest.mark.parametrize("name", sorted(GUIDE_WORKPOINT))
def test_encode_workpoint_reproduces_the_guide_example(name: str) -> None:
    """As above for the phone's direction (the simulator's encoder)."""
    guide = (FIXTURES / f"{name}.xml").read_bytes()
    data = encode_workpoint(GUIDE_WORKPOINT[name])
    assert _canonical(data) == _canonical(guide)
    assert parse_workpoint(data) == GUIDE_WORKPOINT[name]


def test_canonical_comparison_sees_what_matters() -> None:
    """The comparison is not blind: a missing namespace declaration, an attribute on the wrong element, a
    changed value or a missing ``<ItemList/>`` each make the XML differ."""
    guide = _canonical((FIXTURES / "guide-p060-step5-reply-accepted.xml").read_bytes())
    msg = GUIDE_WORKPOINT["guide-p060-step5-reply-accepted"]
    good = encode_workpoint(msg)
    assert _canonical(good) == guide
    for broken in (
        good.replace(b' xsi:schemaLocation="http://www.siemens.com/DLS"', b""),
        good.replace(b' maxItems="-1"', b"").replace(b"<ReasonForContact ", b'<ReasonForContact maxItems="-1" '),
        good.replace(b'status="accepted"', b'status="busy"'),
        good.replace(b"    <ItemList/>\n", b""),
    ):
        assert broken != good
        assert _canonical(broken) != guide


def test_encoded_layout_follows_the_guide() -> None:
    data = encode_dls(GUIDE_DLS["guide-p060-step6-read-items"])
    assert data == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<DLSMessage xmlns="http://www.siemens.com/DLS" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="http://www.siemens.com/DLS">\n'
        b'  <Message nonce="43C308AE8D03F14392F565075A9922FB">\n'
        b"    <Action>ReadItems</Action>\n"
        b"    <ItemList>\n"
        b'      <Item name="wbm-server-certificate-info"></Item>\n'
        b"    </ItemList>\n"
        b"  </Message>\n"
        b"</DLSMessage>\n"
    )


def test_encode_escapes_values() -> None:
    msg = DLSMessage('n"<&>', Action.WRITE_ITEMS, (Item("a&b", "<x> & \"y\" 'z'\r\n\tend", status="s<"),))
    data = encode_dls(msg)
    assert b"<x>" not in data
    assert b"&lt;x&gt; &amp;" in data
    assert parse_dls(data) == msg


def test_encode_rejects_characters_xml_cannot_carry() -> None:
    with pytest.raises(ProtocolError, match=r"XML 1\.0"):
        encode_dls(DLSMessage("n", Action.WRITE_ITEMS, (Item("x", "a\x00b"),)))
    with pytest.raises(ProtocolError):
        encode_workpoint(WorkpointMessage("n", Reason.REPLY_TO, (Item("x", "\x1b"),)))


# --- parsing details -------------------------------------------------------------------------------------
def _wp(message_attrs: str, rfc: str, items: str = "") -> bytes:
    return HEAD + f"<Message {message_attrs}>{rfc}{items}</Message></WorkpointMessage>".encode()


def test_max_items_and_fragment_on_reason_for_contact() -> None:
    msg = parse_workpoint(
        _wp(
            'nonce="n1"',
            '<ReasonForContact maxItems="3" fragment="next" action="ReadItems">reply-to</ReasonForContact>',
        )
    )
    assert msg.max_items == 3
    assert msg.item_limit == 3
    assert msg.fragment is Fragment.NEXT


def test_conflicting_max_items_rejected() -> None:
    with pytest.raises(ProtocolError, match="conflicting"):
        parse_workpoint(_wp('nonce="n" maxItems="2"', '<ReasonForContact maxItems="3">solicited</ReasonForContact>'))


def test_same_value_in_both_places_accepted() -> None:
    msg = parse_workpoint(
        _wp('nonce="n" fragment="final"', '<ReasonForContact fragment="final">reply-to</ReasonForContact>')
    )
    assert msg.fragment is Fragment.FINAL


def test_unknown_reason_and_action_are_kept_raw() -> None:
    msg = parse_workpoint(
        _wp('nonce="n"', '<ReasonForContact action="FutureAction" status="accepted"> new-thing </ReasonForContact>')
    )
    assert msg.reason == UnknownReason("new-thing")
    assert msg.reason.value == "new-thing"
    assert msg.reply_action == UnknownAction("FutureAction")
    dls = parse_dls(
        b'<DLSMessage xmlns="http://www.siemens.com/DLS"><Message nonce="x"><Action>SoftReset</Action>'
        b"</Message></DLSMessage>"
    )
    assert dls.action == UnknownAction("SoftReset")
    assert parse_dls(encode_dls(dls)) == dls


def test_item_index_status_and_value_whitespace_kept() -> None:
    msg = parse_workpoint(
        _wp(
            'nonce="n"',
            "<ReasonForContact>solicited</ReasonForContact>",
            '<ItemList><Item index="1" name="ldap-server-address"> a b </Item>'
            '<Item name="x" status="unknown item"/><Item name="y" status="read only"></Item></ItemList>',
        )
    )
    assert msg.items == (
        Item("ldap-server-address", " a b ", index=1),
        Item("x", None, status="unknown item"),
        Item("y", None, status="read only"),
    )


def test_mac_helper_normalises() -> None:
    msg = parse_workpoint(
        _wp(
            'nonce="n"',
            "<ReasonForContact>solicited</ReasonForContact>",
            '<ItemList><Item name="mac-addr">00-01-e3-00-a9-f3</Item></ItemList>',
        )
    )
    assert msg.mac == "00:01:E3:00:A9:F3"
    assert msg.item("mac-addr") is not None
    assert msg.item("nope") is None


def test_encoding_declaration_other_than_utf8_is_honoured() -> None:
    body = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>'
        '<WorkpointMessage xmlns="http://www.siemens.com/DLS"><Message nonce="n">'
        "<ReasonForContact>solicited</ReasonForContact>"
        '<ItemList><Item name="e164">Müller</Item></ItemList></Message></WorkpointMessage>'
    ).encode("latin-1")
    assert parse_workpoint(body).value("e164") == "Müller"


# --- hostile and broken input ----------------------------------------------------------------------------
BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "blank": (b"   \n", "empty"),
    "malformed": (HEAD + b"<Message nonce='n'><ReasonForContact>solicited", "malformed"),
    "not xml": (b"ContactMe=true", "malformed"),
    "no namespace": (
        b'<WorkpointMessage><Message nonce="n"><ReasonForContact>solicited</ReasonForContact></Message>'
        b"</WorkpointMessage>",
        "lacks the namespace",
    ),
    "guide p.34 namespace": (
        b'<WorkpointMessage xmlns="http://mydomain/provisioning"><Message nonce="n">'
        b"<ReasonForContact>solicited</ReasonForContact></Message></WorkpointMessage>",
        "wrong namespace",
    ),
    "wrong root": (b'<DLSMessage xmlns="http://www.siemens.com/DLS"/>', "expected root element"),
    "child in other namespace": (
        HEAD + b'<Message xmlns="urn:x" nonce="n"><ReasonForContact>solicited</ReasonForContact></Message>'
        b"</WorkpointMessage>",
        "namespace",
    ),
    "dtd": (
        b'<!DOCTYPE WorkpointMessage [<!ELEMENT WorkpointMessage ANY>]><WorkpointMessage xmlns="http://www.siemens.com/DLS"/>',
        "DTD",
    ),
    "external entity": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<WorkpointMessage xmlns="http://www.siemens.com/DLS"><Message nonce="&xxe;">'
        b"<ReasonForContact>solicited</ReasonForContact></Message></WorkpointMessage>",
        "DTD",
    ),
    "billion laughs": (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
        )
        + b']><WorkpointMessage xmlns="http://www.siemens.com/DLS"><Message nonce="&lol9;">'
        b"<ReasonForContact>solicited</ReasonForContact></Message></WorkpointMessage>",
        "DTD",
    ),
    "undefined entity": (
        HEAD + b'<Message nonce="&undefined;"><ReasonForContact>solicited</ReasonForContact></Message>'
        b"</WorkpointMessage>",
        "malformed",
    ),
    "10 MB body": (HEAD + b" " * (10 * 1024 * 1024) + b"</WorkpointMessage>", "too large"),
    "missing nonce": (_wp("", "<ReasonForContact>solicited</ReasonForContact>"), "missing nonce"),
    "empty nonce": (_wp('nonce=""', "<ReasonForContact>solicited</ReasonForContact>"), "empty nonce"),
    "blank nonce": (_wp('nonce="  "', "<ReasonForContact>solicited</ReasonForContact>"), "empty nonce"),
    "no message": (HEAD + b"</WorkpointMessage>", "missing Message"),
    "two messages": (
        HEAD + b'<Message nonce="a"><ReasonForContact>solicited</ReasonForContact></Message>'
        b'<Message nonce="b"><ReasonForContact>solicited</ReasonForContact></Message></WorkpointMessage>',
        "more than one",
    ),
    "no reason": (_wp('nonce="n"', ""), "missing ReasonForContact"),
    "empty reason": (_wp('nonce="n"', "<ReasonForContact> </ReasonForContact>"), "empty ReasonForContact"),
    "unknown element": (_wp('nonce="n"', "<ReasonForContact>solicited</ReasonForContact><Foo/>"), "unexpected"),
    "stray text": (_wp('nonce="n"', "<ReasonForContact>solicited</ReasonForContact>junk"), "unexpected text"),
    "item without name": (
        _wp('nonce="n"', "<ReasonForContact>solicited</ReasonForContact>", "<ItemList><Item>x</Item></ItemList>"),
        "without a name",
    ),
    "item with child": (
        _wp(
            'nonce="n"',
            "<ReasonForContact>solicited</ReasonForContact>",
            '<ItemList><Item name="a"><Item name="b"/></Item></ItemList>',
        ),
        "must not contain",
    ),
    "bad index": (
        _wp(
            'nonce="n"',
            "<ReasonForContact>solicited</ReasonForContact>",
            '<ItemList><Item name="a" index="one"/></ItemList>',
        ),
        "not an integer",
    ),
    "negative index": (
        _wp(
            'nonce="n"',
            "<ReasonForContact>solicited</ReasonForContact>",
            '<ItemList><Item name="a" index="-1"/></ItemList>',
        ),
        "negative",
    ),
    "bad maxItems": (_wp('nonce="n" maxItems="lots"', "<ReasonForContact>solicited</ReasonForContact>"), "integer"),
    "zero maxItems": (_wp('nonce="n" maxItems="0"', "<ReasonForContact>solicited</ReasonForContact>"), "maxItems"),
    "bad fragment": (_wp('nonce="n" fragment="last"', "<ReasonForContact>reply-to</ReasonForContact>"), "fragment"),
    "bad status": (_wp('nonce="n"', '<ReasonForContact status="ok">reply-to</ReasonForContact>'), "status"),
    "invalid utf-8": (_wp('nonce="n"', "<ReasonForContact>solicited</ReasonForContact>") + b"\xff\xfe", "XML"),
}


_SOLICITED = (
    '<WorkpointMessage xmlns="http://www.siemens.com/DLS"><Message nonce="n">'
    "<ReasonForContact>solicited</ReasonForContact></Message></WorkpointMessage>"
)


@pytest.mark.parametrize(
    "encoding",
    ["x-no-such-codec", "rot13", "base64", "zip", "zlib", "hex", "bz2", "uu", "quopri", "mbcs", "a" * 300],
)
def test_unknown_or_non_text_encoding_is_a_protocol_error(encoding: str) -> None:
    """Pins the ``except LookupError`` of ``codec._parse_root``: expat asks Python's codec registry for the
    declared encoding, which raises LookupError for unknown names and bytes-to-bytes codecs. Without that
    clause this is an uncaught LookupError — an HTTP 500 and a traceback on the phone port (issue 9, item 8)."""
    for body in (
        f'<?xml version="1.0" encoding="{encoding}"?>{_SOLICITED}',
        f"<?xml version='1.0' encoding='{encoding}'?>",
    ):
        with pytest.raises(ProtocolError, match="encoding") as info:
            parse_workpoint(body.encode())
        assert encoding[:20] not in str(info.value)  # the reason never echoes the input
        with pytest.raises(ProtocolError):
            parse_dls(body.encode())


@pytest.mark.parametrize(
    "body",
    [
        # declared UTF-16, bytes are UTF-8 (and the reverse); UTF-32 declared on UTF-8; UTF-8 declared on Latin-1
        f'<?xml version="1.0" encoding="utf-16"?>{_SOLICITED}'.encode(),
        f'<?xml version="1.0" encoding="UTF-16LE"?>{_SOLICITED}'.encode(),
        f'<?xml version="1.0" encoding="utf-8"?>{_SOLICITED}'.encode("utf-16"),
        f'<?xml version="1.0" encoding="utf-32"?>{_SOLICITED}'.encode(),
        f'<?xml version="1.0" encoding="utf-8"?>{_SOLICITED.replace("solicited", "sölicited")}'.encode("latin-1"),
        b'<?xml version="1.0" encoding="utf-8"?>' + _SOLICITED.encode().replace(b"solicited", b"\xed\xa0\x80"),
    ],
)
def test_encoding_mismatch_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_workpoint(body)


def test_every_registered_codec_name_parses_or_is_a_protocol_error() -> None:
    """Every encoding name Python knows (text codecs, bytes codecs, aliases): a message or a ProtocolError."""
    import encodings.aliases

    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    outcomes = {"parsed": 0, "refused": 0}
    for name in sorted(names):
        try:
            parse_workpoint(f'<?xml version="1.0" encoding="{name}"?>{_SOLICITED}'.encode())
            outcomes["parsed"] += 1
        except ProtocolError:
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 0  # ASCII-compatible encodings still work
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_workpoint_input_raises_protocol_error(case: str) -> None:
    body, fragment = BAD_INPUTS[case]
    with pytest.raises(ProtocolError, match=fragment) as info:
        parse_workpoint(body)
    # Short reason, never an echo of the body.
    assert len(str(info.value)) < 120
    assert "passwd" not in str(info.value)


def test_body_cap_is_configurable_and_default_is_64k() -> None:
    assert MAX_BODY == 64 * 1024
    body = encode_workpoint(WorkpointMessage("n", Reason.SOLICITED, (Item("x", "y" * 1000),)))
    with pytest.raises(ProtocolError, match="too large"):
        parse_workpoint(body, max_body=500)
    assert parse_workpoint(body).value("x") == "y" * 1000


@pytest.mark.parametrize(
    "body",
    [
        b'<DLSMessage xmlns="http://www.siemens.com/DLS"><Message nonce="n"/></DLSMessage>',
        b'<DLSMessage xmlns="http://www.siemens.com/DLS"><Message nonce="n"><Action> </Action></Message></DLSMessage>',
        b'<DLSMessage xmlns="http://www.siemens.com/DLS"><Message><Action>CleanUp</Action></Message></DLSMessage>',
        b"<DLSMessage><Message nonce='n'><Action>CleanUp</Action></Message></DLSMessage>",
        b'<DLSMessage xmlns="http://www.siemens.com/DLS"><Message nonce="n"><Action>CleanUp</Action>'
        b"<Action>CleanUp</Action></Message></DLSMessage>",
        b'<!DOCTYPE x [<!ENTITY a "b">]><DLSMessage xmlns="http://www.siemens.com/DLS"/>',
    ],
)
def test_bad_dls_input_raises_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_dls(body)


def test_non_bytes_body_rejected() -> None:
    with pytest.raises(ProtocolError, match="bytes"):
        parse_workpoint("<x/>")  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------------------
_xml_char = st.characters(exclude_categories=["Cs"], exclude_characters="\x00\ufffe\uffff", min_codepoint=0).filter(
    lambda c: c in "\t\n\r" or ord(c) >= 0x20
)
_xml_text = st.text(_xml_char, max_size=40)
_special = st.sampled_from(["<", ">", "&", '"', "'", "&amp;", "]]>", "\r\n", "ü", "€", "𝄞", " "])
_value = st.one_of(st.none(), st.lists(st.one_of(_xml_text, _special), max_size=6).map("".join))
_token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-ABC0123456789"), min_size=1, max_size=20)
_nonce = st.one_of(
    st.text(st.sampled_from("0123456789ABCDEF"), min_size=1, max_size=32),
    _xml_text.filter(lambda s: bool(s.strip())),
)
_items = st.lists(
    st.builds(
        Item,
        name=st.one_of(_token, _xml_text.filter(lambda s: bool(s.strip()))),
        value=_value,
        index=st.one_of(st.none(), st.integers(0, 10_000)),
        status=st.one_of(st.none(), st.sampled_from(["failed", "unknown item", "read only"]), _xml_text),
    ),
    max_size=8,
).map(tuple)
_reason = st.one_of(
    st.sampled_from(list(Reason)),
    _token.filter(lambda s: s not in {r.value for r in Reason}).map(UnknownReason),
)
_action = st.one_of(
    st.sampled_from(list(Action)),
    _token.filter(lambda s: s not in {a.value for a in Action}).map(UnknownAction),
)


@settings(max_examples=300)
@given(nonce=_nonce, action=_action, items=_items)
def test_dls_round_trip(nonce: str, action: Action | UnknownAction, items: tuple[Item, ...]) -> None:
    msg = DLSMessage(nonce, action, items)
    assert parse_dls(encode_dls(msg)) == msg


@settings(max_examples=300)
@given(
    nonce=_nonce,
    reason=_reason,
    items=_items,
    max_items=st.one_of(st.none(), st.just(-1), st.integers(1, 1000)),
    fragment=st.one_of(st.none(), st.sampled_from(list(Fragment))),
    reply_action=st.one_of(st.none(), _action),
    reply_status=st.one_of(st.none(), st.sampled_from(list(ReplyStatus))),
    empty_item_list=st.booleans(),
)
def test_workpoint_round_trip(
    nonce: str,
    reason: Reason | UnknownReason,
    items: tuple[Item, ...],
    max_items: int | None,
    fragment: Fragment | None,
    reply_action: Action | UnknownAction | None,
    reply_status: ReplyStatus | None,
    empty_item_list: bool,
) -> None:
    msg = WorkpointMessage(
        nonce, reason, items, max_items, fragment, reply_action, reply_status, empty_item_list and not items
    )
    assert parse_workpoint(encode_workpoint(msg)) == msg


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    for parse in (parse_workpoint, parse_dls):
        with contextlib.suppress(ProtocolError):
            parse(body)
