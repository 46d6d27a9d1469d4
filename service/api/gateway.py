"""OpenAI-compatible gateway endpoints: `model` is the project's name, or one version of it
(`project@vN`, or `project:suffix@vN`, a fine-tuning job's `fine_tuned_model` with its suffix),
which answers that request alone.

`ratchet serve` answers these requests on the fast path (`service/api/fastpath.py`), which runs
`forward_request` below as these routes do; the routes take the rest (a body without
Content-Length or over the limit, a query string) and publish the API in the OpenAPI schema.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from litestar import MediaType, Request, Response, get, post
from litestar.response import Stream

from service.api.deps import SharedRuntime, needs, scoped_project
from service.domain import ModelList, ModelOut, Principal
from service.errors import InvalidInput
from service.gateway import Endpoint, GatewayAnswer, GatewayStream, parse_request
from service.runtime import Runtime

EVENT_STREAM_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


async def forward_request(
    runtime: Runtime, principal: Principal, endpoint: Endpoint, raw: bytes
) -> GatewayAnswer | GatewayStream:
    """Read a gateway request body for the caller's project and forward it."""
    parsed = parse_request(endpoint, raw)
    if not parsed.model:
        raise InvalidInput("`model` must name your project (the model alias apps call)", "model")
    head, at, _ = parsed.model.partition("@")
    name, suffixed, _ = head.partition(":")
    project = scoped_project(principal, runtime, name)
    if not at and not suffixed:
        return await runtime.gateway.forward(project, parsed)
    # `project:suffix@vN`: a fine-tuning job's model named with its suffix, the same version.
    version = await runtime.fine_tuning.served_name(parsed.model) if suffixed else parsed.model
    await runtime.rollouts.ensure_addressable(version)
    return await runtime.gateway.forward(project, parsed, version=version)


async def _forward(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, endpoint: Endpoint
) -> Any:
    result = await forward_request(runtime, principal, endpoint, await request.body())
    headers = {"x-ratchet-log-id": result.log_id, "x-ratchet-adapter": result.adapter}
    if isinstance(result, GatewayStream):
        # The header, not `media_type`: the route's own media type (JSON) would win over the Stream's.
        return Stream(result.chunks, headers={**headers, **EVENT_STREAM_HEADERS})
    return Response(result.body, media_type=MediaType.JSON, headers=headers)


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="Chat completion through the project's adapter",
    opt=needs("ingest"),
)
async def chat_completions(
    request: Request[Any, Any, Any], principal: Principal, runtime: SharedRuntime
) -> Any:
    """OpenAI chat completions (streaming or not). The response `id` is the log id for feedback."""
    return await _forward(request, principal, runtime, "chat")


@post(
    "/v1/completions",
    status_code=200,
    summary="Text completion through the project's adapter",
    opt=needs("ingest"),
)
async def completions(request: Request[Any, Any, Any], principal: Principal, runtime: SharedRuntime) -> Any:
    """OpenAI completions (streaming or not). The response `id` is the log id for feedback."""
    return await _forward(request, principal, runtime, "completions")


@get("/v1/models", summary="The models (projects) the key may call", sync_to_thread=True, opt=needs("ingest"))
def list_models(principal: Principal, runtime: Runtime) -> ModelList:
    """OpenAI's model list: a project key sees its project, an all-projects key every project,
    each with the base model it runs on (`vllm.models`) and the version serving it now."""
    found = runtime.queries.list_projects()
    return ModelList(
        [
            ModelOut(
                id=p.name,
                created=int(p.created_at.replace(tzinfo=UTC).timestamp()),
                base_model=runtime.fleets.base_of(p.name),
                serving=runtime.rollouts.current(p.name).champion,
            )
            for p in found
            if principal.project in (None, p.name)
        ]
    )
