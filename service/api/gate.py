"""A project's offline-gate config: read it, replace it (a new version, an event)."""

from __future__ import annotations

from litestar import get, put

from service import gate_config
from service.api.deps import needs, scoped_project
from service.domain import GateConfig, GateConfigOut, Principal
from service.runtime import Runtime


@get("/v1/projects/{name:str}/gate", summary="A project's offline-gate config", sync_to_thread=True,
     opt=needs("read"))  # fmt: skip
def get_gate(name: str, principal: Principal, runtime: Runtime, version: int | None = None) -> GateConfigOut:
    """The gate config in effect (or `?version=N`), its version and which evidence the next
    evaluation decides on. The judge's api_key is never shown (`judge_api_key_set`)."""
    project = scoped_project(principal, runtime, name)
    if version is None:
        return gate_config.read(runtime, project)
    return gate_config.read_version(runtime, project, version)


@put("/v1/projects/{name:str}/gate", summary="Replace a project's offline-gate config", sync_to_thread=True,
     opt=needs("manage"))  # fmt: skip
def put_gate(
    name: str,
    data: GateConfig,
    principal: Principal,
    runtime: Runtime,  # type: ignore[valid-type]
    expected_version: int | None = None,
) -> GateConfigOut:
    """Replace the gate config: rules, golden set, judge (primary, guard or diagnostic), generation,
    min_samples, level. Stored as a new version with a `gate_config_changed` event; the next run's
    evaluation uses it. `?expected_version=N`: 409 unless N is the version in effect (0: none yet).
    With no primary scorer here, the holdout's feedback decides (settings `feedback_gate`)."""
    project = scoped_project(principal, runtime, name)
    return gate_config.put(runtime, principal, project, data, expected_version)
