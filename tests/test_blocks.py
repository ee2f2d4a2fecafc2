"""Block pages: read_block's offset/limit are characters, whatever the encoding's widths."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaimon_kernel.server import _blocks
from kaimon_kernel.server._db import Database


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_blocks.BlockStore]:
    root: Path = tmp_path_factory.mktemp("blocks")
    db = Database(root / "blocks.sqlite3")
    yield _blocks.BlockStore(db, root / "files")
    db.close()


@settings(max_examples=300, deadline=None)
@given(
    # \r and \r\n stay as they are (progress bars); a lone surrogate is kept as "?"
    text=st.text(alphabet="ab\né€😀\r\ud800", max_size=300),
    offset=st.integers(0, 320),
    limit=st.integers(0, 320),
    bound=st.sampled_from([None, 0, 5, 100]),
    finished=st.booleans(),
)
def test_a_page_is_the_slice_of_the_whole_output(
    store: _blocks.BlockStore,
    text: str,
    offset: int,
    limit: int,
    bound: int | None,
    finished: bool,
    small_chunks: None,
) -> None:
    async def page() -> tuple[str, int]:
        saved = _blocks.BLOCK_MAX_CHARS
        _blocks.BLOCK_MAX_CHARS = saved if bound is None else bound
        try:
            block_id, writer = await store.start("k", "print(...)")
            writer.write(text)
            writer.close()
        finally:
            _blocks.BLOCK_MAX_CHARS = saved
        if finished:  # a finished block's length comes from its row, a running one's from the file
            store.finish(block_id, status="ok", chars=writer.chars)
        block = await store.get(block_id)
        assert block is not None
        return await store.read(block, offset, limit)

    kept = text.encode("utf-8", "replace").decode("utf-8")
    if bound is not None and len(kept) > bound:
        kept = kept[:bound] + f"\n… [{len(kept) - bound:,} more characters were not kept] …\n"
    assert asyncio.run(page()) == (kept[offset : offset + limit], len(kept))


@pytest.fixture(scope="module")
def small_chunks() -> Iterator[None]:
    # tiny chunks, so pages start and end inside and across them
    saved, _blocks.READ_CHUNK = _blocks.READ_CHUNK, 7
    yield
    _blocks.READ_CHUNK = saved
