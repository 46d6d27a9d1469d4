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
from deploy.fleets import Fleets
from deploy.routing import RoutingTable
from formats.gateway import GatewayKey, GatewayReport, GatewayRoute, GatewayState
from service.auth import StoredKey

MISSED_SYNCS = 3


class _Seen(msgspec.Struct):
    report: GatewayReport
    at: float


class GatewayRegistry:
    """Gateway replicas heard from. `fleets`: the store's adapter managers (one per base model;
    a single `AdapterManager` is taken as the one): the registry becomes each one's
    `in_flight_elsewhere` hook, so `unload` drains across replicas. The generation a replica
    reports counts the withdrawals of every manager (`generation`)."""

    def __init__(self, fleets: Fleets | AdapterManager, clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._fleets = fleets if isinstance(fleets, Fleets) else Fleets.single(fleets)
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        # (manager, its own withdrawal number) -> `generation` at that withdrawal.
        self._withdrawals: dict[tuple[int, int], int] = {}
        for _base, manager in self._fleets:
            manager.in_flight_elsewhere = self._hook(manager)

    @property
    def generation(self) -> int:
        """Withdrawals from routing so far, over every base model's manager."""
        return sum(m.generation for _base, m in self._fleets)

    def _hook(self, manager: AdapterManager) -> Callable[[str, int], int]:
        def in_flight(name: str, withdrawn: int) -> int:
            # The manager asks first right after its withdrawal: `generation` is then that one's.
            if len(self._withdrawals) > 10_000:
                self._withdrawals.clear()
            return self.in_flight(
                name, self._withdrawals.setdefault((id(manager), withdrawn), self.generation)
            )

        return in_flight

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
        projects = sorted(projects)
        return GatewayState(
            epoch=self.epoch,
            generation=self.generation,
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
            servable={name: urls for _base, m in self._fleets for name, urls in m.routable().items()},
            projects=projects,
            base_models={p: self._fleets.base_of(p) for p in projects},
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
