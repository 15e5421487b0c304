"""Benchmark: the inventory report over a 100,000-phone fleet, in every format, against a floor.

Seeding: N devices and N certificates (one current certificate each) inserted with SQLAlchemy Core executemany
into a migrated database (SQLite; PostgreSQL too with ``--pg``, a throwaway server from ``tests/pg.py``).

Each measurement runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; the table shows the
wall time, the peak RSS and the peak minus the RSS after imports (what the export itself cost):

* ``floor``      bare DBAPI keyset scan of the same joined columns (batches of 1000), written with csv.writer
* ``csv``        certmgr.reports: build_report(inventory) rows -> render.write_report(CSV)
* ``json``       the same -> render.write_report(JSON)
* ``pdf``        the same -> render.write_report(PDF), i.e. certmgr.reports.pdfstream: page by page, flat memory
                 (summary page, embedded TrueType subsets, column widths from the content, wrapped cells)
* ``csv-signed`` manifest.export_report(CSV): the CLI/scheduled export — evidence collected from the audit log,
                 hashed while written, fsynced, signed
* ``pdf-signed`` the same for PDF (also what ``/api/v1/reports/inventory/bundle?format=pdf`` renders before
  zipping)
* ``rl-canvas``  the alternative measured for issue 12: reportlab's low-level canvas (``reportlab.pdfgen.canvas``,
                 page compression on, DejaVu Sans embedded as TrueType) drawing the same rows — one ``drawString``
                 per cell, a header per page and "page X of Y" through a form XObject, no wrapping: the least
                 work reportlab could do for this table (needs the dev extra: ``reportlab``)

Until the PDF renderer streamed (reportlab platypus, whole document in memory), ``pdf`` took ~52 s and ~740 MiB.

    .venv/bin/python bench/reports.py [--count 100000] [--pg] [--skip-pdf] [--modes pdf,rl-canvas]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlmodel import Session  # noqa: E402

from bench.common import stop_cleanly_on_signals  # noqa: E402
from certmgr.db.migrate import upgrade  # noqa: E402
from certmgr.db.models import Certificate, Device  # noqa: E402

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
BATCH = 5000
MODES = ("floor", "csv", "json", "pdf", "csv-signed", "pdf-signed", "rl-canvas")
FLOOR_SQL = (
    "SELECT d.id, d.mac, d.e164, d.ip, d.device_type, d.software_version, d.policy_name, d.status, d.drift, "
    "c.serial, c.not_after, c.status, d.last_verified_at, d.last_seen_at "
    "FROM device d LEFT OUTER JOIN certificate c ON c.id = d.current_certificate_id "
    "WHERE d.id > {p} ORDER BY d.id LIMIT 1000"
)
FLOOR_COLUMNS = (
    "mac",
    "e164",
    "ip",
    "model",
    "firmware",
    "policy",
    "status",
    "drift",
    "serial",
    "not_after",
    "cert_status",
    "last_verified_at",
    "last_seen_at",
)


def _rss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --- seeding ----------------------------------------------------------------------------------------------------
def seed(url: str, count: int) -> float:
    """Insert ``count`` devices with one active certificate each; returns seconds (migration excluded)."""
    upgrade(url)
    engine = create_engine(url)
    started = time.perf_counter()
    pem = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"
    with engine.begin() as conn:
        for start in range(1, count + 1, BATCH):
            ids = range(start, min(start + BATCH, count + 1))
            conn.execute(
                insert(Device),
                [
                    {
                        "id": i,
                        "mac": f"00:1A:E8:{(i >> 16) & 0xFF:02X}:{(i >> 8) & 0xFF:02X}:{i & 0xFF:02X}",
                        "e164": f"+49891{i:06d}",
                        "device_type": "OpenStage 60" if i % 3 else "OpenStage 40",
                        "software_version": "V3 R5.1",
                        "ip": f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}",
                        "hostname": f"phone-{i:06d}.example.net",
                        "dns_names": [],
                        "policy_name": "default",
                        "enrollment": "approved",
                        "status": "verified",
                        "drift": False,
                        "last_seen_at": T0 - timedelta(hours=i % 48),
                        "last_verified_at": T0 - timedelta(days=i % 30),
                        "created_at": T0,
                        "updated_at": T0,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(Certificate),
                [
                    {
                        "id": i,
                        "device_id": i,
                        "serial": f"{0x1000000 + i:x}",
                        "subject": f"CN=10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}",
                        "sans": [],
                        "key_type": "rsa-2048",
                        "not_before": T0 - timedelta(days=30),
                        "not_after": T0 + timedelta(days=i % 397),
                        "fingerprint_sha256": f"{i:064x}",
                        "cert_pem": pem,
                        "key_blob": b"sealed",
                        "issuer_fingerprint": "f" * 64,
                        "policy_name": "default",
                        "status": "active",
                        "reason": "enrollment",
                        "created_at": T0,
                    }
                    for i in ids
                ],
            )
        conn.execute(text("UPDATE device SET current_certificate_id = id"))
    engine.dispose()
    return time.perf_counter() - started


# --- one measurement (child process) ----------------------------------------------------------------------------
def child(mode: str, url: str, out: Path) -> dict[str, Any]:
    """Run one export and report seconds, peak RSS and the RSS after imports."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from certmgr.audit.checkpoint import AuditSigner
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
    if mode == "floor":
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            with out.open("w", newline="", encoding="utf-8") as text_fh:
                writer = csv.writer(text_fh, lineterminator="\r\n")
                writer.writerow(FLOOR_COLUMNS)
                last = 0
                while True:
                    cursor.execute(FLOOR_SQL.format(p=last))
                    chunk = cursor.fetchall()
                    if not chunk:
                        break
                    writer.writerows(r[1:] for r in chunk)
                    rows += len(chunk)
                    last = chunk[-1][0]
        finally:
            raw.close()
    elif mode == "rl-canvas":
        rows = _reportlab_canvas(engine, out)
    else:
        spec = build_report(ReportKind.INVENTORY, ReportParams(), T0)
        fmt = ReportFormat(mode.split("-")[0])
        with Session(engine) as session:
            run = spec.open(session)
            if mode.endswith("-signed"):
                signer = AuditSigner(ec.generate_private_key(ec.SECP256R1()))  # a throwaway audit key
                evidence = collect_evidence(session, signer, generated_at=T0, generated_by="bench", via="cli")
                ctx = RenderContext(evidence=evidence)
                rows = int(export_report(spec, run, fmt, out, signer, ctx)["rows"])
            else:
                with out.open("wb") as fh:
                    write_report(spec, run, fmt, fh, RenderContext())
                rows = run.count
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "mode": mode,
        "seconds": seconds,
        "peak_rss_mib": _rss_kib() / 1024,
        "baseline_rss_mib": baseline / 1024,
        "bytes": out.stat().st_size,
        "rows": rows,
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


