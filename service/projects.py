"""Projects: create one with its owner key (ingest, read, manage), serve its version 0."""

from __future__ import annotations

import asyncio
import logging

from service.auth import OWNER_SCOPES, mint_key
from service.clock import utcnow
from service.domain import Project, ProjectCreated, ProjectIn
from service.project_settings import known_base_model
from service.runtime import Runtime

log = logging.getLogger("ratchet.projects")


def create_project(runtime: Runtime, data: ProjectIn) -> ProjectCreated:
    """Create a project and its first key (shown once). `Conflict` if the name is taken;
    `InvalidInput` for a base model no setting names (`vllm.models`)."""
    now = utcnow()
    project = Project(data.name, known_base_model(runtime.settings, data.base_model), now)
    secret, key = mint_key(data.name, now, OWNER_SCOPES, name="owner")
    runtime.queries.create_project(project, key)
    runtime.keys.add(key)
    runtime.project_settings.set(data.name, {}, project.base_model)  # its base: before any load
    runtime.projects.add(data.name)
    runtime.metrics.init_project(data.name, runtime.fleets.base_of(data.name))
    return ProjectCreated(project, secret)


_background: set[asyncio.Task[None]] = set()


def serve_base_version_soon(runtime: Runtime, project: str) -> None:
    """Start loading the project's version 0 without making the caller wait for it."""

    async def serve() -> None:
        try:
            await runtime.rollouts.ensure_base_version(project)
        except Exception as exc:  # vLLM down or slow: the reconcile job tries again
            log.warning("version 0 of %s not served yet: %s", project, exc)

    task = asyncio.get_running_loop().create_task(serve())
    _background.add(task)
    task.add_done_callback(_background.discard)
