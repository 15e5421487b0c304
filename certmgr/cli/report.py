"""``certmgr report``: export a report with its signed manifest, verify an export, write an evidence pack."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from certmgr.cli.token import CLI_ACTOR

if TYPE_CHECKING:
    from certmgr.settings import Settings

report_app = typer.Typer(help="Audit evidence: signed report exports (CSV, JSON, PDF).", no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)
EXPORT_BROKEN = 1
ACTOR = CLI_ACTOR  # how the CLI appears in audit events and report evidence

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
    from certmgr.reports.generate import export_record, record_exports, report_context
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
        with Session(runtime.engine) as session:
            ctx = report_context(runtime, session, signer, now=now, actor=ACTOR, via=ACTOR)
            spec = build_report(report_kind, report_params, now, ctx.tz)
            doc = export_report(spec, spec.open(session), report_format, out, signer, ctx)
        record_exports(runtime, now, ACTOR, [export_record(doc, out.name, ACTOR)])
    finally:
        runtime.close()
    _out.print(f"wrote {out} ({doc['rows']} rows, {doc['size']} bytes, sha256 {doc['sha256']})", markup=False)
    _out.print(f"wrote {manifest_path(out)} (signed by audit key {doc['public_key_sha256'][:16]}…)", markup=False)
    for line in doc["summary"]["text"]:
        _out.print(f"  {line}", markup=False)


@report_app.command("inventory")
def report_inventory(out: OutOpt, fmt: FormatOpt = "csv") -> None:
    """Every phone: MAC, number, IP, model, firmware, certificate serial, notAfter, days left, status, times."""
    _export("inventory", fmt, out)


@report_app.command("expiry")
def report_expiry(
    out: OutOpt,
    fmt: FormatOpt = "csv",
    months: Annotated[
        int | None, typer.Option(help="Months to forecast (1-60); default: the whole horizon, at least 13.")
    ] = None,
    weeks: Annotated[int | None, typer.Option(help="Forecast per week instead, over N weeks (1-104).")] = None,
) -> None:
    """Current certificates expiring per month (default, over the fleet's whole horizon) or per week."""
    _export("expiry", fmt, out, weeks=weeks, months=months)


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
    audit_log: Annotated[
        bool | None,
        typer.Option(
            "--audit-log/--no-audit-log",
            help="Check the report against certmgr's audit log (default: when the database is here).",
        ),
    ] = None,
) -> None:
    """Check an export against its signed manifest: size, SHA-256, both signatures and the recorded checkpoint's
    signature; next to the database also that the audit log up to the event the report reflects is unchanged
    and that the report's own audit event names its SHA-256. Exit 0 only if everything holds."""
    from certmgr.audit.checkpoint import load_verifier
    from certmgr.reports.manifest import verify_export
    from certmgr.settings import load_settings

    settings = load_settings()
    pinned = load_verifier(settings.data_dir, public_key)
    verdict = verify_export(file, manifest, pinned)
    problems = list(verdict.problems)
    checked_log = False
    if verdict.ok:
        evidence = verdict.manifest.get("evidence")
        if not isinstance(evidence, dict):
            if audit_log:
                problems.append("the manifest records no audit evidence (manifest version 1)")
        elif audit_log is not False:
            found = _check_audit_log(settings, evidence, str(verdict.manifest["sha256"]), required=bool(audit_log))
            if found is not None:
                problems += found
                checked_log = True
    if problems:
        for problem in problems:
            _err.print(f"certmgr: {file}: {problem}", markup=False)
        raise typer.Exit(EXPORT_BROKEN)
    _out.print(f"{file}: OK (signed by audit key {verdict.public_key_sha256})", markup=False)
    if checked_log:
        last = verdict.manifest["evidence"].get("last_event")
        upto = "an empty audit log" if last is None else f"audit event {last['seq']}"
        _out.print(f"audit log: unchanged up to {upto}; the report's generation is recorded", markup=False)
    elif audit_log is not False:
        _err.print("warning: the audit log was not checked (no database here; use --audit-log to insist)")
    if not verdict.pinned:
        _err.print("warning: no pinned audit key to compare with (use --public-key)", markup=False)


def _check_audit_log(settings: Settings, evidence: dict[str, Any], sha256: str, *, required: bool) -> list[str] | None:
    """The problems of the report's evidence against the audit log, or None if there is no database here (and
    ``required`` is false).

    Raises:
        DatabaseError: if ``required`` and the database cannot be read.
    """
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url
    from sqlmodel import Session

    from certmgr.db.engine import connection_error, create_db_engine
    from certmgr.errors import DatabaseError
    from certmgr.reports.evidence import check_against_log

    url = settings.effective_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        if required:
            raise DatabaseError(f"no database at {parsed.database}: cannot check the audit log")
        return None
    engine = create_db_engine(url)
    try:
        with Session(engine) as session:
            return check_against_log(session, evidence, sha256)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.ProgrammingError) as exc:
        if required:
            raise connection_error(exc, url) from exc
        return None
    finally:
        engine.dispose()


@report_app.command("bundle")
def report_bundle(
    out: Annotated[Path, typer.Option("--out", help="The zip to write (the evidence pack).")],
    since: SinceOpt = None,
    until: UntilOpt = None,
    fmt: Annotated[
        list[str] | None, typer.Option("--format", help="Formats of every report (repeat; default pdf and csv).")
    ] = None,
) -> None:
    """The evidence pack: every report kind (deployments and audit over --since..--until, default the last 30
    days) with signed manifests, the CA chain, the CRL, the audit public key, SHA256SUMS signed by the audit key
    and a README saying how to verify each file."""
    from certmgr.audit.checkpoint import runtime_signer
    from certmgr.reports.bundle import DEFAULT_FORMATS, pack_params, write_evidence_pack
    from certmgr.reports.render import parse_format
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    formats = [parse_format(f) for f in fmt] if fmt else list(DEFAULT_FORMATS)
    runtime = open_runtime(load_settings())
    try:
        signer = runtime_signer(runtime)
        params = pack_params(runtime.clock.now(), _utc(since), _utc(until))
        result = write_evidence_pack(runtime, out, signer, params=params, formats=formats, actor=ACTOR, via="bundle")
    finally:
        runtime.close()
    _out.print(f"wrote {out} ({len(result.files)} files, {result.size} bytes, sha256 {result.sha256})", markup=False)
