"""The gateway's fast path answers exactly as its Litestar routes do, and hands them what it does
not take.

Two stores, the same requests: one app is Litestar alone, the other is Litestar behind `FastPath`
(what `ratchet serve` runs), both forwarding to the same stand-in upstream on loopback
(tests/fixtures/upstream.py: scripted answers, a 502 for anything else). Every answer must match:
status, headers, and the body byte for byte once the log id (new per request) is set aside. A
client leaving mid-stream is logged as interrupted on the fast path too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from service.app import build_runtime
from service.config import Settings, VllmSettings
from service.domain import ProjectIn
from service.projects import create_project
from service.runtime import Runtime
from tests.fixtures.fastpath import Counting, paired_apps, send
from tests.fixtures.upstream import StandIn

pytestmark = pytest.mark.anyio

ADMIN = "admin-secret-for-gateway-fastpath-tests"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def chat(**fields: Any) -> bytes:
    return msgspec.json.encode({"model": "shop", "messages": PROMPT, **fields})


# (path, key to send: "project", "admin", "wrong" or None, body).
CASES: list[tuple[str, str | None, bytes]] = [
    ("/v1/chat/completions", "project", chat(stand_in="tool_call")),
    ("/v1/chat/completions", "project", chat(stand_in="tool_call_stream", stream=True)),
    ("/v1/chat/completions", "project", chat(stand_in="error_event", stream=True)),
    ("/v1/chat/completions", "project", chat(stand_in="broken", stream=True)),
    ("/v1/chat/completions", "project", chat(stand_in="unreadable")),
    ("/v1/chat/completions", "admin", chat(stand_in="tool_call")),  # an admin names the project
    ("/v1/chat/completions", "project", chat()),  # the upstream fails: 503
    ("/v1/chat/completions", None, chat(stand_in="tool_call")),
    ("/v1/chat/completions", "wrong", chat(stand_in="tool_call")),
    ("/v1/chat/completions", "project", chat(model="other")),  # another project: 404
    ("/v1/chat/completions", "admin", chat(model="nowhere")),
    ("/v1/chat/completions", "project", chat(messages=[])),
    ("/v1/chat/completions", "project", chat(prompt_logprobs=1)),
    ("/v1/chat/completions", "project", msgspec.json.encode({"messages": PROMPT})),  # no model
    ("/v1/chat/completions", "project", b""),
    ("/v1/chat/completions", "project", b'{"model": "shop", "messages": '),
    ("/v1/chat/completions", "project", b"[1, 2]"),
    ("/v1/completions", "project", msgspec.json.encode({"model": "shop", "prompt": {"text": "hi"}})),
    ("/v1/completions", "project", msgspec.json.encode({"model": "shop", "prompt": "hi"})),  # 503
    ("/v1/chat/completions?x=1", "project", chat(stand_in="tool_call")),
    ("/v1/chat/completions", "project", chat(stand_in="tool_call", padding="x" * 5000)),  # 413
]
# Cases the fast path must leave to Litestar: a query string, a body over the limit.
DELEGATED = {19, 20}


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    server = StandIn().start()
    yield server
    server.stop()


def _runtime(data_dir: Path, upstream: str) -> tuple[Runtime, str]:
    settings = Settings(
        data_dir=data_dir,
        admin_key=ADMIN,
        max_body_bytes=4096,
        scheduler_enabled=False,
        vllm=VllmSettings(urls=(upstream,), base_served_name="tiny", timeout_seconds=10),
    )
    runtime = build_runtime(settings)
    secret = create_project(runtime, ProjectIn(name="shop")).api_key
    create_project(runtime, ProjectIn(name="other"))
    return runtime, secret


@pytest.fixture
async def apps(
    tmp_path: Path, stand_in: StandIn
) -> AsyncIterator[tuple[tuple[Any, str], tuple[Any, str], Counting]]:
    plain_rt, plain_key = _runtime(tmp_path / "plain", stand_in.url)
    fast_rt, fast_key = _runtime(tmp_path / "fast", stand_in.url)
    async with paired_apps(plain_rt, fast_rt) as (plain, fast, counting):
        yield (plain, plain_key), (fast, fast_key), counting


_send = functools.partial(send, admin=ADMIN)


def _seen(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, the headers that matter and the body, with the request's log id set aside."""
    log_id = response.headers.get("x-ratchet-log-id")
    body = response.content
    if log_id:
        assert log_id.startswith("log-") and log_id.encode() in body
        body = body.replace(log_id.encode(), b"LOG-ID")
    names = ("content-type", "cache-control", "x-ratchet-adapter", "retry-after")
    return response.status_code, {n: response.headers[n] for n in names if n in response.headers}, body


async def test_fast_path_answers_every_gateway_case_as_litestar_does(apps: Any) -> None:
    (plain, plain_key), (fast, fast_key), counting = apps
    for i, (path, who, body) in enumerate(CASES):
        before = counting.http_calls
        want = await _send(plain, plain_key, path, who, body)
        got = await _send(fast, fast_key, path, who, body)
        assert _seen(got) == _seen(want), f"case {i}: {path} {body[:60]!r}"
        assert (counting.http_calls > before) == (i in DELEGATED), f"case {i} went the wrong way"
    statuses = {_seen(await _send(fast, fast_key, p, w, b))[0] for p, w, b in CASES}
    assert statuses == {200, 401, 404, 413, 422, 503}  # every kind of answer was compared


async def test_fast_path_logs_what_the_client_got(apps: Any) -> None:
    _, (fast, fast_key), _ = apps
    got = await _send(fast, fast_key, "/v1/chat/completions", "project", chat(stand_in="tool_call"))
    log_id = got.headers["x-ratchet-log-id"]
    await fast.runtime.gateway.drain()
    stored = fast.runtime.queries.get_log("shop", log_id)
    assert (stored.source, stored.adapter) == ("gateway", "tiny")
    assert stored.response == got.json()


async def test_a_client_leaving_mid_stream_is_logged_interrupted(apps: Any) -> None:
    _, (fast, fast_key), _ = apps
    first_piece = asyncio.Event()
    sent: list[dict[str, Any]] = []
    body = chat(stand_in="tool_call_stream", stream=True)
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await first_piece.wait()  # the client hangs up once it has its first piece
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_piece.set()

    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
        "headers": [(b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {fast_key}".encode())],
    }  # fmt: skip
    await asyncio.wait_for(fast(scope, receive, send), timeout=10)
    log_id = dict(sent[0]["headers"])[b"x-ratchet-log-id"].decode()
    assert not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent)
    await fast.runtime.gateway.drain()
    stored = fast.runtime.queries.get_log("shop", log_id)
    assert stored.metadata == {"stream": True, "interrupted": True}
