"""What a `ratchet gateway` replica and the store (`ratchet serve`) tell each other.

A replica calls `POST /v1/gateways/sync` every `gateway.sync_interval_s` with a `GatewayReport`
(its requests in flight per adapter, the upstream failures it saw) and gets a `GatewayState`
back: everything it needs to route and authenticate without the store (routing, which adapters
each vLLM replica serves, projects, API keys as their sha256). It keeps the last state it got,
on disk too, so it routes while the store is away.

Drain across replicas: the store numbers every withdrawal of an adapter from routing
(`generation`, within one store process: `epoch`). A replica reports the generation of the last
state it applied before it counted its in-flight requests; an unload waits until every replica
heard from lately has reported, at the withdrawal's generation or later, no request in flight on
the adapter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

GATEWAY_SCHEMA_VERSION = 1
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class GatewayFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A request vLLM failed or refused at a replica, charged to `adapter` (the online gate's
    error-rate guard counts these); `reason` as in `ratchet_gateway_upstream_errors_total`."""

    project: _Name
    adapter: _Name
    reason: _Name
    log_id: _Name | None = None


class GatewayReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A replica's report. `gateway_id`: stable for the replica's process (e.g. host:port).
    `epoch`/`generation`: of the last state it applied (None/0 before any).
    `in_flight`: served name -> requests holding a lease now (counted after that state was
    applied). `interval_s`: how often it reports (it is forgotten after missing a few)."""

    gateway_id: _Name
    epoch: _Name | None = None
    generation: Annotated[int, msgspec.Meta(ge=0)] = 0
    in_flight: dict[_Name, Annotated[int, msgspec.Meta(ge=0)]] = {}
    failures: Annotated[list[GatewayFailure], msgspec.Meta(max_length=10_000)] = []
    interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    schema_version: int = GATEWAY_SCHEMA_VERSION


class GatewayRoute(msgspec.Struct, frozen=True, kw_only=True):
    """What one project serves (the fields of `deploy.rollout.Rollout` that route a request)."""

    project: str
    champion: str
    previous: str | None = None
    candidate: str | None = None
    fraction: float = 0.0


class GatewayKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as a replica checks it: never the secret, only its sha256."""

    id: str
    project: str | None
    sha256: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None


class GatewayState(msgspec.Struct, frozen=True, kw_only=True):
    """The store's answer: `servable` maps each adapter requests may be sent for to the vLLM
    base URLs that serve it, verified (the base model's name is always servable everywhere).
    `serving_up` false: the store has just started and is still re-loading its adapters, so
    `servable` may lack some that vLLM serves (a replica adds to what it had, drops nothing)."""

    epoch: str
    generation: int
    serving_up: bool
    routes: list[GatewayRoute]
    servable: dict[str, list[str]]
    projects: list[str]
    keys: list[GatewayKey]
    base_models: dict[str, str] = {}
    """Project -> the name of its base model in `vllm.models` (absent: the default, the first)."""
    schema_version: int = GATEWAY_SCHEMA_VERSION
