"""One reading of vLLM's error answers for all three of its users: deploy's replica client, evals'
model server and the service's gateway map the same answer to the same outcome, with vLLM's
reason in it (deploy/vllm_client.py: `error_of`, `model_missing`, `reply_error`).

The answers are replayed (vLLM's measured bodies, shared/notes/cpu-stack.md): the gateway through
its `Upstream` seam, the two httpx clients through a mock transport. The real server's refusals
are exercised in test_gateway.py (a restarted replica) and test_deploy_manager_vllm.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from deploy.adapters import AdapterManager
from deploy.fleets import Fleets
from deploy.routing import RoutingTable
from deploy.vllm_client import (
    ModelNotFound,
    ReplicaClient,
    ReplicaFailed,
    RequestRejected,
    error_of,
    model_missing,
)
from evals.errors import ServerError
from evals.server import ModelServer
from service.config import Settings, VllmSettings
from service.errors import UpstreamRejected, UpstreamUnavailable
from service.gateway import Gateway, parse_request
from service.metrics import Metrics

REPLICA = "http://replica-a:8000"
MISSING = b'{"error": {"message": "The model `shop@v2` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}}'


def _vllm(message: str, kind: str, status: int) -> bytes:
    return f'{{"error": {{"message": "{message}", "type": "{kind}", "code": {status}}}}}'.encode()


# (status, body, the outcome every user must agree on, vLLM's reason as every user must name it)
ANSWERS = [
    (404, MISSING, "model_missing", "The model `shop@v2` does not exist."),
    (
        400,
        _vllm("max_tokens must be at least 1", "BadRequestError", 400),
        "rejected",
        "max_tokens must be at least 1",
    ),
    (404, b'{"detail": "Not Found"}', "rejected", "Not Found"),  # a route, not a model: no restart
    (500, _vllm("engine dead", "InternalServerError", 500), "failed", "engine dead"),
    (502, b"Bad Gateway", "failed", "Bad Gateway"),
]


def test_the_parser_reads_every_shape_of_error() -> None:
    assert error_of(MISSING) == ("NotFoundError", "The model `shop@v2` does not exist.")
    assert error_of(b'{"error": "no such thing"}') == ("", "no such thing")
    assert error_of(b'{"message": "flat"}') == ("", "flat")
    assert error_of(b"\xff not json") == ("", "\ufffd not json")
    assert model_missing(404, error_of(MISSING))
    assert not model_missing(404, error_of(b'{"detail": "Not Found"}'))
    assert not model_missing(400, error_of(MISSING))


async def _deploy(status: int, body: bytes) -> tuple[str, str]:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    async with ReplicaClient(REPLICA, transport=transport) as replica:
        try:
            await replica.complete("shop@v2", "hi")
        except ModelNotFound as exc:
            return "model_missing", exc.reason
        except RequestRejected as exc:
            return "rejected", exc.reason
        except ReplicaFailed as exc:
            return "failed", exc.reason
    raise AssertionError("no error raised")


async def _evals(status: int, body: bytes) -> str:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    async with ModelServer(REPLICA, transport=transport) as server:
        with pytest.raises(ServerError) as caught:
            await server.chat("shop@v2", [{"role": "user", "content": "hi"}], max_tokens=4)
    return str(caught.value)


@dataclass
class _Reply:
    status_code: int
    body: bytes

    async def read(self) -> bytes:
        return self.body

    async def pieces(self) -> AsyncIterator[bytes]:
        yield self.body

    async def close(self) -> None:
        return None


class _Upstream:
    def __init__(self, status: int, body: bytes) -> None:
        self.reply = _Reply(status, body)
        self.posts = 0

    async def post(self, replica: str, path: str, body: bytes) -> _Reply:
        self.posts += 1
        return self.reply

    async def aclose(self) -> None:
        return None


class _Capture:
    """Capture's two calls on a failure path; nothing is answered, so nothing is logged."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str, str]] = []

    def remember_adapter(self, project: str, log_id: str, adapter: str | None) -> None:
        return None

    def submit_upstream_failure(self, project: str, adapter: str, reason: str, *rest: Any) -> None:
        self.failures.append((project, adapter, reason))

    async def flush(self) -> None:
        return None


async def _gateway(status: int, body: bytes) -> tuple[str, str, int]:
    settings = Settings(vllm=VllmSettings(urls=(REPLICA,), base_served_name="tiny"))
    manager = AdapterManager.from_urls([REPLICA], adapter_root="/nonexistent", max_loras=2, max_rank=8,
                                       base_served_name="tiny")  # fmt: skip
    upstream, capture = _Upstream(status, body), _Capture()
    gateway = Gateway(
        settings, Fleets.single(manager), capture, Metrics(), RoutingTable("tiny"), upstream=upstream
    )  # type: ignore[arg-type]
    request = parse_request("chat", b'{"model": "shop", "messages": [{"role": "user", "content": "hi"}]}')
    try:
        await gateway.forward("shop", request)
    except UpstreamRejected as exc:
        return "rejected", str(exc), upstream.posts
    except UpstreamUnavailable as exc:
        # A missing model is retried (a restarted replica: routing drops it) and never recorded
        # against the version; a failure is recorded for the online gate's error-rate guard.
        outcome = "failed" if capture.failures else "model_missing"
        return outcome, str(exc), upstream.posts
    finally:
        await manager.aclose()
    raise AssertionError("no error raised")


@pytest.mark.parametrize(("status", "body", "outcome", "reason"), ANSWERS)
def test_every_user_maps_the_same_vllm_answer_to_the_same_outcome(
    status: int, body: bytes, outcome: str, reason: str
) -> None:
    assert asyncio.run(_deploy(status, body)) == (outcome, reason)
    assert reason in asyncio.run(_evals(status, body))
    gateway_outcome, message, posts = asyncio.run(_gateway(status, body))
    assert gateway_outcome == outcome
    if outcome == "model_missing":
        assert posts == 3 and "re-loaded" in message  # each attempt took the missing route out
    else:
        assert posts == 1 and reason in message
