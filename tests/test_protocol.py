"""The gate⇄server contract and its version check."""

from __future__ import annotations

import pytest
from conftest import PersonKernel, sessions_dir, stdio_client, text_of
from pydantic import ValidationError

from kaimon_kernel import ProtocolMismatch
from kaimon_kernel._protocol import (
    PROTOCOL_MAJOR,
    Refused,
    SessionInfo,
    Welcome,
    check_protocol,
    parse_gate_message,
)


def test_a_version_mismatch_is_explained_plainly() -> None:
    with pytest.raises(ProtocolMismatch, match=r"speaks kaimon protocol 99.*same kaimon-kernel"):
        check_protocol(99, who="the gate")


def test_gate_messages_parse_by_type_and_reject_garbage() -> None:
    refused = parse_gate_message({"type": "refused", "reason": "nope"})
    assert isinstance(refused, Refused)
    with pytest.raises(ValidationError):
        parse_gate_message({"type": "surprise"})
    assert Welcome.model_fields["protocol_version"].default == PROTOCOL_MAJOR


@pytest.mark.anyio
async def test_a_session_from_another_protocol_version_is_refused_clearly(
    person: PersonKernel,
) -> None:
    path = sessions_dir() / f"session-{person.key}.json"
    info = SessionInfo.model_validate_json(path.read_text())
    path.write_text(info.model_copy(update={"protocol_version": 99}).model_dump_json())
    async with stdio_client("--no-auto-start") as client:
        result = await client.call_tool("ex", {"code": "1"})
    assert result.is_error
    assert "speaks kaimon protocol 99" in text_of(result)
