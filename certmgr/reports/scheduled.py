"""Scheduled report exports: the configured reports, each with its signed manifest, once per day or ISO week.

:func:`run_scheduled_exports` is what the scheduler's ``report-export`` job calls (idempotent, so it may run as
often as the job fires). Layout under ``export_dir`` (default ``<data_dir>/exports``)::

    exports/
      2026-11-26/                       # export_every = "daily" (UTC day); "2026-W48" for "weekly" (ISO week)
        inventory-2026-11-26.csv
        inventory-2026-11-26.csv.manifest.json
        compliance-2026-11-26.csv
        ...

A period's folder appears all at once: the files are written into a hidden staging folder that is renamed
into place as the last step, so a folder that exists is complete, and an existing folder means the period is
done (nothing is written twice). An advisory lock keeps two processes from exporting the same period at once;
a staging folder left by a crash is removed by the next run. All reports of a run are read in one database
session, and every file is audited (``report.exported``, ``via: schedule``) after the rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session

from certmgr.clock import ensure_utc
from certmgr.errors import ConfigError, StorageError
from certmgr.fsutil import fsync_dir
from certmgr.reports.generate import ExportRecord, export_record, record_exports, report_context
from certmgr.reports.manifest import export_report
from certmgr.reports.queries import ReportParams, build_report, parse_kind
from certmgr.reports.render import parse_format

if TYPE_CHECKING:
    from certmgr.audit.checkpoint import AuditSigner
    from certmgr.runtime import Runtime
    from certmgr.settings import Settings

JOB_ID = "report-export"
ACTOR = "scheduler"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"

__all__ = ["JOB_ID", "ExportRun", "export_folder", "period_key", "run_scheduled_exports"]


def period_key(now: datetime, every: str) -> str:
    """The name of the export period containing ``now``: ``YYYY-MM-DD`` (daily) or ``YYYY-Www`` (weekly, ISO).

    Raises:
        ConfigError: if ``every`` is neither ``daily`` nor ``weekly``.
        ValueError: if ``now`` is naive.
    """
    now = ensure_utc(now)
    if every == "daily":
        return now.date().isoformat()
    if every == "weekly":
        year, week, _ = now.isocalendar()
        return f"{year:04d}-W{week:02d}"
    raise ConfigError(f"export_every: {every!r} is neither 'daily' nor 'weekly'")


def export_folder(settings: Settings) -> Path:
    """Where scheduled exports go: ``export_dir`` or ``<data_dir>/exports``."""
    return settings.export_dir if settings.export_dir is not None else settings.data_dir / "exports"


@dataclass(frozen=True)
class ExportRun:
    """What one call did: the period, its folder, the files written (empty if the period was already done)."""

    period: str
    folder: Path
    files: tuple[Path, ...]

    @property
    def skipped(self) -> bool:
        """True if this period had been exported before (nothing was written)."""
        return not self.files


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot use the export folder {root}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run_scheduled_exports(runtime: Runtime, now: datetime, *, signer: AuditSigner | None = None) -> ExportRun:
    """Write the configured reports (every ``export_kinds`` in every ``export_formats``) with signed manifests
    for the period of ``now``, unless that period's folder exists already.

    ``signer`` defaults to the data dir's audit key (:func:`certmgr.audit.checkpoint.runtime_signer`).

    Raises:
        ConfigError: unknown kind/format/period setting, or no CA passphrase for the audit key.
        StorageError: if the folder or files cannot be written (no period folder appears then).
        DatabaseError: if the database cannot be read.
    """
    settings = runtime.settings
    now = ensure_utc(now)
    period = period_key(now, settings.export_every)
    kinds = [parse_kind(k) for k in dict.fromkeys(settings.export_kinds)]
    formats = [parse_format(f) for f in dict.fromkeys(settings.export_formats)]
    root = export_folder(settings)
    final = root / period
    if final.is_dir():
        return ExportRun(period, final, ())
    with _locked(root):
        if final.is_dir():  # another process finished it while we waited
            return ExportRun(period, final, ())
        for leftover in root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if signer is None:
            from certmgr.audit.checkpoint import runtime_signer

            signer = runtime_signer(runtime)
        staging = root / f"{STAGING_PREFIX}{period}-{os.getpid()}"
        try:
            staging.mkdir(mode=0o700)
            written: list[tuple[str, ExportRecord]] = []
            params = ReportParams()
            with Session(runtime.engine) as session:  # one read session: the reports agree with each other
                ctx = report_context(runtime, session, signer, now=now, actor=ACTOR, via="schedule")
                for kind in kinds:
                    spec = build_report(kind, params, now, ctx.tz)
                    for fmt in formats:
                        name = f"{kind.value}-{period}.{fmt.value}"
                        doc = export_report(spec, spec.open(session), fmt, staging / name, signer, ctx)
                        written.append((name, export_record(doc, f"{period}/{name}", "schedule", period=period)))
            fsync_dir(staging)
            os.rename(staging, final)
            fsync_dir(root)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StorageError(f"cannot write the exports of {period} to {root}: {exc.strerror or exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    record_exports(runtime, now, ACTOR, [record for _, record in written])
    return ExportRun(period, final, tuple(final / name for name, _ in written))
