"""The gateway's own CPU per request and per streamed event, against the decode/re-encode way.

Ratchet's gateway swaps `id` and `model` in vLLM's bytes (service/gateway.py `_Rewrite`) instead
of decoding each answer and stream event and encoding it again, and reads the log from the typed
objects it parsed instead of re-validating a LogIn. This times both ways on the same realistic
bodies in one run (CPU time, best of 5), in-process, without the network or the HTTP stack:

- per stream event: framing + swap (now) vs line decoding + JSON decode/modify/encode (before);
- per non-streamed request: parse + forward body + answer swap (the critical path), and building
  the log row (in the background), vs the same steps done by decoding and re-encoding.

    PYTHONPATH=. .venv/bin/python bench/relay.py
"""

from __future__ import annotations

import json
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import msgspec
from httpx._decoders import LineDecoder, TextDecoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from formats.log import normalize_chat
from service import gateway
from service.capture import Capture, log_row
from service.clock import utcnow
from service.domain import LogIn

LOG_ID = "log-0123456789abcdef0123456789abcdef"
CHUNK = json.dumps(
    {"id": "chatcmpl-5b3c0f8e0d8a4a3f9c5c1e2d3f4a5b6c", "object": "chat.completion.chunk", "created": 1764500000,
     "model": "shop@v3", "choices": [{"index": 0, "delta": {"content": " Paris"}, "logprobs": None,
                                      "finish_reason": None}]}, separators=(",", ":"),
).encode()  # fmt: skip
EVENT = b"data: " + CHUNK + b"\n\n"
REQUEST = json.dumps(
    {"model": "shop", "max_tokens": 64, "temperature": 0.7, "user": "u-7", "messages": [
        {"role": "system", "content": "You are a helpful support assistant for ACME. " * 40},
        {"role": "user", "content": "Where is my order 42?"}, {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": "Thanks, please hurry."}]},
).encode()  # fmt: skip
ANSWER = json.dumps(
    {"id": "chatcmpl-5b3c0f8e0d8a4a3f9c5c1e2d3f4a5b6c", "object": "chat.completion", "created": 1764500000,
     "model": "shop@v3", "choices": [{"index": 0, "message": {"role": "assistant", "content": "It ships tomorrow. " * 6,
     "tool_calls": []}, "logprobs": None, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 412, "completion_tokens": 48, "total_tokens": 460}}, separators=(",", ":"),
).encode()  # fmt: skip
decode, encode = msgspec.json.decode, msgspec.json.encode


def event_decoded(text: TextDecoder, lines: LineDecoder) -> list[bytes]:
    out = []
    for line in lines.decode(text.decode(EVENT)):
        if line.startswith("data:") and (payload := line[5:].strip()) != "[DONE]":
            chunk = decode(payload)
            chunk["id"], chunk["model"] = LOG_ID, "shop"
            out.append(b"data: " + encode(chunk) + b"\n\n")
    return out


def event_swapped(framing: Any, rewrite: Any) -> bytes:
    return b"".join(b"data: " + (rewrite.apply(d) or d) + b"\n\n" for d in framing.feed(EVENT))


def request_decoded() -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    body = decode(REQUEST)
    encode({**body, "model": "shop@v3"})
    data = decode(ANSWER)
    data["id"], data["model"] = LOG_ID, "shop"
    return encode(data), body, data


def log_decoded(body: dict[str, Any], data: dict[str, Any]) -> Any:
    entry = LogIn(id=LOG_ID, request=msgspec.Raw(encode(body)), response=msgspec.Raw(encode(data)),
                  end_user="u-7", adapter="shop@v3", latency_ms=1.0, prompt_tokens=412, completion_tokens=48)  # fmt: skip
    return Capture.log_row("shop", entry, LOG_ID, utcnow(), "gateway")


def request_swapped() -> tuple[bytes, gateway.GatewayRequest]:
    request = gateway.parse_request("chat", REQUEST)
    encode({**request.body, "model": "shop@v3"})
    return gateway._Rewrite(LOG_ID, "shop").apply(ANSWER, add=True) or b"", request


def log_typed(body: bytes, request: gateway.GatewayRequest) -> Any:
    read = gateway._read_answer("chat", body)
    normalized = normalize_chat(request.typed, read.answer)  # type: ignore[arg-type]
    now = utcnow()
    return log_row("shop", LOG_ID, now, now, "gateway", "shop@v3", request.raw.decode(), body.decode(),
                   normalized, end_user=request.end_user, latency_ms=1.0, prompt_tokens=412, completion_tokens=48)  # fmt: skip


def cpu_us(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5, timer=time.process_time)) / number * 1e6


def main() -> None:
    text, lines = TextDecoder(), LineDecoder()
    framing, rewrite = gateway._Events(), gateway._Rewrite(LOG_ID, "shop")
    assert [decode(e[6:]) for e in event_decoded(text, lines)] == [
        decode(event_swapped(framing, rewrite)[6:])
    ]
    old_body, body, data = request_decoded()
    new_body, request = request_swapped()
    assert decode(old_body) == decode(new_body)
    rows = [
        ("stream event (critical path)", cpu_us(lambda: event_decoded(text, lines), 200_000),
         cpu_us(lambda: event_swapped(framing, rewrite), 200_000)),
        ("request: parse, forward, answer", cpu_us(request_decoded, 20_000), cpu_us(request_swapped, 20_000)),
        ("request: log row (background)", cpu_us(lambda: log_decoded(body, data), 20_000),
         cpu_us(lambda: log_typed(new_body, request), 20_000)),
    ]  # fmt: skip
    print(f"request {len(REQUEST)} B, answer {len(ANSWER)} B, event {len(EVENT)} B; CPU µs, best of 5")
    print(f"{'':<34}{'decode/re-encode':>17}{'now':>8}{'ratio':>7}")
    for name, old, new in rows:
        print(f"{name:<34}{old:>17.2f}{new:>8.2f}{new / old:>7.2f}")


if __name__ == "__main__":
    main()
