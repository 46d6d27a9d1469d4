"""Deleting data: a log, an end user's data (right to erasure), a whole project."""

from __future__ import annotations

from litestar import delete

from service import erasure
from service.api.deps import needs, scoped_project
from service.domain import EndUser, ErasureOut, Principal
from service.runtime import Runtime


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
    "/v1/projects/{name:str}/end-users/{end_user:str}",
    status_code=200,
    summary="Erase everything of one end user",
    opt=needs("manage"),
)
async def erase_end_user(name: str, end_user: EndUser, principal: Principal, runtime: Runtime) -> ErasureOut:
    """Delete every log of this end user, all feedback on those logs, all feedback they gave, and
    every training snapshot that holds any of it; adapters trained on those snapshots are listed
    and marked. The person's id is kept nowhere, not in the audit event either."""
    return await erasure.erase_end_user(
        runtime, principal, scoped_project(principal, runtime, name), end_user
    )


@delete("/v1/projects/{name:str}", status_code=200, summary="Delete a project (admin)", opt=needs("admin"))
async def delete_project(name: str, principal: Principal, runtime: Runtime) -> ErasureOut:
    """Delete the project and everything of it: logs, feedback, keys, runs and snapshots, adapter
    files, the versions vLLM serves for it (unloaded), its metric series. Cannot be undone."""
    return await erasure.delete_project(runtime, principal, scoped_project(principal, runtime, name))
