"""Deleting data: a log, an end user's data (right to erasure), a whole project."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import msgspec
from litestar import Request, delete

from service import erasure
from service.api.deps import needs, scoped_project
from service.domain import EndUser, ErasureOut, Principal
from service.errors import InvalidInput
from service.runtime import Runtime

_END_USERS = b"/end-users/"


@delete(
    "/v1/logs/{log_id:str}", status_code=200, summary="Delete a log and its feedback", opt=needs("manage")
)
async def delete_log(
    log_id: str, principal: Principal, runtime: Runtime, project: str | None = None
) -> ErasureOut:
    """Delete the log, every feedback item on it, and every training snapshot that holds it.
    Adapters trained on such a snapshot are listed and marked in their lineage (`erased_data`)."""
    return await erasure.erase_log(runtime, principal, scoped_project(principal, runtime, project), log_id)


@delete(
    "/v1/projects/{name:str}/end-users/{end_user:path}",
    status_code=200,
    summary="Erase everything of one end user",
    opt=needs("manage"),
)
async def erase_end_user(
    name: str, end_user: str, request: Request[Any, Any, Any], principal: Principal, runtime: Runtime
) -> ErasureOut:
    """Delete every log of this end user, all feedback on those logs, all feedback they gave, and
    every training snapshot that holds any of it; adapters trained on those snapshots are listed
    and marked. The person's id is kept nowhere, not in the audit event either.

    `end_user` is the id percent-encoded as one path segment (`org%2Fu1` for `org/u1`): any id
    ingest took can be erased, whatever characters it holds."""
    return await erasure.erase_end_user(
        runtime, principal, scoped_project(principal, runtime, name), end_user_of(request)
    )


def end_user_of(request: Request[Any, Any, Any]) -> str:
    """The end-user id from the raw request path: the server's decoded path has already turned
    `%2F` into a separator, so the id is taken from what the client sent and decoded once."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    encoded = raw.split(b"?", 1)[0].split(_END_USERS, 1)[1].decode("ascii", "replace")
    try:
        return msgspec.convert(unquote(encoded, errors="strict"), EndUser)
    except (UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"not an end-user id: {exc}", "end_user") from None


@delete("/v1/projects/{name:str}", status_code=200, summary="Delete a project (admin)", opt=needs("admin"))
async def delete_project(name: str, principal: Principal, runtime: Runtime) -> ErasureOut:
    """Delete the project and everything of it: logs, feedback, keys, runs and snapshots, adapter
    files, the versions vLLM serves for it (unloaded), its metric series. Cannot be undone."""
    return await erasure.delete_project(runtime, principal, scoped_project(principal, runtime, name))
