"""Projects, keys, logs and stats."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from litestar import get, post
from litestar.background_tasks import BackgroundTask
from litestar.params import Parameter
from litestar.response import File

from service import projects
from service.api.deps import require_admin, scoped_project
from service.capture import to_utc
from service.domain import KeyCreated, LogOut, Principal, Project, ProjectCreated, ProjectIn, ProjectStats
from service.runtime import Runtime
from service.store.export import export_logs


@post("/v1/projects", status_code=201, summary="Create a project (admin)")
async def create_project(data: ProjectIn, principal: Principal, runtime: Runtime) -> ProjectCreated:
    """Create a project and return its first API key. The key is shown only in this answer.

    Its version 0 (the base model as a zero adapter) starts loading in the background."""
    require_admin(principal)
    created = await asyncio.to_thread(projects.create_project, runtime, data)
    projects.serve_base_version_soon(runtime, data.name)
    return created


@get("/v1/projects", summary="List projects", sync_to_thread=True)
def list_projects(principal: Principal, runtime: Runtime) -> list[Project]:
    """Every project for an admin key; a project key sees its own."""
    found = runtime.queries.list_projects()
    return found if principal.is_admin else [p for p in found if p.name == principal.project]


@post("/v1/projects/{name:str}/keys", status_code=201, summary="Create an API key", sync_to_thread=True)
def create_key(name: str, principal: Principal, runtime: Runtime) -> KeyCreated:
    """Another key for the project (admin key, or a key of that project). Shown only here."""
    return projects.create_key(runtime, scoped_project(principal, runtime, name))


@get("/v1/projects/{name:str}/stats", summary="Project statistics", sync_to_thread=True)
def project_stats(name: str, principal: Principal, runtime: Runtime) -> ProjectStats:
    """Counts by kind, thumbs-up rate overall and per adapter version, new signal since the last run."""
    return runtime.queries.project_stats(scoped_project(principal, runtime, name))


@get("/v1/logs/{log_id:str}", summary="Read one log with its feedback", sync_to_thread=True)
def get_log(log_id: str, principal: Principal, runtime: Runtime, project: str | None = None) -> LogOut:
    """A stored log and its current feedback. Another project's log is a 404."""
    return runtime.queries.get_log(scoped_project(principal, runtime, project), log_id)


@get("/v1/projects/{name:str}/export", summary="Export logs with feedback", sync_to_thread=True)
def export(
    name: str,
    principal: Principal,
    runtime: Runtime,
    fmt: Literal["jsonl", "parquet"] = Parameter(query="format", default="jsonl"),
    since: datetime | None = None,
    until: datetime | None = None,
) -> File:
    """The project's logs in [since, until) with their feedback: JSONL (the import format) or Parquet."""
    project = scoped_project(principal, runtime, name)
    out_dir = Path(runtime.settings.data_dir) / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkstemp(dir=out_dir, prefix=f"{project}-", suffix=f".{fmt}")[1])
    rows = export_logs(runtime.db, project, dest, fmt, _naive_utc(since), _naive_utc(until))
    return File(
        dest,
        filename=f"{project}.{fmt}",
        headers={"x-ratchet-rows": str(rows)},
        background=BackgroundTask(dest.unlink, missing_ok=True),
    )


def _naive_utc(value: datetime | None) -> datetime | None:
    return None if value is None else to_utc(value, value)
