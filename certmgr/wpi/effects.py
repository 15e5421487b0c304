"""The effects of an interaction: what the adapter applies (database, audit) after each phone message. Pure data.

Every :data:`Effect` type must be handled by the adapter; :mod:`certmgr.deploy.effects` consumes them with one
``match`` whose ``assert_never`` makes a forgotten type a type-checking error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certmgr.wpi.messages import Item, Reason


class Outcome(StrEnum):
    """How an interaction ended (carried by :class:`InteractionFinished`)."""

    COMPLETED = "completed"  # the job ran to the end: info read back (CertificateInfoReceived was emitted)
    NO_JOB = "no-job"  # nothing pending for the phone: report taken, CleanUp
    DEFERRED = "deferred"  # a write job is pending but the phone called on its own (D10): contact-me later
    BUSY = "busy"  # phone busy: CleanUp + send-solicited, the job stays pending
    REJECTED = "rejected"  # the phone refused the write (or it could not be sent)
    PHONE_CLEANUP = "phone-cleanup"  # the phone ended the interaction itself
    REFUSED = "refused"  # D10 refusal
    VIOLATION = "violation"  # protocol violation


@dataclass(frozen=True)
class PhoneReported:
    """An opening message's inventory data (D9); credential-like items removed."""

    reason: Reason
    mac: str | None
    items: tuple[Item, ...]


@dataclass(frozen=True)
class WriteSent:
    """A ``WriteItems`` carrying the job's items goes out with this reply: until the phone answers, the write's
    outcome is unknown (record it before the reply leaves)."""

    deployment_id: int


@dataclass(frozen=True)
class WriteAccepted:
    """The phone accepted every ``WriteItems`` of the job — or, for a job that checked first, already held the
    certificate (``already_present``: an earlier write whose answer certmgr never got had landed)."""

    deployment_id: int
    already_present: bool = False


@dataclass(frozen=True)
class WriteRejected:
    """The phone refused the write (message ``failed`` or an item ``status``), or it could not be sent."""

    deployment_id: int
    reason: str
    item_status: str | None


@dataclass(frozen=True)
class PhoneBusy:
    """The phone answered ``busy``; certmgr sent ``send-solicited``; the job stays pending (§5.4)."""

    deployment_id: int


@dataclass(frozen=True)
class CertificateInfoReceived:
    """The answer to ``ReadItems``: the raw info value (verbatim, D6) or ``None``, and the item's status."""

    deployment_id: int
    raw: str | None
    item_status: str | None


@dataclass(frozen=True)
class PhoneCleanedUp:
    """The phone sent ``clean-up``; ``reason`` is its ``cleanup-reason``."""

    reason: str | None


@dataclass(frozen=True)
class SecurityRefused:
    """D10: a pending job was not served in this interaction; worth an audit record."""

    reason: str
    deployment_id: int | None = None


@dataclass(frozen=True)
class ProtocolViolation:
    """The phone did something the protocol (or this state machine) does not allow."""

    reason: str


@dataclass(frozen=True)
class InteractionFinished:
    """Last effect of every interaction."""

    outcome: Outcome


Effect = (
    PhoneReported
    | WriteSent
    | WriteAccepted
    | WriteRejected
    | PhoneBusy
    | CertificateInfoReceived
    | PhoneCleanedUp
    | SecurityRefused
    | ProtocolViolation
    | InteractionFinished
)


__all__ = [
    "CertificateInfoReceived",
    "Effect",
    "InteractionFinished",
    "Outcome",
    "PhoneBusy",
    "PhoneCleanedUp",
    "PhoneReported",
    "ProtocolViolation",
    "SecurityRefused",
    "WriteAccepted",
    "WriteRejected",
    "WriteSent",
]
