"""What the console's pages show, value by value (SQLite and PostgreSQL): the overview's last signed checkpoint
and the CA's expiry dates, the audit page's time-range filter and its signed checkpoints, a phone's certificate
history with what replaced what. Each assertion names the exact value the page must carry, so a template or a
read model that drops or mixes it up fails here (tried: see the commit message)."""

# ruff: noqa: F811 - the shared fixtures are imported and named as parameters

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlmodel import col, select

from certmgr.audit.checkpoint import create_checkpoint, runtime_signer
from certmgr.audit.log import append_event
from certmgr.clock import ManualClock
from certmgr.console.render import fingerprint, ts, ts_seconds
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditCheckpoint, AuditEvent, Certificate, CertificateStatus, IssueReason
from certmgr.runtime import Runtime
from tests.conftest import T0
from tests.integration.console_support import login, ui
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    ca_template,
    fleet,
    rt,
    tokens,
)

__all__ = ["ui"]


def _checkpoint(rt: Runtime, at: datetime) -> tuple[int, datetime, str]:
    """Sign the chain head at ``at``: (the event's seq, the time, the head hash)."""
    with session_scope(rt.engine) as s:
        append_event(s, at=at, actor="test", action="test.before-checkpoint")
    with session_scope(rt.engine) as s:
        made = create_checkpoint(s, runtime_signer(rt), at)
        assert made is not None
        event = s.exec(select(AuditEvent).where(col(AuditEvent.id) == made.event_id)).one()
        return event.seq, made.at, made.event_hash


def _dd(page: str, term: str) -> str:
    """The text of the ``<dd>`` after ``<dt>term</dt>``, whitespace collapsed."""
    match = re.search(rf"<dt>{re.escape(term)}</dt>\s*<dd>(.*?)</dd>", page, re.S)
    assert match is not None, f"no <dt>{term}</dt>"
    return " ".join(re.sub(r"<[^>]+>", "", match.group(1)).split())


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def _table_rows(page: str, heading_id: str) -> list[list[str]]:
    """The body rows (as cell texts) of the first table after the heading ``id="heading_id"``."""
    start = page.index(f'id="{heading_id}"')
    body = re.search(r"<tbody>(.*?)</tbody>", page[start:], re.S)
    assert body is not None, heading_id
    return [_cells(r) for r in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


# --- overview -------------------------------------------------------------------------------------------------
def test_overview_shows_the_last_checkpoint_and_the_ca_expiry(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], clock: ManualClock
) -> None:
    login(ui, tokens["viewer"])
    assert _dd(ui.get("/ui/").text, "Last signed checkpoint") == "none yet"
    _checkpoint(rt, T0 - timedelta(hours=3))
    seq, at, _hash = _checkpoint(rt, T0 - timedelta(minutes=43))  # the newest one is shown
    page = ui.get("/ui/").text
    assert _dd(page, "Last signed checkpoint") == f"event {seq}, {ts(at)}"
    assert ts(at) == "2026-11-26 08:17 UTC"

    info = rt.ca_info()
    assert info.root_cert is not None
    now = clock.now()
    expected = []
    for role, cert in (("issuing", info.issuing_cert), ("root", info.root_cert)):
        not_after = cert.not_valid_after_utc
        days = (not_after - now) // timedelta(days=1)
        expected.append([role, ts(not_after), f"{days} days · ok"])
    assert _table_rows(page, "h-ca") == expected
    assert f'<td title="{html.escape(info.issuing_cert.subject.rfc4514_string())}">issuing</td>' in page


