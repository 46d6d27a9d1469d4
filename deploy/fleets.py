"""Several base models on one Ratchet: one `AdapterManager` per base model, over the vLLM replicas
that serve it, and which of them serves a project.

A vLLM server serves one base model, and an adapter only fits the base it was trained on, so each
base model has its own fleet of replicas: a project's adapters are loaded, verified (against that
base's path), fingerprinted and routed on its base model's replicas only, and each fleet has its
own `max_loras` budget. Which base a project uses is the caller's knowledge (`base_of`: the
service's project settings); a name no fleet knows goes to the default one, the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

from deploy.adapters import AdapterManager
from deploy.names import InvalidServedName, parse_served_name


class Fleets:
    """`managers`: base model name -> its manager, the default first. `base_of`: project -> the
    name of its base model."""

    def __init__(self, managers: Mapping[str, AdapterManager], base_of: Callable[[str], str]) -> None:
        if not managers:
            raise ValueError("fleets need at least one base model")
        self.managers = dict(managers)
        self.default = next(iter(self.managers))
        self._base_of = base_of

    @classmethod
    def single(cls, manager: AdapterManager, name: str = "base") -> Fleets:
        """One base model serving every project."""
        return cls({name: manager}, lambda _project: name)

    def __iter__(self) -> Iterator[tuple[str, AdapterManager]]:
        return iter(self.managers.items())

    def base_of(self, project: str) -> str:
        """The name of the base model serving `project` (the default for one no fleet has)."""
        base = self._base_of(project)
        return base if base in self.managers else self.default

    def of(self, project: str) -> AdapterManager:
        """The manager of `project`'s base model."""
        return self.managers[self.base_of(project)]

    def serving(self, name: str) -> AdapterManager:
        """The manager of a served name's project (`project@vN`); the default one for another name."""
        try:
            return self.of(parse_served_name(name).project)
        except InvalidServedName:
            return self.managers[self.default]

    async def health(self) -> dict[str, bool]:
        """Every replica's base URL -> whether its `/health` answers 200."""
        answers = await asyncio.gather(*(m.health() for m in self.managers.values()))
        return {url: ok for answer in answers for url, ok in answer.items()}

    def every_base_served(self, health: Mapping[str, bool]) -> bool:
        """True when each base model has a replica healthy in `health` (what `health` answered):
        requests can be answered for every project, the replicas that are down getting none."""
        return all(any(health.get(r.base_url, False) for r in m.replicas) for m in self.managers.values())

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.managers.values()))
