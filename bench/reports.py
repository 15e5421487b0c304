"""Benchmark: every report kind over a 100,000-phone fleet, in every format, each against a floor of its own.

Seeding (SQLAlchemy Core executemany into a migrated database: SQLite; PostgreSQL too with ``--pg``, a throwaway
server from ``tests/pg.py``), N phones:

* N devices with one current certificate each (notAfter spread over 397 days, so about 1 in 397 has expired);
* one deployment per device, in a final state: 94 % verified (reply, info and probe passed), 5 % failed with an
  error text (their phone ``failed``, the new certificate still ``pending``), 1 % verified but the phone since
  found serving another certificate (``drift``);
* an audit log of 2 events per device (``certificate.issued``, then ``deployment.verified`` or
  ``deployment.failed``) that is a valid hash chain — every hash computed by certmgr's own
  :func:`certmgr.audit.chain.event_hash` — with its head and a checkpoint signed every 10,000 events by
  :func:`certmgr.audit.checkpoint.create_checkpoint` (a throwaway audit key in the bench's temporary folder).
  The signed modes collect their evidence as the CLI does, so they verify the whole chain (2N events) and every
  checkpoint; the child checks that it came out intact.

Each measurement runs in a fresh subprocess, so its peak RSS (``VmHWM``) is its own; the table shows the
rows, the wall time, the ratio to the kind's floor, the peak RSS and its growth over the RSS after imports (what
the export itself cost). ``--kinds`` picks the report kinds (default inventory; ``all``: all five); each kind runs:

* ``floor``      the bare DBAPI keyset scan (batches of 1000) of what the kind reads, written with csv.writer:
                 inventory — device ⟕ current certificate, the report's columns;
                 compliance — the same rows for every phone in service (the report reads them all: its summary
                 counts the whole fleet) with the compliance rule as a SQL expression, writing the exceptions;
                 expiry — the notAfter of every current certificate in service, counted per month;
                 deployments — deployment ⋈ device ⋈ certificate, the report's columns;
                 audit — the audit events' columns (details as stored)
* ``csv``        certmgr.reports: build_report(kind) rows -> render.write_report(CSV)
* ``json``       the same -> render.write_report(JSON)
* ``pdf``        the same -> render.write_report(PDF), i.e. certmgr.reports.pdfstream: page by page, flat memory
                 (summary page, embedded TrueType subsets, column widths from the content, wrapped cells)
* ``csv-signed`` manifest.export_report(CSV): the CLI/scheduled export — evidence collected from the audit log
                 (chain and checkpoints verified; its seconds are shown apart), hashed while written, fsynced,
                 signed
* ``pdf-signed`` the same for PDF (also what ``/api/v1/reports/<kind>/bundle?format=pdf`` renders before zipping)
* ``rl-canvas``  inventory only, the alternative measured for issue 12: reportlab's low-level canvas
                 (``reportlab.pdfgen.canvas``, page compression on, DejaVu Sans embedded as TrueType) drawing the
                 same rows — one ``drawString`` per cell, a header per page and "page X of Y" through a form
                 XObject, no wrapping: the least work reportlab could do for this table (needs the dev extra)

Until the PDF renderer streamed (reportlab platypus, whole document in memory), ``pdf`` took ~52 s and ~740 MiB.

    .venv/bin/python bench/reports.py [--count 100000] [--kinds inventory,audit|all] [--modes pdf,rl-canvas]
                                      [--pg] [--skip-pdf] [--results FILE.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from sqlalchemy import bindparam, create_engine, insert, text, update  # noqa: E402
from sqlmodel import Session, col  # noqa: E402

from bench.common import proc_status_kib, stop_cleanly_on_signals  # noqa: E402
from certmgr.audit.chain import GENESIS_HASH, ChainedEvent, event_hash  # noqa: E402
from certmgr.audit.checkpoint import AuditSigner, create_checkpoint  # noqa: E402
from certmgr.audit.log import HEAD_ID  # noqa: E402
from certmgr.db.migrate import upgrade  # noqa: E402
from certmgr.db.models import AuditEvent, AuditHead, Certificate, Deployment, Device  # noqa: E402
from certmgr.reports.queries import AUDIT_COLUMNS, DEPLOYMENT_COLUMNS  # noqa: E402

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
LOG_START = T0 - timedelta(days=28)  # the audit events (and deployments) spread over the four weeks before T0
BATCH = 5000  # devices per seeding transaction: 10,000 audit events, then a checkpoint
KINDS = ("inventory", "compliance", "expiry", "deployments", "audit")
MODES = ("floor", "csv", "json", "pdf", "csv-signed", "pdf-signed", "rl-canvas")
INVENTORY_ONLY = frozenset({"rl-canvas"})
KEY_FILE = "audit-key.pem"
_HEAD = AuditHead.__table__  # type: ignore[attr-defined]
_SET_HEAD = update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
PEM = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"
FAILURES = (
    "every PKCS#12 profile refused",
    "phone unreachable: contact-me not answered after 5 attempts",
    "no PKCS#12 profile left",
    "TLS probe: the phone serves another certificate than the one written",
)


def _rss_kib() -> int:
    """This process's peak RSS so far: ``VmHWM`` of its own address space. Not ``ru_maxrss``, which Linux carries
    over from the parent through fork and exec: after the parent seeded 100,000 phones, every child "peaked" at the
    parent's size before doing anything."""
    return proc_status_kib("self", ("VmHWM",))["VmHWM"]