# --- audit ----------------------------------------------------------------------------------------------------
def test_audit_time_range_keeps_only_the_events_inside(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    times = {name: T0 - timedelta(days=d) for name, d in (("a", 3), ("b", 2), ("c", 1))}
    with session_scope(rt.engine) as s:
        for name, at in times.items():
            append_event(s, at=at, actor="test", action=f"test.range-{name}")
    login(ui, tokens["viewer"])

    def shown(**params: str) -> set[str]:
        page = ui.get("/ui/audit", params=params)
        assert page.status_code == 200
        return set(re.findall(r"<td>test\.range-([abc])</td>", page.text))

    assert shown() == {"a", "b", "c"}
    # From is inclusive, until exclusive: [b, c) holds b alone.
    assert shown(since=times["b"].isoformat(), until=times["c"].isoformat()) == {"b"}
    assert shown(since="2026-11-23T12:00", until="2026-11-25") == {"b"}  # dates and times without a zone are UTC
    assert shown(since=times["c"].isoformat()) == {"c"}
    assert shown(until=times["b"].isoformat()) == {"a"}
    page = ui.get("/ui/audit", params={"since": "2026-11-24", "until": "2026-11-25"})
    assert 'name="since" value="2026-11-24"' in page.text  # the range stays in the form
    assert 'name="until" value="2026-11-25"' in page.text
    b_at = ts_seconds(times["b"])
    assert f'<time datetime="{times["b"].isoformat()}">{b_at}</time>' in page.text
    bad = ui.get("/ui/audit", params={"since": "last tuesday"})
    assert bad.status_code == 200
    assert "from: a date like 2026-11-26" in bad.text


def test_audit_page_lists_the_signed_checkpoints(ui: TestClient, rt: Runtime, tokens: dict[str, str]) -> None:
    login(ui, tokens["viewer"])
    assert "None yet (the scheduler signs one every hour" in ui.get("/ui/audit").text
    first = _checkpoint(rt, T0 + timedelta(hours=1))
    second = _checkpoint(rt, T0 + timedelta(hours=2))
    with session_scope(rt.engine) as s:
        assert len(s.exec(select(AuditCheckpoint)).all()) == 2
    rows = _table_rows(ui.get("/ui/audit").text, "h-checkpoints")
    assert rows == [[ts(at), str(seq), fingerprint(h)] for seq, at, h in (second, first)]  # newest first


# --- phone page -----------------------------------------------------------------------------------------------
def test_phone_certificate_history_says_what_replaced_what(
    ui: TestClient, rt: Runtime, tokens: dict[str, str], fleet: Fleet
) -> None:
    old_id = fleet.certificates["ok"]
    with session_scope(rt.engine) as s:  # a renewal of the "ok" phone's certificate, and one renewing that
        old = s.get(Certificate, old_id)
        assert old is not None
        ids = []
        previous = old_id
        for n, status in ((1, CertificateStatus.SUPERSEDED), (2, CertificateStatus.ACTIVE)):
            cert = Certificate(
                **{
                    **old.model_dump(exclude={"id", "serial", "fingerprint_sha256"}),
                    "serial": f"b{n}0",
                    "fingerprint_sha256": f"b{n}0".rjust(64, "0"),
                    "status": status,
                    "reason": IssueReason.RENEWAL,
                    "previous_certificate_id": previous,
                    "created_at": T0 + timedelta(days=n),
                }
            )
            s.add(cert)
            s.flush()
            assert cert.id is not None
            ids.append(cert.id)
            previous = cert.id
        old.status = CertificateStatus.SUPERSEDED
        s.add(old)
    middle, newest = ids
    login(ui, tokens["viewer"])
    rows = _table_rows(ui.get("/ui/phones/00:1A:E8:00:00:01").text, "h-history")
    by_id = {row[0]: row for row in rows}
    assert [row[0] for row in rows] == [str(newest), str(middle), str(old_id)]  # newest first
    # columns: #, serial, issued, not after, status, why issued, replaced, replaced by
    assert by_id[str(old_id)][6:] == ["—", f"#{middle}"]
    assert by_id[str(middle)][6:] == [f"#{old_id}", f"#{newest}"]
    assert by_id[str(newest)][6:] == [f"#{middle}", "—"]
    assert by_id[str(middle)][1] == "b10"
    assert by_id[str(middle)][4:6] == ["superseded", "renewal"]
