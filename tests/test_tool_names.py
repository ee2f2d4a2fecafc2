"""Gate tool names: ``<namespace>_<tool>``, suffixed, and never one tool hiding another."""

from __future__ import annotations

import pytest
from fakes import FakeKernel, FakeProvider, session_info

from kaimon_kernel._protocol import ToolSpec
from kaimon_kernel.server._core import Kaimon, ServerOptions
from kaimon_kernel.server._sessions import Registry

pytestmark = pytest.mark.anyio

WHO = ToolSpec(name="who", input_schema={"type": "object", "properties": {}})


async def test_a_namespace_like_another_ones_suffix_does_not_hide_its_tools() -> None:
    provider = FakeProvider()
    # "dup_2" (served first), then two sessions called "dup": the second "dup" would be
    # dup_2_who, the name the "dup_2" session's tool already has.
    for key, ns, started in (("k0", "dup_2", 1.0), ("k1", "dup", 2.0), ("k2", "dup", 3.0)):
        provider.add(FakeKernel(session_info(key, namespace=ns, started_at=started))).tools = [WHO]
    core = Kaimon(ServerOptions(auto_start=False), Registry([provider]))
    try:
        await core.registry.first()
        for key in ("k0", "k1", "k2"):
            await core.registry.sessions[key].wait_ready(5)
        table = {name: ref.session.key for name, ref in core.gate_tools().items()}
    finally:
        await core.registry.close()
        await core.store.aclose()
    assert table == {"dup_2_who": "k0", "dup_who": "k1", "dup_2_2_who": "k2"}
