"""The adapter manager: which LoRA adapters every vLLM replica serves, checked, and where to send
a request for one.

Its in-memory view is the routing source of truth: a request is sent only to a replica where the
manager loaded the adapter, verified it and has not since seen it go missing or drift. Contract:

- `load(name, path)`: check the directory (`deploy.adapter_dir`), load it on every replica at
  once, verify each (listed in `/v1/models` from that path, and the probe completions answer),
  and record its fingerprint (greedy answers to fixed probe prompts), which must be the same on
  every replica. Any failure unloads what was partially loaded and raises `AdapterLoadFailed`
  with the reason; adapters already serving are untouched.
- Names are immutable (`project@vN`, `deploy.names`): loading a name that is loaded, or that
  was ever bound to another directory, raises `DuplicateAdapter` (never a same-name reload:
  vLLM #42125). Re-loading an unloaded name from its own directory is allowed (same weights)
  and must reproduce its recorded fingerprint.
- `max_loras` adapters at most are kept loaded; one more raises `AdapterBudgetExceeded` (which
  ones to unload is `deploy.rollout`'s policy, not the manager's).
- `unload(name)`: first withdraws it from routing (new `acquire` calls fail), waits until the
  requests holding a lease on it finish (the drain), then unloads it on every replica. Leases
  held in other processes (gateway replicas routing from this manager's view) count too, through
  `in_flight_elsewhere(name, generation)`: each withdrawal bumps `generation`, and the hook says
  how many requests elsewhere may still use `name` as of that withdrawal.
- `mirror(servable)`: a gateway replica's manager holds no adapters of its own; it routes (and
  leases) by another manager's view, replaced wholesale at each sync.
- `report_unreachable(replica)`: the gateway could not connect to a replica (down, restarting):
  nothing is routed there for `down_seconds` (a mark `mirror` keeps), then one request tries it
  again; a replica that answers `reconcile` is routed again at once.
- `reconcile(desired)`: after a replica restart (runtime adapters are lost, vLLM #12174) re-load
  what should be serving there, re-check fingerprints, and take a replica out of an
  adapter's routing when its answers drift (vLLM has served the wrong adapter: CPU mixed
  batches, #47724). Returns what it found and did.

Operations that change what is loaded run one at a time (one lock); `acquire` never waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from deploy.adapter_dir import InvalidAdapter, check_adapter_dir
from deploy.names import parse_served_name
from deploy.vllm_client import AdapterRejected, ModelNotFound, ReplicaClient, ReplicaError

# Fixed prompts whose greedy answers identify an adapter. Short answers keep the check cheap
# (~0.1 s per probe on the CPU box) and make a float-rounding flip between batch shapes unlikely.
DEFAULT_PROBES = ("The capital of France is", "Once upon a time,", "Q: What colour is the sky?\nA:")
DEFAULT_PROBE_TOKENS = 8
# How long a replica that refused a connection gets no requests before one tries it again. A
# refused connect costs ~1 ms on a LAN, so retrying a restarting replica (45-85 s on the CPU box)
# every few seconds is cheap, and a replica back from a restart is routed again within this.
DOWN_SECONDS = 5.0


class AdapterError(Exception):
    """Base of the manager's errors. `served_name` is the adapter concerned."""

    def __init__(self, served_name: str, message: str) -> None:
        super().__init__(message)
        self.served_name = served_name


class DuplicateAdapter(AdapterError):
    """The name is loaded already, or was bound to another directory: use a new version."""


class AdapterBudgetExceeded(AdapterError):
    """Loading one more would exceed `max_loras`. `loaded` lists what is loaded now."""

    def __init__(self, served_name: str, loaded: Sequence[str], max_loras: int) -> None:
        super().__init__(
            served_name,
            f"cannot load {served_name!r}: {len(loaded)} of max_loras={max_loras} adapters are loaded "
            f"({', '.join(sorted(loaded))}); unload one first",
        )
        self.loaded = tuple(sorted(loaded))
        self.max_loras = max_loras


class AdapterLoadFailed(AdapterError):
    """The adapter could not be put into service; nothing of it is left loaded. `reason` is
    the cause in words (vLLM's own message where vLLM refused), `replica` the base URL of the
    replica that failed (None when the directory check refused it before any replica)."""

    def __init__(self, served_name: str, reason: str, replica: str | None = None) -> None:
        where = f" on {replica}" if replica else ""
        super().__init__(served_name, f"loading {served_name!r} failed{where}: {reason}")
        self.reason = reason
        self.replica = replica