# --- seeding ----------------------------------------------------------------------------------------------------
def _mac(i: int) -> str:
    return f"00:1A:E8:{(i >> 16) & 0xFF:02X}:{(i >> 8) & 0xFF:02X}:{i & 0xFF:02X}"


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def _failed(i: int) -> bool:
    return i % 20 == 3  # 5 %


def _drift(i: int) -> bool:
    return i % 100 == 11  # 1 % (never a failed one)


def _device(i: int) -> dict[str, Any]:
    status = "failed" if _failed(i) else "drift" if _drift(i) else "verified"
    return {
        "id": i,
        "mac": _mac(i),
        "e164": f"+49891{i:06d}",
        "device_type": "OpenStage 60" if i % 3 else "OpenStage 40",
        "software_version": "V3 R5.1",
        "ip": _ip(i),
        "hostname": f"phone-{i:06d}.example.net",
        "dns_names": [],
        "policy_name": "default",
        "enrollment": "approved",
        "status": status,
        "drift": _drift(i),
        "last_seen_at": T0 - timedelta(hours=i % 48),
        "last_verified_at": T0 - timedelta(days=i % 30),
        "created_at": T0,
        "updated_at": T0,
    }


def _certificate(cert_id: int, device: int, *, pending: bool) -> dict[str, Any]:
    return {
        "id": cert_id,
        "device_id": device,
        "serial": f"{(0x2000000 if pending else 0x1000000) + device:x}",
        "subject": f"CN={_ip(device)}",
        "sans": [],
        "key_type": "rsa-2048",
        "not_before": T0 - timedelta(days=30),
        "not_after": T0 + timedelta(days=397 if pending else device % 397),
        "fingerprint_sha256": f"{cert_id:064x}",
        "cert_pem": PEM,
        "key_blob": b"sealed",
        "issuer_fingerprint": "f" * 64,
        "policy_name": "default",
        "status": "pending" if pending else "active",
        "reason": "renewal" if pending else "enrollment",
        "created_at": T0,
    }


def _deployment(i: int, cert_id: int, created: datetime, finished: datetime) -> dict[str, Any]:
    failed = _failed(i)
    probe = {"at": finished.isoformat(), "dir": "probe", "result": "failed" if failed else "passed"}
    return {
        "id": i,
        "device_id": i,
        "certificate_id": cert_id,
        "state": "failed" if failed else "verified",
        "attempts": 5 if failed else 1,
        "profile_index": 0,
        "profile_used": None if failed and i % 3 else "modern",
        "password_item_used": not failed,
        "last_error": FAILURES[i % len(FAILURES)] if failed else None,
        "contacted_at": created,
        "written_at": None if failed else created + timedelta(seconds=20),
        "verified_at": None if failed else finished,
        "finished_at": finished,
        "check_reply": None if failed else "passed",
        "check_info": None if failed else "verified",
        "check_probe": None if failed else "passed",
        "verify_failures": 0,
        "transcript": [{"at": created.isoformat(), "dir": "out", "op": "contact-me"}, probe],
        "version": 1,
        "created_at": created,
        "updated_at": finished,
    }


