"""Audit verification with signed checkpoints, by CLI and API, on SQLite and PostgreSQL: every kind of tampering
is detected and the first bad event named."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, insert, select, update
from sqlmodel import Session, col

from certmgr.audit.chain import ChainedEvent, event_hash
from certmgr.audit.checkpoint import (
    checkpoint_message,
    create_checkpoint,
    key_paths,
    load_verifier,
    runtime_signer,
    verify_audit,
)
from certmgr.audit.log import append_event
from certmgr.cli.main import main
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditCheckpoint, AuditEvent, AuditHead
from certmgr.pki.keys import ENCRYPTED_KEY_PEM_HEADER
from certmgr.runtime import Runtime
from tests.conftest import T0
from tests.integration.test_api_support import auth, ca_template, client, rt, tokens  # noqa: F401 - fixtures


def _append(rt: Runtime, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with session_scope(rt.engine) as s:
            append_event(
                s, at=T0 + timedelta(seconds=i), actor="test", action="thing.done", subject_id=f"t{i}", details={"i": i}
            )


def _checkpoint(rt: Runtime) -> None:
    with session_scope(rt.engine) as s:
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is not None


def _seq_of_head(rt: Runtime) -> int:
    with Session(rt.engine) as s:
        head = s.get(AuditHead, 1)
        assert head is not None
        return head.seq


def _cli_verify(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify"])
    captured = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), captured.out + captured.err


def _api_verify(client: TestClient, token: str) -> dict[str, object]:
    r = client.get("/api/v1/audit/verify", headers=auth(token))
    assert r.status_code == 200
    body: dict[str, object] = r.json()
    return body


def test_key_is_generated_encrypted_0600_with_public_key(rt: Runtime) -> None:
    signer = runtime_signer(rt)
    key_file, pub_file = key_paths(rt.settings.data_dir)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert ENCRYPTED_KEY_PEM_HEADER in key_file.read_bytes()
    assert pub_file.read_bytes() == signer.public_pem
    again = runtime_signer(rt)  # loaded, not regenerated
    assert again.fingerprint == signer.fingerprint
    verifier = load_verifier(rt.settings.data_dir)
    assert verifier is not None
    assert verifier.verify(signer.sign(checkpoint_message(1, "a" * 64)), checkpoint_message(1, "a" * 64))


def test_checkpoint_is_idempotent_and_verifies(rt: Runtime) -> None:
    with session_scope(rt.engine) as s:
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is not None  # CA registration event
    with session_scope(rt.engine) as s:
        assert create_checkpoint(s, runtime_signer(rt), rt.clock.now()) is None
    _append(rt, 3)
    _checkpoint(rt)
    with Session(rt.engine) as s:
        verdict = verify_audit(s, load_verifier(rt.settings.data_dir))
        assert s.execute(select(func.count()).select_from(AuditCheckpoint)).scalar_one() == 2
    assert verdict.ok
    assert verdict.checkpoints == 2


def _tamper_update(rt: Runtime, base: int) -> int:
    with session_scope(rt.engine) as s:
        s.execute(update(AuditEvent).where(col(AuditEvent.seq) == base + 2).values(details={"i": 999}))
    return base + 2


def _tamper_delete(rt: Runtime, base: int) -> int:
    with session_scope(rt.engine) as s:
        s.execute(delete(AuditEvent).where(col(AuditEvent.seq) == base + 3))
    return base + 3


def _tamper_insert(rt: Runtime, base: int) -> int:
    """A forged event slipped in after base+1: later events are renumbered to make room, as a forger must."""
    with session_scope(rt.engine) as s:
        prev = s.execute(select(AuditEvent).where(col(AuditEvent.seq) == base + 1)).scalar_one()
        top = s.execute(select(func.max(AuditEvent.seq))).scalar_one()
        for seq in range(top, base + 1, -1):  # shift one by one: seq is unique
            s.execute(update(AuditEvent).where(col(AuditEvent.seq) == seq).values(seq=seq + 1))
        forged = ChainedEvent(base + 2, prev.at, "mallory", "token.created", "token", "backdoor", {"role": "admin"})
        s.execute(
            insert(AuditEvent).values(
                seq=base + 2,
                at=prev.at,
                actor="mallory",
                action="token.created",
                subject_type="token",
                subject_id="backdoor",
                details={"role": "admin"},
                prev_hash=prev.hash,
                hash=event_hash(prev.hash, forged),
            )
        )
    return base + 3  # the forged event links fine; the next one no longer does


def _tamper_truncate(rt: Runtime, base: int) -> int:
    with session_scope(rt.engine) as s:
        top = s.execute(select(func.max(AuditEvent.seq))).scalar_one()
        s.execute(delete(AuditEvent).where(col(AuditEvent.seq) >= top - 1))
    return base + 5


def _tamper_rewrite(rt: Runtime, base: int) -> int:
    """Change an event and recompute every later hash and the head: only the checkpoint signature catches it."""
    with session_scope(rt.engine) as s:
        rows = list(s.execute(select(AuditEvent).order_by(col(AuditEvent.seq))).scalars())
        prev = rows[base].prev_hash
        for row in rows[base:]:
            details = {"i": -1} if row.seq == base + 1 else row.details
            chained = ChainedEvent(
                row.seq, row.at, row.actor, row.action, row.subject_type or "", row.subject_id or "", details
            )
            digest = event_hash(prev, chained)
            s.execute(
                update(AuditEvent)
                .where(col(AuditEvent.id) == row.id)
                .values(details=details, prev_hash=prev, hash=digest)
            )
            prev = digest
        s.execute(update(AuditHead).where(col(AuditHead.id) == 1).values(hash=prev))
    return base + 1


TAMPERS: dict[str, Callable[[Runtime, int], int]] = {
    "update": _tamper_update,
    "delete": _tamper_delete,
    "insert": _tamper_insert,
    "truncate": _tamper_truncate,
    "rewrite": _tamper_rewrite,
}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_tampering_is_detected_by_cli_and_api(
    how: str,
    rt: Runtime,
    client: TestClient,
    tokens: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = _seq_of_head(rt)  # the CA registration and the token creations
    _append(rt, 6)
    if how == "rewrite":
        _checkpoint(rt)  # signs seq base+6; a rewrite from base+1 changes that event's hash
    code, output = _cli_verify(capsys)
    assert code == 0, output
    assert "intact" in output
    assert _api_verify(client, tokens["viewer"])["ok"] is True

    bad = TAMPERS[how](rt, base)

    code, output = _cli_verify(capsys)
    assert code != 0
    assert f"event {bad if how != 'rewrite' else base + 6}" in output
    body = _api_verify(client, tokens["viewer"])
    assert body["ok"] is False
    assert body["reason"]
    if how == "rewrite":
        assert body["first_bad_seq"] == base + 6  # the checkpointed event whose hash no longer matches
        assert "rewritten" in str(body["reason"])
    else:
        assert body["first_bad_seq"] == bad


def test_forged_checkpoint_signature_is_detected(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    _append(rt, 2)
    _checkpoint(rt)
    with session_scope(rt.engine) as s:
        s.execute(update(AuditCheckpoint).values(signature=b"\x30\x06\x02\x01\x01\x02\x01\x01"))
    code, output = _cli_verify(capsys)
    assert code != 0
    assert "signature" in output


def test_checkpoints_without_public_key_fail(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    _append(rt, 1)
    _checkpoint(rt)
    key_paths(rt.settings.data_dir)[1].unlink()
    code, output = _cli_verify(capsys)
    assert code != 0
    assert "public key" in output


def test_api_checkpoint_and_public_key(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    assert client.get("/api/v1/audit/public-key.pem", headers=auth(tokens["viewer"])).status_code == 404
    r = client.post("/api/v1/audit/checkpoints", headers=auth(tokens["admin"]))
    assert r.status_code == 200
    assert r.json()["created"] is True
    pem = client.get("/api/v1/audit/public-key.pem", headers=auth(tokens["viewer"]))
    assert pem.status_code == 200
    assert pem.text.startswith("-----BEGIN PUBLIC KEY-----")
    assert _api_verify(client, tokens["viewer"]) == {
        "ok": True,
        "checked": _seq_of_head(rt),
        "checkpoints": 1,
        "first_bad_seq": None,
        "reason": None,
    }


def test_events_filters_and_pagination(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    _append(rt, 7)
    h = auth(tokens["viewer"])
    r = client.get("/api/v1/audit/events", params={"action": "thing.done", "limit": 3}, headers=h)
    assert r.status_code == 200
    page1 = r.json()
    assert [e["subject_id"] for e in page1["items"]] == ["t0", "t1", "t2"]
    assert page1["next_cursor"] is not None
    seen = [e["seq"] for e in page1["items"]]
    cursor = page1["next_cursor"]
    for _ in range(10):
        if cursor is None:
            break
        body = client.get(
            "/api/v1/audit/events", params={"action": "thing.done", "limit": 3, "cursor": cursor}, headers=h
        ).json()
        seen += [e["seq"] for e in body["items"]]
        cursor = body["next_cursor"]
    assert len(seen) == 7
    assert seen == sorted(seen)
    window = client.get(
        "/api/v1/audit/events",
        params={"since": (T0 + timedelta(seconds=2)).isoformat(), "until": (T0 + timedelta(seconds=4)).isoformat()},
        headers=h,
    ).json()
    assert [e["subject_id"] for e in window["items"]] == ["t2", "t3"]
    actors = client.get("/api/v1/audit/events", params={"actor": "test"}, headers=h).json()
    assert {e["actor"] for e in actors["items"]} == {"test"}
    for bad in (
        {"limit": 501},
        {"limit": 0},
        {"cursor": "x"},
        {"since": "2026-01-01T00:00:00"},
        {"until": "9999-12-31T23:00:00-05:00"},
        {"since": "yesterday"},
    ):
        assert client.get("/api/v1/audit/events", params=bad, headers=h).status_code == 422, bad
