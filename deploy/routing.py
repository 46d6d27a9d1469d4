"""The canary split: which served name answers a request for a project.

An end user's bucket is a stable hash of (project, end user) in [0, 1); buckets below the canary
fraction go to the candidate. So a user stays on the same side for the whole canary, across
processes and restarts, and raising the fraction only adds users to the canary. Requests without
an end user are split on a request key the caller provides (e.g. the log id): per request, not
sticky. A name the adapter manager does not serve now is never chosen: the canary falls back to
the champion, the champion to the previous champion; with neither, `NoServableAdapter`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec

from deploy.rollout import Rollout


class RoutingTable(dict[str, Rollout]):
    """The live routing table: project -> the rollout that serves it. One writer, the service's
    rollouts (`service.rollouts.Rollouts`, which owns it and keeps it equal to the database);
    the gateway only reads it, through `current`."""

    def __init__(
        self,
        base_served_name: str,
        rollouts: dict[str, Rollout] | None = None,
        *,
        base_of: Callable[[str], str] | None = None,
    ) -> None:
        """`base_of`: project -> the served name of its base model (several base models); by
        default every project's is `base_served_name`."""
        super().__init__(rollouts or {})
        self.base_served_name = base_served_name
        self._base_of = base_of

    def base_of(self, project: str) -> str:
        """The served name of the project's base model."""
        return self._base_of(project) if self._base_of is not None else self.base_served_name

    def current(self, project: str) -> Rollout:
        """The project's rollout; before it has any, its base model serves it."""
        return self.get(project) or Rollout(project=project, champion=self.base_of(project))


class NoServableAdapter(Exception):
    """Neither the project's champion nor its previous champion can be served now (a replica
    lost them and reconcile has not re-loaded them yet, or they drifted)."""


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """Where one request goes. `canary`: it is answered by the candidate. `fallback`: the
    intended adapter was not servable and another answers. `bucket`: the hash in [0, 1)."""

    served_name: str
    canary: bool
    bucket: float
    fallback: bool = False


def bucket(project: str, key: str) -> float:
    """A uniform, stable number in [0, 1) for `key` within `project` (SHA-256, 64 bits)."""
    digest = hashlib.sha256(f"{project}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def route(
    rollout: Rollout, *, end_user: str | None, request_key: str, servable: Callable[[str], bool]
) -> Route:
    """Choose the served name for one request (see the module docstring). `servable` is the
    adapter manager's `servable`: the source of truth for what may receive requests."""
    key = f"user:{end_user}" if end_user else f"request:{request_key}"
    b = bucket(rollout.project, key)
    candidate = rollout.candidate
    wants_canary = candidate is not None and b < rollout.fraction
    if candidate is not None and wants_canary and servable(candidate):
        return Route(served_name=candidate, canary=True, bucket=b)
    if servable(rollout.champion):
        return Route(served_name=rollout.champion, canary=False, bucket=b, fallback=wants_canary)
    if rollout.previous is not None and servable(rollout.previous):
        return Route(served_name=rollout.previous, canary=False, bucket=b, fallback=True)
    raise NoServableAdapter(
        f"{rollout.project}: neither {rollout.champion!r} nor the previous champion can be served now"
    )
