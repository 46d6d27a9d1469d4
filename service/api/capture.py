"""`POST /v1/logs` and `POST /v1/feedback`: answered 202 once the rows are committed.

`ratchet serve` answers most of these requests on the ingest fast path (`service/api/fastpath.py`),
which runs `capture_logs` / `capture_feedback` below; these routes take the rest (an admin's
`?project=`, a body without Content-Length or over the limit) and publish the API in the OpenAPI
schema.
"""

from __future__ import annotations

from typing import Any, Literal

from litestar import Request, delete, post

from service.api.deps import needs, scoped_project
from service.api.openapi import FeedbackOperation, LogsOperation
from service.auth import authorize
from service.capture import decode_feedback, decode_logs, inflated
from service.clock import utcnow
from service.domain import CaptureResult, FeedbackWithdrawn, Principal
from service.errors import InvalidInput
from service.runtime import Runtime

LogSource = Literal["api", "gateway"]


def _reject_if_nothing_taken(result: CaptureResult) -> CaptureResult:
    """A request none of whose items was taken is a 422 (with the per-item results in `detail`);
    one that took some is a 202 listing what was rejected."""
    if result.rejected and not (result.accepted or result.duplicates):
        first = result.results[0]
        if len(result.results) == 1:
            raise InvalidInput(first.error or "rejected", first.field, result.results)
        raise InvalidInput(
            f"every item was rejected (first: {first.error}): see `detail`", first.field, result.results
        )
    return result


async def capture_logs(
    runtime: Runtime,
    principal: Principal,
    project: str | None,
    body: bytes,
    content_encoding: str | None = None,
    source: LogSource = "api",
) -> CaptureResult:
    """Decode and durably store a `POST /v1/logs` body (gzip or not) for the caller's project.
    `source` `gateway` (a `ratchet gateway` replica shipping its logs) needs an admin key."""
    name = scoped_project(principal, runtime, project)
    if source != "api":
        authorize(principal, "admin")
    logs = decode_logs(_inflated(runtime, body, content_encoding))
    return _reject_if_nothing_taken(await runtime.capture.write_logs(name, logs, source))


async def capture_feedback(
    runtime: Runtime,
    principal: Principal,
    project: str | None,
    body: bytes,
    content_encoding: str | None = None,
) -> CaptureResult:
    """Decode and durably store a `POST /v1/feedback` body (gzip or not) for the caller's project."""
    name = scoped_project(principal, runtime, project)
    may_attribute = principal.is_admin or principal.key_id in runtime.settings.feedback.attributing_keys
    items = decode_feedback(_inflated(runtime, body, content_encoding))
    result = await runtime.capture.write_feedback(name, items, may_attribute=may_attribute)
    return _reject_if_nothing_taken(result)


def _inflated(runtime: Runtime, body: bytes, content_encoding: str | None) -> bytes:
    """The JSON under `Content-Encoding`: the same `max_body_bytes` holds for it as for a plain
    body, so compression changes what crosses the network, not what a request may carry."""
    return inflated(body, content_encoding, runtime.settings.max_body_bytes)


STORED = (
    "Taken: every item `accepted` is durable (committed to the database) before this answer, and "
    "each item has its result in order: `accepted`, `duplicate` or `rejected` with its `field`."
)


@post(
    "/v1/logs",
    status_code=202,
    operation_class=LogsOperation,
    summary="Store inference logs",
    response_description=STORED,
    opt=needs("ingest"),
)
async def post_logs(
    request: Request[Any, Any, Any],
    principal: Principal,
    runtime: Runtime,
    project: str | None = None,
    source: LogSource = "api",
) -> CaptureResult:
    """Store one log or `{"logs": [...]}`. Same `id` twice is one row. Per-item results in order.
    `?source=gateway` (admin keys: a `ratchet gateway` replica's logs) stores them as the
    built-in gateway's."""
    body = await request.body()
    return await capture_logs(
        runtime, principal, project, body, request.headers.get("content-encoding"), source
    )


@post(
    "/v1/feedback",
    status_code=202,
    operation_class=FeedbackOperation,
    summary="Store user feedback",
    response_description=STORED,
    opt=needs("ingest"),
)
async def post_feedback(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, project: str | None = None
) -> CaptureResult:
    """Store one feedback item or `{"feedback": [...]}`: each updates only the fields it carries."""
    body = await request.body()
    return await capture_feedback(runtime, principal, project, body, request.headers.get("content-encoding"))


@delete(
    "/v1/feedback/{feedback_id:str}",
    status_code=200,
    summary="Withdraw feedback",
    opt=needs("ingest"),
)
async def withdraw_feedback(
    feedback_id: str, principal: Principal, runtime: Runtime, project: str | None = None
) -> FeedbackWithdrawn:
    """Withdraw the verdict a feedback item (by its id, or the id of any later item on the same
    log and end user) belongs to: its rating, score, correction, comment and implicit signals are
    cleared, and it no longer counts anywhere. A retry answers `unchanged`; 404 if no such id."""
    name = scoped_project(principal, runtime, project)
    log_id, end_user = runtime.queries.find_feedback(name, feedback_id)
    changed = await runtime.capture.withdraw_feedback(name, log_id, end_user, utcnow())
    return FeedbackWithdrawn(feedback_id, log_id, end_user or None, "withdrawn" if changed else "unchanged")
