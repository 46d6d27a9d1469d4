"""`POST /v1/logs` and `POST /v1/feedback`: answered 202 once the rows are committed.

`ratchet serve` answers most of these requests on the ingest fast path (`service/api/fastpath.py`),
which runs `capture_logs` / `capture_feedback` below; these routes take the rest (an admin's
`?project=`, a body without Content-Length or over the limit) and publish the API in the OpenAPI
schema.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post

from service.api.deps import needs, scoped_project
from service.api.openapi import FeedbackOperation, LogsOperation
from service.capture import decode_feedback, decode_logs
from service.domain import CaptureResult, Principal
from service.errors import InvalidInput
from service.runtime import Runtime


def _reject_if_nothing_taken(result: CaptureResult) -> CaptureResult:
    if result.rejected and not (result.accepted or result.duplicates):
        first = result.results[0] if len(result.results) == 1 else None
        raise InvalidInput(
            first.error if first and first.error else "every item was rejected: see the results"
        )
    return result


async def capture_logs(
    runtime: Runtime, principal: Principal, project: str | None, body: bytes
) -> CaptureResult:
    """Decode and durably store a `POST /v1/logs` body for the caller's project."""
    name = scoped_project(principal, runtime, project)
    return _reject_if_nothing_taken(await runtime.capture.write_logs(name, decode_logs(body)))


async def capture_feedback(
    runtime: Runtime, principal: Principal, project: str | None, body: bytes
) -> CaptureResult:
    """Decode and durably store a `POST /v1/feedback` body for the caller's project."""
    name = scoped_project(principal, runtime, project)
    return _reject_if_nothing_taken(await runtime.capture.write_feedback(name, decode_feedback(body)))


@post(
    "/v1/logs",
    status_code=202,
    operation_class=LogsOperation,
    summary="Store inference logs",
    opt=needs("ingest"),
)
async def post_logs(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, project: str | None = None
) -> CaptureResult:
    """Store one log or `{"logs": [...]}`. Same `id` twice is one row. Per-item results in order."""
    return await capture_logs(runtime, principal, project, await request.body())


@post(
    "/v1/feedback",
    status_code=202,
    operation_class=FeedbackOperation,
    summary="Store user feedback",
    opt=needs("ingest"),
)
async def post_feedback(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, project: str | None = None
) -> CaptureResult:
    """Store one feedback item or `{"feedback": [...]}`; a new verdict replaces the old one."""
    return await capture_feedback(runtime, principal, project, await request.body())