class _Chain:
    """The audit chain as the seeder writes it: device ``i``'s two events are ``2i - 1`` and ``2i``, spread evenly
    over the four weeks before T0, each hashed with certmgr's own :func:`event_hash`."""

    def __init__(self, count: int) -> None:
        self.seq = 0
        self.hash = GENESIS_HASH
        self.step = timedelta(days=28) / (2 * count)

    def at(self, seq: int) -> datetime:
        return LOG_START + self.step * seq

    def event(self, actor: str, action: str, subject_type: str, subject_id: str, details: dict[str, Any]) -> Any:
        self.seq += 1
        at = self.at(self.seq)
        digest = event_hash(self.hash, ChainedEvent(self.seq, at, actor, action, subject_type, subject_id, details))
        row = {
            "seq": self.seq,
            "at": at,
            "actor": actor,
            "action": action,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "details": details,
            "prev_hash": self.hash,
            "hash": digest,
        }
        self.hash = digest
        return row

    def device_events(self, i: int, cert: dict[str, Any]) -> list[dict[str, Any]]:
        """Device ``i``'s certificate ``cert`` issued, then its deployment verified or failed."""
        issued = {
            "mac": _mac(i),
            "serial": cert["serial"],
            "sha256": cert["fingerprint_sha256"],
            "not_after": cert["not_after"].isoformat(),
            "policy": "default",
            "key_type": "rsa-2048",
            "reason": cert["reason"],
            "sans": [],
        }
        first = self.event("renewal", "certificate.issued", "certificate", cert["serial"], issued)
        if _failed(i):
            failed = {"mac": _mac(i), "reason": FAILURES[i % len(FAILURES)], "attempts": 5}
            return [first, self.event("deploy", "deployment.failed", "deployment", str(i), failed)]
        checks = {"check_reply": "passed", "check_info": "verified", "check_probe": "passed"}
        verified = {"mac": _mac(i), "serial": cert["serial"], **checks}
        return [first, self.event("deploy", "deployment.verified", "deployment", str(i), verified)]


def _deployed_certificate(i: int, count: int) -> dict[str, Any]:
    """The certificate device ``i``'s deployment delivered (or tried to)."""
    return _certificate(count + i, i, pending=True) if _failed(i) else _certificate(i, i, pending=False)


def seed(url: str, count: int, signer: AuditSigner) -> dict[str, Any]:
    """Seed the fleet (see the module docstring); returns the seconds of the fleet (devices, certificates,
    deployments) and of the audit log (hashing, insert, checkpoints), migration excluded, and the audit events and
    checkpoints written."""
    upgrade(url)
    engine = create_engine(url)
    chain = _Chain(count)
    fleet_s = audit_s = 0.0
    checkpoints = 0
    with engine.begin() as conn:
        conn.execute(insert(AuditHead), {"id": HEAD_ID, "seq": 0, "hash": GENESIS_HASH})
    for start in range(1, count + 1, BATCH):
        ids = range(start, min(start + BATCH, count + 1))
        failed = [i for i in ids if _failed(i)]
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(insert(Device), [_device(i) for i in ids])
            conn.execute(insert(Certificate), [_certificate(i, i, pending=False) for i in ids])
            if failed:  # the renewal that did not reach the phone: its certificate stays pending
                conn.execute(insert(Certificate), [_certificate(count + i, i, pending=True) for i in failed])
            conn.execute(
                update(Device)
                .where(col(Device.id) >= ids[0], col(Device.id) <= ids[-1])
                .values(current_certificate_id=col(Device.id))
            )
            conn.execute(
                insert(Deployment),
                [_deployment(i, count + i if _failed(i) else i, chain.at(2 * i - 1), chain.at(2 * i)) for i in ids],
            )
        fleet_s += time.perf_counter() - started
        started = time.perf_counter()
        events = [e for i in ids for e in chain.device_events(i, _deployed_certificate(i, count))]
        with Session(engine) as session:
            conn = session.connection()
            conn.execute(insert(AuditEvent), events)
            conn.execute(_SET_HEAD, {"new_seq": chain.seq, "new_hash": chain.hash})
            if create_checkpoint(session, signer, events[-1]["at"]) is not None:
                checkpoints += 1
            session.commit()
        audit_s += time.perf_counter() - started
    engine.dispose()
    return {"fleet_s": fleet_s, "audit_s": audit_s, "events": chain.seq, "checkpoints": checkpoints}


