"""Generating reports as evidence — the one path the CLI, the API, the scheduled exports and the evidence pack
share:

1. :func:`report_context` collects the evidence (audit chain verdict, last event, last checkpoint) *before* any
   row is read, with who asks and how, and the presentation settings (time zone, fonts);
2. the report is rendered and signed (:func:`certmgr.reports.manifest.export_report` /
   :func:`~certmgr.reports.manifest.render_signed`), its summary tallied on the way;
3. :func:`record_exports` appends one ``report.exported`` audit event per file, naming its SHA-256 and the last
   audit event it reflects — so generating a report is itself in the chain, after the events it reflects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.reports.evidence import EXPORT_ACTION, collect_evidence
from certmgr.reports.render import RenderContext

if TYPE_CHECKING:
    from certmgr.audit.checkpoint import AuditVerifier
    from certmgr.runtime import Runtime

__all__ = ["ExportRecord", "export_record", "record_exports", "report_context"]


def report_context(
    runtime: Runtime, session: Session, verifier: AuditVerifier | None, *, now: datetime, actor: str, via: str
) -> RenderContext:
    """The :class:`RenderContext` of reports generated now by ``actor`` through ``via``: the evidence read from
    ``session`` (before the rows), the report time zone and fonts from the settings.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: if the database cannot be read.
    """
    evidence = collect_evidence(session, verifier, generated_at=now, generated_by=actor, via=via)
    return RenderContext.from_settings(runtime.settings, evidence)


@dataclass(frozen=True)
class ExportRecord:
    """One generated file, as its audit event records it."""

    kind: str
    format: str
    file: str
    sha256: str
    rows: int
    via: str
    reflects_seq: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "file": self.file,
            "sha256": self.sha256,
            "rows": self.rows,
            "via": self.via,
            "reflects_seq": self.reflects_seq,
            **self.extra,
        }


def export_record(doc: dict[str, Any], file: str, via: str, **extra: Any) -> ExportRecord:
    """The :class:`ExportRecord` of a signed manifest ``doc`` written as ``file``."""
    evidence = doc.get("evidence") or {}
    last = evidence.get("last_event")
    return ExportRecord(
        kind=str(doc["kind"]),
        format=str(doc["format"]),
        file=file,
        sha256=str(doc["sha256"]),
        rows=int(doc["rows"]),
        via=via,
        reflects_seq=None if last is None else int(last["seq"]),
        extra=extra,
    )


def record_exports(runtime: Runtime, at: datetime, actor: str, records: Sequence[ExportRecord]) -> None:
    """Append one ``report.exported`` event per record (one transaction).

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    with session_scope(runtime.engine) as session:
        append_events(
            session,
            at,
            [NewEvent(actor, EXPORT_ACTION, "report", r.kind, r.details()) for r in records],
        )
