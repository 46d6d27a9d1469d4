"""Adapters and their rollout: list, promote, roll back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from litestar import get, post

from deploy.names import InvalidServedName, parse_served_name
from service.api.deps import needs, scoped_project
from service.domain import Principal
from service.errors import InvalidInput
from service.runtime import Runtime
from service.store.serving import AdapterRecord, Event


class RolloutOut(msgspec.Struct):
    """What a project serves now."""

    project: str
    champion: str
    previous: str | None
    candidate: str | None
    fraction: float


class TransitionOut(msgspec.Struct):
    kind: str
    adapter: str
    reason: str
    rollout: RolloutOut


def _rollout_out(r: object) -> RolloutOut:
    return RolloutOut(r.project, r.champion, r.previous, r.candidate, r.fraction)  # type: ignore[attr-defined]


def _project_of(name: str, principal: Principal, runtime: Runtime) -> str:
    try:
        project = parse_served_name(name).project
    except InvalidServedName as exc:
        raise InvalidInput(f"{name!r} is not an adapter version name like `project@v3`", "name") from exc
    return scoped_project(principal, runtime, project)


@get("/v1/adapters", summary="List adapter versions", sync_to_thread=True, opt=needs("read"))
def list_adapters(principal: Principal, runtime: Runtime, project: str | None = None) -> list[AdapterRecord]:
    """Every adapter version of the project (admin: of every project unless `project` is given)."""
    if principal.project is None and project is None:
        return runtime.serving.adapters()
    return runtime.serving.adapters(scoped_project(principal, runtime, project))


class AdapterIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An adapter trained outside Ratchet, already placed under the adapters root."""

    path: str
    method: str = "external"
    canary: bool = True


@post(
    "/v1/projects/{name:str}/adapters",
    status_code=201,
    summary="Register an adapter (admin)",
    opt=needs("admin"),
)
async def register_adapter(
    name: str, data: AdapterIn, principal: Principal, runtime: Runtime
) -> AdapterRecord:
    """Record a PEFT adapter directory under the adapters root as the next version; by default
    also load it and start its canary."""
    project = scoped_project(principal, runtime, name)
    await runtime.rollouts.ensure_base_version(project)
    record = await asyncio.to_thread(runtime.rollouts.register, project, Path(data.path), method=data.method)
    if data.canary:
        await runtime.rollouts.start_canary(project, record.served_name)
    return await asyncio.to_thread(runtime.serving.adapter, record.served_name)


@get(
    "/v1/projects/{name:str}/rollout",
    summary="What the project serves now",
    sync_to_thread=True,
    opt=needs("read"),
)
def get_rollout(name: str, principal: Principal, runtime: Runtime) -> RolloutOut:
    """Champion, previous champion (instant rollback target) and the canary with its traffic share."""
    return _rollout_out(runtime.rollouts.current(scoped_project(principal, runtime, name)))


@get("/v1/projects/{name:str}/events", summary="Audit trail", sync_to_thread=True, opt=needs("read"))
def list_events(name: str, principal: Principal, runtime: Runtime, limit: int = 100) -> list[Event]:
    """The project's newest events first: every run stage and rollout transition."""
    return runtime.serving.events(scoped_project(principal, runtime, name), limit=min(max(limit, 1), 1000))


@post(
    "/v1/adapters/{name:str}/promote",
    status_code=200,
    summary="Promote a version to champion",
    opt=needs("manage"),
)
async def promote(name: str, principal: Principal, runtime: Runtime) -> TransitionOut:
    """Serve `project@vN` to all traffic; the old champion stays loaded for instant rollback."""
    t = await runtime.rollouts.promote(_project_of(name, principal, runtime), adapter=name, reason="manual")
    return TransitionOut(t.kind, t.adapter, t.reason, _rollout_out(t.after))


@post("/v1/adapters/{name:str}/rollback", status_code=200, summary="Roll a version back", opt=needs("manage"))
async def rollback(name: str, principal: Principal, runtime: Runtime) -> TransitionOut:
    """Take the canary (or the champion, returning the previous one) out of serving and unload it."""
    t = await runtime.rollouts.rollback(_project_of(name, principal, runtime), adapter=name, reason="manual")
    return TransitionOut(t.kind, t.adapter, t.reason, _rollout_out(t.after))
