"""Reports bound to the audit log: the evidence each manifest records, and ``certmgr report verify`` detecting an
audit log changed after the report (an event modified, removed or inserted before the recorded head), a report
whose generation is not in the log, and a checkpoint that does not verify; the documented openssl check of the
recorded checkpoint."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import delete, insert, select, update
from sqlmodel import Session, col

from certmgr.audit.chain import ChainedEvent, event_hash
from certmgr.audit.checkpoint import create_checkpoint, runtime_signer
from certmgr.audit.log import append_event, verify_log
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent
from certmgr.reports.manifest import manifest_path
from certmgr.runtime import Runtime
from tests.conftest import T0
from tests.integration.test_api_support import Fleet, ca_template, fleet, rt  # noqa: F401 - fixtures
from tests.integration.test_reports_export import _documented_openssl_commands, _run

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reports.md"


def _history(rt: Runtime, n: int = 5, *, checkpoint: bool = True) -> None:
    """``n`` audit events, then (optionally) a signed checkpoint of the head."""
    with session_scope(rt.engine) as s:
        for i in range(n):
            append_event(s, at=T0, actor="test", action="test.event", subject_id=str(i), details={"i": i})
        if checkpoint:
            create_checkpoint(s, runtime_signer(rt), T0)


def _export(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict[str, Any]:
    code, output = _run(capsys, "report", out.stem, "--format", out.suffix[1:], "--out", str(out), *args)
    assert code == 0, output
    doc: dict[str, Any] = json.loads(manifest_path(out).read_text())
    return doc


def _verify(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[int, str]:
    return _run(capsys, "report", "verify", str(out), *args)


def test_manifest_records_the_evidence(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _history(rt)
    with Session(rt.engine) as s:
        head = s.execute(select(col(AuditEvent.seq), col(AuditEvent.hash)).order_by(col(AuditEvent.seq).desc())).first()
    assert head is not None
    doc = _export(capsys, tmp_path / "inventory.pdf")
    evidence = doc["evidence"]
    assert (doc["generated_by"], doc["via"]) == ("cli", "cli")
    assert evidence["audit_chain"] == {
        "intact": True,
        "events_verified": head[0],
        "checkpoints_verified": 1,
        "first_bad_seq": None,
        "reason": None,
    }
    assert evidence["last_event"] == {"seq": head[0], "hash": head[1]}
    assert evidence["last_checkpoint"]["seq"] == head[0]
    assert evidence["last_checkpoint"]["hash"] == head[1]
    assert evidence["audit_key_sha256"] == doc["public_key_sha256"]
    assert doc["summary"]["figures"]["phones"] == 4
    assert doc["summary"]["figures"]["compliance_percent"] == 50.0
    first = PdfReader(tmp_path / "inventory.pdf").pages[0].extract_text()
    assert f"#{head[0]}" in first
    assert "intact" in first
    assert "Compliant: 50.0 % (2 of 4)" in first
    # generating it is an audit event after the head, naming the file's SHA-256
    with Session(rt.engine) as s:
        event = s.execute(select(AuditEvent).where(col(AuditEvent.seq) == head[0] + 1)).scalar_one()
    assert event.action == "report.exported"
    assert event.details["sha256"] == doc["sha256"]
    assert event.details["reflects_seq"] == head[0]
    code, output = _verify(capsys, tmp_path / "inventory.pdf")
    assert code == 0, output
    assert f"unchanged up to audit event {head[0]}" in output


def _modify(s: Session, seq: int) -> None:
    s.execute(update(AuditEvent).where(col(AuditEvent.seq) == seq).values(details={"i": "forged"}))


def _remove(s: Session, seq: int) -> None:
    s.execute(delete(AuditEvent).where(col(AuditEvent.seq) == seq))


def _insert(s: Session, seq: int) -> None:
    """Insert an event at ``seq``, renumbering the later ones (what inserting into the history needs)."""
    last = s.execute(select(col(AuditEvent.seq)).order_by(col(AuditEvent.seq).desc()).limit(1)).scalar_one()
    for n in range(last, seq - 1, -1):
        s.execute(update(AuditEvent).where(col(AuditEvent.seq) == n).values(seq=n + 1))
    row = s.execute(select(AuditEvent).where(col(AuditEvent.seq) == seq + 1)).scalar_one()
    s.execute(
        insert(AuditEvent).values(
            seq=seq,
            at=row.at,
            actor="intruder",
            action="token.created",
            subject_type="",
            subject_id="",
            details={},
            prev_hash=row.prev_hash,
            hash="e" * 64,
        )
    )


@pytest.mark.parametrize("tamper", [_modify, _remove, _insert], ids=["modified", "removed", "inserted"])
def test_verify_detects_an_audit_log_changed_after_the_report(
    tamper: Callable[[Session, int], None],
    rt: Runtime,
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _history(rt, checkpoint=False)
    out = tmp_path / "compliance.csv"
    doc = _export(capsys, out)
    upto = doc["evidence"]["last_event"]["seq"]
    _history(rt, 2, checkpoint=False)  # ordinary events after the report change nothing
    assert _verify(capsys, out)[0] == 0
    with session_scope(rt.engine) as s:
        tamper(s, upto - 2)
    code, output = _verify(capsys, out)
    assert code == 1
    assert f"the audit log changed after the report: up to event {upto} it no longer verifies" in output
    code, output = _verify(capsys, out, "--no-audit-log")  # the file and its manifest alone are still fine
    assert code == 0, output


def _rehash_from(s: Session, seq: int, upto: int) -> None:
    """Rewrite events ``seq``..``upto``: ``seq`` gets new details, and each of them a recomputed hash and link, so
    that the chain up to ``upto`` is consistent again (what a forger with database access would do)."""
    prev_hash = s.execute(select(col(AuditEvent.prev_hash)).where(col(AuditEvent.seq) == seq)).scalar_one()
    for n in range(seq, upto + 1):
        row = s.execute(select(AuditEvent).where(col(AuditEvent.seq) == n)).scalar_one()
        details = {"i": "forged"} if n == seq else dict(row.details)
        event = ChainedEvent(n, row.at, row.actor, row.action, row.subject_type, row.subject_id, details)
        digest = event_hash(prev_hash, event)
        s.execute(
            update(AuditEvent).where(col(AuditEvent.seq) == n).values(details=details, prev_hash=prev_hash, hash=digest)
        )
        prev_hash = digest


def test_verify_detects_the_recorded_head_event_removed(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The event the report names as its last is deleted: the events before it still link up, so only the
    recorded head (seq and hash) tells. No checkpoint, so that its own check cannot be what notices."""
    _history(rt, checkpoint=False)
    out = tmp_path / "inventory.csv"
    doc = _export(capsys, out)
    assert doc["evidence"]["last_checkpoint"] is None
    upto = doc["evidence"]["last_event"]["seq"]
    with session_scope(rt.engine) as s:
        _remove(s, upto)
    code, output = _verify(capsys, out)
    assert code == 1
    assert f"the audit log changed after the report: up to event {upto} it no longer verifies" in output
    assert "no report.exported event" not in output  # the report's own event (after the head) is still there


