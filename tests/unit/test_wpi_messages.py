"""Message model details."""

from __future__ import annotations

import pytest

from certmgr.errors import ProtocolError
from certmgr.wpi.messages import (
    Action,
    DLSMessage,
    Item,
    Reason,
    UnknownAction,
    UnknownReason,
    WorkpointMessage,
    cleanup_message,
    is_sensitive_item_name,
    parse_action,
    parse_reason,
)


def test_parse_reason_and_action() -> None:
    assert parse_reason(" reply-to ") is Reason.REPLY_TO
    assert parse_reason("later") == UnknownReason("later")
    assert parse_action("GetNextFragment") is Action.GET_NEXT_FRAGMENT
    assert parse_action("SoftReset") == UnknownAction("SoftReset")
    with pytest.raises(ProtocolError):
        parse_reason("  ")
    with pytest.raises(ProtocolError):
        parse_action("")


@pytest.mark.parametrize("raw", ["", " x", "start-up"])
def test_unknown_reason_validates(raw: str) -> None:
    with pytest.raises(ProtocolError):
        UnknownReason(raw)


def test_unknown_action_validates() -> None:
    with pytest.raises(ProtocolError):
        UnknownAction("WriteItems")


def test_item_normalises_empty_and_validates() -> None:
    assert Item("x", "", status="") == Item("x")
    with pytest.raises(ProtocolError):
        Item(" ")
    with pytest.raises(ProtocolError):
        Item("x", index=-1)


@pytest.mark.parametrize(
    ("name", "value"),
    [("wbm-server-certificate", "MIIQ"), ("user-pwd", "1234"), ("wbm-pkcs12-password", "pw"), ("x", "y" * 65)],
)
def test_item_repr_hides_secrets_and_long_values(name: str, value: str) -> None:
    assert value not in repr(Item(name, value))


def test_item_repr_shows_harmless_values() -> None:
    assert "'OpenStage 60'" in repr(Item("device-type", "OpenStage 60"))


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("user-pwd", True),
        ("user-pwd-unicode", True),
        ("admin-pwd", True),
        ("restart-password", True),
        ("bootstrapping-tan", True),
        ("secure-mode-data", True),
        ("dls-client-certificate", True),
        ("wbm-server-certificate", True),
        ("wbm-server-certificate-info", False),
        ("mac-addr", False),
        ("e164", False),
        ("contact-me-uri", False),
    ],
)
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert is_sensitive_item_name(name) is sensitive


def test_workpoint_helpers() -> None:
    msg = WorkpointMessage(
        "n", Reason.SOLICITED, (Item("mac-addr", "001ae8123456"), Item("e164", "1"), Item("e164", "2")), max_items=-1
    )
    assert msg.mac == "00:1A:E8:12:34:56"
    assert msg.value("e164") == "1"
    assert msg.item_limit is None
    assert WorkpointMessage("n", Reason.SOLICITED, max_items=5).item_limit == 5
    assert WorkpointMessage("n", Reason.SOLICITED, (Item("mac-addr", "garbage"),)).mac is None
    assert WorkpointMessage("n", Reason.SOLICITED).mac is None


@pytest.mark.parametrize("max_items", [0, -2])
def test_workpoint_validates(max_items: int) -> None:
    with pytest.raises(ProtocolError):
        WorkpointMessage("n", Reason.SOLICITED, max_items=max_items)
    with pytest.raises(ProtocolError):
        WorkpointMessage(" ", Reason.SOLICITED)
    with pytest.raises(ProtocolError):
        DLSMessage("", Action.CLEAN_UP)


def test_cleanup_message() -> None:
    assert cleanup_message("n") == DLSMessage("n", Action.CLEAN_UP)
    msg = cleanup_message("n", reason="why", send_solicited=True)
    assert msg.items == (Item("cleanup-reason", "why"), Item("send-solicited", "true"))
    assert msg.item("send-solicited") == Item("send-solicited", "true")
    assert msg.item("x") is None
