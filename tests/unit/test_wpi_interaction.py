"""The interaction state machine, driven in memory with messages that went through the codec."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.errors import ProtocolError
from certmgr.wpi.certinfo import ExpectedCert
from certmgr.wpi.codec import encode_dls, encode_workpoint, parse_dls, parse_workpoint
from certmgr.wpi.interaction import (
    MAX_FRAGMENTS,
    OPENING_REASONS,
    CertificateInfoReceived,
    Effect,
    Interaction,
    InteractionFinished,
    Job,
    JobMode,
    Outcome,
    Output,
    PhoneBusy,
    PhoneCleanedUp,
    PhoneReported,
    ProtocolViolation,
    SecurityRefused,
    State,
    WriteAccepted,
    WriteRejected,
    WriteSent,
    start,
)
from certmgr.wpi.jobs import Admission, Defer, NoJob, Refuse, Serve
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

MAC = "00:1A:E8:12:34:56"
OTHER_MAC = "00:1A:E8:65:43:21"
P12 = base64.b64encode(b"PKCS12-SECRET-" + bytes(range(256)) * 8).decode()
PASSWORD = "s3cr3t-pass"
INFO = "Serial Number: 3A:F1\nSubject: CN=phone"


def wp(
    reason: Reason | str,
    nonce: str,
    *,
    items: tuple[Item, ...] = (),
    action: Action | str | None = None,
    status: ReplyStatus | None = None,
    fragment: Fragment | None = None,
    max_items: int | None = -1,
) -> WorkpointMessage:
    """A phone message, built through the codec as the adapter would see it."""
    if isinstance(reason, str) and not isinstance(reason, Reason):
        reason_value: Reason | UnknownReason = UnknownReason(reason)
    else:
        reason_value = Reason(reason)
    action_value: Action | UnknownAction | None
    action_value = action if action is None or isinstance(action, Action) else UnknownAction(action)
    msg = WorkpointMessage(nonce, reason_value, items, max_items, fragment, action_value, status)
    return parse_workpoint(encode_workpoint(msg))


def opening(reason: Reason = Reason.SOLICITED, nonce: str = "N1", mac: str = MAC, **kw: Any) -> WorkpointMessage:
    items = (
        Item("device-type", "OpenStage 60"),
        Item("contact-me-uri", "http://10.0.0.7:8085/contact_dls.html/ContactDLS"),
        Item("mac-addr", mac),
        Item("e164", "4989700"),
        Item("user-pwd", "123456"),
    )
    return wp(reason, nonce, items=items, **kw)


def reply(action: Action | str | None, status: ReplyStatus | None, nonce: str, **kw: Any) -> WorkpointMessage:
    return wp(Reason.REPLY_TO, nonce, action=action, status=status, **kw)


def check(msg: WorkpointMessage, out: Output) -> Output:
    """Invariants of every output: nonce echoed (D2), codec-clean reply, effects recorded."""
    assert out.reply.nonce == msg.nonce
    assert parse_dls(encode_dls(out.reply)) == out.reply
    finished = [e for e in out.effects if isinstance(e, InteractionFinished)]
    assert len(finished) <= 1
    if finished:
        assert out.finished
        assert out.effects[-1] == finished[0]
        assert out.reply.action is Action.CLEAN_UP
    assert_no_secret(out.effects)
    return out


def begin(msg: WorkpointMessage, job: Job | Admission | None) -> tuple[Interaction, Output]:
    """Open an interaction: a job is served (admission passed D10), ``None`` means nothing pending."""
    admission: Admission = Serve(job) if isinstance(job, Job) else (NoJob() if job is None else job)
    inter, out = start(msg, admission)
    return inter, check(msg, out)


def send(inter: Interaction, msg: WorkpointMessage) -> Output:
    return check(msg, inter.receive(msg))


def write_job(password: bool = False) -> Job:
    return Job.certificate(7, MAC, P12, password_item=("wbm-pkcs12-password", PASSWORD) if password else None)


def kinds(out: Output) -> list[type]:
    return [type(e) for e in out.effects]


def outcome(out: Output) -> Outcome:
    last = out.effects[-1]
    assert isinstance(last, InteractionFinished)
    return last.outcome


def cleanup_items(out: Output) -> dict[str, str | None]:
    assert out.reply.action is Action.CLEAN_UP
    return {it.name: it.value for it in out.reply.items}


# --- the happy path --------------------------------------------------------------------------------------
def test_happy_path_write_then_read() -> None:
    inter, out = begin(opening(), write_job())
    assert out.reply.action is Action.WRITE_ITEMS
    assert out.reply.items == (Item("wbm-server-certificate", P12),)
    assert kinds(out) == [PhoneReported, WriteSent]  # recorded before the reply (with the key) leaves
    assert not out.finished
    assert inter.state is State.AWAITING_WRITE_REPLY
    assert inter.write_sent
    assert not inter.write_accepted

    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2"))
    assert out.reply == DLSMessage("N2", Action.READ_ITEMS, (Item("wbm-server-certificate-info"),))
    assert out.effects == (WriteAccepted(7),)
    assert inter.write_accepted

    info = (Item("wbm-server-certificate-info", INFO),)
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N3", items=info))
    assert out.reply == DLSMessage("N3", Action.CLEAN_UP)
    assert out.effects == (CertificateInfoReceived(7, INFO, None), InteractionFinished(Outcome.COMPLETED))
    assert out.finished
    assert inter.finished
    assert inter.outcome is Outcome.COMPLETED


def test_phone_reported_carries_inventory_without_credentials() -> None:
    _, out = begin(opening(Reason.START_UP), None)
    report = out.effects[0]
    assert isinstance(report, PhoneReported)
    assert report.reason is Reason.START_UP
    assert report.mac == MAC
    names = {it.name for it in report.items}
    assert {"mac-addr", "e164", "contact-me-uri", "device-type"} <= names
    assert "user-pwd" not in names
    assert out.reply == DLSMessage("N1", Action.CLEAN_UP)
    assert outcome(out) is Outcome.NO_JOB


@pytest.mark.parametrize("reason", sorted(OPENING_REASONS))
def test_opening_without_job_reports_and_cleans_up(reason: Reason) -> None:
    _, out = begin(opening(reason, nonce="X"), None)
    assert kinds(out) == [PhoneReported, InteractionFinished]
    assert out.reply == DLSMessage("X", Action.CLEAN_UP)


# --- busy and failures -----------------------------------------------------------------------------------
def test_busy_sends_send_solicited_and_keeps_job_pending() -> None:
    inter, _ = begin(opening(), write_job())
    busy = parse_workpoint(
        encode_workpoint(
            WorkpointMessage(
                "957AE6C2E40C0E916B7CD5636480F171",
                Reason.REPLY_TO,
                (),
                -1,
                Fragment.FINAL,
                Action.WRITE_ITEMS,
                ReplyStatus.BUSY,
            )
        )
    )
    out = send(inter, busy)
    assert cleanup_items(out) == {"send-solicited": "true"}
    assert out.effects == (PhoneBusy(7), InteractionFinished(Outcome.BUSY))
    assert not inter.write_accepted


def test_failed_at_message_level() -> None:
    inter, _ = begin(opening(), write_job())
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.FAILED, "N2"))
    assert "cleanup-reason" in cleanup_items(out)
    rejected = out.effects[0]
    assert isinstance(rejected, WriteRejected)
    assert rejected.deployment_id == 7
    assert rejected.item_status is None
    assert outcome(out) is Outcome.REJECTED


@pytest.mark.parametrize("item_status", ["failed", "unknown item", "read only"])
def test_failed_at_item_level_with_accepted_message(item_status: str) -> None:
    inter, _ = begin(opening(), write_job())
    items = (Item("wbm-server-certificate", None, status=item_status),)
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2", items=items))
    assert out.effects[0] == WriteRejected(7, f"phone refused item wbm-server-certificate: {item_status}", item_status)
    assert outcome(out) is Outcome.REJECTED
    assert out.reply.action is Action.CLEAN_UP


def test_item_status_reported_with_message_failed() -> None:
    inter, _ = begin(opening(), write_job())
    items = (Item("other", None, status="failed"), Item("wbm-server-certificate", None, status="unknown item"))
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.FAILED, "N2", items=items))
    rejected = out.effects[0]
    assert isinstance(rejected, WriteRejected)
    assert rejected.item_status == "unknown item"  # our own item's status wins


def test_write_reply_without_status_is_a_violation() -> None:
    inter, _ = begin(opening(), write_job())
    out = send(inter, reply(Action.WRITE_ITEMS, None, "N2"))
    assert kinds(out) == [ProtocolViolation, InteractionFinished]
    assert inter.write_sent
    assert not inter.write_accepted


def test_write_too_large_is_rejected_before_sending() -> None:
    job = Job.certificate(9, MAC, "A" * 60_000)
    _, out = begin(opening(), job)
    assert out.reply.action is Action.CLEAN_UP
    assert kinds(out) == [PhoneReported, WriteRejected, InteractionFinished]


# --- read-back variants ----------------------------------------------------------------------------------
def _at_read(job: Job | None = None) -> Interaction:
    inter, _ = begin(opening(), job or write_job())
    send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2"))
    assert inter.state is State.AWAITING_READ_REPLY
    return inter


def test_read_failed_gives_no_info() -> None:
    inter = _at_read()
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.FAILED, "N3"))
    assert out.effects[0] == CertificateInfoReceived(7, None, "failed")
    assert outcome(out) is Outcome.COMPLETED


def test_read_item_status_is_passed_on() -> None:
    inter = _at_read()
    items = (Item("wbm-server-certificate-info", None, status="unknown item"),)
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N3", items=items))
    assert out.effects[0] == CertificateInfoReceived(7, None, "unknown item")


def test_read_reply_without_the_item() -> None:
    inter = _at_read()
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N3"))
    assert out.effects[0] == CertificateInfoReceived(7, None, None)


def test_busy_on_read_after_accepted_write() -> None:
    inter = _at_read()
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.BUSY, "N3"))
    assert out.effects == (PhoneBusy(7), InteractionFinished(Outcome.BUSY))
    assert inter.write_accepted  # the adapter turns the job into a verify job


# --- maxItems --------------------------------------------------------------------------------------------
def test_max_items_1_splits_password_before_certificate() -> None:
    inter, out = begin(opening(max_items=1), write_job(password=True))
    assert out.reply.action is Action.WRITE_ITEMS
    assert out.reply.items == (Item("wbm-pkcs12-password", PASSWORD),)
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2", max_items=1))
    assert out.reply.action is Action.WRITE_ITEMS
    assert out.reply.items == (Item("wbm-server-certificate", P12),)
    assert out.effects == (WriteSent(7),)
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N3", max_items=1))
    assert out.reply.action is Action.READ_ITEMS
    assert out.effects == (WriteAccepted(7),)


def test_no_limit_sends_password_and_certificate_together() -> None:
    _, out = begin(opening(max_items=None), write_job(password=True))
    assert [it.name for it in out.reply.items] == ["wbm-pkcs12-password", "wbm-server-certificate"]


def test_rejection_of_second_batch() -> None:
    inter, _ = begin(opening(max_items=1), write_job(password=True))
    send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2", max_items=1))
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.FAILED, "N3"))
    assert WriteAccepted(7) not in out.effects
    assert outcome(out) is Outcome.REJECTED


# --- a write whose earlier outcome is unknown: check first ------------------------------------------------------
EXPECTED = ExpectedCert(
    serial=0x3AF1, sha256="ab" * 32, sha1="cd" * 20, subject="CN=phone", not_after=datetime(2027, 1, 1, tzinfo=UTC)
)


def check_job() -> Job:
    return Job.certificate(7, MAC, P12, check_first=EXPECTED)


def test_check_first_finds_the_certificate_and_writes_nothing() -> None:
    inter, out = begin(opening(), check_job())
    assert out.reply == DLSMessage("N1", Action.READ_ITEMS, (Item("wbm-server-certificate-info"),))
    out = send(
        inter,
        reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N2", items=(Item("wbm-server-certificate-info", INFO),)),
    )
    assert out.reply.action is Action.CLEAN_UP
    assert out.effects[:2] == (
        WriteAccepted(7, already_present=True),
        CertificateInfoReceived(7, INFO, None),
    )
    assert not inter.write_sent


@pytest.mark.parametrize("info", ["Serial Number: 77", None])
def test_check_first_writes_when_the_phone_lacks_it(info: str | None) -> None:
    inter, _ = begin(opening(), check_job())
    items = (Item("wbm-server-certificate-info", info),) if info else ()
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N2", items=items))
    assert out.reply == DLSMessage("N2", Action.WRITE_ITEMS, (Item("wbm-server-certificate", P12),))
    assert out.effects == (WriteSent(7),)
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N3"))
    assert out.effects == (WriteAccepted(7),)
    out = send(
        inter,
        reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N4", items=(Item("wbm-server-certificate-info", INFO),)),
    )
    assert CertificateInfoReceived(7, INFO, None) in out.effects


# --- fragments -------------------------------------------------------------------------------------------
def test_fragmented_read_reply_is_collected() -> None:
    inter = _at_read()
    f1 = reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "F1", fragment=Fragment.NEXT, items=(Item("a", "1"),))
    out = send(inter, f1)
    assert out.reply == DLSMessage("F1", Action.GET_NEXT_FRAGMENT)
    assert out.effects == ()
    assert not out.finished
    f2 = reply(
        Action.READ_ITEMS,
        ReplyStatus.ACCEPTED,
        "F2",
        fragment=Fragment.NEXT,
        items=(Item("wbm-server-certificate-info", INFO),),
    )
    assert send(inter, f2).reply == DLSMessage("F2", Action.GET_NEXT_FRAGMENT)
    f3 = reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "F3", fragment=Fragment.FINAL, items=(Item("b", "2"),))
    out = send(inter, f3)
    assert out.reply == DLSMessage("F3", Action.CLEAN_UP)
    assert out.effects[0] == CertificateInfoReceived(7, INFO, None)


def test_fragmented_opening_message() -> None:
    first = wp(Reason.START_UP, "S1", items=(Item("mac-addr", MAC),), fragment=Fragment.NEXT)
    inter, out = begin(first, None)
    assert out.reply == DLSMessage("S1", Action.GET_NEXT_FRAGMENT)
    assert inter.state is State.OPENING
    out = send(inter, wp(Reason.START_UP, "S2", items=(Item("e164", "42"),), fragment=Fragment.FINAL))
    report = out.effects[0]
    assert isinstance(report, PhoneReported)
    assert [it.name for it in report.items] == ["mac-addr", "e164"]
    assert out.reply == DLSMessage("S2", Action.CLEAN_UP)


def test_too_many_fragments_is_a_violation() -> None:
    inter = _at_read()
    for i in range(MAX_FRAGMENTS):
        out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, f"F{i}", fragment=Fragment.NEXT))
        assert out.reply.action is Action.GET_NEXT_FRAGMENT
    out = send(inter, reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "last", fragment=Fragment.NEXT))
    assert ProtocolViolation("too many fragments") in out.effects


# --- reply-to vs status (open question 6) ----------------------------------------------------------------
@pytest.mark.parametrize("action", [Action.WRITE_ITEMS, None])
def test_status_accepted_in_place_of_reply_to(action: Action | None) -> None:
    inter, _ = begin(opening(), write_job())
    out = send(inter, wp(Reason.STATUS, "N2", action=action, status=ReplyStatus.ACCEPTED))
    assert out.reply.action is Action.READ_ITEMS
    out = send(
        inter,
        wp(Reason.STATUS, "N3", items=(Item("wbm-server-certificate-info", INFO),), status=ReplyStatus.ACCEPTED),
    )
    assert out.effects[0] == CertificateInfoReceived(7, INFO, None)


# --- violations ------------------------------------------------------------------------------------------
def test_mac_of_opening_message_differs_from_job() -> None:
    _, out = begin(opening(mac=OTHER_MAC), write_job())
    assert kinds(out) == [PhoneReported, ProtocolViolation, InteractionFinished]
    assert out.reply.action is Action.CLEAN_UP


def test_opening_without_mac_but_with_job() -> None:
    _, out = begin(wp(Reason.SOLICITED, "N1"), write_job())
    assert ProtocolViolation("opening message without a valid mac-addr") in out.effects


def test_mac_changes_mid_interaction() -> None:
    inter, _ = begin(opening(), write_job())
    msg = reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2", items=(Item("mac-addr", OTHER_MAC),))
    out = send(inter, msg)
    assert kinds(out) == [ProtocolViolation, InteractionFinished]


def test_same_mac_in_reply_is_fine() -> None:
    inter, _ = begin(opening(), write_job())
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2", items=(Item("mac-addr", MAC.lower()),)))
    assert out.reply.action is Action.READ_ITEMS


@pytest.mark.parametrize("action", [Action.READ_ALL_ITEMS, Action.READ_ITEMS, Action.CLEAN_UP, "Frobnicate"])
def test_reply_to_an_action_we_did_not_send(action: Action | str) -> None:
    inter, _ = begin(opening(), write_job())
    out = send(inter, reply(action, ReplyStatus.ACCEPTED, "N2"))
    assert kinds(out) == [ProtocolViolation, InteractionFinished]
    assert outcome(out) is Outcome.VIOLATION


@pytest.mark.parametrize("reason", [Reason.START_UP, Reason.SOLICITED, Reason.LOCAL_CHANGES, "mystery"])
def test_unexpected_reason_mid_interaction(reason: Reason | str) -> None:
    inter, _ = begin(opening(), write_job())
    out = send(inter, wp(reason, "N2"))
    assert kinds(out) == [ProtocolViolation, InteractionFinished]


@pytest.mark.parametrize("reason", [Reason.REPLY_TO, "mystery"])
def test_bad_opening_reason(reason: Reason | str) -> None:
    _, out = begin(wp(reason, "N1", items=(Item("mac-addr", MAC),)), write_job())
    assert kinds(out) == [ProtocolViolation, InteractionFinished]
    assert out.reply.action is Action.CLEAN_UP


def test_messages_after_finish() -> None:
    inter, _ = begin(opening(), None)
    assert inter.finished
    for nonce in ("A", "B"):
        out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, nonce))
        assert out.reply.action is Action.CLEAN_UP
        assert out.finished
        assert kinds(out) == [ProtocolViolation]
    assert inter.outcome is Outcome.NO_JOB


# --- phone clean-up --------------------------------------------------------------------------------------
def test_phone_clean_up_mid_interaction() -> None:
    inter, _ = begin(opening(), write_job())
    msg = wp(Reason.CLEAN_UP, "C1", items=(Item("cleanup-reason", "password retries exceeded"),))
    out = send(inter, msg)
    assert out.reply == DLSMessage("C1", Action.CLEAN_UP)
    assert out.effects == (
        PhoneCleanedUp("password retries exceeded"),
        InteractionFinished(Outcome.PHONE_CLEANUP),
    )


def test_phone_clean_up_as_first_message() -> None:
    _, out = begin(wp(Reason.CLEAN_UP, "C1"), None)
    assert out.effects == (PhoneCleanedUp(None), InteractionFinished(Outcome.PHONE_CLEANUP))


# --- admission decisions (D10 is decided in certmgr.deploy.admission; the machine carries the decision out) ---
def test_refusal_is_cleanup_with_security_effect() -> None:
    _, out = begin(opening(), Refuse("peer address does not match", 7))
    assert out.reply.action is Action.CLEAN_UP
    cleanup = out.reply.item("cleanup-reason")
    assert cleanup is not None
    assert cleanup.value == "not authorised"
    assert kinds(out) == [PhoneReported, SecurityRefused, InteractionFinished]
    refused = out.effects[1]
    assert isinstance(refused, SecurityRefused)
    assert refused.deployment_id == 7
    assert refused.reason == "peer address does not match"
    assert outcome(out) is Outcome.REFUSED


@pytest.mark.parametrize("reason", [Reason.START_UP, Reason.LOCAL_CHANGES, Reason.INVENTORY_CHANGES, Reason.STATUS])
def test_deferral_is_plain_cleanup(reason: Reason) -> None:
    _, out = begin(opening(reason), Defer(7))
    assert out.reply == DLSMessage("N1", Action.CLEAN_UP)
    assert kinds(out) == [PhoneReported, InteractionFinished]
    assert outcome(out) is Outcome.DEFERRED


def test_no_job_is_plain_cleanup() -> None:
    _, out = begin(opening(), None)
    assert kinds(out) == [PhoneReported, InteractionFinished]
    assert outcome(out) is Outcome.NO_JOB


# --- verify-only jobs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", [Reason.SOLICITED, Reason.START_UP])
def test_verify_job_only_reads(reason: Reason) -> None:
    inter, out = begin(opening(reason), Job.verify(11, MAC))
    assert out.reply == DLSMessage("N1", Action.READ_ITEMS, (Item("wbm-server-certificate-info"),))
    assert not inter.write_sent
    out = send(
        inter,
        reply(Action.READ_ITEMS, ReplyStatus.ACCEPTED, "N2", items=(Item("wbm-server-certificate-info", INFO),)),
    )
    assert out.effects == (CertificateInfoReceived(11, INFO, None), InteractionFinished(Outcome.COMPLETED))


def test_verify_job_rejects_write_reply() -> None:
    inter, _ = begin(opening(), Job.verify(11, MAC))
    out = send(inter, reply(Action.WRITE_ITEMS, ReplyStatus.ACCEPTED, "N2"))
    assert kinds(out) == [ProtocolViolation, InteractionFinished]


# --- Job -------------------------------------------------------------------------------------------------
def test_job_validation_and_repr() -> None:
    job = write_job(password=True)
    assert job.mode is JobMode.WRITE
    assert P12 not in repr(job)
    assert PASSWORD not in repr(job)
    assert Job(1, "001ae8123456", "verify").mac == MAC  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        Job(1, "not-a-mac", JobMode.VERIFY)
    with pytest.raises(ProtocolError):
        Job(1, MAC, JobMode.WRITE)
    with pytest.raises(ProtocolError):
        Job(1, MAC, JobMode.VERIFY, (Item("x", "y"),))
    with pytest.raises(ProtocolError):
        Job.certificate(1, MAC, "  ")


def test_replies_hide_secrets_in_repr() -> None:
    _, out = begin(opening(max_items=None), write_job(password=True))
    assert P12 not in repr(out.reply)
    assert PASSWORD not in repr(out.reply)


# --- properties ------------------------------------------------------------------------------------------
_any_msg = st.builds(
    wp,
    reason=st.sampled_from([*list(Reason), "odd"]),
    nonce=st.text(st.sampled_from("0123456789ABCDEF"), min_size=1, max_size=8),
    items=st.lists(
        st.sampled_from(
            [
                Item("mac-addr", MAC),
                Item("mac-addr", OTHER_MAC),
                Item("wbm-server-certificate-info", INFO),
                Item("wbm-server-certificate", None, status="failed"),
                Item("cleanup-reason", "x"),
            ]
        ),
        max_size=3,
    ).map(tuple),
    action=st.sampled_from([None, *list(Action), "Odd"]),
    status=st.sampled_from([None, *list(ReplyStatus)]),
    fragment=st.sampled_from([None, *list(Fragment)]),
    max_items=st.sampled_from([None, -1, 1, 2]),
)


@settings(max_examples=300, deadline=None)
@given(
    first=_any_msg,
    rest=st.lists(_any_msg, max_size=8),
    mode=st.sampled_from(["none", "write", "verify", "defer", "refuse"]),
)
def test_any_sequence_is_handled(first: WorkpointMessage, rest: list[WorkpointMessage], mode: str) -> None:
    admissions: dict[str, Admission] = {
        "none": NoJob(),
        "write": Serve(write_job(password=True)),
        "verify": Serve(Job.verify(3, MAC)),
        "defer": Defer(3),
        "refuse": Refuse("test", 3),
    }
    inter, out = begin(first, admissions[mode])
    outputs = [out]
    for msg in rest:
        outputs.append(send(inter, msg))
    wrote = any(o.reply.action is Action.WRITE_ITEMS for o in outputs)
    if wrote:
        assert mode == "write"  # keys only for a served write job
    finishes = [e for o in outputs for e in o.effects if isinstance(e, InteractionFinished)]
    assert len(finishes) <= 1
    assert finishes == [] or inter.finished


def _walk(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [s for f in dataclasses.fields(value) for s in _walk(getattr(value, f.name))]
    if isinstance(value, tuple | list):
        return [s for v in value for s in _walk(v)]
    return []


def assert_no_secret(effects: tuple[Effect, ...]) -> None:
    """No effect carries the PKCS#12 or the password, neither in a field nor in its repr."""
    for effect in effects:
        texts = [repr(effect), *_walk(effect)]
        assert not any(P12 in t or PASSWORD in t or "PKCS12-SECRET" in t for t in texts), type(effect)


def test_pkcs12_never_in_effects_on_any_path() -> None:
    """Every test goes through ``check`` (which calls :func:`assert_no_secret`); this one makes the point
    explicitly for the paths where the write items are in flight."""
    effects: list[Effect] = []
    for status in (ReplyStatus.ACCEPTED, ReplyStatus.FAILED, ReplyStatus.BUSY, None):
        inter, out = start(opening(max_items=1), Serve(write_job(password=True)))
        effects.extend(out.effects)
        items = (Item("wbm-server-certificate", P12, status="failed"),)
        effects.extend(inter.receive(reply(Action.WRITE_ITEMS, status, "N2", items=items)).effects)
    assert any(isinstance(e, WriteRejected) for e in effects)
    assert_no_secret(tuple(effects))
