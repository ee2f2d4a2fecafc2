"""Block pages: read_block's offset/limit are characters, whatever the encoding's widths."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaimon_kernel.server import _blocks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> _blocks.BlockStore:
    root: Path = tmp_path_factory.mktemp("blocks")
    db = sqlite3.connect(root / "blocks.sqlite3", isolation_level=None)
    db.row_factory = sqlite3.Row
    return _blocks.BlockStore(db, root / "files")


@settings(max_examples=200, deadline=None)
@given(
    # \r and \r\n stay as they are (progress bars); a lone surrogate is kept as "?"
    text=st.text(alphabet="ab\né€😀\r\ud800", max_size=300),
    offset=st.integers(0, 320),
    limit=st.integers(0, 320),
)
def test_a_page_is_the_slice_of_the_whole_output(
    store: _blocks.BlockStore, text: str, offset: int, limit: int, monkeypatch_chunk: None
) -> None:
    block_id, writer = store.start("k", "print(...)")
    writer.write(text)
    writer.close()
    page, total = store.read(block_id, offset, limit)
    kept = text.encode("utf-8", "replace").decode("utf-8")
    assert (page, total) == (kept[offset : offset + limit], len(kept))


@pytest.fixture(scope="module")
def monkeypatch_chunk() -> None:
    # tiny chunks, so pages start and end inside and across them
    saved, _blocks.READ_CHUNK = _blocks.READ_CHUNK, 7
    yield
    _blocks.READ_CHUNK = saved
