"""OpenAI-compatible gateway endpoints: `model` is the project's name."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from service.api.deps import needs, scoped_project
from service.domain import Principal
from service.errors import InvalidInput
from service.gateway import Endpoint, GatewayStream
from service.runtime import Runtime

_body = msgspec.json.Decoder(dict[str, Any])


async def _forward(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, endpoint: Endpoint
) -> Any:
    body = _body.decode(await request.body())
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("`model` must name your project (the model alias apps call)", "model")
    project = scoped_project(principal, runtime, model)
    result = await runtime.gateway.forward(project, endpoint, body)
    headers = {"x-ratchet-log-id": result.log_id, "x-ratchet-adapter": result.adapter}
    if isinstance(result, GatewayStream):
        return Stream(
            result.chunks, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
        )
    return Response(result.body, headers=headers)


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="Chat completion through the project's adapter",
    opt=needs("ingest"),
)
async def chat_completions(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> Any:
    """OpenAI chat completions (streaming or not). The response `id` is the log id for feedback."""
    return await _forward(request, principal, runtime, "chat")


@post(
    "/v1/completions",
    status_code=200,
    summary="Text completion through the project's adapter",
    opt=needs("ingest"),
)
async def completions(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> Any:
    """OpenAI completions (streaming or not). The response `id` is the log id for feedback."""
    return await _forward(request, principal, runtime, "completions")
