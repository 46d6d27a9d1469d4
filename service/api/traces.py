"""`POST /v1/traces`: OpenTelemetry GenAI spans in (OTLP/HTTP, protobuf or JSON, gzip or not).

Answered 200 with an `ExportTraceServiceResponse` in the request's encoding once the logs and
feedback the spans carry are committed; what could not be stored is in its `partial_success`.
A body that is not an OTLP trace export is a 400 naming what to fix (`service/traces.py`).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from formats.otlp import JSON, PROTOBUF, encode_response
from service.api.deps import needs, scoped_project
from service.domain import Principal
from service.runtime import Runtime
from service.traces import decode_export, ingest_spans, resource_project


@post(
    "/v1/traces", status_code=200, summary="Store OpenTelemetry GenAI spans (OTLP/HTTP)", opt=needs("ingest")
)
async def post_traces(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, project: str | None = None
) -> Response[bytes]:
    """An OTLP/HTTP trace export (`application/x-protobuf` or `application/json`, optionally
    `Content-Encoding: gzip`). GenAI inference spans become logs (id: `gen_ai.response.id`),
    `gen_ai.evaluation.result` events feedback; other spans are acknowledged and dropped. The
    project is the key's (an admin key names it with `?project=` or the resource attribute
    `ratchet.project`)."""
    headers = request.headers
    encoding, spans = decode_export(
        await request.body(),
        headers.get("content-type"),
        headers.get("content-encoding"),
        runtime.settings.max_body_bytes,
    )
    name = scoped_project(principal, runtime, project or resource_project(spans))
    result = await ingest_spans(
        runtime.capture,
        runtime.metrics,
        name,
        spans,
        max_batch_items=runtime.settings.max_batch_items,
        may_attribute=principal.is_admin or principal.key_id in runtime.settings.feedback.attributing_keys,
        stored_spans=runtime.queries.logs_of_spans,
    )
    return Response(
        encode_response(encoding, result.rejected, result.message),
        status_code=200,
        media_type=PROTOBUF if encoding == "protobuf" else JSON,
    )