# --- floors -------------------------------------------------------------------------------------------------------
# The bare SQL of what each kind reads (see the module docstring): ``{p}`` is the last key of the previous batch,
# ``{now}`` the report time as a literal of the backend, ``{details}`` the audit details as stored text.
FLOOR_SQL = {
    "inventory": (
        "SELECT d.id, d.mac, d.hostname, d.e164, d.ip, d.device_type, d.software_version, d.policy_name, d.status, "
        "c.serial, c.not_after, c.status, d.last_verified_at, d.last_seen_at "
        "FROM device d LEFT OUTER JOIN certificate c ON c.id = d.current_certificate_id "
        "WHERE d.id > {p} ORDER BY d.id LIMIT 1000"
    ),
    "compliance": (
        "SELECT d.id, d.mac, d.hostname, d.e164, d.ip, d.device_type, d.software_version, d.status, "
        "c.serial, c.not_after, d.last_verified_at, "
        "CASE WHEN c.id IS NULL OR d.last_verified_at IS NULL OR c.status <> 'active' OR c.not_after <= {now} "
        "OR d.status IN ('failed', 'drift') OR d.drift THEN 1 ELSE 0 END "
        "FROM device d LEFT OUTER JOIN certificate c ON c.id = d.current_certificate_id "
        "WHERE d.status <> 'decommissioned' AND d.id > {p} ORDER BY d.id LIMIT 1000"
    ),
    "expiry": (
        "SELECT d.id, c.not_after FROM device d JOIN certificate c ON c.id = d.current_certificate_id "
        "WHERE d.status <> 'decommissioned' AND d.id > {p} ORDER BY d.id LIMIT 1000"
    ),
    "deployments": (
        "SELECT p.id, d.mac, c.serial, p.state, p.attempts, p.profile_used, p.created_at, p.finished_at, "
        "p.check_reply, p.check_info, p.check_probe, p.last_error "
        "FROM deployment p JOIN device d ON d.id = p.device_id JOIN certificate c ON c.id = p.certificate_id "
        "WHERE p.id > {p} ORDER BY p.id LIMIT 1000"
    ),
    "audit": (
        "SELECT seq, at, actor, action, subject_type, subject_id, {details}, hash "
        "FROM audit_event WHERE seq > {p} ORDER BY seq LIMIT 1000"
    ),
}
FLOOR_COLUMNS = {
    "inventory": (
        "mac",
        "hostname",
        "e164",
        "ip",
        "model",
        "firmware",
        "policy",
        "status",
        "serial",
        "not_after",
        "cert_status",
        "last_verified_at",
        "last_seen_at",
    ),
    "compliance": (
        "mac",
        "hostname",
        "e164",
        "ip",
        "model",
        "firmware",
        "status",
        "serial",
        "not_after",
        "last_verified_at",
    ),
    "expiry": ("period", "certificates"),
    "deployments": DEPLOYMENT_COLUMNS,  # the report's own columns: its floor reads exactly those
    "audit": AUDIT_COLUMNS,
}


def _chunks(cursor: Any, sql: str) -> Iterator[list[Any]]:
    """Keyset pagination of ``sql`` (its first column is the key) with a DBAPI cursor."""
    last = 0
    while True:
        cursor.execute(sql.format(p=last))
        chunk = cursor.fetchall()
        if not chunk:
            return
        yield chunk
        last = chunk[-1][0]


def _month(value: Any) -> str:
    """The UTC month of a timestamp as the driver returns it (SQLite: text; PostgreSQL: an aware datetime)."""
    if isinstance(value, str):
        return value[:7]
    utc = value.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def floor(kind: str, dialect: str, cursor: Any, writer: Any) -> int:
    """The floor of ``kind`` (see :data:`FLOOR_SQL`), written with ``writer``; returns the rows written."""
    if dialect == "sqlite":  # UTC wall time as SQLAlchemy stores it in SQLite's text
        now: Any = T0.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        now_sql = f"'{now}'"
    else:
        now, now_sql = T0, f"'{T0.isoformat()}'::timestamptz"
    sql = FLOOR_SQL[kind].format(p="{p}", now=now_sql, details="details" if dialect == "sqlite" else "details::text")
    writer.writerow(FLOOR_COLUMNS[kind])
    rows = 0
    if kind == "expiry":
        expired = 0
        months: Counter[str] = Counter()
        for chunk in _chunks(cursor, sql):
            for r in chunk:
                if r[1] <= now:
                    expired += 1
                else:
                    months[_month(r[1])] += 1
        writer.writerow(("expired", expired))
        writer.writerows(sorted(months.items()))
        return 1 + len(months)
    for chunk in _chunks(cursor, sql):
        if kind == "inventory":
            writer.writerows(r[1:] for r in chunk)
            rows += len(chunk)
        elif kind == "compliance":
            exceptions = [r[1:-1] for r in chunk if r[-1]]
            writer.writerows(exceptions)
            rows += len(exceptions)
        else:
            writer.writerows(chunk)
            rows += len(chunk)
    return rows