class AdapterNotServable(AdapterError):
    """No replica may be sent requests for this name now: never loaded, being unloaded,
    lost by a restarted replica, or withdrawn after its fingerprint drifted."""


class AdapterBusy(AdapterError):
    """Requests still held leases on the adapter when the drain timed out; it stays withdrawn
    from routing and loaded. Retry the unload."""


class Fingerprint(msgspec.Struct, frozen=True):
    """The greedy answers of one adapter to the probe prompts, in probe order."""

    answers: tuple[str, ...]

    @property
    def digest(self) -> str:
        """A short stable hash of the answers, for events and logs."""
        return hashlib.sha256(msgspec.json.encode(self.answers)).hexdigest()[:16]


class LoadReport(msgspec.Struct, frozen=True, kw_only=True):
    """A successful load. Durations in seconds: `load_seconds` the vLLM load calls (replicas in
    parallel), `verify_seconds` listing and probing, `total_seconds` call to servable."""

    served_name: str
    path: str
    fingerprint: Fingerprint
    replicas: tuple[str, ...]
    load_seconds: float
    verify_seconds: float
    total_seconds: float


class UnloadReport(msgspec.Struct, frozen=True, kw_only=True):
    """An unload. `missing_on`: replicas that no longer had it (restarted); `unreachable`:
    replicas not reached, where it may still be loaded (reconcile reports it as unexpected)."""

    served_name: str
    unloaded_on: tuple[str, ...]
    missing_on: tuple[str, ...]
    unreachable: tuple[str, ...]
    drain_seconds: float
    unload_seconds: float


class Drift(msgspec.Struct, frozen=True, kw_only=True):
    """A replica answered the probes differently from the adapter's recorded fingerprint
    (checked twice); that replica no longer gets requests for it."""

    served_name: str
    replica: str
    expected: Fingerprint
    observed: Fingerprint


class ReplicaProblem(msgspec.Struct, frozen=True, kw_only=True):
    """An adapter that could not be (re)loaded or checked on one replica, and why (`replica`
    is "*" when its directory failed the check, before any replica was asked)."""

    served_name: str
    replica: str
    reason: str


class ReconcileReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `reconcile` found and did. `reloaded`: (replica, name) loaded again because the
    replica had lost them; `unexpected`: (replica, name) adapters a replica serves that are
    neither desired nor known (left alone); `not_servable`: desired names that no replica may
    serve now; `verified`: (replica, name) whose fingerprint was re-checked and matched."""

    reloaded: tuple[tuple[str, str], ...]
    verified: tuple[tuple[str, str], ...]
    drifted: tuple[Drift, ...]
    failed: tuple[ReplicaProblem, ...]
    unreachable: tuple[str, ...]
    unexpected: tuple[tuple[str, str], ...]
    not_servable: tuple[str, ...]
    seconds: float


class AdapterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One loaded adapter as the manager sees it (for listings and readiness)."""

    served_name: str
    path: str
    fingerprint: str
    replicas: tuple[str, ...]
    routable: bool
    in_flight: int


class Lease:
    """Permission to send one request for `served_name` to `replica` (a base URL). Release it
    when the response is finished (streaming included), once; `unload` waits for it. Also a
    context manager."""

    __slots__ = ("_manager", "_released", "replica", "served_name")

    def __init__(self, manager: AdapterManager, served_name: str, replica: str) -> None:
        self._manager = manager
        self._released = False
        self.served_name = served_name
        self.replica = replica

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self.served_name)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Record(msgspec.Struct, kw_only=True):
    path: str
    fingerprint: Fingerprint
    replicas: list[str]
    routable: bool = True


