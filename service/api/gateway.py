"""OpenAI-compatible gateway endpoints: `model` is the project's name."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, post
from litestar.response import Stream

from service.api.deps import needs, scoped_project
from service.domain import Principal
from service.errors import InvalidInput
from service.gateway import Endpoint, GatewayStream, parse_request
from service.runtime import Runtime


async def _forward(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, endpoint: Endpoint
) -> Any:
    parsed = parse_request(endpoint, await request.body())
    if not parsed.model:
        raise InvalidInput("`model` must name your project (the model alias apps call)", "model")
    project = scoped_project(principal, runtime, parsed.model)
    result = await runtime.gateway.forward(project, parsed)
    headers = {"x-ratchet-log-id": result.log_id, "x-ratchet-adapter": result.adapter}
    if isinstance(result, GatewayStream):
        return Stream(
            result.chunks, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
        )
    return Response(result.body, media_type=MediaType.JSON, headers=headers)


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