# --- one measurement (child process) ----------------------------------------------------------------------------
def child(kind: str, mode: str, url: str, out: Path, key_file: Path) -> dict[str, Any]:
    """Run one export and report seconds, peak RSS and the RSS after imports (and, signed, the evidence's cost).

    Raises:
        SystemExit: if the evidence finds the seeded audit chain broken (the bench would measure the wrong thing).
    """
    from certmgr.reports.evidence import collect_evidence
    from certmgr.reports.manifest import export_report
    from certmgr.reports.queries import ReportKind, ReportParams, build_report
    from certmgr.reports.render import RenderContext, ReportFormat, write_report

    engine = create_engine(url)
    with engine.connect() as warm:
        warm.execute(text("SELECT 1"))
    baseline = _rss_kib()
    started = time.perf_counter()
    rows = 0
    extra: dict[str, Any] = {}
    if mode == "floor":
        raw = engine.raw_connection()
        try:
            with out.open("w", newline="", encoding="utf-8") as text_fh:
                rows = floor(kind, engine.dialect.name, raw.cursor(), csv.writer(text_fh, lineterminator="\r\n"))
        finally:
            raw.close()
    elif mode == "rl-canvas":
        rows = _reportlab_canvas(engine, out)
    else:
        spec = build_report(ReportKind(kind), ReportParams(), T0)
        fmt = ReportFormat(mode.split("-")[0])
        with Session(engine) as session:
            if mode.endswith("-signed"):
                key = serialization.load_pem_private_key(key_file.read_bytes(), None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                signer = AuditSigner(key)
                t_evidence = time.perf_counter()
                evidence = collect_evidence(session, signer, generated_at=T0, generated_by="bench", via="cli")
                extra = {
                    "evidence_s": time.perf_counter() - t_evidence,
                    "events_verified": evidence.events_verified,
                    "checkpoints_verified": evidence.checkpoints_verified,
                }
                if not evidence.chain_ok:
                    raise SystemExit(f"the seeded audit chain does not verify: {evidence.bad_reason}")
                run = spec.open(session)
                rows = int(export_report(spec, run, fmt, out, signer, RenderContext(evidence=evidence))["rows"])
            else:
                run = spec.open(session)
                with out.open("wb") as fh:
                    write_report(spec, run, fmt, fh, RenderContext())
                rows = run.count
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "kind": kind,
        "mode": mode,
        "seconds": seconds,
        "peak_rss_mib": _rss_kib() / 1024,
        "baseline_rss_mib": baseline / 1024,
        "bytes": out.stat().st_size,
        "rows": rows,
        **extra,
    }


