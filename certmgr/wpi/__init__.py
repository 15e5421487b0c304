"""WPI — the OpenStage / OpenScape Desk Phone provisioning interface (DLS protocol), sans-I/O.

* :mod:`certmgr.wpi.messages` — frozen message dataclasses and enums;
* :mod:`certmgr.wpi.codec` — bytes ↔ messages (defusedxml, size-capped, namespace-checked);
* :mod:`certmgr.wpi.jobs` — what certmgr asks of an interaction (job) and the D10 admission decision;
* :mod:`certmgr.wpi.effects` — what an interaction asks the adapter to apply;
* :mod:`certmgr.wpi.interaction` — the server-side state machine for one interaction;
* :mod:`certmgr.wpi.certinfo` — lenient parsing of ``wbm-server-certificate-info`` (D6);
* :mod:`certmgr.wpi.certjudge` — judging it against the deployed certificate (D6);
* :mod:`certmgr.wpi.contactme` — the contact-me form and ``contact-me-uri`` (D4).

Nothing here does I/O: the phone-facing adapters (listeners, interaction hub, contact-me client, TLS probe) are
:mod:`certmgr.phones`.
"""

from certmgr.wpi.certinfo import CertInfo, ExpectedCert, InfoVerdict, parse_certificate_info
from certmgr.wpi.certjudge import format_certificate_info, judge_certificate_info
from certmgr.wpi.codec import MAX_BODY, encode_dls, encode_workpoint, parse_dls, parse_workpoint
from certmgr.wpi.contactme import (
    ContactMeRequest,
    ContactMeTarget,
    build_contact_me,
    parse_contact_me,
    parse_contact_me_uri,
)
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
)
from certmgr.wpi.interaction import Interaction, Output, State, start
from certmgr.wpi.jobs import Admission, Defer, Job, JobMode, NoJob, Refuse, Serve
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
    cleanup_message,
)

__all__ = [
    "MAX_BODY",
    "Action",
    "Admission",
    "CertInfo",
    "CertificateInfoReceived",
    "ContactMeRequest",
    "ContactMeTarget",
    "DLSMessage",
    "Defer",
    "Effect",
    "ExpectedCert",
    "Fragment",
    "InfoVerdict",
    "Interaction",
    "InteractionFinished",
    "Item",
    "Job",
    "JobMode",
    "NoJob",
    "Outcome",
    "Output",
    "PhoneBusy",
    "PhoneCleanedUp",
    "PhoneReported",
    "ProtocolViolation",
    "Reason",
    "Refuse",
    "ReplyStatus",
    "SecurityRefused",
    "Serve",
    "State",
    "UnknownAction",
    "UnknownReason",
    "WorkpointMessage",
    "WriteAccepted",
    "WriteRejected",
    "build_contact_me",
    "cleanup_message",
    "encode_dls",
    "encode_workpoint",
    "format_certificate_info",
    "judge_certificate_info",
    "parse_certificate_info",
    "parse_contact_me",
    "parse_contact_me_uri",
    "parse_dls",
    "parse_workpoint",
    "start",
]
