"""Adapters and their rollout: list, promote, roll back.

Handlers answer with the wire types below, never the store's records: a listing names each
version and its state; its server-side path, full manifest and fingerprint are in the detail
(`GET /v1/adapters/{name}`), asked for one version at a time."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import get, post
from litestar.response import Stream

from deploy.names import InvalidServedName, parse_served_name
from formats.manifest import AdapterManifest
from service.adapter_archive import adapter_files, archive_chunks, archive_name
from service.api.deps import needs, page_limit, scoped_project
from service.clock import utcnow
from service.domain import Principal
from service.errors import Conflict, InvalidInput
from service.runtime import Runtime
from service.store.serving import AdapterRecord, Event


class AdapterOut(msgspec.Struct, kw_only=True):
    """One adapter version as listed: what it is and where it stands."""

    served_name: str
    project: str
    version: int
    state: str
    method: str
    parent_version: int | None
    run_id: str | None
    """The run that trained it (None: registered by hand, or the base's v0)."""
    snapshot_sha256: str | None
    created_at: datetime
    updated_at: datetime
    erased: bool
    """Data it was (or may have been) trained on has since been deleted (see the detail)."""


class AdapterDetail(AdapterOut, kw_only=True):
    """One version in full: its directory on the server, what made it, its fingerprint, and the
    deletions of data it was trained on."""

    path: str
    manifest: AdapterManifest | None
    fingerprint: list[str] | None
    erased_data: list[dict[str, Any]]


def adapter_out(record: AdapterRecord) -> AdapterOut:
    return AdapterOut(
        served_name=record.served_name, project=record.project, version=record.version, state=record.state,
        method=record.method, parent_version=record.parent_version,
        run_id=record.manifest.run_id if record.manifest else None, snapshot_sha256=record.snapshot_sha256,
        created_at=record.created_at, updated_at=record.updated_at, erased=bool(record.erased_data),
    )  # fmt: skip


def adapter_detail(record: AdapterRecord) -> AdapterDetail:
    return AdapterDetail(
        **msgspec.structs.asdict(adapter_out(record)), path=record.path, manifest=record.manifest,
        fingerprint=record.fingerprint, erased_data=record.erased_data,
    )  # fmt: skip


class EventOut(msgspec.Struct):
    """One entry of the audit trail."""

    at: datetime
    project: str | None
    run_id: str | None
    kind: str
    detail: dict[str, Any]


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
def list_adapters(principal: Principal, runtime: Runtime, project: str | None = None) -> list[AdapterOut]:
    """Every adapter version of the project (admin: of every project unless `project` is given).
    Paths and manifests: `GET /v1/adapters/{name}`."""
    if principal.project is None and project is None:
        return [adapter_out(a) for a in runtime.serving.adapters()]
    return [adapter_out(a) for a in runtime.serving.adapters(scoped_project(principal, runtime, project))]


@get("/v1/adapters/{name:str}", summary="One adapter version in full", sync_to_thread=True, opt=needs("read"))
def get_adapter(name: str, principal: Principal, runtime: Runtime) -> AdapterDetail:
    """`project@vN` with its directory on the server, the trainer's manifest (run, parent,
    method, snapshot, hyperparameters, library versions), its fingerprint and erasure marks."""
    _project_of(name, principal, runtime)
    return adapter_detail(runtime.serving.adapter(name))


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
async def register_adapter(name: str, data: AdapterIn, principal: Principal, runtime: Runtime) -> AdapterOut:
    """Record a PEFT adapter directory under the adapters root as the next version; by default
    also load it and start its canary. 409, recording nothing, while another canary runs."""
    project = scoped_project(principal, runtime, name)
    if data.canary:
        runtime.rollouts.check_canary(project)  # refused before anything is recorded
    await runtime.rollouts.ensure_base_version(project)
    record = await asyncio.to_thread(runtime.rollouts.register, project, Path(data.path), method=data.method)
    if data.canary:
        try:
            await runtime.rollouts.start_canary(project, record.served_name)
        except Conflict as exc:  # another registration's canary started meanwhile: leave no orphan
            detail = {"adapter": record.served_name, "reason": exc.message}
            event = Event(utcnow(), project, None, "adapter_registration_refused", detail)
            await asyncio.to_thread(runtime.serving.remove_adapter, record.served_name, event)
            raise
    return adapter_out(await asyncio.to_thread(runtime.serving.adapter, record.served_name))


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
def list_events(name: str, principal: Principal, runtime: Runtime, limit: int = 100) -> list[EventOut]:
    """The project's newest events first, `limit` 1 to 1,000: every run stage and rollout transition."""
    events = runtime.serving.events(scoped_project(principal, runtime, name), limit=page_limit(limit, 1000))
    return [EventOut(e.at, e.project, e.run_id, e.kind, e.detail) for e in events]


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


@get(
    "/v1/adapters/{name:str}/download",
    summary="Download an adapter version (PEFT files, manifest, eval report)",
    sync_to_thread=True,
    opt=needs("read"),
    media_type="application/gzip",
)
def download_adapter(name: str, principal: Principal, runtime: Runtime) -> Stream:
    """`project@vN` as a streamed tar.gz: one directory that `peft.PeftModel.from_pretrained`
    loads (adapter_config.json, the weights, the trainer's manifest.json), with `ratchet.json`
    (the version's record) and the offline gate's report when it was evaluated
    (`service.adapter_archive`). 404 for another project's version or one without files here."""
    _project_of(name, principal, runtime)
    record = runtime.serving.adapter(name)
    files = adapter_files(record)
    report = runtime.runs.report_for_adapter(record.served_name)
    return Stream(
        archive_chunks(record, files, report),
        media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="{archive_name(record)}.tar.gz"'},
    )
