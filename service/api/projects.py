"""Projects, logs, stats and exports."""

from __future__ import annotations

import asyncio
import itertools
from typing import Literal

from litestar import get, post
from litestar.params import Parameter
from litestar.response import Stream

from service import projects
from service.api.deps import needs, scoped_project
from service.clock import parse_instant
from service.domain import LogOut, Principal, Project, ProjectCreated, ProjectIn, ProjectStats
from service.pii import scrubber_for
from service.runtime import Runtime
from service.store.export import MEDIA_TYPES, LogExport, default_filename


@post("/v1/projects", status_code=201, summary="Create a project (admin)", opt=needs("admin"))
async def create_project(data: ProjectIn, principal: Principal, runtime: Runtime) -> ProjectCreated:
    """Create a project and return its first API key. The key is shown only in this answer.

    Its version 0 (the base model as a zero adapter) starts loading in the background."""
    created = await asyncio.to_thread(projects.create_project, runtime, data)
    projects.serve_base_version_soon(runtime, data.name)
    return created


@get("/v1/projects", summary="List projects", sync_to_thread=True, opt=needs("read"))
def list_projects(principal: Principal, runtime: Runtime) -> list[Project]:
    """Every project for an all-projects key; a project key sees its own."""
    found = runtime.queries.list_projects()
    return found if principal.project is None else [p for p in found if p.name == principal.project]


@get("/v1/projects/{name:str}/stats", summary="Project statistics", sync_to_thread=True, opt=needs("read"))
def project_stats(name: str, principal: Principal, runtime: Runtime) -> ProjectStats:
    """Counts by kind, thumbs-up rate overall and per adapter version, new signal since the last run."""
    return runtime.queries.project_stats(
        scoped_project(principal, runtime, name), orphan_hours=runtime.settings.feedback.orphan_report_hours
    )


@get(
    "/v1/logs/{log_id:str}", summary="Read one log with its feedback", sync_to_thread=True, opt=needs("read")
)
def get_log(log_id: str, principal: Principal, runtime: Runtime, project: str | None = None) -> LogOut:
    """A stored log and its current feedback. Another project's log is a 404."""
    return runtime.queries.get_log(scoped_project(principal, runtime, project), log_id)


_INSTANT = "ISO 8601 date or date-time (with a zone, else UTC); a date alone is its midnight UTC."


@get(
    "/v1/projects/{name:str}/export",
    summary="Export logs with feedback",
    sync_to_thread=True,
    opt=needs("read"),
)
def export(
    name: str,
    principal: Principal,
    runtime: Runtime,
    # Named as the query parameter, so that a 422 names the field the client sent.
    format: Literal["jsonl", "parquet", "openai-chat", "openai-preference"] = "jsonl",
    since: str | None = Parameter(default=None, description=_INSTANT),
    until: str | None = Parameter(default=None, description=_INSTANT),
    scrub: bool = False,
) -> Stream:
    """The project's logs in [since, until) with their feedback, streamed: JSONL (the import format:
    a line per verdict, naming the log's `end_user` and the `feedback_end_user` who gave it),
    Parquet, or an OpenAI fine-tuning file of what Ratchet would train on (`openai-chat`: chat logs
    with a non-empty answer, every assistant turn weighted, the answer 1 when corrected or liked
    and sound, else 0; `openai-preference`: corrected logs, the correction preferred; logs a
    snapshot quarantines are left out). A withdrawn verdict is no feedback. `scrub=true` redacts
    PII as snapshots do. Header `x-ratchet-rows`: the rows chosen (a log the shape module could
    not read, or quarantined for an OpenAI file, is left out, counted in `x-ratchet-skipped`)."""
    project = scoped_project(principal, runtime, name)
    scrubber = scrubber_for(runtime.settings.snapshot) if scrub else None
    rows = LogExport(
        runtime.db,
        project,
        format,
        since=parse_instant(since, "since"),
        until=parse_instant(until, "until"),
        scrubber=scrubber,
        archive=runtime.archive,
    )
    chunks = iter(rows)
    first = next(chunks, b"")  # a first batch over the memory limit is still a 503, not a cut stream
    return Stream(
        itertools.chain((first,), chunks),
        media_type=MEDIA_TYPES[format],
        headers={
            "content-disposition": f'attachment; filename="{default_filename(project, format)}"',
            "x-ratchet-rows": str(rows.rows),
            "x-ratchet-skipped": str(rows.skipped),
        },
    )
