"""The gate⇄server contract and its version check."""

from __future__ import annotations

from typing import get_args

import pytest
from conftest import PersonKernel, sessions_dir, stdio_client, text_of
from pydantic import ValidationError

from kaimon_kernel import ProtocolMismatch
from kaimon_kernel._protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    PROTOCOL_VERSION,
    EvalCancelled,
    EvalQuery,
    GateMessage,
    ProcessIdentity,
    Refused,
    Reply,
    Request,
    ResumeMarker,
    ServerMessage,
    SessionInfo,
    Welcome,
    check_protocol,
    parse_gate_message,
    parse_server_message,
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


def test_a_peer_one_minor_version_apart_works_and_another_major_is_refused() -> None:
    for fine in (PROTOCOL_MAJOR, f"{PROTOCOL_MAJOR}.0", f"{PROTOCOL_MAJOR}.9"):
        check_protocol(fine, who="the gate")
    for wrong in (1, "1.4", f"{PROTOCOL_MAJOR + 1}.0", "garbage"):
        with pytest.raises(ProtocolMismatch, match=f"speaks kaimon protocol {wrong}, this side"):
            check_protocol(wrong, who="the gate")
    assert PROTOCOL_VERSION == f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"


def test_every_server_message_is_a_request_with_an_id_and_every_reply_names_it() -> None:
    for cls in get_args(get_args(ServerMessage)[0]):
        assert issubclass(cls, Request), cls
    replies = [c for c in get_args(get_args(GateMessage)[0]) if issubclass(c, Reply)]
    kinds = {c.model_fields["type"].default for c in replies}
    assert kinds == {"ack", "welcome", "refused", "eval_records", "eval_cancelled", "info_reply"}
    first, second = EvalQuery(msg_ids=["a"]), EvalQuery(msg_ids=["a"])
    assert first.id != second.id
    parsed = parse_server_message(first.model_dump(mode="json"))
    assert isinstance(parsed, EvalQuery) and parsed.id == first.id
    answer = EvalCancelled(request_id=first.id, msg_id="a", state="queued")
    assert parse_gate_message(answer.model_dump(mode="json")) == answer


def test_fields_from_a_newer_minor_version_are_ignored() -> None:
    info = SessionInfo.model_validate(
        {**_session_fields(), "protocol_minor": 5, "colour": "blue", "kernel": {"pid": 7}}
    )
    assert info.protocol_minor == 5 and info.kernel == ProcessIdentity(pid=7)
    assert not hasattr(info, "colour")


def test_a_resume_marker_reads_as_the_session_it_marks() -> None:
    marker = ResumeMarker(**_session_fields(), parent=ProcessIdentity.current(), exited_at=1.0)
    info = SessionInfo.model_validate_json(marker.model_dump_json())
    assert info.key == marker.key and not hasattr(info, "parent")


def test_a_process_identity_tells_a_reused_pid_from_its_process() -> None:
    me = ProcessIdentity.current()
    assert me.alive() and ProcessIdentity.of(me.pid) == me
    assert me.create_time is not None
    assert not me.model_copy(update={"create_time": me.create_time - 100}).alive()
    assert me.model_copy(update={"host": "another-machine"}).alive()  # no telling: alive


def _session_fields() -> dict[str, object]:
    return {
        "session_id": "s" * 32,
        "key": "ssssssss",
        "pid": 1,
        "connection_file": "/nowhere/kernel-1.json",
        "namespace": "ns",
        "label": "ns",
        "cwd": "/",
        "python_version": "3.11.0",
        "started_at": 0.0,
    }
