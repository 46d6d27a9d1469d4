"""A fast, cheap OpenAI-compatible stand-in upstream for gateway benches.

`POST /v1/chat/completions` (or `/v1/completions`) answers after 20 ms with a 40-token completion;
with `"stream": true` it answers at once and streams 40 chunks 2 ms apart (vLLM's SSE shape, the
last chunk carries `finish_reason` and `usage`, then `data: [DONE]`). `GET /v1/models` lists the
one model, `GET /health` is 200. The request body is not parsed (only searched for
`"stream":true`), so the stand-in's own CPU stays small next to the gateways it stands behind.

It is a bare asyncio protocol on uvloop with httptools parsing (no framework); answers are
pre-encoded once, and all open streams are advanced by one 2 ms ticker instead of a timer per
chunk. Its CPU seconds are readable from /proc like any process.

    python bench/standin.py PORT [--model bench] [--delay-ms 20] [--tokens 40] [--interval-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

import httptools
import uvloop

_STREAM = re.compile(rb'"stream"\s*:\s*true')


class Answers:
    """Every byte the stand-in sends, encoded once."""

    def __init__(self, model: str, tokens: int) -> None:
        created = int(time.time())
        words = [f"w{i} " for i in range(tokens)]
        usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
        chat = {"id": "chatcmpl-standin", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                             "logprobs": None, "finish_reason": "length"}], "usage": usage}  # fmt: skip
        text = {"id": "cmpl-standin", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": "length"}],
                "usage": usage}  # fmt: skip
        self.json = {"chat": _response(200, "application/json", _dumps(chat)),
                     "completions": _response(200, "application/json", _dumps(text))}  # fmt: skip
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.frames = {"chat": [], "completions": []}
        for i, word in enumerate(words):
            last = i == tokens - 1
            finish = "length" if last else None
            extra = {"usage": usage} if last else {}
            delta = {"content": word, **({"role": "assistant"} if i == 0 else {})}
            chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}  # fmt: skip
            piece = {"id": "cmpl-standin", "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": 0, "text": word, "logprobs": None, "finish_reason": finish}], **extra}  # fmt: skip
            tail = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n" if last else b""
            self.frames["chat"].append(_chunk(b"data: " + _dumps(chunk) + b"\n\n") + tail)
            self.frames["completions"].append(_chunk(b"data: " + _dumps(piece) + b"\n\n") + tail)
        models = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "standin",
                                               "root": model, "parent": None}]}  # fmt: skip
        self.models = _response(200, "application/json", _dumps(models))
        self.health = _response(200, "text/plain", b"")
        self.not_found = _response(404, "application/json", b'{"error":{"message":"not found"}}')


class Ticker:
    """Advances every open stream by one frame each `interval` seconds."""

    def __init__(self, answers: Answers, interval: float) -> None:
        self.answers = answers
        self.interval = interval
        self.streams: list[list] = []  # [transport, frames, next index]
        self._next: float | None = None

    def start(self, transport: asyncio.Transport, endpoint: str) -> None:
        frames = self.answers.frames[endpoint]
        transport.write(self.answers.stream_head + frames[0])  # the first chunk at once
        self.streams.append([transport, frames, 1])
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.time() + self.interval
            loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        alive = []
        for stream in self.streams:
            transport, frames, index = stream
            if transport.is_closing():
                continue
            transport.write(frames[index])
            stream[2] = index + 1
            if index + 1 < len(frames):
                alive.append(stream)
        self.streams = alive
        if not alive:
            self._next = None
            return
        loop = asyncio.get_running_loop()
        self._next = max(self._next + self.interval, loop.time())  # type: ignore[operator]
        loop.call_at(self._next, self._tick)


class Upstream(asyncio.Protocol):
    """One client connection: keep-alive HTTP/1.1, requests answered in order."""

    def __init__(self, answers: Answers, ticker: Ticker, delay: float) -> None:
        self.answers = answers
        self.ticker = ticker
        self.delay = delay
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        method, path = self.parser.get_method(), self.url.split(b"?", 1)[0]
        endpoint = {b"/v1/chat/completions": "chat", b"/v1/completions": "completions"}.get(path)
        if method == b"POST" and endpoint:
            if _STREAM.search(self.body):
                self.ticker.start(transport, endpoint)
            else:
                asyncio.get_running_loop().call_later(
                    self.delay, _send, transport, self.answers.json[endpoint]
                )
        elif method == b"GET" and path == b"/v1/models":
            transport.write(self.answers.models)
        elif method == b"GET" and path == b"/health":
            transport.write(self.answers.health)
        else:
            transport.write(self.answers.not_found)


def _send(transport: asyncio.Transport, payload: bytes) -> None:
    if not transport.is_closing():
        transport.write(payload)


def _response(status: int, content_type: str, body: bytes) -> bytes:
    reason = {200: "OK", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def serve(port: int, model: str, delay_ms: float, tokens: int, interval_ms: float) -> None:
    answers = Answers(model, tokens)
    ticker = Ticker(answers, interval_ms / 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Upstream(answers, ticker, delay_ms / 1000), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("port", type=int)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.model, args.delay_ms, args.tokens, args.interval_ms))


if __name__ == "__main__":
    main()
