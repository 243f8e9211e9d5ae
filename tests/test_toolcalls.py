"""Tool traffic in history messages, and recovering calls a model wrote as text."""

from __future__ import annotations

import pytest

from bot.config import ModelSpec
from bot.providers import ChatMessage, ToolCallDelta, ToolSpec
from bot.providers.base import offered_tools
from bot.providers.toolcalls import TextCallDetector, call_id, decode_arguments, text_tool_calls

READ = ToolCallDelta("call_1", "file_read", {"path": "a.txt"})


def test_plain_messages_still_take_role_and_content() -> None:
    message = ChatMessage("user", "hi")
    assert (message.tool_calls, message.tool_call_id, message.tool_name) == ((), None, None)


def test_a_step_with_calls_and_the_result_of_one() -> None:
    step = ChatMessage.tool_request([READ])
    assert (step.role, step.content, step.tool_calls) == ("assistant", "", (READ,))
    result = ChatMessage.tool_result(READ, "hello")
    assert (result.role, result.content, result.tool_call_id, result.tool_name) == (
        "tool", "hello", "call_1", "file_read")


@pytest.mark.parametrize("build", [
    lambda: ChatMessage("user", "x", tool_calls=(READ,)),
    lambda: ChatMessage("tool", "result without a call id"),
    lambda: ChatMessage("assistant", "x", tool_call_id="call_1"),
])
def test_tool_fields_only_where_they_belong(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_only_models_that_can_call_tools_are_offered_them() -> None:
    tools = [ToolSpec("file_read", "Read a file")]
    assert offered_tools(ModelSpec(id="m"), tools) == ()
    assert offered_tools(ModelSpec(id="m", capabilities=("vision", "tools")), tools) == (
        tools[0],)


def test_decode_arguments() -> None:
    assert decode_arguments('{"a": 1}') == ({"a": 1}, None)
    assert decode_arguments("  ") == ({}, None)
    assert decode_arguments('{"a": ') == ({}, '{"a": ')
    assert decode_arguments("3") == ({}, "3")


def test_made_up_ids_depend_on_position_name_and_arguments() -> None:
    assert call_id(0, "f", {"a": 1, "b": 2}) == call_id(0, "f", {"b": 2, "a": 1})
    assert len({call_id(0, "f", {}), call_id(1, "f", {}), call_id(0, "g", {}),
                call_id(0, "f", {"a": 1})}) == 4


def test_text_forms_that_are_calls() -> None:
    offered = {"file_read"}
    for text in ('{"type": "function", "name": "file_read", "parameters": {"path": "a"}}',
                 '{"name": "file_read"}',
                 "<tool_call>\n{\"name\": \"file_read\", \"arguments\": {\"path\": \"a\"}}"):
        calls = text_tool_calls(text, offered)
        assert calls is not None and [c.name for c in calls] == ["file_read"], text


def test_text_forms_that_are_not_calls() -> None:
    offered = {"file_read"}
    for text in ('{"name": "file_read", "tool": "file_read", "arguments": {}}',
                 '{"name": "file_read", "arguments": {}, "parameters": {}}',
                 '{"name": "file_read", "arguments": [1]}',
                 '{"name": "file_read", "arguments": "not json"}',
                 '{"type": "object", "name": "file_read"}',
                 "<tool_call>{} </tool_call>",
                 '<tool_call>{"name": "file_read"}</tool_call> done',
                 "<tool_call></tool_call>",
                 "hello"):
        assert text_tool_calls(text, offered) is None, text


def test_ordinary_text_passes_at_once_and_possible_calls_wait() -> None:
    detector = TextCallDetector({"file_read"})
    assert detector.feed("\n") == ""  # nothing visible yet
    assert detector.feed("Hi") == "\nHi"
    assert detector.feed(" {") == " {"
    assert detector.finish() == ("", [])

    for opening in ("{", "<tool_call>", "<too"):
        detector = TextCallDetector({"file_read"})
        assert detector.feed(opening) == ""
    assert detector.feed("k") == "<took"  # no longer a possible tag

    detector = TextCallDetector({"file_read"})
    assert detector.feed('{"name": "file_read"') == ""
    assert detector.feed("}") == ""
    text, calls = detector.finish()
    assert text == "" and [c.name for c in calls] == ["file_read"]


def test_without_offered_tools_nothing_is_held() -> None:
    detector = TextCallDetector(())
    assert detector.feed('{"name": "file_read"}') == '{"name": "file_read"}'
    assert detector.finish() == ("", [])
