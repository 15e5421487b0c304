"""Signed manifests of report exports.

Every export ``FILE`` gets ``FILE.manifest.json``::

    {
      "manifest_signature": "<base64 DER ECDSA signature over the bytes of this file without this line>",
      "manifest_version": 3,
      "file": "inventory.csv", "size": 1234, "sha256": "<hex>",
      "kind": "inventory", "format": "csv", "rows": 42, "params": {...},
      "generated_at": "2026-11-26T09:00:00+00:00", "generated_by": "token:alice", "via": "api",
      "timezone": "Europe/Berlin",
      "summary": {"figures": {...}, "breakdowns": {...}, "text": [...], "chart": {...}},
      "evidence": {"audit_chain": {"intact": true, ...}, "last_event": {"seq": 41, "hash": "<hex>"},
                   "last_checkpoint": {"seq": 40, "hash": "<hex>", "signature": "<base64>", ...}, ...},
      "signature_algorithm": "ecdsa-p256-sha256",
      "signature": "<base64 DER ECDSA signature over the bytes of FILE>",
      "public_key_pem": "-----BEGIN PUBLIC KEY-----...", "public_key_sha256": "<hex of the DER key>",
      "verify_with_openssl": ["..."]
    }

``signature`` signs the export file itself, so ``openssl dgst -sha256 -verify`` checks it directly (commands in
``verify_with_openssl`` and ``docs/reports.md``). ``manifest_signature`` additionally binds the metadata (kind,
time, parameters, summary, evidence): it signs the exact bytes of the manifest file without its own line (the
second), i.e. what ``grep -v '^  "manifest_signature": '`` prints (:func:`signed_part`) — so openssl checks it
too, with no canonicalisation to reproduce, and what is left is the manifest as JSON, which the auditor then
reads — every field but ``manifest_signature`` from there, never from the whole file: grep drops every line that
starts like the signature line, so a forger may add such lines, whose fields a reader of the whole file (jq keeps
the last duplicate) would take. ``certmgr report verify`` checks both signatures, reads the fields from the
signed part too, refuses a key given twice in one object and any other line like the signature line (and checks
the recorded checkpoint's signature and, next to the database, the audit log: :mod:`certmgr.reports.evidence`).
Manifests of versions 1 (no summary, no evidence) and 2 (``manifest_signature`` over the canonical JSON of every
other field, which standard tools cannot rebuild: jq writes 0.0 as 0) still verify. Both signatures are made by
the audit key (:mod:`certmgr.audit.checkpoint`); pin its public key (``public_key_sha256``) to trust either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certmgr.audit.checkpoint import SIGNATURE_ALGORITHM, AuditSigner, AuditVerifier, encode_signature
from certmgr.errors import ConfigError, InputError, StorageError
from certmgr.fsutil import atomic_stream, atomic_write
from certmgr.reports.evidence import verify_checkpoint
from certmgr.reports.queries import ReportRun, ReportSpec
from certmgr.reports.render import ByteSink, RenderContext, ReportFormat, write_report
from certmgr.reports.summary import Summary

MANIFEST_SUFFIX = ".manifest.json"
SIGNED_SUFFIX = ".manifest.signed.json"  # where the documented openssl check puts the signed part
MANIFEST_VERSION = 3
KNOWN_VERSIONS = (1, 2, 3)
#: The start of the one line of a (version 3) manifest that its signature does not cover.
SIGNATURE_LINE = b'  "manifest_signature": '
#: That line as :func:`sign_manifest` writes it: the signature (base64) and nothing else.
_SIGNATURE_LINE_WRITTEN = re.compile(re.escape(SIGNATURE_LINE) + rb'"[A-Za-z0-9+/]+={0,2}",')
MAX_MANIFEST_BYTES = 64 * 1024
_HASH_CHUNK = 1024 * 1024


def manifest_path(export: Path) -> Path:
    """Where the manifest of ``export`` lives: ``<export>.manifest.json``."""
    return export.with_name(export.name + MANIFEST_SUFFIX)


def openssl_commands(file_name: str, key_file: str | None = None) -> list[str]:
    """The shell commands that check an export and its manifest with openssl alone (plus grep to drop the
    manifest's signature lines and jq to pick fields out of the JSON).

    Only ``manifest_signature`` is read from the manifest file itself; every other field — the public key, the
    file's signature, SHA-256 and size — from the signed part grep leaves (``FILE.manifest.signed.json``), once
    its signature verified: grep drops *every* line that starts like the signature line and jq keeps the last
    of duplicate keys, so fields read from the whole file could be any a forger added on such lines. With
    ``key_file`` (a key whose fingerprint the auditor already compared with the pinned one, e.g. the evidence
    pack's) the commands use it; without, they take ``public_key_pem`` from the signed part and print its
    fingerprint, to be compared with the pinned one before anything else is believed."""
    m = file_name + MANIFEST_SUFFIX
    signed = file_name + SIGNED_SUFFIX
    line = SIGNATURE_LINE.decode("ascii")
    key = key_file or "audit-key.pub.pem"
    commands = [f"grep -v '^{line}' '{m}' > '{signed}'"]
    if key_file is None:
        commands += [
            f"jq -r .public_key_pem '{signed}' > {key}",
            f"openssl pkey -pubin -in {key} -outform DER | openssl dgst -sha256"
            "   # must equal the audit key fingerprint you pinned",
        ]
    return [
        *commands,
        f"jq -r .manifest_signature '{m}' | openssl base64 -d -A > '{m}.sig'",
        f"openssl dgst -sha256 -verify {key} -signature '{m}.sig' '{signed}'"
        f"   # Verified OK: from here on read every field from {signed} only",
        f"jq -r .signature '{signed}' | openssl base64 -d -A > '{file_name}.sig'",
        f"openssl dgst -sha256 -verify {key} -signature '{file_name}.sig' '{file_name}'   # Verified OK",
        f"jq -e --arg sha256 \"$(openssl dgst -sha256 -r '{file_name}' | cut -c1-64)\""
        f" --argjson size \"$(wc -c < '{file_name}')\" --arg file \"$(basename '{file_name}')\""
        f" '.sha256 == $sha256 and .size == $size and .file == $file' '{signed}'"
        "   # true: this file, by content and by name (not an older genuine export renamed)",
    ]


def signed_part(manifest: bytes) -> bytes:
    """What the signature of a version 3 manifest covers: its bytes without the lines that start with
    :data:`SIGNATURE_LINE` — exactly what ``grep -v '^  "manifest_signature": '`` prints (which ends an
    unterminated last line with a newline)."""
    lines = manifest.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\n" for line in lines if not line.startswith(SIGNATURE_LINE))


def _canonical(doc: dict[str, Any]) -> bytes:
    """The version 2 signed form: canonical JSON (sorted keys, no spaces) of every field but the signature."""
    body = {k: v for k, v in doc.items() if k != "manifest_signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sha256_file(path: Path) -> tuple[bytes, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.digest(), size


class HashingWriter:
    """A write-only file wrapper that hashes (SHA-256) and counts the bytes on their way to ``out``."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> bytes:
        """SHA-256 of everything written so far."""
        return self._digest.digest()


@dataclass(frozen=True)
class Rendered:
    """What a rendering produced: rows, summary, and the evidence it was made with."""

    rows: int
    summary: Summary
    ctx: RenderContext


def sign_manifest(
    file_name: str,
    size: int,
    digest: bytes,
    spec: ReportSpec,
    fmt: ReportFormat,
    rendered: Rendered,
    signer: AuditSigner,
) -> dict[str, Any]:
    """The signed manifest of a file called ``file_name`` of ``size`` bytes whose SHA-256 is ``digest``; written
    with :func:`manifest_bytes`, its ``manifest_signature`` (its first field, so the second line) signs the
    rest of the file (:func:`signed_part`)."""
    evidence = rendered.ctx.evidence
    doc: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "file": file_name,
        "size": size,
        "sha256": digest.hex(),
        "kind": spec.kind.value,
        "format": fmt.value,
        "rows": rendered.rows,
        "params": spec.params.as_dict(spec.kind),
        "generated_at": spec.generated_at.isoformat(),
        "generated_by": None if evidence is None else evidence.generated_by,
        "via": None if evidence is None else evidence.via,
        "timezone": str(getattr(rendered.ctx.tz, "key", rendered.ctx.tz)),
        "summary": rendered.summary.as_dict(),
        "evidence": None if evidence is None else evidence.as_dict(),
        "signature_algorithm": SIGNATURE_ALGORITHM,
        "signature": encode_signature(signer.sign_digest(digest)),
        "public_key_pem": signer.public_pem.decode("ascii"),
        "public_key_sha256": signer.fingerprint,
        "verify_with_openssl": openssl_commands(file_name),
    }
    # manifest_bytes of {"manifest_signature": …, **doc} is manifest_bytes(doc) with the line
    # '  "manifest_signature": "…",' inserted after the first: exactly the bytes signed_part gives back
    return {"manifest_signature": encode_signature(signer.sign(manifest_bytes(doc))), **doc}


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    """A manifest as written to ``FILE.manifest.json`` (indented UTF-8 JSON, final newline, fields in the
    order of ``doc``: a version 3 manifest's signature covers these exact bytes)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build_manifest(
    export: Path, spec: ReportSpec, fmt: ReportFormat, rendered: Rendered, signer: AuditSigner
) -> dict[str, Any]:
    """The signed manifest of the finished file ``export``.

    Raises:
        StorageError: if ``export`` cannot be read.
    """
    try:
        digest, size = _sha256_file(export)
    except OSError as exc:
        raise StorageError(f"cannot read {export}: {exc.strerror or exc}") from exc
    return sign_manifest(export.name, size, digest, spec, fmt, rendered, signer)


def render_signed(
    spec: ReportSpec,
    run: ReportRun,
    fmt: ReportFormat,
    out: ByteSink,
    file_name: str,
    signer: AuditSigner,
    ctx: RenderContext,
) -> dict[str, Any]:
    """Render the report into ``out``, hashing on the way, and return the signed manifest of what was written
    (as the file ``file_name``): one pass over the rows, no second read of the output.

    Raises:
        OSError: if ``out`` cannot be written.
        ConfigError: (PDF) if the report fonts cannot be found or read.
    """
    hashing = HashingWriter(out)
    write_report(spec, run, fmt, hashing, ctx)
    rendered = Rendered(run.count, run.summary(ctx.tz), ctx)
    return sign_manifest(file_name, hashing.size, hashing.digest, spec, fmt, rendered, signer)


def export_report(
    spec: ReportSpec, run: ReportRun, fmt: ReportFormat, out: Path, signer: AuditSigner, ctx: RenderContext
) -> dict[str, Any]:
    """Render the report into ``out`` (0600, replaced atomically) and write its signed manifest beside it.

    Raises:
        StorageError: if the files cannot be written.
    """
    with atomic_stream(out) as fh:
        doc = render_signed(spec, run, fmt, fh, out.name, signer, ctx)
    atomic_write(manifest_path(out), manifest_bytes(doc))
    return doc


@dataclass(frozen=True)
class ManifestVerdict:
    """Outcome of :func:`verify_export`. ``manifest`` is what the manifest signature covers and every check read:
    for version 3 the signed part (without ``manifest_signature``), for versions 1 and 2 the whole manifest."""

    ok: bool
    problems: tuple[str, ...]
    public_key_sha256: str | None
    pinned: bool
    manifest: dict[str, Any]


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"manifest: {name} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"manifest: {name} is not base64") from None


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest.

    Raises:
        InputError: if it is missing, too large, not a JSON object, has a duplicate key, nests too deeply or
            holds an integer too long to convert.
    """
    return _parse(_read(path), path)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the manifest {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise InputError(f"manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` that refuses a key given twice in one object (readers disagree on which wins:
    jq and Python keep the last)."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise InputError(f"manifest: the key {key[:64]!r} appears twice in one object")
        doc[key] = value
    return doc


def _parse(data: bytes, path: Path, what: str = "manifest") -> dict[str, Any]:
    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise InputError(f"{what} {path} is nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer of more digits than int() converts
        raise InputError(f"{what} {path} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InputError(f"{what} {path} is not a JSON object")
    return doc


def _exact(value: object, expected: object) -> bool:
    """``value == expected`` of the same type (JSON ``true`` is not 1, ``4.0`` is not 4)."""
    return type(value) is type(expected) and value == expected


def _only_its_signature_unsigned(raw: bytes) -> bool:
    """Whether the one line of the version 3 manifest ``raw`` that :func:`signed_part` drops is its second and
    holds nothing but ``manifest_signature`` — as :func:`sign_manifest` writes it. Any other such line carries
    bytes no signature covers."""
    lines = raw.split(b"\n")
    dropped = [i for i, line in enumerate(lines) if line.startswith(SIGNATURE_LINE)]
    return dropped == [1] and _SIGNATURE_LINE_WRITTEN.fullmatch(lines[1]) is not None


def _version(doc: dict[str, Any]) -> int | None:
    version = doc.get("manifest_version")
    return version if type(version) is int else None


def verify_export(
    export: Path, manifest: Path | None = None, pinned_key: AuditVerifier | None = None
) -> ManifestVerdict:
    """Check ``export`` against its manifest: name, size, SHA-256, the file signature, the manifest signature,
    and (when ``pinned_key`` is given) that the manifest's key is the pinned audit key. Of a version 3 manifest
    only ``manifest_signature`` is read from the file as a whole; every other field from its signed part
    (:func:`signed_part`), which is also the verdict's ``manifest``.

    Raises:
        InputError: if the export or manifest cannot be read, or the manifest is malformed (not JSON, a key
            twice in one object, nested too deeply, a field missing or of the wrong kind).
    """
    path = manifest or manifest_path(export)
    raw = _read(path)
    whole = _parse(raw, path)
    manifest_signature = _b64(whole.get("manifest_signature"), "manifest_signature")
    legacy = _version(whole) in (1, 2)
    doc = whole if legacy else _parse(signed_part(raw), path, "the signed part of manifest")
    problems: list[str] = []
    try:
        digest, size = _sha256_file(export)
    except OSError as exc:
        raise InputError(f"cannot read {export}: {exc.strerror or exc}") from exc
    pem = doc.get("public_key_pem")
    if not isinstance(pem, str):
        raise InputError("manifest: public_key_pem is missing")
    try:
        key = AuditVerifier(pem.encode("ascii"))
    except (ConfigError, UnicodeEncodeError):
        raise InputError("manifest: public_key_pem is not an EC P-256 public key") from None
    if _version(doc) not in KNOWN_VERSIONS:
        problems.append(f"unknown manifest_version {str(doc.get('manifest_version'))[:32]!r}")
    if not _exact(doc.get("file"), export.name):
        problems.append(f"manifest is for {str(doc.get('file'))[:256]!r}, not {export.name!r}")
    if not _exact(doc.get("size"), size):
        problems.append(f"size is {size}, manifest says {str(doc.get('size'))[:32]}")
    if not _exact(doc.get("sha256"), digest.hex()):
        problems.append("sha256 of the file does not match the manifest (file modified)")
    if not key.verify_digest(_b64(doc.get("signature"), "signature"), digest):
        problems.append("the file signature does not verify")
    signed = _canonical(doc) if legacy else signed_part(raw)
    if not key.verify(manifest_signature, signed):
        problems.append("the manifest signature does not verify (manifest modified)")
    elif not legacy and not _only_its_signature_unsigned(raw):
        problems.append("the manifest holds lines its signature does not cover (manifest modified)")
    if not _exact(doc.get("public_key_sha256"), key.fingerprint):
        problems.append("public_key_sha256 does not match public_key_pem")
    if pinned_key is not None and pinned_key.fingerprint != key.fingerprint:
        problems.append(
            f"signed by key {key.fingerprint[:16]}…, not the pinned audit key {pinned_key.fingerprint[:16]}…"
        )
    evidence = doc.get("evidence")
    if isinstance(evidence, dict):
        problem = verify_checkpoint(evidence, key)
        if problem is not None:
            problems.append(problem)
    return ManifestVerdict(not problems, tuple(problems), key.fingerprint, pinned_key is not None, doc)


__all__ = [
    "MANIFEST_SUFFIX",
    "SIGNATURE_LINE",
    "SIGNED_SUFFIX",
    "HashingWriter",
    "ManifestVerdict",
    "Rendered",
    "build_manifest",
    "export_report",
    "load_manifest",
    "manifest_bytes",
    "manifest_path",
    "openssl_commands",
    "render_signed",
    "sign_manifest",
    "signed_part",
    "verify_export",
]
