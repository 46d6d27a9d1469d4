"""The ingest fast path answers exactly as the Litestar routes do, and hands them what it does not take.

Two stores, the same requests: one app is Litestar alone, the other is Litestar behind
`FastPath` (what `ratchet serve` runs). Every answer must match byte for byte, for
successes, partial successes and every error the two ingest routes can give.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.app import build_runtime
from service.config import Settings, WriterSettings
from service.domain import ProjectIn
from service.projects import create_project
from service.runtime import Runtime
from tests.fixtures.fastpath import Counting, paired_apps, send

pytestmark = pytest.mark.anyio

ADMIN = "admin-secret-for-fastpath-tests"


def _log(log_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": log_id,
        "request": {"messages": [{"role": "user", "content": "capital of France?"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "Paris."}}]},
        **extra,
    }


# (path, key to send: "project", "admin", "wrong" or None, body).
CASES: list[tuple[str, str | None, bytes]] = [
    ("/v1/logs", "project", msgspec.json.encode(_log("a-1", end_user="u1"))),
    ("/v1/logs", "project", msgspec.json.encode(_log("a-1"))),  # duplicate
    ("/v1/logs", "project", msgspec.json.encode({"logs": [_log("b-1"), _log("b-2", response={})]})),
    ("/v1/logs", "project", msgspec.json.encode({"logs": [_log("c-1", request={})]})),  # all rejected
    ("/v1/logs", "project", b'{"id": "x", "request": '),  # broken JSON
    ("/v1/logs", "project", msgspec.json.encode(_log("d-1", latency_ms="slow"))),  # wrong type
    ("/v1/logs", "project", msgspec.json.encode(_log("d-2", colour="red"))),  # unknown field
    ("/v1/logs", "project", b""),
    ("/v1/logs", None, msgspec.json.encode(_log("e-1"))),  # no key
    ("/v1/logs", "wrong", msgspec.json.encode(_log("e-2"))),
    ("/v1/logs", "admin", msgspec.json.encode(_log("e-3"))),  # admin must name the project
    ("/v1/logs?project=shop", "admin", msgspec.json.encode(_log("e-4"))),
    ("/v1/logs?project=other", "project", msgspec.json.encode(_log("e-5"))),
    ("/v1/logs", "project", msgspec.json.encode({"logs": [_log(f"big-{i}") for i in range(3)]})),  # 429
    ("/v1/logs", "project", b'{"logs": []}'),
    ("/v1/feedback", "project", b'{"log_id": "a-1", "id": "f-0", "end_user": "u1", "rating": 1}'),
    (
        "/v1/feedback",
        "project",
        b'{"log_id": "a-1", "id": "f-0", "end_user": "u1", "rating": -1, "comment": "no"}',
    ),
    ("/v1/feedback", "project", b'{"log_id": "a-1"}'),  # nothing to say
    ("/v1/feedback", "project", b'{"feedback": [{"log_id": "a-1", "rating": 2}]}'),
    ("/v1/feedback", "project", b'{"feedback": [{"log_id": "late", "id": "f-1", "rating": 1}]}'),
    ("/v1/logs", "project", b"x" * 5000),  # over max_body_bytes: Litestar's 413
]
# Cases the fast path must leave to Litestar: a query string, a body over the limit.
DELEGATED = {11, 12, 20}


def _runtime(data_dir: Path) -> tuple[Runtime, str]:
    settings = Settings(
        data_dir=data_dir,
        admin_key=ADMIN,
        max_body_bytes=4096,
        writer=WriterSettings(max_queue_rows=2),
    )
    runtime = build_runtime(settings)
    secret = create_project(runtime, ProjectIn(name="shop")).api_key
    create_project(runtime, ProjectIn(name="other"))
    return runtime, secret


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[tuple[tuple[Any, str], tuple[Any, str], Counting]]:
    plain_rt, plain_key = _runtime(tmp_path / "plain")
    fast_rt, fast_key = _runtime(tmp_path / "fast")
    async with paired_apps(plain_rt, fast_rt) as (plain, fast, counting):
        yield (plain, plain_key), (fast, fast_key), counting


_send = functools.partial(send, admin=ADMIN)


async def test_fast_path_answers_every_case_as_litestar_does(apps: Any) -> None:
    (plain, plain_key), (fast, fast_key), counting = apps
    for i, (path, who, body) in enumerate(CASES):
        before = counting.http_calls
        want = await _send(plain, plain_key, path, who, body)
        got = await _send(fast, fast_key, path, who, body)
        assert (got.status_code, got.json()) == (want.status_code, want.json()), (
            f"case {i}: {path} {body[:60]!r}"
        )
        assert got.headers.get("retry-after") == want.headers.get("retry-after"), f"case {i}"
        assert got.headers["content-type"].startswith("application/json"), f"case {i}"
        assert (counting.http_calls > before) == (i in DELEGATED), f"case {i} went the wrong way"


async def test_fast_path_records_latency_under_the_route_template(apps: Any) -> None:
    _, (fast, fast_key), _ = apps
    await _send(fast, fast_key, "/v1/logs", "project", msgspec.json.encode(_log("m-1")))
    await _send(fast, fast_key, "/v1/logs", None, msgspec.json.encode(_log("m-2")))
    runtime: Runtime = fast.runtime
    samples = {
        (s.labels["route"], s.labels["status"]): s.value
        for metric in runtime.metrics.http_request_seconds.collect()
        for s in metric.samples
        if s.name.endswith("_count")
    }
    assert samples[("/v1/logs", "2xx")] == 1
    assert samples[("/v1/logs", "4xx")] == 1


async def test_client_leaving_before_its_body_gets_no_answer_and_writes_nothing(apps: Any) -> None:
    _, (fast, _), _ = apps
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/v1/logs", "query_string": b"",
        "headers": [(b"content-length", b"10")],
    }  # fmt: skip
    await asyncio.wait_for(fast(scope, receive, send), timeout=5)
    assert sent == []
    assert fast.runtime.capture._writer.queued_rows == 0
