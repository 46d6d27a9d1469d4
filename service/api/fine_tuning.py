"""OpenAI's Files and fine-tuning jobs API (`service.fine_tuning`): what the official `openai`
client's `files.*` and `fine_tuning.jobs.*` call, in OpenAI's shapes (`formats.openai_jobs`),
errors included (`{"error": {...}}`, `service/api/errors.py`). The project is the key's; an admin
key names it with `?project=`. Reading needs `read`, uploading, starting and cancelling `manage`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.handlers import HTTPRouteHandler

from formats.openai_jobs import (
    FileDeleted,
    FileList,
    FileObject,
    Job,
    JobCreate,
    JobEventList,
    JobList,
)
from service.api.deps import needs, page_limit, scoped_project
from service.domain import Principal
from service.errors import InvalidInput
from service.fine_tuning import FineTuning, file_object
from service.runtime import Runtime
from service.store.fine_tuning import FineTuningStore


def _domain(runtime: Runtime) -> FineTuning:
    fine_tuning: FineTuning = runtime.fine_tuning
    return fine_tuning


MAX_FILES_PAGE = 10_000
"""OpenAI's bound (and default) for a page of `GET /v1/files`."""


def upload_route(max_bytes: int) -> HTTPRouteHandler:
    """`POST /v1/files`, taking bodies up to `max_bytes` (the `max_file_bytes` setting)."""

    @post(
        "/v1/files", status_code=200, summary="Upload a fine-tuning file (OpenAI files API)",
        opt=needs("manage"), request_max_body_size=max_bytes,
    )  # fmt: skip
    async def upload_file(
        request: Request[Any, Any, Any], principal: Principal, runtime: Runtime, project: str | None = None
    ) -> FileObject:
        """Multipart form: `file` (JSONL, OpenAI fine-tuning chat or preference rows) and `purpose`
        (`fine-tune`). Every line is checked before the file is kept: a bad file is a 400 naming its
        bad lines (`error.detail`: line, message) and nothing is stored."""
        name = scoped_project(principal, runtime, project)
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("send the file as the multipart field `file`", "file")
        purpose = form.get("purpose")
        if not isinstance(purpose, str):
            raise InvalidInput("send `purpose` (`fine-tune`) as a multipart field", "purpose")
        raw = await upload.read()
        return await asyncio.to_thread(_domain(runtime).upload, name, upload.filename, purpose, raw)

    return upload_file


@get("/v1/files", summary="List uploaded files", sync_to_thread=True, opt=needs("read"))
def list_files(
    principal: Principal, runtime: Runtime, project: str | None = None, purpose: str | None = None,
    after: str | None = None, limit: int = 10_000, order: Literal["asc", "desc"] = "desc",
) -> FileList:  # fmt: skip
    """The project's files by creation time, newest first unless `order=asc`; `purpose` only
    those of that purpose; `limit` 1 to 10,000 a page and `after` a file id to page on (OpenAI's
    cursor: the last id of the page before)."""
    page_limit(limit, MAX_FILES_PAGE)
    stored = FineTuningStore(runtime.db).files(
        scoped_project(principal, runtime, project),
        purpose=purpose,
        after=after,
        limit=limit + 1,
        order=order,
    )
    data = [file_object(f) for f in stored[:limit]]
    return FileList(data=data, has_more=len(stored) > limit, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)  # fmt: skip


@get("/v1/files/{file_id:str}", summary="One uploaded file", sync_to_thread=True, opt=needs("read"))
def get_file(file_id: str, principal: Principal, runtime: Runtime, project: str | None = None) -> FileObject:
    return file_object(FineTuningStore(runtime.db).file(scoped_project(principal, runtime, project), file_id))


@get(
    "/v1/files/{file_id:str}/content", summary="An uploaded file's content", sync_to_thread=True,
    opt=needs("read"), media_type="application/jsonl",
)  # fmt: skip
def get_file_content(
    file_id: str, principal: Principal, runtime: Runtime, project: str | None = None
) -> Response[bytes]:
    raw, media_type = _domain(runtime).content(scoped_project(principal, runtime, project), file_id)
    return Response(raw, media_type=media_type)


@delete(
    "/v1/files/{file_id:str}", status_code=200, summary="Delete an uploaded file", sync_to_thread=True,
    opt=needs("manage"),
)  # fmt: skip
def delete_file(
    file_id: str, principal: Principal, runtime: Runtime, project: str | None = None
) -> FileDeleted:
    """Unlist the file and delete its content; jobs already started keep their snapshot."""
    _domain(runtime).delete(scoped_project(principal, runtime, project), file_id)
    return FileDeleted(id=file_id)


@post("/v1/fine_tuning/jobs", status_code=200, summary="Create a fine-tuning job", opt=needs("manage"))
async def create_job(
    data: JobCreate, principal: Principal, runtime: Runtime, project: str | None = None
) -> Job:
    """Start a run that trains the project's base model on `training_file` (`method` supervised
    or dpo); once it has `succeeded`, `fine_tuned_model` (`project@vN`) answers through the
    gateway. The version is not gated, canaried or made the project's default. While the project
    has a run going (or earlier jobs queued) the job is `queued` and starts when it is free."""
    return await _domain(runtime).create(scoped_project(principal, runtime, project), data)


@get("/v1/fine_tuning/jobs", summary="List fine-tuning jobs", sync_to_thread=True, opt=needs("read"))
def list_jobs(
    principal: Principal, runtime: Runtime, project: str | None = None, after: str | None = None,
    limit: int = 20,
) -> JobList:  # fmt: skip
    """Newest first; `after` a job id to page on (OpenAI's cursor), `limit` 1 to 100."""
    jobs, more = _domain(runtime).jobs(
        scoped_project(principal, runtime, project), after, page_limit(limit, 100)
    )
    return JobList(data=jobs, has_more=more)


@get(
    "/v1/fine_tuning/jobs/{job_id:str}", summary="One fine-tuning job", sync_to_thread=True, opt=needs("read")
)
def get_job(job_id: str, principal: Principal, runtime: Runtime, project: str | None = None) -> Job:
    return _domain(runtime).job(scoped_project(principal, runtime, project), job_id)


@get(
    "/v1/fine_tuning/jobs/{job_id:str}/events", summary="A fine-tuning job's events", sync_to_thread=True,
    opt=needs("read"),
)  # fmt: skip
def list_job_events(
    job_id: str, principal: Principal, runtime: Runtime, project: str | None = None, after: str | None = None,
    limit: int = 20,
) -> JobEventList:  # fmt: skip
    """Newest first: the run's transitions and its last training step's loss."""
    name = scoped_project(principal, runtime, project)
    events, more = _domain(runtime).events(name, job_id, after, page_limit(limit, 100))
    return JobEventList(data=events, has_more=more)


@post(
    "/v1/fine_tuning/jobs/{job_id:str}/cancel", status_code=200, summary="Cancel a fine-tuning job",
    opt=needs("manage"),
)  # fmt: skip
async def cancel_job(job_id: str, principal: Principal, runtime: Runtime, project: str | None = None) -> Job:
    """The run's cancel (`POST /v1/runs/{id}/cancel`): its trainer is stopped, the job ends
    `cancelled`; a queued job is cancelled without a run. 409 once the job has ended."""
    return await _domain(runtime).cancel(scoped_project(principal, runtime, project), job_id)
