"""The fast path: ingest (`POST /v1/logs`, `POST /v1/feedback`) and the gateway
(`POST /v1/chat/completions`, `POST /v1/completions`) without Litestar's per-request work.

Ingest and the gateway are the hot paths, and on a small machine the one event loop is what
limits them: Litestar's routing, request and response objects and dependency resolution cost more
of a single-log request's event-loop time than Ratchet's own work (in-process, writer stubbed:
80 µs for a bare Litestar route that only decodes the body, 126 µs for the ingest route). This
ASGI layer runs the same `capture_logs` / `capture_feedback` / `forward_request` as the Litestar
routes and answers from the same error table, with the same headers (tests/test_ingest_fastpath.py,
tests/test_gateway_fastpath.py compare the two). Requests it has no reason to handle go to Litestar
untouched: a query string (an admin's `?project=`), and a body without a Content-Length or over
the size limit (Litestar answers 413).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from service.api.capture import capture_feedback, capture_logs
from service.api.deps import authenticate
from service.api.errors import INTERNAL, decode_error, domain_error
from service.api.gateway import EVENT_STREAM_HEADERS, forward_request
from service.domain import CaptureResult, Principal
from service.errors import NestedTooDeeply, RatchetError
from service.gateway import Endpoint, GatewayAnswer, GatewayStream
from service.runtime import Runtime

log = logging.getLogger("ratchet.api")

CaptureRoute = Callable[[Runtime, Principal, str | None, bytes, str | None], Awaitable[CaptureResult]]
ROUTES: dict[str, CaptureRoute] = {"/v1/logs": capture_logs, "/v1/feedback": capture_feedback}
GATEWAY_ROUTES: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")
_EVENT_STREAM = [(k.encode(), v.encode()) for k, v in EVENT_STREAM_HEADERS.items()]


class FastPath:
    """ASGI middleware that answers plain ingest and gateway requests itself and passes the rest
    to `app`. `ingest=False` (a `ratchet gateway` replica, which holds no store): the gateway
    only; its `runtime` need only have what the gateway routes read (`settings`, `keys`,
    `projects`, `gateway`, `rollouts.ensure_addressable`, `metrics`)."""

    def __init__(self, app: ASGIApp, runtime: Runtime, *, ingest: bool = True) -> None:
        self.app = app
        self.runtime = runtime
        self.max_body = runtime.settings.max_body_bytes
        self.routes = ROUTES if ingest else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            path = scope["path"]
            route = self.routes.get(path)
            if route is not None and self._length_ok(scope):
                await self._capture(route, scope, receive, send)
                return
            endpoint = GATEWAY_ROUTES.get(path)
            if endpoint is not None and self._length_ok(scope):
                await self._gateway(endpoint, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _capture(self, route: CaptureRoute, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its body: nobody to answer
        headers: dict[str, str] = {}
        try:
            principal = authenticate(self.runtime, scope["headers"], "ingest")
            coding = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"content-encoding"), None
            )
            result = await route(self.runtime, principal, None, body, coding)
            status, payload = 202, _encode(result)
        except RatchetError as exc:
            status, error, headers = domain_error(exc)
            payload = _encode(error)
        except msgspec.MsgspecError as exc:
            status, payload = 422, _encode(decode_error(exc))
        except RecursionError:  # a body nested too deeply for a decoder (`NestedTooDeeply`)
            status, error, headers = domain_error(NestedTooDeeply())
            payload = _encode(error)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            status, payload = 500, _encode(INTERNAL)
        await _send_json(
            send, status, payload, [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        )
        # The same series Litestar's requests land in (HttpMetrics), by route template.
        self.runtime.metrics.observe_http(scope["path"], "POST", status, time.perf_counter() - started)

    async def _gateway(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await _read_body(receive)
        if body is None:
            return
        try:
            principal = authenticate(self.runtime, scope["headers"], "ingest")
            result: GatewayAnswer | GatewayStream = await forward_request(
                self.runtime, principal, endpoint, body
            )
        except (RatchetError, RecursionError) as exc:
            status, error, headers = domain_error(
                NestedTooDeeply() if isinstance(exc, RecursionError) else exc
            )
            extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            await _send_json(send, status, _encode(error), extra)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            status = 500
            await _send_json(send, status, _encode(INTERNAL), [])
        else:
            status = 200
            headers = [
                (b"x-ratchet-log-id", result.log_id.encode()),
                (b"x-ratchet-adapter", result.adapter.encode()),
            ]
            if isinstance(result, GatewayStream):
                await _relay(result, receive, send, headers)
            else:
                await _send_json(send, status, result.body, headers)
        self.runtime.metrics.observe_http(scope["path"], "POST", status, time.perf_counter() - started)

    def _length_ok(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) <= self.max_body
        return False


async def _send_json(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _relay(
    stream: GatewayStream, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
) -> None:
    """Send the stream's pieces as they come. A client that leaves cancels the relay where it
    waits (as Litestar's Stream does), so the gateway logs the answer as interrupted at once
    rather than when the next piece comes."""
    task = asyncio.current_task()
    assert task is not None
    state = {"done": False, "left": False}

    async def watch() -> None:
        await receive()  # http.disconnect: the client left, or the response is complete
        if not state["done"]:
            state["left"] = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    chunks = stream.chunks
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [*_EVENT_STREAM, *headers]})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        state["done"] = True
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not state["left"]:
            raise  # not ours: the server is stopping
        task.uncancel()
    finally:
        state["done"] = True
        watcher.cancel()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # the relay's own `finally` logs the answer, also when cut here


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
