"""Langfuse's score API, for apps that already post scores there: `service/scores.py`.

Authenticate as Ratchet's other routes do, or with HTTP Basic as Langfuse's SDKs send it (any
user name; the password is the Ratchet key).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, post

from service.api.deps import needs, scoped_project
from service.domain import Principal
from service.runtime import Runtime
from service.scores import ScoreCreated, delete_score, write_score


@post(
    "/api/public/scores", status_code=200, summary="Store a Langfuse score as feedback", opt=needs("ingest")
)
async def create_score(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, project: str | None = None
) -> ScoreCreated:
    """Langfuse's `CreateScoreRequest`: NUMERIC in [0, 1] is a score, BOOLEAN a thumb, CATEGORICAL a
    thumb when the label is one Ratchet knows (else a comment), TEXT a comment, CORRECTION a
    correction; `traceId`/`observationId` name the log. Answers `{"id": ...}` once stored."""
    name = scoped_project(principal, runtime, project)
    may_attribute = principal.is_admin or principal.key_id in runtime.settings.feedback.attributing_keys
    return await write_score(runtime.capture, name, await request.body(), may_attribute=may_attribute)


@delete(
    "/api/public/scores/{score_id:str}",
    status_code=204,
    summary="Delete a Langfuse score",
    opt=needs("ingest"),
)
async def remove_score(
    score_id: str, principal: Principal, runtime: Runtime, project: str | None = None
) -> None:
    """Withdraw the verdict the score's feedback belongs to; 404 if no such score."""
    await delete_score(
        runtime.capture, runtime.queries, scoped_project(principal, runtime, project), score_id
    )
