"""API keys: create (shown once), list (never the secret), revoke, rotate. All need `manage`."""

from __future__ import annotations

from litestar import get, post

from service import keys
from service.api.deps import needs, scoped_project
from service.domain import KeyCreated, KeyIn, KeyOut, KeyRotated, KeyRotateIn, Principal
from service.runtime import Runtime


@post(
    "/v1/projects/{name:str}/keys",
    status_code=201,
    summary="Create an API key for a project",
    sync_to_thread=True,
    opt=needs("manage"),
)
def create_project_key(
    name: str, principal: Principal, runtime: Runtime, data: KeyIn | None = None
) -> KeyCreated:
    """Another key for the project, with the scopes asked for (default `ingest`). Shown only here."""
    return keys.create_key(runtime, principal, scoped_project(principal, runtime, name), data or KeyIn())


@post("/v1/keys", status_code=201, summary="Create an API key", sync_to_thread=True, opt=needs("manage"))
def create_key(principal: Principal, runtime: Runtime, data: KeyIn) -> KeyCreated:
    """A key for `project` (default: the caller's own), or with an admin key and
    `all_projects: true`, a key for every project (e.g. `read` for a Prometheus scrape)."""
    project = None if data.all_projects else scoped_project(principal, runtime, data.project)
    return keys.create_key(runtime, principal, project, data)


@get("/v1/keys", summary="List API keys", sync_to_thread=True, opt=needs("manage"))
def list_keys(principal: Principal, runtime: Runtime, project: str | None = None) -> list[KeyOut]:
    """The keys the caller may manage, with scopes, last use, revocation and expiry. Never a secret."""
    scoped = (
        None if principal.project is None and project is None else scoped_project(principal, runtime, project)
    )
    return keys.list_keys(runtime, principal, scoped)


@post(
    "/v1/keys/{key_id:str}/revoke", status_code=200, summary="Revoke an API key", sync_to_thread=True,
    opt=needs("manage"),
)  # fmt: skip
def revoke_key(key_id: str, principal: Principal, runtime: Runtime) -> KeyOut:
    """The key stops working at once. Revoking a revoked key changes nothing."""
    return keys.revoke_key(runtime, principal, key_id)


@post(
    "/v1/keys/{key_id:str}/rotate", status_code=201, summary="Rotate an API key", sync_to_thread=True,
    opt=needs("manage"),
)  # fmt: skip
def rotate_key(
    key_id: str, principal: Principal, runtime: Runtime, data: KeyRotateIn | None = None
) -> KeyRotated:
    """A new key with the same project, scopes and name (shown only here); the old one stops
    working now, or after `grace_seconds` (at most 7 days) while deployed clients switch."""
    return keys.rotate_key(runtime, principal, key_id, data or KeyRotateIn())
