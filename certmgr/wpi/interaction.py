"""The server side of one WPI interaction as a pure state machine (sans-I/O, in the style of h11).

One :class:`Interaction` covers one phone from its first ``WorkpointMessage`` to certmgr's ``CleanUp``. The
adapter (HTTP route) parses the request body, finds the interaction (cookie first, then MAC, D3) or calls
:func:`start`, feeds the message in and gets an :class:`Output` back: the ``DLSMessage`` to return as the HTTP
response, the :data:`~certmgr.wpi.effects.Effect` records to apply (database, audit), and whether the
interaction is over (then invalidate the cookie, D3). Nothing here does I/O, reads the clock or logs.

Decisions made here (see the protocol doc §5, §6.1, §9, §12):

* **D2** every reply repeats the nonce of the message it answers; none is ever invented.
* **D10** is not decided here: :func:`start` takes the adapter's :data:`~certmgr.wpi.jobs.Admission`
  (:func:`certmgr.deploy.admission.decide` is its one home) and carries it out — :class:`~certmgr.wpi.jobs.Serve`
  runs the job, :class:`~certmgr.wpi.jobs.Defer` and :class:`~certmgr.wpi.jobs.NoJob` answer ``CleanUp``,
  :class:`~certmgr.wpi.jobs.Refuse` answers ``CleanUp`` with a :class:`~certmgr.wpi.effects.SecurityRefused`.
* **D9** every opening message (start-up, local-changes, inventory-changes, status, solicited) emits
  :class:`~certmgr.wpi.effects.PhoneReported` first; credential-like items (``user-pwd`` …) are dropped from it
  (§8 (c)).
* **maxItems** (§4.2, §5.3): the job's write items go out in order, at most ``maxItems`` per ``WriteItems`` of
  the message being answered, one ``reply-to`` each. §5.3 says items that belong together should not be split;
  with ``maxItems=1`` that is impossible, so the order matters: :meth:`~certmgr.wpi.jobs.Job.certificate` puts
  the PKCS#12 password item (D7) *before* the certificate, so that a phone that imports items as they arrive
  already has the password when the container arrives. A batch that would exceed 50 kB (D8) is not sent; the
  write is rejected instead.
* **Errors** (§4.2, §5.5): a write counts as accepted only with ``status="accepted"`` *and* no ``status``
  attribute on any item of the reply (the Guide's error examples keep ``accepted`` at message level). A write
  reply without any ``status`` is a protocol violation (the write's fate is unknown: see
  :attr:`Interaction.write_sent`). A read reply without ``status`` is taken as accepted — it carries data, not
  a verdict.
* **reply-to or status** (open question 6): both are accepted as the answer to our action; a missing
  ``action`` attribute means "the action we sent", a different one is a violation.
* **Fragments** (§5.3): ``fragment="next"`` → ``GetNextFragment``; items accumulate until a message without
  ``next``; the combined message keeps reason/action/status of the *first* fragment and the nonce of the last.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import assert_never

from certmgr.errors import ProtocolError
from certmgr.wpi.certinfo import InfoVerdict, parse_certificate_info
from certmgr.wpi.certjudge import judge_certificate_info
from certmgr.wpi.codec import encode_dls
from certmgr.wpi.effects import (
    CertificateInfoReceived,
    Effect,
    InteractionFinished,
    Outcome,
    PhoneBusy,
    PhoneCleanedUp,
    PhoneReported,
    ProtocolViolation,
    SecurityRefused,
    WriteAccepted,
    WriteRejected,
    WriteSent,
)
from certmgr.wpi.jobs import Admission, Defer, Job, JobMode, NoJob, Refuse, Serve
from certmgr.wpi.messages import (
    ITEM_CLEANUP_REASON,
    MAX_MESSAGE_SIZE,
    Action,
    DLSMessage,
    Fragment,
    Item,
    Reason,
    ReplyStatus,
    UnknownAction,
    UnknownReason,
    WorkpointMessage,
    cleanup_message,
    is_sensitive_item_name,
)

#: Limits on a fragmented phone message (the phone splits at 50 kB, so real messages need few fragments).
MAX_FRAGMENTS = 64
MAX_COLLECTED_ITEMS = 10_000

#: Reasons that open an interaction. The adapter should call :func:`start` (not ``receive``) for such a
#: message when it arrives without the interaction's cookie: "a new message flow begins whenever a new
#: connection to the service is opened" ([G p.33]).
OPENING_REASONS = frozenset(
    {Reason.START_UP, Reason.LOCAL_CHANGES, Reason.INVENTORY_CHANGES, Reason.STATUS, Reason.SOLICITED}
)
_REPLY_REASONS = frozenset({Reason.REPLY_TO, Reason.STATUS})


class State(StrEnum):
    """Where the interaction stands."""

    OPENING = "opening"  # waiting for (the rest of) the first message
    AWAITING_WRITE_REPLY = "awaiting-write-reply"
    AWAITING_READ_REPLY = "awaiting-read-reply"
    FINISHED = "finished"


@dataclass(frozen=True)
class Output:
    """What to do after one phone message: send ``reply``, apply ``effects``; if ``finished``, drop the
    interaction and invalidate its session cookie (D3)."""

    reply: DLSMessage
    effects: tuple[Effect, ...]
    finished: bool


# --- the state machine ------------------------------------------------------------------------------------
class Interaction:
    """One interaction. Create it with :func:`start`; feed each further phone message to :meth:`receive`."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._job = admission.job if isinstance(admission, Serve) else None
        self._state = State.OPENING
        self._mac: str | None = None
        self._fragments: list[WorkpointMessage] = []
        self._pending: tuple[Item, ...] = ()
        self._batch: tuple[Item, ...] = ()
        self._write_sent = False
        self._write_accepted = False
        self._checking = False
        self._outcome: Outcome | None = None

    # -- read-only view --
    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def finished(self) -> bool:
        """True once certmgr sent its final ``CleanUp``."""
        return self._state is State.FINISHED

    @property
    def outcome(self) -> Outcome | None:
        """The outcome once finished, else ``None``."""
        return self._outcome

    @property
    def mac(self) -> str | None:
        """The phone's MAC from the opening message (normalised), if it sent one."""
        return self._mac

    @property
    def job(self) -> Job | None:
        """The job this interaction serves, if any."""
        return self._job

    @property
    def write_sent(self) -> bool:
        """True once at least one ``WriteItems`` went out (the phone may have applied it)."""
        return self._write_sent

    @property
    def write_accepted(self) -> bool:
        """True once the phone accepted every ``WriteItems`` of the job."""
        return self._write_accepted

    # -- input --
    def receive(self, msg: WorkpointMessage) -> Output:
        """Process one phone message and return the reply and effects.

        Never raises for anything the phone sends: problems become :class:`ProtocolViolation` plus
        ``CleanUp``. After the interaction finished, every message gets ``CleanUp`` and a
        :class:`ProtocolViolation`.

        Raises:
            ProtocolError: never for phone input (kept for the ``Raises:`` convention).
        """
        if self._state is State.FINISHED:
            return Output(
                cleanup_message(msg.nonce, reason="interaction finished"),
                (ProtocolViolation("message after the interaction finished"),),
                True,
            )
        if self._mac is not None and msg.mac is not None and msg.mac != self._mac:
            return self._violation(msg, "mac-addr differs from the one this interaction started with")
        if msg.reason is Reason.CLEAN_UP:
            return self._finish(
                cleanup_message(msg.nonce),
                [PhoneCleanedUp(msg.value(ITEM_CLEANUP_REASON))],
                Outcome.PHONE_CLEANUP,
            )
        if self._state is not State.OPENING:
            problem = self._check_reply(msg)
            if problem is not None:
                return self._violation(msg, problem)
        elif self._mac is None:
            self._mac = msg.mac

        if msg.fragment is Fragment.NEXT:
            self._fragments.append(msg)
            if len(self._fragments) > MAX_FRAGMENTS or (
                sum(len(m.items) for m in self._fragments) > MAX_COLLECTED_ITEMS
            ):
                return self._violation(msg, "too many fragments")
            return Output(DLSMessage(msg.nonce, Action.GET_NEXT_FRAGMENT), (), False)
        if self._fragments:
            first = self._fragments[0]
            items = tuple(it for m in self._fragments for it in m.items) + msg.items
            self._fragments = []
            msg = replace(first, nonce=msg.nonce, items=items, fragment=Fragment.FINAL)

        if self._state is State.OPENING:
            return self._open(msg)
        if self._state is State.AWAITING_WRITE_REPLY:
            return self._on_write_reply(msg)
        return self._on_read_reply(msg)

    # -- helpers --
    def _expected_action(self) -> Action:
        return Action.WRITE_ITEMS if self._state is State.AWAITING_WRITE_REPLY else Action.READ_ITEMS

    def _check_reply(self, msg: WorkpointMessage) -> str | None:
        reason = msg.reason
        if isinstance(reason, UnknownReason):
            return "unknown reason for contact"
        if reason not in _REPLY_REASONS:
            return f"unexpected reason {reason.value} during an interaction"
        action = msg.reply_action
        if action is None or action == self._expected_action():
            return None
        if action is Action.GET_NEXT_FRAGMENT and self._fragments:
            return None  # a continuation fragment may name the GetNextFragment it answers
        if isinstance(action, UnknownAction):
            return "reply to an unknown action"
        return f"reply to {action.value}, which was not sent"

    def _finish(self, reply: DLSMessage, effects: list[Effect], outcome: Outcome) -> Output:
        self._state = State.FINISHED
        self._outcome = outcome
        self._fragments = []
        self._pending = ()
        self._batch = ()
        return Output(reply, (*effects, InteractionFinished(outcome)), True)

    def _violation(self, msg: WorkpointMessage, reason: str, effects: list[Effect] | None = None) -> Output:
        return self._finish(
            cleanup_message(msg.nonce, reason="protocol error"),
            [*(effects or []), ProtocolViolation(reason)],
            Outcome.VIOLATION,
        )

    def _open(self, msg: WorkpointMessage) -> Output:
        reason = msg.reason
        if isinstance(reason, UnknownReason):
            return self._violation(msg, "unknown reason for contact")
        if reason not in OPENING_REASONS:
            return self._violation(msg, f"{reason.value} without an interaction")
        self._mac = msg.mac
        effects: list[Effect] = [
            PhoneReported(reason, msg.mac, tuple(it for it in msg.items if not is_sensitive_item_name(it.name)))
        ]
        admission = self._admission
        match admission:
            case NoJob():
                return self._finish(cleanup_message(msg.nonce), effects, Outcome.NO_JOB)
            case Defer():
                return self._finish(cleanup_message(msg.nonce), effects, Outcome.DEFERRED)
            case Refuse(reason=why, deployment_id=deployment_id):
                effects.append(SecurityRefused(why, deployment_id))
                return self._finish(cleanup_message(msg.nonce, reason="not authorised"), effects, Outcome.REFUSED)
            case Serve(job=job):
                if msg.mac is None:
                    return self._violation(msg, "opening message without a valid mac-addr", effects)
                if msg.mac != job.mac:
                    return self._violation(msg, "mac-addr does not match the job", effects)
                if job.mode is JobMode.VERIFY or job.check_first is not None:
                    self._checking = job.check_first is not None
                    return self._send_read(msg, effects)
                self._pending = job.write_items
                return self._send_write(msg, effects)
            case _:
                assert_never(admission)

    def _send_write(self, msg: WorkpointMessage, effects: list[Effect]) -> Output:
        assert self._job is not None
        limit = msg.item_limit or len(self._pending)
        batch, rest = self._pending[:limit], self._pending[limit:]
        reply = DLSMessage(msg.nonce, Action.WRITE_ITEMS, batch)
        try:
            too_large = len(encode_dls(reply)) > MAX_MESSAGE_SIZE
        except ProtocolError:
            return self._reject(msg, effects, "job items cannot be encoded as XML", None)
        if too_large:
            return self._reject(msg, effects, f"WriteItems would exceed {MAX_MESSAGE_SIZE} bytes", None)
        self._batch, self._pending = batch, rest
        self._write_sent = True
        self._state = State.AWAITING_WRITE_REPLY
        return Output(reply, (*effects, WriteSent(self._job.deployment_id)), False)

    def _send_read(self, msg: WorkpointMessage, effects: list[Effect]) -> Output:
        assert self._job is not None
        self._state = State.AWAITING_READ_REPLY
        reply = DLSMessage(msg.nonce, Action.READ_ITEMS, (Item(self._job.info_item),))
        return Output(reply, tuple(effects), False)

    def _reject(self, msg: WorkpointMessage, effects: list[Effect], reason: str, status: str | None) -> Output:
        assert self._job is not None
        effects.append(WriteRejected(self._job.deployment_id, reason, status))
        return self._finish(cleanup_message(msg.nonce, reason="certificate rejected"), effects, Outcome.REJECTED)

    def _busy(self, msg: WorkpointMessage) -> Output:
        assert self._job is not None
        return self._finish(
            cleanup_message(msg.nonce, send_solicited=True),
            [PhoneBusy(self._job.deployment_id)],
            Outcome.BUSY,
        )

    def _on_write_reply(self, msg: WorkpointMessage) -> Output:
        assert self._job is not None
        status = msg.reply_status
        if status is ReplyStatus.BUSY:
            return self._busy(msg)
        failing = [it for it in msg.items if it.status is not None]
        ours = {it.name for it in self._batch}
        failing.sort(key=lambda it: it.name not in ours)  # our own items' status first
        item_status = failing[0].status if failing else None
        if status is ReplyStatus.FAILED:
            return self._reject(msg, [], "phone answered WriteItems with failed", item_status)
        if status is None:
            return self._violation(msg, "reply to WriteItems without a status")
        if failing:
            name = failing[0].name
            return self._reject(msg, [], f"phone refused item {name}: {item_status}", item_status)
        if self._pending:
            return self._send_write(msg, [])
        self._write_accepted = True
        return self._send_read(msg, [WriteAccepted(self._job.deployment_id)])

    def _on_read_reply(self, msg: WorkpointMessage) -> Output:
        assert self._job is not None
        status = msg.reply_status
        if status is ReplyStatus.BUSY:
            return self._busy(msg)
        item = msg.item(self._job.info_item)
        raw = item.value if item is not None else None
        item_status = item.status if item is not None else None
        if status is ReplyStatus.FAILED:
            raw, item_status = None, item_status or ReplyStatus.FAILED.value
        effect = CertificateInfoReceived(self._job.deployment_id, raw, item_status)
        if self._checking:  # an earlier write's outcome was unknown: write only if the phone lacks the certificate
            self._checking = False
            expected = self._job.check_first
            assert expected is not None
            if raw is None or judge_certificate_info(parse_certificate_info(raw), expected) is not InfoVerdict.VERIFIED:
                self._pending = self._job.write_items
                return self._send_write(msg, [])
            self._write_accepted = True
            accepted = WriteAccepted(self._job.deployment_id, already_present=True)
            return self._finish(cleanup_message(msg.nonce), [accepted, effect], Outcome.COMPLETED)
        return self._finish(cleanup_message(msg.nonce), [effect], Outcome.COMPLETED)


def start(msg: WorkpointMessage, admission: Admission) -> tuple[Interaction, Output]:
    """Open an interaction with the phone's first message and the adapter's admission decision for it (the job
    to serve, a deferral, a refusal, or nothing; see :mod:`certmgr.wpi.jobs`).

    Raises:
        ProtocolError: never for phone input (problems become effects).
    """
    interaction = Interaction(admission)
    return interaction, interaction.receive(msg)


__all__ = [
    "MAX_COLLECTED_ITEMS",
    "MAX_FRAGMENTS",
    "OPENING_REASONS",
    "Admission",
    "CertificateInfoReceived",
    "Defer",
    "Effect",
    "Interaction",
    "InteractionFinished",
    "Job",
    "JobMode",
    "NoJob",
    "Outcome",
    "Output",
    "PhoneBusy",
    "PhoneCleanedUp",
    "PhoneReported",
    "ProtocolViolation",
    "Refuse",
    "SecurityRefused",
    "Serve",
    "State",
    "WriteAccepted",
    "WriteRejected",
    "WriteSent",
    "start",
]
