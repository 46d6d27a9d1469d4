"""The rollout lifecycle of one project's adapters, as pure functions over a `Rollout` value.

A project serves one champion (`project@vN`, or the base model's served name before the first
adapter) and, during a canary, one candidate on a fraction of its end users. The previous
champion stays loaded so that rolling back is instant. Lifecycle of a version:

    candidate --start_canary--> canary --promote--> champion --promote(next)--> retired
                                  |                     |
                                  +--rollback--> rejected   +--rollback--> retired (previous
                                                                            champion returns)
    any load failure --fail_load--> failed

Each function returns a `Transition` and changes nothing: the caller (the service pipeline)
applies it in this order, recording it as one event:
1. make sure every name in `transition.load` is serving (the manager's `servable`; load the
   ones that aren't). If a load fails, apply `fail_load(...)` instead and stop.
2. store `transition.after` and the adapter `changes` — from here routing follows `after`;
3. drain and unload every name in `transition.unload`.
`RolloutConflict` means the request makes no sense in the current state; nothing changed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

import msgspec

from deploy.names import is_adapter_name, parse_served_name

AdapterState = Literal["candidate", "rejected", "canary", "champion", "retired", "failed"]
TransitionKind = Literal[
    "canary_started",
    "canary_fraction_changed",
    "promoted",
    "rolled_back",
    "champion_rolled_back",
    "load_failed",
]


class RolloutConflict(Exception):
    """The transition asked for does not apply to the project's current rollout state."""


class BudgetTooSmall(Exception):
    """Even after unloading everything optional, the adapters that must serve don't fit."""


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """What one project serves now.

    `champion`: the served name answering all traffic outside the canary. `previous`: the
    champion before it, kept loaded for instant rollback (None when there is none). `candidate`:
    the version in canary, on `fraction` of end users since `canary_started_at` (epoch seconds).
    """

    project: str
    champion: str
    previous: str | None = None
    candidate: str | None = None
    fraction: float = 0.0
    canary_started_at: float | None = None

    @property
    def in_canary(self) -> bool:
        return self.candidate is not None

    def adapters(self) -> frozenset[str]:
        """The adapter names this project needs loaded (the base model's name is never one)."""
        names = (self.champion, self.previous, self.candidate)
        return frozenset(n for n in names if n is not None and is_adapter_name(n))


class StateChange(msgspec.Struct, frozen=True):
    """An adapter version's new state (the `adapters.state` column)."""

    served_name: str
    state: AdapterState


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a rollout, to be applied and recorded as an event (see the module docstring).

    `adapter`: the version the event is about. `load`: names that must be serving before
    `after` takes effect. `unload`: names to drain and unload once it has.
    """

    kind: TransitionKind
    project: str
    adapter: str
    reason: str
    at: float
    before: Rollout
    after: Rollout
    changes: tuple[StateChange, ...]
    load: tuple[str, ...] = ()
    unload: tuple[str, ...] = ()


def start_canary(rollout: Rollout, candidate: str, *, fraction: float, now: float, reason: str) -> Transition:
    """Send `fraction` (0 < f < 1) of the project's end users to `candidate`."""
    _check_version(rollout, candidate)
    if rollout.candidate is not None:
        raise RolloutConflict(
            f"{rollout.project}: {rollout.candidate} is in canary already; promote or roll it back first"
        )
    if candidate in (rollout.champion, rollout.previous):
        raise RolloutConflict(
            f"{rollout.project}: {candidate} has been champion; it cannot be a candidate again"
        )
    _check_fraction(fraction)
    after = msgspec.structs.replace(rollout, candidate=candidate, fraction=fraction, canary_started_at=now)
    return Transition(
        kind="canary_started",
        project=rollout.project,
        adapter=candidate,
        reason=reason,
        at=now,
        before=rollout,
        after=after,
        changes=(StateChange(candidate, "canary"),),
        load=(candidate,),
    )


def set_fraction(rollout: Rollout, fraction: float, *, now: float, reason: str) -> Transition:
    """Change the canary's share of end users (0 < f < 1); users already in it stay in it when
    the share grows (routing buckets are stable)."""
    if rollout.candidate is None:
        raise RolloutConflict(f"{rollout.project}: no canary is running")
    _check_fraction(fraction)
    return Transition(
        kind="canary_fraction_changed",
        project=rollout.project,
        adapter=rollout.candidate,
        reason=reason,
        at=now,
        before=rollout,
        after=msgspec.structs.replace(rollout, fraction=fraction),
        changes=(),
    )


def promote(rollout: Rollout, *, now: float, reason: str, adapter: str | None = None) -> Transition:
    """Make the canary's candidate (or `adapter`, for a manual promotion without canary) the
    champion for all traffic. The old champion becomes the previous one (kept loaded, state
    `retired`); the champion before that is unloaded."""
    target = adapter or rollout.candidate
    if target is None:
        raise RolloutConflict(f"{rollout.project}: no canary is running; name the version to promote")
    _check_version(rollout, target)
    if rollout.candidate not in (None, target):
        raise RolloutConflict(
            f"{rollout.project}: {rollout.candidate} is in canary; promote or roll it back before promoting {target}"
        )
    if target == rollout.champion:
        raise RolloutConflict(f"{rollout.project}: {target} is the champion already")
    after = Rollout(project=rollout.project, champion=target, previous=rollout.champion)
    changes = [StateChange(target, "champion")]
    if is_adapter_name(rollout.champion):
        changes.append(StateChange(rollout.champion, "retired"))
    unload = _adapters_only([rollout.previous]) if rollout.previous != target else ()
    return Transition(
        kind="promoted",
        project=rollout.project,
        adapter=target,
        reason=reason,
        at=now,
        before=rollout,
        after=after,
        changes=tuple(changes),
        load=(target,),
        unload=unload,
    )