def test_verify_detects_a_rehashed_history_ending_in_another_hash(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events up to and including the named one rewritten with recomputed hashes: every link up to it is
    consistent, only its hash differs from the one in the signed manifest."""
    _history(rt, checkpoint=False)
    out = tmp_path / "compliance.json"
    doc = _export(capsys, out)
    assert doc["evidence"]["last_checkpoint"] is None
    upto, recorded = doc["evidence"]["last_event"]["seq"], doc["evidence"]["last_event"]["hash"]
    with session_scope(rt.engine) as s:
        _rehash_from(s, upto - 2, upto)
    with Session(rt.engine) as s:
        assert verify_log(s, upto=(upto, recorded)).first_bad_seq == upto
        rows = list(
            s.execute(select(AuditEvent).where(col(AuditEvent.seq) <= upto).order_by(col(AuditEvent.seq))).scalars()
        )
    assert rows[-1].hash != recorded
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))  # the links are consistent
    code, output = _verify(capsys, out)
    assert code == 1
    assert f"the audit log changed after the report: up to event {upto} it no longer verifies" in output
    assert "chain head does not match the recorded head" in output


def test_verify_needs_the_reports_own_audit_event(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.json"
    doc = _export(capsys, out)
    with session_scope(rt.engine) as s:
        s.execute(
            update(AuditEvent)
            .where(col(AuditEvent.action) == "report.exported")
            .values(details={"sha256": "0" * 64, "via": "cli"})
        )
    code, output = _verify(capsys, out)
    assert code == 1
    assert "no report.exported event after event" in output
    assert doc["sha256"] not in output


def test_a_report_of_a_broken_log_says_so_and_does_not_verify(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _history(rt, checkpoint=False)
    with session_scope(rt.engine) as s:
        _modify(s, 2)
    out = tmp_path / "deployments.pdf"
    doc = _export(capsys, out)
    assert doc["evidence"]["audit_chain"]["intact"] is False
    assert doc["evidence"]["audit_chain"]["first_bad_seq"] == 2
    assert "BROKEN at event 2" in PdfReader(out).pages[0].extract_text()
    code, output = _verify(capsys, out)
    assert code == 1
    assert "already broken when the report was made (event 2" in output


def test_verify_without_a_database_checks_the_files_and_warns(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "expiry.csv"
    _export(capsys, out)
    monkeypatch.setenv("CERTMGR_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    code, output = _verify(capsys, out)
    assert code == 0, output
    assert "the audit log was not checked" in output
    code, output = _verify(capsys, out, "--audit-log")
    assert code != 0
    assert "cannot check the audit log" in output


def test_a_forged_checkpoint_in_the_manifest_is_detected(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even with a valid manifest signature (a forger holding some other key could not make one, but the
    checkpoint is checked on its own too): a checkpoint whose signature does not verify is reported."""
    _history(rt)
    out = tmp_path / "inventory.csv"
    doc = _export(capsys, out)
    from certmgr.reports.evidence import verify_checkpoint

    key = runtime_signer(rt)
    assert verify_checkpoint(doc["evidence"], key) is None
    forged = {**doc["evidence"], "last_checkpoint": {**doc["evidence"]["last_checkpoint"], "seq": 1}}
    assert "does not verify" in str(verify_checkpoint(forged, key))
    for seq in (float("inf"), "1" * 5_000, [1], None):  # 1e999 in JSON is inf: int() raises OverflowError
        malformed = {**doc["evidence"], "last_checkpoint": {**doc["evidence"]["last_checkpoint"], "seq": seq}}
        assert verify_checkpoint(malformed, key) == "evidence: the recorded checkpoint is malformed"


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("jq") is None, reason="needs openssl and jq")
def test_documented_openssl_check_of_the_checkpoint(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint commands of docs/reports.md, verbatim, with openssl and jq alone, after the block that
    checks the manifest's signature and leaves its signed part, from which alone they read."""
    _history(rt)
    out = tmp_path / "inventory.csv"
    _export(capsys, out)
    section = DOCS.read_text().split("### The audit log behind a report", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands, block
    assert "inventory.csv.manifest.json" not in block  # only the signed part is read
    outputs = []
    for command in [*_documented_openssl_commands(), *commands]:
        done = subprocess.run(
            ["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    assert "Verified OK" in outputs[-1]
    message = (tmp_path / "checkpoint.txt").read_text()
    assert message.startswith("certmgr-audit-checkpoint-v1\nseq=")
    (tmp_path / "checkpoint.txt").write_text(message.replace("seq=", "seq=1"))
    done = subprocess.run(["/bin/sh", "-c", commands[-1]], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode != 0
