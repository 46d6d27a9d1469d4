"""The store's side of `ratchet gateway` replicas: what they are told at each sync, and what
they are known to hold in flight (for the adapter drain before an unload).

A replica is known from its last `GatewayReport` until it misses three of its syncs (plus a
second): after that it is taken for gone and an unload no longer waits for it (a replica cut off
from the store keeps routing by its last state; its requests for an unloaded adapter get vLLM's
404, which the gateway retries on the rollout's fallback). The registry lives in memory: after a
store restart it knows each replica again from its next sync (within `gateway.sync_interval_s`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

import msgspec

from deploy.adapters import AdapterManager
from deploy.routing import RoutingTable
from formats.gateway import GatewayKey, GatewayReport, GatewayRoute, GatewayState
from service.auth import StoredKey

MISSED_SYNCS = 3


class _Seen(msgspec.Struct):
    report: GatewayReport
    at: float


class GatewayRegistry:
    """Gateway replicas heard from. `manager` is the store's adapter manager: the registry
    becomes its `in_flight_elsewhere` hook, so `unload` drains across replicas."""

    def __init__(self, manager: AdapterManager, clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._manager = manager
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        manager.in_flight_elsewhere = self.in_flight

    def record(self, report: GatewayReport) -> None:
        """Note a replica's report. A report of another epoch (a state from before this store
        process started) tells nothing about this process's withdrawals: it counts as generation 0."""
        if report.epoch != self.epoch:
            report = msgspec.structs.replace(report, epoch=self.epoch, generation=0)
        self._seen[report.gateway_id] = _Seen(report, self._clock())

    def state(
        self,
        routing: RoutingTable,
        projects: Iterable[str],
        keys: Iterable[StoredKey],
        *,
        serving_up: bool = True,
    ) -> GatewayState:
        """What a replica routes and authenticates by, as of now (`serving_up`: the store has
        re-loaded its adapters since it started)."""
        return GatewayState(
            epoch=self.epoch,
            generation=self._manager.generation,
            serving_up=serving_up,
            routes=[
                GatewayRoute(
                    project=r.project,
                    champion=r.champion,
                    previous=r.previous,
                    candidate=r.candidate,
                    fraction=r.fraction,
                )
                for r in routing.values()
            ],
            servable=self._manager.routable(),
            projects=sorted(projects),
            keys=[
                GatewayKey(
                    id=k.id,
                    project=k.project,
                    sha256=k.sha256,
                    scopes=k.scopes,
                    created_at=k.created_at,
                    revoked_at=k.revoked_at,
                    expires_at=k.expires_at,
                )
                for k in keys
            ],
        )

    def in_flight(self, name: str, generation: int) -> int:
        """Requests replicas may still send for `name`, withdrawn at `generation`: a replica that
        has not yet reported from a state at least that new counts as at least one (it may still
        route to `name`); one that has counts what it reported."""
        now, busy = self._clock(), 0
        for gateway_id, seen in list(self._seen.items()):
            if now - seen.at > MISSED_SYNCS * seen.report.interval_s + 1:
                del self._seen[gateway_id]
                continue
            held = seen.report.in_flight.get(name, 0)
            busy += held if seen.report.generation >= generation else max(held, 1)
        return busy

    def known(self) -> list[str]:
        """The replicas heard from lately, by id."""
        now = self._clock()
        return sorted(
            g for g, seen in self._seen.items() if now - seen.at <= MISSED_SYNCS * seen.report.interval_s + 1
        )
