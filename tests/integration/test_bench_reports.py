"""The correctness part of ``bench/reports.py`` at a small size, on SQLite and PostgreSQL: the seeded audit log is
a chain certmgr itself verifies (every link, the head, every signed checkpoint), and each report kind's floor reads
the rows its report reports — so the bench's ratios compare like with like."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text
from sqlmodel import Session

from bench import reports as bench_reports
from certmgr.audit.checkpoint import AuditSigner, verify_audit
from certmgr.reports.queries import ReportKind, ReportParams, build_report

COUNT = 400  # phone 397 has an expired certificate; 20 failed, 4 drifting


@pytest.fixture
def seeded(db_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, AuditSigner, dict[str, Any]]:
    monkeypatch.setattr(bench_reports, "BATCH", 150)  # three seeding batches: three checkpoints
    signer = AuditSigner(ec.generate_private_key(ec.SECP256R1()))
    return db_url, signer, bench_reports.seed(db_url, COUNT, signer)


def test_the_seeded_audit_log_is_a_chain_certmgr_verifies(seeded: tuple[str, AuditSigner, dict[str, Any]]) -> None:
    url, signer, figures = seeded
    assert (figures["events"], figures["checkpoints"]) == (2 * COUNT, 3)
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            verdict = verify_audit(session, signer)
            assert verdict.ok, verdict.reason
            assert (verdict.checked, verdict.checkpoints) == (2 * COUNT, 3)
            session.execute(text("UPDATE audit_event SET actor = 'someone' WHERE seq = 123"))
            assert verify_audit(session, signer).first_bad_seq == 123  # the verdict above could have failed
    finally:
        engine.dispose()


def _floor_rows(engine: Any, kind: str) -> list[list[str]]:
    out = io.StringIO()
    raw = engine.raw_connection()
    try:
        written = bench_reports.floor(kind, engine.dialect.name, raw.cursor(), csv.writer(out))
    finally:
        raw.close()
    rows = list(csv.reader(io.StringIO(out.getvalue())))[1:]
    assert len(rows) == written
    return rows


@pytest.mark.parametrize("kind", bench_reports.KINDS)
def test_each_floor_reads_the_rows_its_report_reports(
    seeded: tuple[str, AuditSigner, dict[str, Any]], kind: str
) -> None:
    url = seeded[0]
    engine = create_engine(url)
    try:
        floor = _floor_rows(engine, kind)
        with Session(engine) as session:
            report = list(build_report(ReportKind(kind), ReportParams(), bench_reports.T0).open(session))
    finally:
        engine.dispose()
    if kind == "expiry":  # the report lists every month of the horizon, the floor the months it saw
        assert floor[0] == ["expired", "1"]
        assert (report[0][0], report[0][3]) == ("expired", 1)
        assert sum(int(r[1]) for r in floor) == sum(int(str(r[3])) for r in report) == COUNT
        return
    assert len(floor) == len(report)
    if kind == "audit":  # sequence numbers and hashes
        assert [(r[0], r[7]) for r in floor] == [(str(r[0]), r[7]) for r in report]
    elif kind == "deployments":
        assert [(r[0], r[1], r[11]) for r in floor] == [(str(r[0]), r[1], r[11] or "") for r in report]
    else:  # inventory, compliance: the phones, in order
        assert [r[0] for r in floor] == [r[0] for r in report]
    if kind == "compliance":
        assert len(report) == 20 + 4 + 1  # failed, drifting, expired
