"""The one shape module: every realistic OpenAI body normalises, stream pieces assemble, and a
body that is not OpenAI's is a `ShapeError` naming the field."""

from __future__ import annotations

import msgspec
import pytest

from formats.chat import ShapeError, StreamAssembler
from formats.log import normalize
from tests.fixtures.openai_traffic import CORPUS, Case

_encode = msgspec.json.encode


def _normalized(case: Case):  # type: ignore[no-untyped-def]
    interrupted = bool(case.metadata and case.metadata.get("interrupted"))
    return normalize(_encode(case.request), _encode(case.response), interrupted=interrupted)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_every_corpus_shape_normalises_with_its_verdict(case: Case) -> None:
    n = _normalized(case)
    assert n.quarantine == case.quarantine
    choice = case.feedback.get("choice", 0)
    answer = n.answer(choice)
    assert answer is not None and answer.problem == case.problem
    # Text a text model can read: no part lists, tool calls kept as calls.
    for message in n.messages or []:
        assert message.content is None or isinstance(message.content, str)


def test_part_lists_flatten_as_vllm_renders_them() -> None:
    n = _normalized(CORPUS[1])
    assert n.messages is not None and n.messages[0].content == "Line one.\nLine two?"


def test_tool_conversations_keep_their_calls_results_and_tools() -> None:
    n = _normalized(next(c for c in CORPUS if c.name.startswith("agent turn")))
    assert n.messages is not None
    call = n.messages[1].tool_calls
    assert call is not None and call[0].id == "call_1" and call[0].function is not None
    assert call[0].function.arguments == '{"city":"Paris"}'
    assert (n.messages[2].role, n.messages[2].tool_call_id, n.messages[2].content) == (
        "tool",
        "call_1",
        "18C, cloudy",
    )
    assert (
        n.tools is not None and n.tools[0].function is not None and n.tools[0].function.name == "get_weather"
    )
    # Stored as sent: the `type` of a call and of a tool survives encoding into the typed columns.
    stored = msgspec.json.decode(_encode(n.messages[1]))
    assert stored["tool_calls"][0]["type"] == "function"
    assert msgspec.json.decode(_encode(n.tools))[0]["type"] == "function"
    tool_answer = _normalized(next(c for c in CORPUS if c.name == "tool-call answer")).answers[0]
    assert tool_answer.message.content is None and tool_answer.message.tool_calls is not None
    assert tool_answer.problem is None and tool_answer.finish_reason == "tool_calls"


def test_completions_list_prompts_pair_each_choice_with_its_prompt() -> None:
    n = _normalized(next(c for c in CORPUS if c.name.startswith("completions list")))
    assert [(a.prompt, a.text) for a in n.answers] == [("2 + 2 =", " 4"), ("3 + 3 =", " 6")]


def test_end_user_prefers_the_log_field_then_safety_identifier_then_user() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "user": "u-old", "safety_identifier": "u-new"}
    response = _encode(CORPUS[0].response)
    assert normalize(_encode(body), response).end_user == "u-new"
    assert normalize(_encode(body), response, end_user="u-log").end_user == "u-log"
    assert normalize(_encode({**body, "safety_identifier": None}), response).end_user == "u-old"


def test_the_same_prompt_has_the_same_hash_whatever_its_answer() -> None:
    a = _normalized(CORPUS[0])
    b = normalize(
        _encode(CORPUS[0].request),
        _encode({"choices": [{"message": {"role": "assistant", "content": "Lyon"}}]}),
    )
    assert a.prompt_sha256 == b.prompt_sha256 != _normalized(CORPUS[2]).prompt_sha256


@pytest.mark.parametrize(
    ("request_body", "response_body", "field"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, None, "request.messages[0].tool_call_id"),
        ({"messages": [{"role": "robot", "content": "x"}]}, None, "request.messages[0].role"),
        ({"messages": []}, None, "request.messages"),
        ({"messages": [{"role": "user", "content": 5}]}, None, "request.messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            None,
            "request.messages[0].content[0].text",
        ),
        ({"input": "x"}, None, "request"),
        ({"prompt": []}, None, "request.prompt"),
        (None, {"choices": []}, "response.choices"),
        (
            None,
            {"choices": [{"index": -1, "message": {"role": "assistant", "content": "x"}}]},
            "response.choices[0].index",
        ),
        (
            None,
            {"choices": [{"message": {"role": "assistant", "content": {"a": 1}}}]},
            "response.choices[0].message.content",
        ),
    ],
)
def test_bodies_that_are_not_openai_name_the_field(request_body, response_body, field) -> None:  # type: ignore[no-untyped-def]
    request_body = request_body or {"messages": [{"role": "user", "content": "hi"}]}
    response_body = response_body or {"choices": [{"message": {"role": "assistant", "content": "x"}}]}
    with pytest.raises(ShapeError) as caught:
        normalize(_encode(request_body), _encode(response_body))
    assert caught.value.field == field


def test_streamed_choices_and_tool_calls_assemble_by_index() -> None:
    events = [
        {
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "alpha0"}},
                {"index": 1, "delta": {"content": "alpha1"}},
            ]
        },
        {
            "choices": [
                {"index": 1, "delta": {"content": " beta1"}},
                {"index": 0, "delta": {"content": " beta0"}},
            ]
        },
        {
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "length"},
            ]
        },
        {
            "choices": [
                {
                    "index": 2,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"ci'},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 2,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "c2",
                                "type": "function",
                                "function": {"name": "get_time", "arguments": "{}"},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 2,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}},
    ]
    stream = StreamAssembler("chat")
    for event in events:
        stream.add_event(_encode(event))
    stream.add_event(b"[DONE]")
    body = stream.response()
    assert stream.done and body["usage"]["completion_tokens"] == 9
    assert [c["message"]["content"] for c in body["choices"]] == ["alpha0 beta0", "alpha1 beta1", None]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length", "tool_calls"]
    calls = body["choices"][2]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("c1", "get_weather", '{"city":"Oslo"}'),
        ("c2", "get_time", "{}"),
    ]
    n = normalize(_encode({"messages": [{"role": "user", "content": "x"}], "n": 3}), _encode(body))
    assert [a.problem for a in n.answers] == [None, "length", None]


def test_a_stream_error_event_marks_every_answer() -> None:
    stream = StreamAssembler("completions")
    stream.add_event(_encode({"choices": [{"index": 0, "text": "DNS maps"}]}))
    stream.add_event(
        _encode({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
    )
    stream.add_event(b"not json")  # a relay never fails on a piece it cannot read
    body = stream.response()
    assert body["error"]["message"] == "engine died"
    n = normalize(_encode({"prompt": "x"}), _encode(body))
    assert (n.answers[0].text, n.answers[0].problem) == ("DNS maps", "upstream_error")
