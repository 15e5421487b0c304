"""Delivering a report over HTTP — the one path the API and the web console share.

A report is rendered into an anonymous temporary file of the data dir (hashed on the way, never buffered in memory)
before the first byte is sent, so that its ``report.exported`` audit event can name the SHA-256 of exactly what is
served and who asked, before anything leaves (:func:`render_to_spool`); the response then streams from that file,
which vanishes when the response ends (:func:`stream_spool`), or as a zip of the report and its signed manifest
produced while the client reads (:func:`zip_stream`) — the pair ``certmgr report`` writes, checked by ``certmgr report
verify``.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from sqlmodel import Session

from certmgr.errors import StorageError
from certmgr.fsutil import ensure_private_dir
from certmgr.reports.generate import export_record, record_exports, report_context
from certmgr.reports.manifest import MANIFEST_SUFFIX, manifest_bytes, render_signed
from certmgr.reports.queries import ReportKind, ReportParams, build_report
from certmgr.reports.render import ReportFormat

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

SPOOL_DIR_NAME = "tmp"  # under the data dir: the same (private) file system as the exports
_READ_CHUNK = 256 * 1024
_ZIP64_FROM = 1 << 31


def spool_file(runtime: Runtime) -> IO[bytes]:
    """An anonymous temporary file in ``<data_dir>/tmp``.

    Raises:
        StorageError: if it cannot be created.
    """
    folder = runtime.settings.data_dir / SPOOL_DIR_NAME
    try:
        ensure_private_dir(folder)
        return tempfile.TemporaryFile(dir=folder)
    except OSError as exc:
        raise StorageError(f"cannot create a temporary file in {folder}: {exc.strerror or exc}") from exc


def render_to_spool(
    runtime: Runtime,
    *,
    actor: str,
    via: str,
    kind: ReportKind,
    fmt: ReportFormat,
    params: ReportParams,
    name: str,
    bundle: bool,
) -> tuple[IO[bytes], dict[str, Any]]:
    """Render ``kind`` as ``fmt`` into a spool file, sign its manifest and audit it; ``(spool, manifest)``.

    Raises:
        ConfigError: no CA passphrase (the audit key), no report font (PDF). StorageError: no room in the data dir.
    """
    from certmgr.audit.checkpoint import runtime_signer

    signer = runtime_signer(runtime)
    now = runtime.clock.now()
    spool = spool_file(runtime)
    try:
        with Session(runtime.engine) as session:
            ctx = report_context(runtime, session, signer, now=now, actor=actor, via=via)
            spec = build_report(kind, params, now, ctx.tz)
            doc = render_signed(spec, spec.open(session), fmt, spool, name, signer, ctx)
        spool.flush()
    except OSError as exc:
        spool.close()
        raise StorageError(f"cannot spool the {kind.value} report: {exc.strerror or exc}") from exc
    except BaseException:
        spool.close()
        raise
    shown = {k: v for k, v in spec.params.as_dict(spec.kind).items() if v}
    record_exports(runtime, now, actor, [export_record(doc, name, via, bundle=bundle, **shown)])
    return spool, doc


def stream_spool(spool: IO[bytes]) -> Iterator[bytes]:
    """The spool's bytes, in chunks; closes (and so deletes) it at the end."""
    try:
        spool.seek(0)
        while data := spool.read(_READ_CHUNK):
            yield data
    finally:
        spool.close()


class _Sink:
    """The unseekable output of a streamed zip: collects what zipfile writes until it is taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the parts are taken by the response."""

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def _zip_entry(name: str, when: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100600 << 16  # a regular file, readable by its owner only once unzipped
    return info


def zip_stream(spool: IO[bytes], doc: dict[str, Any], name: str) -> Iterator[bytes]:
    """A zip of the spooled report (as ``name``) and its signed manifest, produced while the client reads."""
    when = datetime.fromisoformat(str(doc["generated_at"]))
    size = int(doc["size"])
    sink = _Sink()
    try:
        spool.seek(0)
        with zipfile.ZipFile(sink, "w") as bundle:  # type: ignore[call-overload] # any object with write()
            with bundle.open(_zip_entry(name, when), "w", force_zip64=size >= _ZIP64_FROM) as entry:
                while data := spool.read(_READ_CHUNK):
                    entry.write(data)
                    if chunk := sink.take():
                        yield chunk
            bundle.writestr(_zip_entry(name + MANIFEST_SUFFIX, when), manifest_bytes(doc))
        yield sink.take()
    finally:
        spool.close()


__all__ = ["SPOOL_DIR_NAME", "render_to_spool", "spool_file", "stream_spool", "zip_stream"]
