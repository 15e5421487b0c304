"""WPI — the OpenStage / OpenScape Desk Phone provisioning interface (DLS protocol), sans-I/O.

* :mod:`certmgr.wpi.messages` — frozen message dataclasses and enums;
* :mod:`certmgr.wpi.codec` — bytes ↔ messages (defusedxml, size-capped, namespace-checked);
* :mod:`certmgr.wpi.interaction` — the server-side state machine for one interaction;
* :mod:`certmgr.wpi.certinfo` — lenient parsing and judging of ``wbm-server-certificate-info`` (D6);
* :mod:`certmgr.wpi.contactme` — the contact-me form and ``contact-me-uri`` (D4).

The HTTP adapters (FastAPI route, httpx contact-me client) live elsewhere and stay thin.
"""

from certmgr.wpi.certinfo import (
    CertInfo,
    ExpectedCert,
    InfoVerdict,
    format_certificate_info,
    judge_certificate_info,
    parse_certificate_info,
)
from certmgr.wpi.codec import MAX_BODY, encode_dls, encode_workpoint, parse_dls, parse_workpoint
from certmgr.wpi.contactme import (
    ContactMeRequest,
    ContactMeTarget,
    build_contact_me,
    parse_contact_me,
    parse_contact_me_uri,
)
from certmgr.wpi.interaction import (
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
    start,
)
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
    "CertInfo",
    "CertificateInfoReceived",
    "ContactMeRequest",
    "ContactMeTarget",
    "DLSMessage",
    "Effect",
    "ExpectedCert",
    "Fragment",
    "InfoVerdict",
    "Interaction",
    "InteractionFinished",
    "Item",
    "Job",
    "JobMode",
    "Outcome",
    "Output",
    "PhoneBusy",
    "PhoneCleanedUp",
    "PhoneReported",
    "ProtocolViolation",
    "Reason",
    "ReplyStatus",
    "SecurityRefused",
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