def rollback(rollout: Rollout, *, now: float, reason: str, adapter: str | None = None) -> Transition:
    """Undo the latest step. During a canary: send everyone back to the champion and unload the
    candidate (state `rejected`). Otherwise: the previous champion serves again and the
    demoted champion is unloaded (state `retired`). `adapter`, when given, must be the version
    this would roll back (a guard for manual requests naming a version)."""
    if rollout.candidate is not None:
        if adapter not in (None, rollout.candidate):
            raise RolloutConflict(
                f"{rollout.project}: {rollout.candidate} is in canary; roll it back before {adapter}"
            )
        return Transition(
            kind="rolled_back",
            project=rollout.project,
            adapter=rollout.candidate,
            reason=reason,
            at=now,
            before=rollout,
            after=msgspec.structs.replace(rollout, candidate=None, fraction=0.0, canary_started_at=None),
            changes=(StateChange(rollout.candidate, "rejected"),),
            load=(rollout.champion,) if is_adapter_name(rollout.champion) else (),
            unload=(rollout.candidate,),
        )
    if adapter not in (None, rollout.champion):
        raise RolloutConflict(f"{rollout.project}: {adapter} is neither the canary nor the champion")
    if rollout.previous is None:
        raise RolloutConflict(f"{rollout.project}: there is no previous champion to roll back to")
    changes = [StateChange(rollout.previous, "champion")] if is_adapter_name(rollout.previous) else []
    changes.append(StateChange(rollout.champion, "retired"))
    return Transition(
        kind="champion_rolled_back",
        project=rollout.project,
        adapter=rollout.champion,
        reason=reason,
        at=now,
        before=rollout,
        after=Rollout(project=rollout.project, champion=rollout.previous),
        changes=tuple(changes),
        load=_adapters_only([rollout.previous]),
        unload=_adapters_only([rollout.champion]),
    )


def fail_load(rollout: Rollout, adapter: str, *, now: float, reason: str) -> Transition:
    """`adapter` could not be loaded or verified (`reason`: the manager's). It is marked
    `failed`; if it was the candidate the canary ends; otherwise serving is unchanged."""
    after = rollout
    if rollout.candidate == adapter:
        after = msgspec.structs.replace(rollout, candidate=None, fraction=0.0, canary_started_at=None)
    return Transition(
        kind="load_failed",
        project=rollout.project,
        adapter=adapter,
        reason=reason,
        at=now,
        before=rollout,
        after=after,
        changes=(StateChange(adapter, "failed"),),
        unload=(adapter,) if adapter == rollout.candidate else (),
    )


def make_room(
    rollouts: Iterable[Rollout], loaded: Collection[str], *, incoming: int = 1, max_loras: int
) -> tuple[str, ...]:
    """Which loaded adapters to unload so that `incoming` more fit under `max_loras` (vLLM
    replicas are shared by all projects). Stale adapters no rollout needs go first, oldest
    version first; then previous champions (their projects lose instant rollback: a later
    rollback re-loads them). Champions and candidates are never chosen; if they alone don't
    fit, `BudgetTooSmall`. Size `max_loras` for 3 per project (champion, previous, candidate)."""
    must, previous = _wanted(rollouts)
    shortfall = len(loaded) + incoming - max_loras
    if shortfall <= 0:
        return ()
    stale = sorted((n for n in loaded if n not in must and n not in previous), key=_age)
    optional = sorted((n for n in loaded if n in previous and n not in must), key=_age)
    chosen = (stale + optional)[:shortfall]
    if len(chosen) < shortfall:
        raise BudgetTooSmall(
            f"max_loras={max_loras} cannot hold {incoming} more beside the champions and candidates "
            f"({', '.join(sorted(must & frozenset(loaded)))}); raise max_loras (and vLLM's --max-loras)"
        )
    return tuple(chosen)


def keep_loaded(rollouts: Iterable[Rollout], *, max_loras: int) -> tuple[str, ...]:
    """What the replicas should hold: every champion and candidate, then previous champions
    (instant rollback), newest first, while they fit under `max_loras`. `BudgetTooSmall` when
    the champions and candidates alone don't fit."""
    must, previous = _wanted(rollouts)
    if len(must) > max_loras:
        raise BudgetTooSmall(
            f"max_loras={max_loras} cannot hold the {len(must)} champions and candidates "
            f"({', '.join(sorted(must))}); raise max_loras (and vLLM's --max-loras)"
        )
    newest_first = sorted(previous - must, key=_age, reverse=True)
    return (*sorted(must), *newest_first[: max_loras - len(must)])


def _check_version(rollout: Rollout, name: str) -> None:
    if parse_served_name(name).project != rollout.project:
        raise RolloutConflict(f"{name} is not a version of project {rollout.project}")


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise RolloutConflict(f"canary fraction must be between 0 and 1 (exclusive), not {fraction}")


def _wanted(rollouts: Iterable[Rollout]) -> tuple[frozenset[str], frozenset[str]]:
    """The adapters that serve (champions, candidates) and the previous champions."""
    rollouts = list(rollouts)
    must = frozenset().union(*(_adapters_only([r.champion, r.candidate]) for r in rollouts))
    return must, frozenset().union(*(_adapters_only([r.previous]) for r in rollouts))


def _adapters_only(names: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(n for n in names if n is not None and is_adapter_name(n))


def _age(name: str) -> tuple[int, str]:
    if not is_adapter_name(name):
        return (-1, name)
    parsed = parse_served_name(name)
    return (parsed.version, parsed.project)
