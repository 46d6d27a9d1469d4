"""The vLLM replica client against vLLM's measured answers, replayed through an httpx transport
(the real server is exercised in test_deploy_manager_vllm.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from deploy.vllm_client import (
    AdapterRejected,
    ModelNotFound,
    ReplicaClient,
    ReplicaTimeout,
    ReplicaUnavailable,
    UnexpectedResponse,
)

pytestmark = pytest.mark.anyio
URL = "http://replica-a:8000"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def vllm_error(status: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": kind, "code": status}})


def client(handler) -> ReplicaClient:
    return ReplicaClient(URL, transport=httpx.MockTransport(handler), api_key="k")


async def test_load_accepts_plain_text_and_sends_name_path_and_key() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content), request.headers["authorization"]))
        return httpx.Response(200, content=b"Success: LoRA adapter 'shop@v1' added successfully.")

    async with client(handler) as replica:
        await replica.load_adapter("shop@v1", "/a/v1")
    assert seen == [("/v1/load_lora_adapter", {"lora_name": "shop@v1", "lora_path": "/a/v1"}, "Bearer k")]


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (400, "InvalidUserInput", "The lora adapter 'shop@v1' has already been loaded."),
        (404, "NotFoundError", "Loading lora shop@v1 failed: No adapter found for /a/v1"),
        (500, "InternalServerError", "LoRA rank 32 is greater than max_lora_rank 16."),
    ],
)
async def test_a_refused_load_carries_vllms_reason(status: int, kind: str, message: str) -> None:
    async with client(lambda request: vllm_error(status, kind, message)) as replica:
        with pytest.raises(AdapterRejected) as caught:
            await replica.load_adapter("shop@v1", "/a/v1")
    assert (caught.value.status, caught.value.kind, caught.value.reason) == (status, kind, message)
    assert caught.value.replica == URL and message in str(caught.value)


async def test_unknown_names_are_model_not_found() -> None:
    missing = vllm_error(404, "NotFoundError", "The model `shop@v9` does not exist.")
    async with client(lambda request: missing) as replica:
        with pytest.raises(ModelNotFound, match="does not exist"):
            await replica.unload_adapter("shop@v9")
        with pytest.raises(ModelNotFound):
            await replica.complete("shop@v9", "hello")


async def test_models_and_completions_are_decoded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "tiny", "object": "model", "root": "/m/tiny", "parent": None},
                {"id": "shop@v1", "object": "model", "root": "/a/v1", "parent": "tiny"},
            ]})  # fmt: skip
        body = json.loads(request.content)
        assert (body["temperature"], body["max_tokens"]) == (0.0, 4)
        return httpx.Response(200, json={"id": "c", "choices": [{"index": 0, "text": " Paris"}]})

    async with client(handler) as replica:
        models = await replica.list_models()
        assert [(m.id, m.is_adapter, m.root) for m in models] == [
            ("tiny", False, "/m/tiny"),
            ("shop@v1", True, "/a/v1"),
        ]
        assert await replica.complete("shop@v1", "The capital", max_tokens=4) == " Paris"


async def test_down_slow_and_garbled_replicas_raise_specific_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    async with client(refuse) as replica:
        with pytest.raises(ReplicaUnavailable, match="ConnectError"):
            await replica.list_models()
        assert await replica.health() is False
    async with client(stall) as replica:
        with pytest.raises(ReplicaTimeout):
            await replica.complete("tiny", "x")
    async with client(lambda request: httpx.Response(200, text="<html>")) as replica:
        with pytest.raises(UnexpectedResponse, match="unreadable"):
            await replica.list_models()
    async with client(lambda request: vllm_error(503, "ServiceUnavailable", "engine dead")) as replica:
        with pytest.raises(ReplicaUnavailable, match="engine dead"):
            await replica.complete("tiny", "x")