def _reportlab_canvas(engine: Any, out: Path) -> int:
    """The inventory drawn with reportlab's canvas (see the module docstring); returns the rows drawn."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen.canvas import Canvas

    from certmgr.reports.fonts import default_font_set
    from certmgr.reports.queries import ReportKind, ReportParams, build_report

    fonts = default_font_set()
    pdfmetrics.registerFont(TTFont("Body", str(fonts.chain[0])))
    pdfmetrics.registerFont(TTFont("Bold", str(fonts.bold or fonts.chain[0])))
    spec = build_report(ReportKind.INVENTORY, ReportParams(), T0)
    width, height, size, line = 842.0, 595.0, 8.0, 10.0
    column = (width - 56.0) / len(spec.columns)
    canvas = Canvas(str(out), pagesize=(width, height), pageCompression=1)
    pages, rows, y = 0, 0, 0.0
    with Session(engine) as session:
        for row in spec.open(session):
            if pages == 0 or y < 40.0:
                if pages:
                    canvas.showPage()
                pages += 1
                canvas.setFont("Bold", 11)
                canvas.drawString(28, height - 38, spec.title)
                canvas.setFont("Body", size)
                canvas.drawString(width - 90, height - 38, f"page {pages} of")
                canvas.doForm("total")
                canvas.setFont("Bold", size)
                for i, name in enumerate(spec.columns):
                    canvas.drawString(28 + i * column, height - 56, name)
                canvas.setFont("Body", size)
                y = height - 56 - line
            for i, value in enumerate(row):
                if value is not None:
                    canvas.drawString(28 + i * column, y, str(value))
            y -= line
            rows += 1
    canvas.showPage()
    canvas.beginForm("total")
    canvas.setFont("Body", size)
    canvas.drawString(width - 90 + 40, height - 38, str(pages))
    canvas.endForm()
    canvas.save()
    return rows


def measure(kind: str, mode: str, url: str, folder: Path) -> dict[str, Any]:
    out = folder / f"{kind}-{mode}.out"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--kinds", kind, "--url", url, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {mode} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def print_seed(backend: str, count: int, seeded: dict[str, Any]) -> None:
    total = seeded["fleet_s"] + seeded["audit_s"]
    print(
        f"\n{backend}: {count:,} phones seeded in {total:.1f} s — devices, certificates and deployments "
        f"{seeded['fleet_s']:.1f} s; {seeded['events']:,} audit events (a valid chain, hashed by certmgr) and "
        f"{seeded['checkpoints']} signed checkpoints {seeded['audit_s']:.1f} s",
        flush=True,
    )


def print_kind(kind: str, results: list[dict[str, Any]]) -> None:
    floor_s = next(r["seconds"] for r in results if r["mode"] == "floor")
    print(f"\n{kind}")
    print(
        f"{'mode':<11} {'rows':>8} {'seconds':>8} {'x floor':>8} {'peak RSS':>10} {'growth':>9} {'size':>9}  evidence"
    )
    for r in results:
        evidence = ""
        if "evidence_s" in r:
            evidence = (
                f"{r['evidence_s']:.2f} s: {r['events_verified']:,} events, "
                f"{r['checkpoints_verified']} checkpoints verified"
            )
        print(
            f"{r['mode']:<11} {r['rows']:>8,} {r['seconds']:8.2f} {r['seconds'] / floor_s:8.1f} "
            f"{r['peak_rss_mib']:6.0f} MiB {r['peak_rss_mib'] - r['baseline_rss_mib']:5.0f} MiB "
            f"{r['bytes'] / 1e6:6.1f} MB  {evidence}",
            flush=True,
        )


def run(backend: str, url: str, count: int, kinds: list[str], modes: list[str], folder: Path) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())  # a throwaway audit key, only in the temporary folder
    key_file = folder / KEY_FILE
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    seeded = seed(url, count, AuditSigner(key))
    print_seed(backend, count, seeded)
    results: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        results[kind] = [measure(kind, m, url, folder) for m in modes if kind == "inventory" or m not in INVENTORY_ONLY]
        print_kind(kind, results[kind])
    return {"backend": backend, "count": count, "seed": seeded, "results": results}


def main() -> None:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--kinds", default="inventory", help=f"comma-separated subset of {','.join(KINDS)}, or all")
    parser.add_argument("--pg", action="store_true", help="also on a throwaway PostgreSQL (tests/pg.py)")
    parser.add_argument("--skip-pdf", action="store_true", help="leave out the PDF modes")
    parser.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)} (floor always runs)")
    parser.add_argument("--results", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    kinds = list(KINDS) if args.kinds == "all" else args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(sorted(unknown))}: use {','.join(KINDS)} or all")
    if args.child:
        print(json.dumps(child(kinds[0], args.child, args.url, args.out, args.out.parent / KEY_FILE)))
        return
    wanted = set(args.modes.split(",")) | {"floor"} if args.modes else set(MODES)
    if wanted - set(MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(wanted - set(MODES)))}: use {','.join(MODES)}")
    modes = [m for m in MODES if m in wanted and not (args.skip_pdf and (m.startswith("pdf") or m == "rl-canvas"))]
    runs = []
    with tempfile.TemporaryDirectory(prefix="certmgr-bench-") as tmp:
        folder = Path(tmp)
        runs.append(run("SQLite", f"sqlite:///{folder / 'bench.db'}", args.count, kinds, modes, folder))
        if args.pg:
            from tests.pg import server_from_environment

            server = server_from_environment()
            try:
                runs.append(run("PostgreSQL", server.create_database(), args.count, kinds, modes, folder))
            finally:
                server.stop()
    if args.results is not None:
        args.results.write_text(json.dumps(runs, indent=1))
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
