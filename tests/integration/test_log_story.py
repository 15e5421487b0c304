"""The log tells each phone's story (:mod:`certmgr.audit.story`): audited events become log lines once their
transaction commits — never for a rollback — at the level the story gives them, and the JSON format carries
their fields. APScheduler's per-job chatter stays below the service's INFO level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from certmgr.audit.log import NewEvent, append_events
from certmgr.audit.story import STORY
from certmgr.logs import configure_logging
from tests.conftest import T0

MAC = "00:1A:E8:00:00:01"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """certmgr's logging configured into a string buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in ("apscheduler", "httpx")})
    buffer = io.StringIO()
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def _configure(buffer: io.StringIO, level: str = "INFO", fmt: str = "text") -> None:
    configure_logging(level, fmt)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)


EVENTS = [
    NewEvent("wpi", "device.discovered", "device", MAC, {"reason": "start-up", "policy": "default",
                                                         "enrollment": "approved", "ip": "10.0.0.1"}),
    NewEvent("deploy", "deployment.verified", "deployment", "7", {"mac": MAC, "serial": "3af1"}),
    NewEvent("deploy", "deployment.contacting", "deployment", "7", {"mac": MAC, "attempt": 1}),
]  # fmt: skip


def test_committed_events_are_told_rolled_back_ones_are_not(engine: Engine, stream: io.StringIO) -> None:
    _configure(stream)
    with Session(engine) as s:
        append_events(s, T0, [NewEvent("deploy", "deployment.failed", "deployment", "9", {"mac": MAC})])
        s.rollback()  # the change is rolled back: its events are never told
        append_events(s, T0, EVENTS)
        assert stream.getvalue() == ""  # nothing before the commit
        s.commit()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # deployment.contacting is DEBUG
    assert f"INFO certmgr.story: phone {MAC} registered itself (start-up), policy default, approved" in lines[0]
    assert lines[1].endswith(f"phone {MAC}: certificate 3af1 verified (deployment 7)")
    assert "failed" not in stream.getvalue()


def test_json_lines_carry_the_fields(engine: Engine, stream: io.StringIO) -> None:
    _configure(stream, "DEBUG", "json")
    with Session(engine) as s:
        append_events(s, T0, EVENTS)
        s.commit()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    story = [r for r in records if r["logger"] == "certmgr.story"]
    assert [r["action"] for r in story] == ["device.discovered", "deployment.verified", "deployment.contacting"]
    assert [r["level"] for r in story] == ["INFO", "INFO", "DEBUG"]
    assert {r["mac"] for r in story} == {MAC}
    assert story[1]["deployment"] == "7"
    assert story[1]["serial"] == "3af1"
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)


def test_every_story_template_renders_with_missing_fields() -> None:
    from certmgr.audit.story import Told, tell

    for action in STORY:
        tell(Told("actor", action, "subject", {}))  # a field the event lacks renders as '-', never KeyError


def test_scheduler_chatter_is_quiet_at_info(stream: io.StringIO) -> None:
    _configure(stream)
    logging.getLogger("apscheduler.executors.default").info('Running job "renewal-reconcile"')
    logging.getLogger("apscheduler.scheduler").warning("a real problem")
    assert stream.getvalue().count("\n") == 1
    assert "a real problem" in stream.getvalue()
