"""The renewal scan's reading of stored JSON lists: the fast path for the common shapes gives what the JSON decoder
gives, for every list of strings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmgr.renewal.service import _json_strings


@pytest.mark.parametrize(
    "stored",
    ["[]", '["IP:10.0.0.1"]', '["DNS:a.example", "IP:10.0.0.1"]', '["a\\"b"]', '["a\\\\"]', '["\\u00e9"]', '[ "x" ]',
     '["x",' + '"y"]', '[""]', '["]"]', '["[", "]"]'],
)  # fmt: skip
def test_stored_lists_read_as_the_decoder_reads_them(stored: str) -> None:
    assert _json_strings(stored) == tuple(json.loads(stored))


def test_nothing_stored_is_an_empty_list() -> None:
    assert _json_strings(None) == ()
    assert _json_strings("") == ()


@given(st.lists(st.text(max_size=12), max_size=4), st.booleans())
def test_any_list_of_strings_round_trips(values: list[str], ascii_only: bool) -> None:
    stored = json.dumps(values, ensure_ascii=ascii_only)
    assert _json_strings(stored) == tuple(values)
