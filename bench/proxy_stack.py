"""A prototype forwarding server for bench/upstream_clients.py: one server path and one upstream
client, run by uvicorn (uvloop, httptools, one process) as `ratchet serve` is.

`POST /v1/chat/completions`: decode the body (msgspec), check `model`, rewrite it, forward to the
upstream; a complete answer is decoded, given `id`/`model` and encoded again; a stream
(`"stream": true`) is relayed byte for byte as it arrives. `--server litestar`: a Litestar route
with two injected dependencies (as the gateway route takes `principal` and `runtime`);
`--server asgi`: a bare ASGI callable, like service/api/fastpath.py. Bench-only, not product code.

    python bench/proxy_stack.py --server litestar|asgi --client httpx|aiohttp|pooled --port P --upstream URL
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.upstream_clients import make_client  # noqa: E402

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class Forwarder:
    """The work both server paths share: the upstream client is made on first use (in the
    server's event loop)."""

    def __init__(self, client: str, upstream: str) -> None:
        self.kind, self.upstream = client, upstream
        self.post: Callable[[bytes], Awaitable[tuple[int, bytes]]] | None = None
        self.stream: Callable[[bytes], AsyncIterator[bytes]] | None = None

    async def ready(self) -> None:
        if self.post is None:
            self.post, self.stream, _ = await make_client(self.kind, self.upstream)

    async def prepare(self, raw: bytes) -> tuple[bytes, bool]:
        await self.ready()
        body = _decode(raw)
        if not isinstance(body.get("model"), str):
            raise ValueError("`model` must name your project")
        body["model"] = "bench"
        return _encode(body), bool(body.get("stream"))

    async def answer(self, forward: bytes) -> tuple[int, bytes]:
        status, raw = await self.post(forward)  # type: ignore[misc]
        data = _decode(raw)
        data["id"], data["model"] = "log-0123456789abcdef", "bench"
        return status, _encode(data)


def litestar_app(forwarder: Forwarder) -> Any:
    from litestar import Litestar, Request, Response, post
    from litestar.di import Provide
    from litestar.response import Stream

    def provide_runtime() -> Forwarder:
        return forwarder

    def provide_principal(request: Request[Any, Any, Any]) -> str:
        return request.headers.get("authorization", "")

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any], principal: str, runtime: Forwarder) -> Any:
        forward, streaming = await runtime.prepare(await request.body())
        if streaming:
            return Stream(runtime.stream(forward), media_type="text/event-stream")  # type: ignore[misc]
        status, payload = await runtime.answer(forward)
        return Response(payload, status_code=status, media_type="application/json")

    return Litestar(
        [chat],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
        },
        logging_config=None,
    )


def asgi_app(forwarder: Forwarder) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": f"{kind}.complete"})  # lifespan.startup / lifespan.shutdown
                if kind == "lifespan.shutdown":
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        forward, streaming = await forwarder.prepare(b"".join(chunks))
        if streaming:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
            async for chunk in forwarder.stream(forward):  # type: ignore[misc]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        status, payload = await forwarder.answer(forward)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=("litestar", "asgi"), required=True)
    parser.add_argument("--client", choices=("httpx", "aiohttp", "pooled"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    forwarder = Forwarder(args.client, args.upstream)
    app = litestar_app(forwarder) if args.server == "litestar" else asgi_app(forwarder)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