class AdapterManager:
    """The adapters loaded on every replica in `replicas` (the manager owns and closes them).

    `adapter_root`: the only directory adapters are loaded from. `max_rank`: the servers'
    `--max-lora-rank`. `base_model`: what adapters must have been trained on (None: unchecked).
    `base_served_name`: the base model's served name, always servable on every replica.
    """

    def __init__(
        self,
        replicas: Sequence[ReplicaClient],
        *,
        adapter_root: str | Path,
        max_loras: int,
        max_rank: int,
        base_model: str | None = None,
        base_served_name: str | None = None,
        probes: Sequence[str] = DEFAULT_PROBES,
        probe_tokens: int = DEFAULT_PROBE_TOKENS,
        drain_timeout: float = 30.0,
        down_seconds: float = DOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("an adapter manager needs at least one replica")
        if len({r.base_url for r in replicas}) != len(replicas):
            raise ValueError("replica base URLs must be distinct")
        if max_loras < 1 or not probes:
            raise ValueError("max_loras must be at least 1 and there must be probe prompts")
        self.replicas = tuple(replicas)
        self.adapter_root = Path(adapter_root)
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.base_model = base_model
        self.base_served_name = base_served_name
        self.probes = tuple(probes)
        self.probe_tokens = probe_tokens
        self.drain_timeout = drain_timeout
        self.down_seconds = down_seconds
        self._clock = clock
        self._down_until: dict[str, float] = {}  # replica -> until when nothing is routed there
        self._records: dict[str, _Record] = {}
        # Every name ever loaded -> its directory and first fingerprint: names are immutable.
        self._history: dict[str, tuple[str, Fingerprint]] = {}
        self._in_flight: dict[str, int] = {}
        self._draining: set[str] = set()  # withdrawn by an `unload` that has not finished
        self._turn = itertools.count()
        self._lock = asyncio.Lock()
        self.generation = 0
        """Bumped at every withdrawal from routing (see `unload`)."""
        self.in_flight_elsewhere: Callable[[str, int], int] = lambda name, generation: 0
        """Requests other processes may still send for `name` as of withdrawal `generation`."""

    @classmethod
    def from_urls(
        cls, urls: Iterable[str], *, api_key: str | None = None, **kwargs: object
    ) -> AdapterManager:
        """A manager over new `ReplicaClient`s for `urls`; keyword arguments as for the class."""
        return cls([ReplicaClient(url, api_key=api_key) for url in urls], **kwargs)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await asyncio.gather(*(r.aclose() for r in self.replicas))

    # --- routing view (synchronous, never waits)

    def servable(self, name: str) -> bool:
        """True when requests for `name` may be sent now (some replica serves it, verified)."""
        if name == self.base_served_name:
            return True
        record = self._records.get(name)
        return record is not None and record.routable and bool(record.replicas)

    def is_loaded(self, name: str) -> bool:
        """True when the manager has `name` loaded, servable or not (withdrawn for drift, lost by
        a restarted replica, being unloaded). Such a name cannot be `load`ed again: `reconcile`
        restores it, or `unload` it first."""
        return name in self._records

    def acquire(self, name: str) -> Lease:
        """A lease to send one request for `name`, on a replica chosen round-robin among those
        serving it and not marked down (`report_unreachable`; when every one is, among all of
        them: one may be back). Raises `AdapterNotServable` when there is none."""
        if name == self.base_served_name:
            urls: Sequence[str] = [r.base_url for r in self.replicas]
        else:
            record = self._records.get(name)
            if record is None or not record.routable or not record.replicas:
                raise AdapterNotServable(name, f"adapter {name!r} is not being served now")
            urls = record.replicas
        if self._down_until:
            now = self._clock()
            urls = [u for u in urls if self._down_until.get(u, 0.0) <= now] or urls
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        return Lease(self, name, urls[next(self._turn) % len(urls)])

    def report_missing(self, name: str, replica: str) -> None:
        """The gateway saw `replica` answer "model not found" for `name` (it restarted): stop
        routing `name` there until `reconcile` loads it again."""
        record = self._records.get(name)
        if record is not None and replica in record.replicas:
            record.replicas.remove(replica)

    def report_unreachable(self, replica: str) -> None:
        """The gateway could not connect to `replica` (nothing was sent: the request can go to
        another one): route nothing there for `down_seconds`. Requests already sent there are
        not affected (they fail on their own if it died)."""
        self._down_until[replica] = self._clock() + self.down_seconds

    def in_flight(self) -> dict[str, int]:
        """Served name -> requests holding a lease on it now (in this process)."""
        return dict(self._in_flight)

    def routable(self) -> dict[str, list[str]]:
        """Each adapter requests may be sent for now -> the replicas serving it (what `mirror`
        takes; the base model's name is left out: it is servable everywhere)."""
        return {name: list(r.replicas) for name, r in self._records.items() if r.routable and r.replicas}

    def mirror(self, servable: Mapping[str, Sequence[str]]) -> None:
        """Route by another manager's `routable()` view from now on (a gateway replica's: the
        store's manager loads and checks the adapters). Leases held keep counting."""
        known = {r.base_url for r in self.replicas}
        self._records = {
            name: _Record(path="", fingerprint=_MIRRORED, replicas=[u for u in urls if u in known])
            for name, urls in servable.items()
        }

    def status(self) -> list[AdapterStatus]:
        """Every adapter the manager has loaded, by name."""
        return [
            AdapterStatus(
                served_name=name,
                path=record.path,
                fingerprint=record.fingerprint.digest,
                replicas=tuple(record.replicas),
                routable=record.routable,
                in_flight=self._in_flight.get(name, 0),
            )
            for name, record in sorted(self._records.items())
        ]

    def fingerprint(self, name: str) -> Fingerprint | None:
        """The fingerprint recorded when `name` was first loaded, if it ever was."""
        entry = self._history.get(name)
        return entry[1] if entry else None

    def _routable_replicas(self, name: str) -> list[str]:
        record = self._records.get(name)
        return record.replicas if record is not None else []

    def _release(self, name: str) -> None:
        left = self._in_flight.get(name, 1) - 1
        if left > 0:
            self._in_flight[name] = left
        else:
            self._in_flight.pop(name, None)

    # --- changing what is loaded

    async def health(self) -> dict[str, bool]:
        """Each replica's base URL -> whether its `/health` answers 200."""
        answers = await asyncio.gather(*(r.health() for r in self.replicas))
        return {r.base_url: ok for r, ok in zip(self.replicas, answers, strict=True)}

    async def load(self, name: str, path: str | Path) -> LoadReport:
        """Load, verify and fingerprint `name` from `path` on every replica (see the module
        docstring). Raises `DuplicateAdapter`, `AdapterBudgetExceeded`, `AdapterLoadFailed`,
        and `InvalidServedName` for a name that is not `project@vN`."""
        parse_served_name(name)
        async with self._lock:
            started = self._clock()
            if name in self._records:
                raise DuplicateAdapter(name, f"{name!r} is loaded already; a new adapter needs a new version")
            if len(self._records) >= self.max_loras:
                raise AdapterBudgetExceeded(name, list(self._records), self.max_loras)
            try:
                checked = check_adapter_dir(
                    path, root=self.adapter_root, max_rank=self.max_rank, base_model=self.base_model
                )
            except InvalidAdapter as exc:
                raise AdapterLoadFailed(name, str(exc)) from exc
            known = self._history.get(name)
            if known is not None and known[0] != checked.path:
                raise DuplicateAdapter(
                    name, f"{name!r} was loaded from {known[0]!r} before; a new adapter needs a new version"
                )

            results = await asyncio.gather(
                *(r.load_adapter(name, checked.path) for r in self.replicas), return_exceptions=True
            )
            loaded_at = self._clock()
            failures = [
                (r, e) for r, e in zip(self.replicas, results, strict=True) if isinstance(e, BaseException)
            ]
            if failures:
                # Undo everywhere but where vLLM refused: a replica that timed out may have loaded it.
                refused = {r.base_url for r, e in failures if isinstance(e, AdapterRejected)}
                await self._unload_quietly(name, [r for r in self.replicas if r.base_url not in refused])
                replica, error = failures[0]
                raise self._load_failure(name, replica, error) from error

            try:
                fingerprint = await self._verify_everywhere(name, checked.path, known[1] if known else None)
            except AdapterLoadFailed:
                await self._unload_quietly(name, self.replicas)
                raise
            finished = self._clock()
            self._records[name] = _Record(
                path=checked.path, fingerprint=fingerprint, replicas=[r.base_url for r in self.replicas]
            )
            self._history.setdefault(name, (checked.path, fingerprint))
            return LoadReport(
                served_name=name,
                path=checked.path,
                fingerprint=fingerprint,
                replicas=tuple(r.base_url for r in self.replicas),
                load_seconds=loaded_at - started,
                verify_seconds=finished - loaded_at,
                total_seconds=finished - started,
            )

    async def unload(self, name: str, *, drain_timeout: float | None = None) -> UnloadReport:
        """Withdraw `name` from routing, wait for its leases to be released (`drain_timeout`
        seconds, default the manager's; `AdapterBusy` after that), then unload it on every
        replica. Unloading a name the manager does not know still asks every replica (it may
        be left from before a service restart); replicas without it are listed as missing."""
        record = self._records.get(name)
        if record is not None:
            record.routable = False
        self._draining.add(name)
        try:
            return await self._drain_and_unload(name, drain_timeout)
        finally:
            self._draining.discard(name)

    async def _drain_and_unload(self, name: str, drain_timeout: float | None) -> UnloadReport:
        self.generation += 1
        withdrawn = self.generation
        started = self._clock()
        deadline = started + (self.drain_timeout if drain_timeout is None else drain_timeout)
        while (busy := self._in_flight.get(name, 0) + self.in_flight_elsewhere(name, withdrawn)) > 0:
            if self._clock() >= deadline:
                raise AdapterBusy(name, f"{busy} requests still use {name!r}; it is out of routing, retry")
            await asyncio.sleep(0.01)
        async with self._lock:
            drained = self._clock()
            self._records.pop(name, None)  # out of routing for good, even if reconcile ran meanwhile
            results = await asyncio.gather(
                *(r.unload_adapter(name) for r in self.replicas), return_exceptions=True
            )
            outcome: dict[str, list[str]] = {"done": [], "missing": [], "unreachable": []}
            for replica, result in zip(self.replicas, results, strict=True):
                if result is None:
                    outcome["done"].append(replica.base_url)
                elif isinstance(result, ModelNotFound):
                    outcome["missing"].append(replica.base_url)
                elif isinstance(result, ReplicaError):
                    outcome["unreachable"].append(replica.base_url)
                else:
                    raise result
            return UnloadReport(
                served_name=name,
                unloaded_on=tuple(outcome["done"]),
                missing_on=tuple(outcome["missing"]),
                unreachable=tuple(outcome["unreachable"]),
                drain_seconds=drained - started,
                unload_seconds=self._clock() - drained,
            )

    async def reconcile(
        self,
        desired: Mapping[str, str | Path],
        *,
        fingerprints: Mapping[str, Fingerprint] | None = None,
        verify: bool = True,
    ) -> ReconcileReport:
        """Make every reachable replica serve `desired` (served name -> adapter directory, what
        the database says is serving) and check it. `fingerprints`: recorded fingerprints to
        compare against for names this manager has not loaded itself (after a service restart);
        without one, the first replica's answers become the reference. `verify=False` skips
        re-probing where an adapter was verified before and is still routed (a replica taken
        out for drift is always re-probed). Never unloads anything, and leaves a name that an
        `unload` is draining withdrawn.

        Raises `AdapterBudgetExceeded` when `desired` holds more than `max_loras` names and
        `DuplicateAdapter` when a name is desired from another directory than it was loaded from.
        """
        async with self._lock:
            started = self._clock()
            if len(desired) > self.max_loras:
                raise AdapterBudgetExceeded(next(iter(desired)), list(desired), self.max_loras)
            report = _ReconcileNotes()
            paths: dict[str, str] = {}
            for name, path in desired.items():
                parse_served_name(name)
                try:
                    paths[name] = check_adapter_dir(
                        path, root=self.adapter_root, max_rank=self.max_rank, base_model=self.base_model
                    ).path
                except InvalidAdapter as exc:
                    report.failed.append(ReplicaProblem(served_name=name, replica="*", reason=str(exc)))
                    continue
                known = self._history.get(name)
                if known is not None and known[0] != paths[name]:
                    raise DuplicateAdapter(
                        name, f"{name!r} was loaded from {known[0]!r}, not {paths[name]!r}"
                    )

            expected = {name: entry[1] for name, entry in self._history.items()}
            expected.update({k: v for k, v in (fingerprints or {}).items() if k not in expected})
            serving: dict[str, list[str]] = {name: [] for name in paths}
            for replica in self.replicas:  # in order: the first replica sets a missing reference
                await self._reconcile_replica(replica, paths, expected, serving, report, verify=verify)

            for name, path in paths.items():
                record = self._records.get(name)
                if name not in expected:
                    continue  # no replica could produce a reference fingerprint
                if name in self._draining:
                    continue  # an unload withdrew it meanwhile: routing it again would keep its drain going
                if record is None:
                    record = self._records[name] = _Record(path=path, fingerprint=expected[name], replicas=[])
                    self._history.setdefault(name, (path, expected[name]))
                record.replicas = serving[name]
                record.routable = True
            not_servable = tuple(sorted(name for name in desired if not self.servable(name)))
            return report.finish(not_servable, self._clock() - started)

    # --- internals

    async def _reconcile_replica(
        self,
        replica: ReplicaClient,
        paths: Mapping[str, str],
        expected: dict[str, Fingerprint],
        serving: dict[str, list[str]],
        report: _ReconcileNotes,
        *,
        verify: bool,
    ) -> None:
        url = replica.base_url
        try:
            cards = await replica.list_models()
        except ReplicaError:
            report.unreachable.append(url)
            return
        self._down_until.pop(url, None)  # it answers again: route to it (its adapters are checked next)
        present = {c.id: c.root for c in cards if c.is_adapter}
        report.unexpected.extend(
            (url, name) for name in sorted(present) if name not in paths and name not in self._records
        )
        for name, path in paths.items():
            try:
                if name not in present:
                    await replica.load_adapter(name, path)
                    report.reloaded.append((url, name))
                elif present[name] != path:
                    report.failed.append(
                        ReplicaProblem(
                            served_name=name,
                            replica=url,
                            reason=f"loaded from {present[name]!r}, not {path!r}",
                        )
                    )
                    continue
                elif not verify and url in self._routable_replicas(name):
                    serving[name].append(url)  # checked before and never seen drifting since
                    continue
                observed = await self._probe(replica, name)
                reference = expected.setdefault(name, observed)
                if observed != reference:
                    observed = await self._probe(replica, name)  # a second look before calling it drift
                if observed != reference:
                    report.drifted.append(
                        Drift(served_name=name, replica=url, expected=reference, observed=observed)
                    )
                    continue
                if (url, name) not in report.reloaded:
                    report.verified.append((url, name))
                serving[name].append(url)
            except ReplicaError as exc:
                report.failed.append(ReplicaProblem(served_name=name, replica=url, reason=exc.message))

    async def _verify_everywhere(self, name: str, path: str, reference: Fingerprint | None) -> Fingerprint:
        async def verify(replica: ReplicaClient) -> Fingerprint:
            cards = await replica.list_models()
            card = next((c for c in cards if c.id == name), None)
            if card is None:
                raise AdapterLoadFailed(name, "loaded but not listed in /v1/models", replica.base_url)
            if card.root not in (None, path):
                raise AdapterLoadFailed(name, f"listed from {card.root!r}, not {path!r}", replica.base_url)
            return await self._probe(replica, name)

        results = await asyncio.gather(*(verify(r) for r in self.replicas), return_exceptions=True)
        for replica, result in zip(self.replicas, results, strict=True):
            if isinstance(result, BaseException):
                raise self._load_failure(name, replica, result) from result
        prints: list[Fingerprint] = results  # type: ignore[assignment]
        reference = reference or prints[0]
        for replica, observed in zip(self.replicas, prints, strict=True):
            if observed != reference:
                raise AdapterLoadFailed(
                    name,
                    f"probe answers {observed.answers!r} differ from {reference.answers!r} "
                    "(the adapter's fingerprint)",
                    replica.base_url,
                )
        return reference

    async def _probe(self, replica: ReplicaClient, name: str) -> Fingerprint:
        # One after another, not batched: a fingerprint taken alone is the most repeatable.
        answers = [await replica.complete(name, p, max_tokens=self.probe_tokens) for p in self.probes]
        return Fingerprint(tuple(answers))

    async def _unload_quietly(self, name: str, replicas: Iterable[ReplicaClient]) -> None:
        # Rolling back a partial load: a replica that can't be reached keeps the adapter, and
        # reconcile reports it as unexpected later; nothing routes to it either way.
        await asyncio.gather(*(r.unload_adapter(name) for r in replicas), return_exceptions=True)

    @staticmethod
    def _load_failure(name: str, replica: ReplicaClient, error: BaseException) -> BaseException:
        if isinstance(error, AdapterLoadFailed):
            return error
        if isinstance(error, ReplicaError):
            reason = getattr(error, "reason", None) or error.message
            return AdapterLoadFailed(name, reason, replica.base_url)
        return error


_MIRRORED = Fingerprint(())  # a mirrored record's: the store's manager checked the adapter


class _ReconcileNotes:
    """What `reconcile` accumulates before it becomes a frozen `ReconcileReport`."""

    def __init__(self) -> None:
        self.reloaded: list[tuple[str, str]] = []
        self.verified: list[tuple[str, str]] = []
        self.drifted: list[Drift] = []
        self.failed: list[ReplicaProblem] = []
        self.unreachable: list[str] = []
        self.unexpected: list[tuple[str, str]] = []

    def finish(self, not_servable: tuple[str, ...], seconds: float) -> ReconcileReport:
        return ReconcileReport(
            reloaded=tuple(self.reloaded),
            verified=tuple(self.verified),
            drifted=tuple(self.drifted),
            failed=tuple(self.failed),
            unreachable=tuple(self.unreachable),
            unexpected=tuple(self.unexpected),
            not_servable=not_servable,
            seconds=seconds,
        )
