"""The evidence pack: one zip to hand to an auditor.

``certmgr report bundle --out FILE.zip`` and ``GET /api/v1/reports/bundle`` write the same pack::

    README.txt                      how to verify each file (with this pack's fingerprints filled in)
    inventory.pdf                   every report kind, in each requested format (default PDF and CSV) ...
    inventory.pdf.manifest.json     ... each with its signed manifest (summary, evidence, signatures)
    ...
    ca-chain.pem                    the CA chain (issuing CA first, root last)
    issuing-ca.crl                  the issuing CA's current CRL (DER)
    audit-key.pub.pem               the audit public key that signed the manifests, checkpoints and SHA256SUMS
    SHA256SUMS                      SHA-256 of every file above (``sha256sum -c SHA256SUMS``)
    SHA256SUMS.sig                  DER ECDSA signature of SHA256SUMS by the audit key

The deployment history and the audit trail cover the period (``since`` .. ``until``, default the 30 days up to
now); inventory, compliance and the expiry forecast are as of now. All reports are read in one session after
one evidence collection, so they state the same audit head. Every report file is audited (``report.exported``,
``via: bundle``) and so is the pack (``report.bundled``, with the zip's SHA-256). The files are rendered into a
private temporary folder (memory stays flat), zipped into a temporary file beside the output, and renamed into
place.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding
from sqlmodel import Session

from certmgr.audit.log import append_event
from certmgr.db.engine import session_scope
from certmgr.errors import StorageError
from certmgr.fsutil import atomic_stream, ensure_private_dir
from certmgr.reports.generate import export_record, record_exports, report_context
from certmgr.reports.manifest import MANIFEST_SUFFIX, SIGNED_SUFFIX, export_report, openssl_commands
from certmgr.reports.queries import ReportKind, ReportParams, build_report
from certmgr.reports.render import ReportFormat
from certmgr.reports.summary import format_time

if TYPE_CHECKING:
    from certmgr.audit.checkpoint import AuditSigner
    from certmgr.runtime import Runtime

DEFAULT_PERIOD = timedelta(days=30)
DEFAULT_FORMATS = (ReportFormat.PDF, ReportFormat.CSV)
BUNDLE_ACTION = "report.bundled"
SUMS = "SHA256SUMS"
CHAIN_FILE = "ca-chain.pem"
CRL_FILE = "issuing-ca.crl"
KEY_FILE = "audit-key.pub.pem"
README = "README.txt"

__all__ = ["DEFAULT_FORMATS", "DEFAULT_PERIOD", "PackResult", "pack_params", "write_evidence_pack"]


@dataclass(frozen=True)
class PackResult:
    """The pack written: its path, size, SHA-256 and the files it holds."""

    path: Path
    size: int
    sha256: str
    files: tuple[str, ...]


def pack_params(now: datetime, since: datetime | None, until: datetime | None) -> ReportParams:
    """The report parameters of a pack: the period ``since`` .. ``until`` (default: the 30 days up to ``now``).

    Raises:
        InputError: if the period is invalid.
    """
    until = until or now
    return ReportParams(since=since or until - DEFAULT_PERIOD, until=until)


def _readme(
    files: Sequence[str], key_sha256: str, root_sha256: str | None, params: ReportParams, now: datetime, tz: tzinfo
) -> str:
    reports = [f for f in files if not f.endswith(MANIFEST_SUFFIX)]
    lines = [
        "certmgr evidence pack",
        "=====================",
        "",
        f"Generated {format_time(now, tz)}.",
        "Period of the deployment history and the audit trail: "
        f"{format_time(params.since, tz)} to {format_time(params.until, tz)}.",
        "Inventory, compliance and the expiry forecast are as of the time of generation.",
        "",
        "Trust anchors (compare with the values you recorded independently, e.g. at set-up):",
        f"  audit key  SHA-256 of the DER public key: {key_sha256}",
        f"  root CA    SHA-256 fingerprint:           {root_sha256 or 'none'}",
        "",
        "1. The list of files and its signature (openssl and coreutils only):",
        f"     openssl pkey -pubin -in {KEY_FILE} -outform DER | openssl dgst -sha256   # = audit key above",
        f"     openssl dgst -sha256 -verify {KEY_FILE} -signature {SUMS}.sig {SUMS}   # Verified OK",
        f"     sha256sum -c {SUMS}                                   # every file: OK",
        "",
        "2. Each report with its manifest (REPORT is one of the report files below), with the audit key of step 1.",
        f"   Read only manifest_signature from REPORT{MANIFEST_SUFFIX} itself; every other field (signature, sha256,",
        f"   size, summary, evidence, ...) from REPORT{SIGNED_SUFFIX}, the signed part grep leaves: grep drops",
        "   every line that starts like the signature line and jq keeps the last of duplicate keys, so fields read",
        "   from the whole manifest may be ones a forger added.",
        *(f"     {command}" for command in openssl_commands("REPORT", KEY_FILE)),
        f"   or, with certmgr: certmgr report verify REPORT --public-key {KEY_FILE}",
        "   The manifest also states the summary, who generated the report, the audit log's verification at",
        "   that moment, the last audit event the report reflects (seq and hash) and the last signed checkpoint.",
        "   Next to certmgr's database, `certmgr report verify` checks that the audit log up to that event is",
        "   unchanged and that the report's own audit event (report.exported) names the report's SHA-256.",
        "   The checkpoint signature (if evidence.last_checkpoint is not null), with openssl alone, from the",
        "   signed part, after the commands above:",
        f"     jq -j .evidence.last_checkpoint.signed_message 'REPORT{SIGNED_SUFFIX}' > checkpoint.txt",
        f"     jq -r .evidence.last_checkpoint.signature 'REPORT{SIGNED_SUFFIX}'"
        " | openssl base64 -d -A > checkpoint.sig",
        f"     openssl dgst -sha256 -verify {KEY_FILE} -signature checkpoint.sig checkpoint.txt   # Verified OK",
        "",
        "3. The CA chain and the CRL:",
        f"     openssl x509 -in {CHAIN_FILE} -noout -fingerprint -sha256   # the issuing CA (first in the file)",
        f"     openssl crl -inform DER -in {CRL_FILE} -CAfile {CHAIN_FILE} -noout -text   # verify OK",
        "",
        "Reports in this pack:",
        *(f"  {name}" for name in reports),
        "",
        "How each check works: docs/reports.md of certmgr.",
    ]
    return "\n".join(lines) + "\n"


def write_evidence_pack(
    runtime: Runtime,
    out: Path,
    signer: AuditSigner,
    *,
    params: ReportParams,
    formats: Sequence[ReportFormat] = DEFAULT_FORMATS,
    actor: str,
    via: str,
) -> PackResult:
    """Write the evidence pack to ``out`` (0600, replaced atomically) and audit it.

    Raises:
        StorageError: if the files cannot be written. ConfigError: (PDF) no report font.
        CANotInitialisedError / CAError: if the CA or its CRL cannot be read or signed.
        DatabaseError: if the database cannot be read.
    """
    from certmgr.issuance.revocation import refresh_crl
    from certmgr.pki.keys import fingerprint_sha256

    now = runtime.clock.now()
    formats = list(dict.fromkeys(formats))
    info = runtime.ca_store.load_public()
    chain = list(info.chain)
    if info.root_cert is not None and info.root_cert not in chain:
        chain.append(info.root_cert)
    crl = refresh_crl(runtime)
    try:
        ensure_private_dir(out.parent)
        work = Path(tempfile.mkdtemp(prefix=".evidence-", dir=out.parent))
    except OSError as exc:
        raise StorageError(f"cannot create a temporary folder beside {out}: {exc.strerror or exc}") from exc
    try:
        names: list[str] = []
        records = []
        with Session(runtime.engine) as session:
            ctx = report_context(runtime, session, signer, now=now, actor=actor, via=via)
            for kind in ReportKind:
                spec = build_report(kind, params, now, ctx.tz)
                for fmt in formats:
                    name = f"{kind.value}.{fmt.value}"
                    doc = export_report(spec, spec.open(session), fmt, work / name, signer, ctx)
                    names += [name, name + MANIFEST_SUFFIX]
                    records.append(export_record(doc, f"{out.name}/{name}", via))
        (work / CHAIN_FILE).write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in chain))
        (work / CRL_FILE).write_bytes(crl.der)
        (work / KEY_FILE).write_bytes(signer.public_pem)
        root_fp = fingerprint_sha256(chain[-1]) if chain else None
        (work / README).write_text(_readme(names, signer.fingerprint, root_fp, params, now, ctx.tz), encoding="utf-8")
        files = [README, *names, CHAIN_FILE, CRL_FILE, KEY_FILE]
        sums = "".join(f"{_sha256(work / f)}  {f}\n" for f in files).encode("ascii")
        (work / SUMS).write_bytes(sums)
        (work / f"{SUMS}.sig").write_bytes(signer.sign(sums))
        files += [SUMS, f"{SUMS}.sig"]
        with (
            atomic_stream(out, what=f"the evidence pack {out}") as fh,
            zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as pack,
        ):
            for name in files:
                entry = zipfile.ZipInfo(name, date_time=now.timetuple()[:6])
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o100600 << 16
                with (work / name).open("rb") as src, pack.open(entry, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
    except OSError as exc:  # the work folder's files (the pack itself: atomic_stream)
        raise StorageError(f"cannot write the evidence pack {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    digest, size = _sha256(out), out.stat().st_size
    record_exports(runtime, now, actor, records)
    with session_scope(runtime.engine) as session:
        append_event(
            session,
            at=now,
            actor=actor,
            action=BUNDLE_ACTION,
            subject_type="report",
            subject_id="bundle",
            details={
                "file": out.name,
                "sha256": digest,
                "size": size,
                "via": via,
                "since": None if params.since is None else params.since.isoformat(),
                "until": None if params.until is None else params.until.isoformat(),
                "reports": [r.sha256 for r in records],
            },
        )
    return PackResult(out, size, digest, tuple(files))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