def measure(mode: str, url: str, folder: Path) -> dict[str, Any]:
    out = folder / f"inventory-{mode}.out"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--url", url, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def report(backend: str, count: int, seed_s: float, results: list[dict[str, Any]]) -> None:
    print(
        f"\n{backend}: {count:,} phones (+ certificates) seeded in {seed_s:.1f} s ({count / seed_s:,.0f} rows/s each)"
    )
    floor = next(r for r in results if r["mode"] == "floor")
    print(f"{'mode':<11} {'seconds':>8} {'x floor':>8} {'peak RSS':>10} {'export Δ':>10} {'size':>10}")
    for r in results:
        print(
            f"{r['mode']:<11} {r['seconds']:8.2f} {r['seconds'] / floor['seconds']:8.1f} "
            f"{r['peak_rss_mib']:8.0f} MiB {r['peak_rss_mib'] - r['baseline_rss_mib']:7.0f} MiB "
            f"{r['bytes'] / 1e6:7.1f} MB"
        )


def run(backend: str, url: str, count: int, modes: list[str], folder: Path) -> None:
    seed_s = seed(url, count)
    report(backend, count, seed_s, [measure(m, url, folder) for m in modes])


def main() -> None:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--pg", action="store_true", help="also on a throwaway PostgreSQL (tests/pg.py)")
    parser.add_argument("--skip-pdf", action="store_true", help="leave out the PDF modes")
    parser.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)} (floor always runs)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.out)))
        return
    wanted = set(args.modes.split(",")) | {"floor"} if args.modes else set(MODES)
    modes = [m for m in MODES if m in wanted and not (args.skip_pdf and (m.startswith("pdf") or m == "rl-canvas"))]
    with tempfile.TemporaryDirectory(prefix="certmgr-bench-") as tmp:
        folder = Path(tmp)
        run("SQLite", f"sqlite:///{folder / 'bench.db'}", args.count, modes, folder)
        if args.pg:
            from tests.pg import server_from_environment

            server = server_from_environment()
            try:
                run("PostgreSQL", server.create_database(), args.count, modes, folder)
            finally:
                server.stop()
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
