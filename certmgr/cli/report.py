"""``certmgr report``: export a report with its signed manifest, and verify an export."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

report_app = typer.Typer(help="Audit evidence: signed report exports (CSV, JSON, PDF).", no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)
EXPORT_BROKEN = 1

FormatOpt = Annotated[str, typer.Option("--format", help="csv | json | pdf")]
OutOpt = Annotated[Path, typer.Option("--out", help="File to write; FILE.manifest.json is written beside it.")]
SinceOpt = Annotated[datetime | None, typer.Option(help="From (UTC if no zone given).")]
UntilOpt = Annotated[datetime | None, typer.Option(help="Before (UTC if no zone given).")]


def _utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _export(kind: str, fmt: str, out: Path, **params: object) -> None:
    from sqlmodel import Session

    from certmgr.audit.checkpoint import runtime_signer
    from certmgr.audit.log import append_event
    from certmgr.db.engine import session_scope
    from certmgr.reports.manifest import export_report, manifest_path
    from certmgr.reports.queries import ReportParams, build_report, parse_kind
    from certmgr.reports.render import parse_format
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    report_kind, report_format = parse_kind(kind), parse_format(fmt)
    report_params = ReportParams(**params)  # type: ignore[arg-type]
    runtime = open_runtime(load_settings())
    try:
        signer = runtime_signer(runtime)
        now = runtime.clock.now()
        spec = build_report(report_kind, report_params, now)
        with Session(runtime.engine) as session:
            doc = export_report(spec, spec.rows(session), report_format, out, signer)
        with session_scope(runtime.engine) as session:
            append_event(
                session,
                at=now,
                actor="cli",
                action="report.exported",
                subject_type="report",
                subject_id=report_kind.value,
                details={"format": report_format.value, "file": out.name, "sha256": doc["sha256"], "via": "cli"},
            )
    finally:
        runtime.close()
    _out.print(f"wrote {out} ({doc['rows']} rows, {doc['size']} bytes, sha256 {doc['sha256']})", markup=False)
    _out.print(f"wrote {manifest_path(out)} (signed by audit key {doc['public_key_sha256'][:16]}…)", markup=False)


@report_app.command("inventory")
def report_inventory(out: OutOpt, fmt: FormatOpt = "csv") -> None:
    """Every phone: MAC, number, IP, model, firmware, certificate serial, notAfter, days left, status, times."""
    _export("inventory", fmt, out)


@report_app.command("expiry")
def report_expiry(
    out: OutOpt,
    fmt: FormatOpt = "csv",
    weeks: Annotated[int, typer.Option(help="Weeks to forecast (1-104).")] = 12,
) -> None:
    """Current certificates expiring per week over the next N weeks (PDF: with a bar chart)."""
    _export("expiry", fmt, out, weeks=weeks)


@report_app.command("deployments")
def report_deployments(out: OutOpt, fmt: FormatOpt = "csv", since: SinceOpt = None, until: UntilOpt = None) -> None:
    """Deployment history."""
    _export("deployments", fmt, out, since=_utc(since), until=_utc(until))


@report_app.command("audit")
def report_audit(
    out: OutOpt,
    fmt: FormatOpt = "csv",
    since: SinceOpt = None,
    until: UntilOpt = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor, e.g. token:alice.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. token.revoked.")] = None,
) -> None:
    """Audit events in a time range, optionally one actor or action."""
    _export("audit", fmt, out, since=_utc(since), until=_utc(until), actor=actor, action=action)


@report_app.command("compliance")
def report_compliance(out: OutOpt, fmt: FormatOpt = "csv") -> None:
    """Phones on a factory/unknown or unverified certificate, expired, failing, or drifted."""
    _export("compliance", fmt, out)


@report_app.command("verify")
def report_verify(
    file: Annotated[Path, typer.Argument(help="The exported file (FILE.manifest.json must be beside it).")],
    manifest: Annotated[Path | None, typer.Option(help="Manifest, if not FILE.manifest.json.")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Pinned audit public key (PEM); default: the data dir's, if present.")
    ] = None,
) -> None:
    """Check an export against its signed manifest. Exit 0 only if size, SHA-256 and both signatures match."""
    from certmgr.audit.checkpoint import load_verifier
    from certmgr.reports.manifest import verify_export
    from certmgr.settings import load_settings

    pinned = load_verifier(load_settings().data_dir, public_key)
    verdict = verify_export(file, manifest, pinned)
    if not verdict.ok:
        for problem in verdict.problems:
            _err.print(f"certmgr: {file}: {problem}", markup=False)
        raise typer.Exit(EXPORT_BROKEN)
    _out.print(f"{file}: OK (signed by audit key {verdict.public_key_sha256})", markup=False)
    if not verdict.pinned:
        _err.print("warning: no pinned audit key to compare with (use --public-key)", markup=False)
