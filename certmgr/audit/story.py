"""The log tells each phone's story: one line per meaningful event, taken from the audit log after it commits.

Every change certmgr makes is audited in the transaction that makes it (:func:`certmgr.audit.log.append_events`).
The same events, once their transaction **commits**, become log lines through :data:`STORY` — so the log never
tells of something that was rolled back, and no place in the code has to remember to log what it audits:

* ``INFO`` for what an operator follows: a phone registered, enrolled or awaiting approval, a certificate issued,
  contact-me sent, the certificate written and verified, a deployment retried or failed with its reason, drift,
  rollback, a CA registered (rotation);
* ``WARNING`` for what needs a look: a refused phone message (D10), a phone reporting from an unexpected address;
* everything else audited at ``DEBUG``.

Each line names the phone (MAC) or the CA, and carries ``action`` / ``mac`` / ``ca`` / ``deployment`` / ``serial``
as ``extra`` fields (the JSON log format shows them as keys). Only the detail fields named in a template are used;
audit details never hold key material or passwords (:data:`certmgr.audit.log.SECRET_KEYS`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger("certmgr.story")

_PENDING = "certmgr.story"


@dataclass(frozen=True)
class Line:
    """How one audit action is told: level and a message template over the event's fields."""

    level: int
    template: str


INFO, WARNING = logging.INFO, logging.WARNING

#: audit action → how it is told. Template fields: ``subject`` (the event's subject id), ``actor`` and any detail.
STORY: Mapping[str, Line] = {
    "device.discovered": Line(INFO, "phone {subject} registered itself ({reason}), policy {policy}, {enrollment}"),
    "device.registered": Line(INFO, "phone {subject} registered by {actor} at {ip}, policy {policy}, {enrollment}"),
    "device.approval-pending": Line(INFO, "phone {subject} awaits approval (policy {policy})"),
    "device.approved": Line(INFO, "phone {subject} approved by {actor}"),
    "device.decommissioned": Line(INFO, "phone {subject} decommissioned by {actor}"),
    "device.ip-changed": Line(INFO, "phone {subject} moved from {old} to {new}"),
    "device.drift": Line(INFO, "phone {subject} serves another certificate than certmgr deployed (drift)"),
    "device.flagged": Line(INFO, "phone {subject} flagged: {reason}"),
    "device.address-mismatch": Line(WARNING, "phone {subject}: message from {peer} names address {contact_me_ip}"),
    "certificate.issued": Line(INFO, "phone {mac}: certificate {subject} issued ({reason}), valid until {not_after}"),
    "certificate.issue-failed": Line(INFO, "phone {subject}: certificate could not be issued: {reason}"),
    "certificate.revoked": Line(INFO, "phone {mac}: certificate {subject} revoked ({reason}) by {actor}"),
    "deployment.contacted": Line(INFO, "phone {mac}: contact-me sent (deployment {subject})"),
    "deployment.contact-failed": Line(INFO, "phone {mac}: contact-me failed: {reason}"),
    "deployment.written": Line(INFO, "phone {mac}: certificate written (deployment {subject}, profile {profile})"),
    "deployment.write-confirmed": Line(INFO, "phone {mac}: already held the certificate (deployment {subject})"),
    "deployment.verified": Line(INFO, "phone {mac}: certificate {serial} verified (deployment {subject})"),
    "deployment.retry": Line(INFO, "phone {mac}: attempt {attempts} failed ({reason}); next at {next_attempt_at}"),
    "deployment.failed": Line(INFO, "phone {mac}: deployment {subject} failed: {reason}"),
    "deployment.rollback": Line(INFO, "phone {mac}: rolling back to certificate {serial} (deployment {subject})"),
    "deployment.rollback-impossible": Line(INFO, "phone {mac}: cannot roll back: {reason}"),
    "ca.registered": Line(INFO, "CA {subject_dn} registered as the active {role} CA (sha256 {subject})"),
    "ca.imported": Line(INFO, "CA {subject_dn} imported as the active {role} CA (sha256 {subject})"),
    "wpi.refused": Line(WARNING, "phone {subject}: message from {peer} refused (D10): {reason}"),
    "device.address-claim": Line(WARNING, "phone {subject}: a message from {peer} claims it moved to {claimed}"),
    "device.moved": Line(INFO, "phone {subject} moved to {to}: {proof}"),
    "device.move-held": Line(WARNING, "phone {subject}: move from {from} to {to} held for approval: {reason}"),
    "device.move-approved": Line(INFO, "phone {subject}: move from {from} to {to} approved by {actor}"),
    "device.move-withdrawn": Line(INFO, "phone {subject} reported from its known address; move to {pending} dropped"),
}


class _Fields(dict[str, Any]):
    """Template fields; a field the event does not carry renders as ``-``."""

    def __missing__(self, key: str) -> str:
        return "-"


@dataclass(frozen=True)
class Told:
    """One committed audit event, as much of it as the story needs."""

    actor: str
    action: str
    subject_id: str
    details: Mapping[str, Any]


def remember(session: Session, events: Sequence[Told]) -> None:
    """Keep ``events`` with the session; they are told when (and only if) its transaction commits."""
    session.info.setdefault(_PENDING, []).extend(events)


def tell(told: Told) -> None:
    """Log one event as :data:`STORY` says (``DEBUG`` for actions it does not list)."""
    line = STORY.get(told.action)
    details = dict(told.details)
    fields = _Fields(details)
    fields.update(subject=told.subject_id, actor=told.actor)
    fields.setdefault("subject_dn", details.get("subject", "-"))
    extra = {"action": told.action}
    for key in ("mac", "deployment", "serial"):
        if key in details:
            extra[key] = str(details[key])
    if told.action.startswith(("device.", "wpi.")):
        extra["mac"] = told.subject_id
    elif told.action.startswith("ca."):
        extra["ca"] = told.subject_id
    elif told.action.startswith("deployment."):
        extra["deployment"] = told.subject_id
    if line is None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s", told.action, told.subject_id, extra.get("mac", ""), extra=extra)
        return
    if log.isEnabledFor(line.level):
        log.log(line.level, line.template.format_map(fields), extra=extra)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for told in session.info.pop(_PENDING, ()):
        tell(told)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, _previous: Any) -> None:
    if not session.in_transaction():  # the whole transaction was rolled back (not a savepoint)
        session.info.pop(_PENDING, None)


__all__ = ["STORY", "Line", "Told", "remember", "tell"]
