"""Scheduled PDF exports: every configured kind renders, states the scheduler as its author and the audit head it
reflects, and is audited with its SHA-256 after the events it reflects."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from sqlmodel import Session, col, select

from certmgr.db.models import AuditEvent
from certmgr.reports.manifest import manifest_path, verify_export
from certmgr.reports.scheduled import run_scheduled_exports
from certmgr.runtime import Runtime
from tests.integration.test_api_support import Fleet, ca_template, fleet, rt  # noqa: F401 - fixtures


def _configure(rt: Runtime, monkeypatch: pytest.MonkeyPatch, **values: Any) -> None:
    monkeypatch.setattr(rt, "settings", rt.settings.model_copy(update=values))


def test_scheduled_pdfs_carry_summary_and_evidence(
    rt: Runtime, fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kinds = ["inventory", "expiry", "deployments", "audit", "compliance"]
    _configure(
        rt,
        monkeypatch,
        export_dir=tmp_path / "exports",
        export_kinds=kinds,
        export_formats=["pdf"],
        report_timezone="Europe/Berlin",
    )
    with Session(rt.engine) as s:
        head_before = max(s.exec(select(AuditEvent.seq)).all(), default=0)
    run = run_scheduled_exports(rt, rt.clock.now())
    assert len(run.files) == len(kinds)
    shas = set()
    for path in run.files:
        assert verify_export(path).ok
        manifest = json.loads(manifest_path(path).read_text())
        evidence = manifest["evidence"]
        assert (manifest["generated_by"], manifest["via"]) == ("scheduler", "schedule")
        assert manifest["timezone"] == "Europe/Berlin"
        assert evidence["audit_chain"]["intact"] is True
        assert evidence["last_event"]["seq"] == head_before
        first = PdfReader(path).pages[0].extract_text()
        assert "Generated 2026-11-26 10:00:00 CET by scheduler (via schedule)" in first
        assert f"#{head_before}" in first
        assert manifest["summary"]["text"][0].split(":")[0] in first
        shas.add(manifest["sha256"])
    with Session(rt.engine) as s:
        events = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "report.exported")).all()
    assert {e.details["sha256"] for e in events} == shas
    assert all(e.seq > head_before and e.details["reflects_seq"] == head_before for e in events)
