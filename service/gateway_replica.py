"""`ratchet gateway`: the OpenAI-compatible gateway as a stateless process beside the store.

Run N of them (each with its own port and spool directory) in front of the vLLM replicas, with
`ratchet serve` (the store: the DuckDB file, training, rollouts) beside them: an app's LLM calls
then keep being answered while the store restarts. Each replica runs the same `Gateway` and fast
path as `ratchet serve`'s built-in gateway; what differs is where its state comes from and where
its logs go:

- Routing, servable adapters, projects and API keys (hashes) come from the store at every sync
  (`POST /v1/gateways/sync`, every `gateway.sync_interval_s`; `formats.gateway`). The last state
  is kept in memory and in `<spool>/state.json` (fsync'd), so a replica that (re)starts while the
  store is away routes by it. Key revocations and rollouts reach a replica within one sync.
- Logs go to the store's ingest API through `LogShipper` (spooled on disk while the store is
  away, delivered exactly once).
- The adapter drain: each sync reports the replica's in-flight requests per adapter; the
  store's unload waits for them (`service.gateways`).

Not in a replica: the ingest API (apps post logs and feedback to the store), loading a version
on demand (`model: project@vN` is answered when that version is servable, 503 otherwise), the
record of when keys were last used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from litestar import Litestar
from litestar.di import Provide
from litestar.types import ASGIApp

from deploy.fleets import Fleets
from deploy.rollout import Rollout
from deploy.routing import RoutingTable
from formats.gateway import GATEWAY_SCHEMA_VERSION, GatewayReport, GatewayState
from formats.versioned import check_version
from service.api import gateway, gateways, health
from service.api.deps import provide_principal, provide_runtime
from service.api.errors import EXCEPTION_HANDLERS
from service.api.fastpath import FastPath
from service.auth import KeyRing, StoredKey
from service.config import Settings
from service.durable_files import replace_durably
from service.errors import UpstreamUnavailable
from service.fleets import build_fleets
from service.gateway import Gateway
from service.log_shipper import LogShipper
from service.metrics import Metrics

log = logging.getLogger("ratchet.gateway.replica")
_decode_state = msgspec.json.Decoder(GatewayState).decode


class ReplicaRollouts:
    """What the gateway routes ask of `rollouts` in a replica: a version named in a request
    (`project@vN`) is answered only while the store has it servable."""

    def __init__(self, fleets: Fleets) -> None:
        self._fleets = fleets

    async def ensure_addressable(self, name: str) -> None:
        if not self._fleets.serving(name).servable(name):
            raise UpstreamUnavailable(
                f"model {name!r} is not being served now: send it to the store (`ratchet serve`), which "
                "loads a version on demand, or retry once it is loaded"
            )


@dataclass
class ReplicaRuntime:
    """A replica's parts, shaped like the service's `Runtime` where the gateway routes read it."""

    settings: Settings
    metrics: Metrics
    fleets: Fleets
    """One manager per base model (`vllm.models`), each routing by the store's view of its replicas."""
    routing: RoutingTable
    shipper: LogShipper
    store: httpx.AsyncClient
    gateway: Gateway
    rollouts: ReplicaRollouts
    keys: KeyRing
    projects: set[str] = field(default_factory=set)
    state: GatewayState | None = None
    """The last state the store gave (or the one kept on disk from before a restart)."""
    last_sync: float | None = None
    """When the last sync succeeded (monotonic seconds), None before any in this process."""
    gateway_id: str = ""
    base_models: dict[str, str] = field(default_factory=dict)
    """Project -> its base model's name (`vllm.models`), from the store (absent: the default)."""

    def apply(self, state: GatewayState) -> None:
        """Route and authenticate by `state` from now on (the routing table is changed in place:
        the gateway holds it)."""
        rollouts = {
            r.project: Rollout(project=r.project, champion=r.champion, previous=r.previous,
                               candidate=r.candidate, fraction=r.fraction)
            for r in state.routes
        }  # fmt: skip
        for gone in set(self.routing) - set(rollouts):
            del self.routing[gone]
        self.routing.update(rollouts)
        for _base, manager in self.fleets:  # each keeps the names its own replicas serve
            servable = state.servable
            if not state.serving_up:  # a store that just started has not re-loaded everything yet
                servable = {**manager.routable(), **servable}
            manager.mirror(servable)
        self.base_models.clear()  # in place: the fleets read it
        self.base_models.update(state.base_models)
        if self.state is None or state.keys != self.state.keys:
            self.keys = KeyRing([_stored_key(k) for k in state.keys], self.settings.admin_key)
        self.projects = set(state.projects)
        self.state = state

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when it has a routing state (from the store, or kept from before) and each base
        model has a vLLM replica that answers; a store that is away, or a vLLM replica that is
        down (the others answer), is reported, not a reason to stop taking traffic."""
        checks: dict[str, str] = {"routing": "ok" if self.state is not None else "waiting for the store"}
        health = await self.fleets.health()
        for url, healthy in health.items():
            checks[f"vllm {url}"] = "ok" if healthy else "unreachable"
        ready = checks["routing"] == "ok" and self.fleets.every_base_served(health)
        age = None if self.last_sync is None else time.monotonic() - self.last_sync
        checks["store"] = (
            "ok"
            if age is not None and age < 3 * self.settings.gateway.sync_interval_s + 1
            else (f"away (routing by the state of {age:.0f} s ago)" if age is not None else "not reached yet")
        )
        checks["spooled_logs"] = str(self.shipper.spooled())
        return ready, checks


def _stored_key(key: msgspec.Struct) -> StoredKey:
    return msgspec.convert(msgspec.structs.asdict(key), StoredKey)


def build_replica(settings: Settings, metrics: Metrics | None = None) -> ReplicaRuntime:
    """A replica's runtime: nothing is started (the app's lifespan starts the sync and the shipper)."""
    metrics = metrics or Metrics()
    g = settings.gateway
    key = g.store_key or settings.admin_key
    store = httpx.AsyncClient(
        base_url=g.store_url,
        headers={"authorization": f"Bearer {key}"} if key else {},
        timeout=httpx.Timeout(10.0, connect=2.0),
    )
    base_models: dict[str, str] = {}  # filled from the store's state (`ReplicaRuntime.apply`)
    fleets = build_fleets(settings, lambda project: base_models.get(project, ""), check_base=False)
    routing = RoutingTable(
        settings.vllm.base_served_name, base_of=lambda project: str(fleets.of(project).base_served_name)
    )
    shipper = LogShipper(settings, metrics, store, settings.gateway_spool_dir)
    runtime = ReplicaRuntime(
        settings=settings, metrics=metrics, fleets=fleets, routing=routing, shipper=shipper, store=store,
        gateway=Gateway(settings, fleets, shipper, metrics, routing), rollouts=ReplicaRollouts(fleets),
        keys=KeyRing([], settings.admin_key), gateway_id=f"{socket.gethostname()}:{g.port}:{os.getpid()}",
        base_models=base_models,
    )  # fmt: skip
    kept = _state_path(settings)
    if kept.exists():
        try:
            check_version(kept.read_bytes(), str(kept), GATEWAY_SCHEMA_VERSION)
            runtime.apply(_decode_state(kept.read_bytes()))
            log.info("routing by the state kept in %s until the store answers", kept)
        except (msgspec.MsgspecError, ValueError) as exc:
            log.error("ignoring %s: %s", kept, exc)
    return runtime


def _state_path(settings: Settings) -> Path:
    return settings.gateway_spool_dir / "state.json"


class StoreLink:
    """The replica's sync with the store (see the module docstring)."""

    def __init__(self, runtime: ReplicaRuntime) -> None:
        self.runtime = runtime
        self._away_since: float | None = None

    async def run(self) -> None:
        interval = self.runtime.settings.gateway.sync_interval_s
        while True:
            try:
                await self.sync()
            except (httpx.TransportError, StoreRefused) as exc:
                self.runtime.metrics.gateway_store_up.set(0)
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    log.warning("the store is away (%r): routing by the last state", exc)
            except Exception:
                log.exception("sync with the store failed")
            await asyncio.sleep(interval)

    async def sync(self) -> None:
        """Report, and apply the store's answer. Raises `httpx.TransportError` or `StoreRefused`;
        the failures taken for the report go back when it was not taken."""
        rt = self.runtime
        failures = list(rt.shipper.failures)
        rt.shipper.failures.clear()
        report = GatewayReport(
            gateway_id=rt.gateway_id,
            epoch=rt.state.epoch if rt.state else None,
            generation=rt.state.generation if rt.state else 0,
            in_flight={
                k: v for _b, m in rt.fleets for k, v in m.in_flight().items() if k != m.base_served_name
            },
            failures=failures,
            interval_s=rt.settings.gateway.sync_interval_s,
        )
        try:
            answer = await rt.store.post("/v1/gateways/sync", content=msgspec.json.encode(report),
                                         headers={"content-type": "application/json"})  # fmt: skip
            if answer.status_code != 200:
                raise StoreRefused(f"the store answered {answer.status_code}: {answer.text[:500]}")
        except BaseException:
            rt.shipper.failures.extendleft(reversed(failures))
            raise
        check_version(answer.content, "the store's gateway state", GATEWAY_SCHEMA_VERSION)
        state = _decode_state(answer.content)
        changed = rt.state is None or _kept(state) != _kept(rt.state)
        rt.apply(state)
        rt.last_sync = time.monotonic()
        rt.metrics.gateway_store_up.set(1)
        if self._away_since is not None:
            log.warning("the store is back after %.1f s", time.monotonic() - self._away_since)
            self._away_since = None
        if changed:
            await asyncio.to_thread(replace_durably, _state_path(rt.settings), answer.content)


class StoreRefused(Exception):
    """The store answered the sync with an error (a wrong key: 401/403; 5xx)."""


def _kept(state: GatewayState) -> GatewayState:
    return msgspec.structs.replace(state, generation=0)


def create_replica_app(runtime: ReplicaRuntime) -> ASGIApp:
    """The replica's ASGI app: the gateway on the fast path, and the gateway routes, `/healthz`,
    `/readyz` and `/metrics` on Litestar."""
    link = StoreLink(runtime)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.shipper.start()
        with_store = asyncio.get_running_loop().create_task(link.run())
        try:
            yield
        finally:
            with_store.cancel()
            await runtime.gateway.aclose()  # answers still being logged reach the spool first
            await runtime.shipper.aclose()
            await runtime.fleets.aclose()
            await runtime.store.aclose()

    app = Litestar(
        route_handlers=[
            gateway.chat_completions,
            gateway.completions,
            gateways.replica_readyz,
            health.healthz,
            health.metrics,
        ],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=runtime.settings.max_body_bytes,
        lifespan=[lifespan],
        logging_config=None,
        openapi_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    return FastPath(app, runtime, ingest=False)  # type: ignore[arg-type]
